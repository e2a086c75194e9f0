"""WaveNet's kernels: the first causal convolution as table lookups, one autograd node per
residual layer, and the queue sampler of Paine et al. (2016).

Each computes what `nanoar.models.wavenet.WaveNet.forward` computes with the library's
layers on the input columns of the ids (see that model for the network and its notation:
K classes, R residual, D dilation (a tanh and a sigmoid half of H = D/2 each) and S skip
channels, kernel size k). `fused_logits` is the model's fused path, `QueueSampler` its
`sample_fast`. A conditional model's label enters every layer as a per-example bias of its
gates, G_l[y] (N, D): a `gate_bias` of `residual_layer`, a per-sample row of the sampler.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ..distributions import sample_categorical
from ..tensor import Tensor, concatenate, embedding, matmul, record_op, relu, sigmoid_array, transpose


def first_layer_lookup(a, weight, bias, embed_weight=None) -> Tensor:
    """The first causal convolution of WaveNet on the input columns of the ids, by lookups:
    ids a (N, T) -> h (N, T, R), channels-last.

    Equals `CausalConv1d` (weight (R, C_in, k), bias (R,)) applied to the input columns
    (N, C_in, T) of the textbook path, transposed: column c holds f(x_{c-1}) (one-hot, or
    the row embed_weight[x_{c-1}]) and column 0 is zero. Output column t is
    bias + sum_j W_j i_{t-k+1+j}, and W_j f(x) is row x of the table E W_j^T (K, R) (E = I
    for one-hot). So tap j looks up row x_{t-k+j} of its table, or an appended zero row
    (index K) where t-k+j < 0: the same sum, without building the columns.
    """
    xp = backend.array_module(a)
    n, t = a.shape
    r, _, k = weight.shape
    zero = Tensor(xp.zeros((1, r), weight.dtype))
    h = None
    for j in range(k):
        table = transpose(weight[:, :, j])                               # (C_in, R): W_j^T
        if embed_weight is not None:
            table = matmul(embed_weight, table)                          # (K, R): E W_j^T
        table = concatenate([table, zero])                               # (K + 1, R)
        back = k - j                                                     # tap j reads x_{t - back}
        idx = xp.full((n, t), table.shape[0] - 1, xp.int64)
        idx[:, back:] = a[:, :max(t - back, 0)]
        look = embedding(table, idx, check=False)                        # (N, T, R)
        h = look if h is None else h + look
    return h + bias


def residual_layer(u, weight, bias, res_weight, res_bias, skip_weight, skip_bias, dilation: int,
                   gate_bias=None) -> Tensor:
    """One residual layer of WaveNet as one node, on the channels-last stream u = [h | s]
    (N, T, R + S) of the residual h and the sum s of the skips of the layers before:

        z  = gated_activation(DilatedCausalConv(h) + c)  weight (D, R, k), bias (D,), dilation d
        u' = [h + Conv1x1_res(z) | s + Conv1x1_skip(z)]  res_weight (R, H, 1), skip_weight (S, H, 1)

    c = gate_bias, a Tensor (N, D) added to every time step of example n (a conditional
    model's G_l[y], with its gradient), or None (c = 0, and no work for it).

    Equals the textbook layer (`CausalConv1d`, `nn.gated_activation`, two 1x1 `Conv1d` and
    the adds, on (N, C, T) transposes) in value and gradient: the same sums, computed as
    matrix products on the N T rows, the k taps h_{t-(k-1)d}, ..., h_t side by side in one
    (N T, k R) matrix and the two 1x1 convs as one product with [W_res ; W_skip]. Carrying s
    in the stream makes the skip sum the same add as the residual one.
    """
    xp = backend.array_module(u.data)
    x = u.data
    n, t, c = x.shape
    width, r, k = weight.shape
    half = width // 2
    w_taps = weight.data.transpose(2, 1, 0).reshape(k * r, width)      # row j R + i: W[:, i, j]
    w_out = xp.concatenate([res_weight.data[:, :, 0], skip_weight.data[:, :, 0]]).T   # (H, R + S)

    def taps():
        """(N T, k R): row (n, t) holds h_{t-(k-1)d}, ..., h_{t-d}, h_t (zeros before the start)."""
        cols = xp.empty((n, t, k, r), x.dtype)
        for j in range(k):
            shift = min((k - 1 - j) * dilation, t)
            cols[:, :shift, j] = 0
            cols[:, shift:, j] = x[:, :t - shift, :r]
        return cols.reshape(n * t, k * r)

    # Backward keeps only the gates (and the weights): the taps and z are recomputed there.
    gates = taps() @ w_taps                                             # (N T, D): [a | b]
    gates += bias.data
    if gate_bias is not None:
        gates_by_example = gates.reshape(n, t, width)                   # a view of the rows
        gates_by_example += gate_bias.data[:, None, :]
    tanh_a, sig_b = gates[:, :half], gates[:, half:]
    xp.tanh(tanh_a, out=tanh_a)
    sigmoid_array(sig_b, out=sig_b)
    out = (tanh_a * sig_b) @ w_out                                      # (N T, R + S)
    out += xp.concatenate([res_bias.data, skip_bias.data])
    out = out.reshape(n, t, c)
    out += x

    def backward(g):
        gu = xp.array(g, order="C")                                     # the identity path
        g_rows = gu.reshape(n * t, c)
        g_w_out = (tanh_a * sig_b).T @ g_rows                           # (H, R + S)
        g_b_out = g_rows.sum(axis=0)
        g_z = g_rows @ w_out.T                                          # (N T, H)
        g_z *= sig_b
        g_gates = xp.empty((n * t, width), g.dtype)
        g_a, g_b = g_gates[:, :half], g_gates[:, half:]
        xp.multiply(tanh_a, tanh_a, out=g_a)
        xp.subtract(1.0, g_a, out=g_a)
        g_a *= g_z                                                      # g_z sigmoid(b) (1 - tanh(a)^2)
        g_z *= tanh_a
        xp.subtract(1.0, sig_b, out=g_b)
        g_b *= g_z                                                      # g_z tanh(a) sigmoid(b) (1 - sigmoid(b))
        g_weight = (taps().T @ g_gates).reshape(k, r, width).transpose(2, 1, 0)
        g_bias = g_gates.sum(axis=0)
        g_gate_bias = () if gate_bias is None else (g_gates.reshape(n, t, width).sum(axis=1),)   # (N, D)
        g_taps = (g_gates @ w_taps.T).reshape(n, t, k, r)
        for j in range(k):
            shift = min((k - 1 - j) * dilation, t)
            gu[:, :t - shift, :r] += g_taps[:, shift:, j]
        return (gu, g_weight, g_bias, g_w_out[:, :r].T[:, :, None], g_b_out[:r],
                g_w_out[:, r:].T[:, :, None], g_b_out[r:], *g_gate_bias)
    parents = (u, weight, bias, res_weight, res_bias, skip_weight, skip_bias)
    return record_op(out, parents if gate_bias is None else (*parents, gate_bias), backward, "residual_layer")


def fused_logits(model, a, y=None) -> Tensor:
    """`model.forward(input columns of a, y)` of a WaveNet, with the kernels above: ids a
    (N, T) (and checked labels y (N,) of a conditional model) -> logits (N, K, T). The first
    conv by `first_layer_lookup`, each layer by `residual_layer` on the stream [h | s]
    (s = 0 before the first layer) with the gate bias G_l[y] (N, D), the head as in the
    textbook path. (The last layer's residual output is computed and never read, so its 1x1
    conv gets a zero gradient.)"""
    xp = backend.array_module(a)
    n, t = a.shape
    embed = model.embed.weight if model.embed is not None else None
    h = first_layer_lookup(a, model.causal.weight, model.causal.bias, embed)                    # (N, T, R)
    r = h.shape[2]
    u = concatenate([h, Tensor(xp.zeros((n, t, model.skip_channels), h.dtype))], axis=2)       # (N, T, R + S)
    gate_biases = [None] * len(model.dilated) if y is None else [label(y) for label in model.label_bias]   # (N, D)
    for conv, res, skip, gate_bias in zip(model.dilated, model.res, model.skip, gate_biases):
        u = residual_layer(u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias, conv.dilation,
                           gate_bias)
    skips = transpose(u[:, :, r:], (0, 2, 1))                                                   # (N, S, T)
    return model.head2(relu(model.head1(relu(skips))))                                          # (N, K, T)


class _Slot(NamedTuple):
    """Views into one row buffer of a layer's queue (see `QueueSampler`)."""
    shifts: tuple        # (block j, block j + 1) pairs of the past columns, for aging
    conv_in: object      # [h_{t-(k-1)d} ... h_t | s | 1]: the dilated conv's input
    gates: object        # [a | b/2], then [tanh a | tanh(b/2)] in place
    tanh_a: object
    tanh_half_b: object
    product: object      # tanh(a) tanh(b/2)
    out_in: object       # [h_t | s | 1 | product | tanh a]: the 1x1 convs' input
    stream: object       # [h_t | s]: written by the layer below


class QueueSampler:
    """WaveNet's `sample_fast` (Paine et al. 2016): per-layer queues of past columns, so a
    step computes one new column per layer instead of rerunning the network.

    Equals the naive sampler (`WaveNet.next_logits` at every step): layer l (dilation d)
    computes its output column t from its input columns t - (k-1)d, ..., t - d, t only, and
    each of those was computed exactly once, at an earlier step, from the same ids. Layer l
    keeps d slots, slot t mod d holding [h_{t-(k-1)d}, ..., h_{t-d}, h_t]: the slot last
    served step t - d, so moving its blocks one place back ("aging") leaves the past columns
    step t needs, and the layer below writes h_t. The first conv is k table lookups as in
    `first_layer_lookup`; the logits of every step are those of the naive step (up to
    rounding), drawn by the same `sample_categorical` calls in the same order.

    Each slot is one row buffer (n, k R + S + 1 + 3H) laid out as the matrix products read it:

        [h_{t-(k-1)d}, ..., h_{t-d}, h_t | s | 1 | product | tanh a | tanh(b/2)]
         (k blocks of R)                   S   1    H         H        H

    s is the skip sum entering the layer and 1 a constant column that carries the biases.
    The gate uses the identity sigmoid(b) = (1 + tanh(b/2)) / 2 rather than
    `sigmoid_array`, because it is what makes the gate one array call: with the b half of
    the dilated conv's weights scaled by 1/2 (exact in binary floating point), one tanh in
    place turns [a | b/2] into [tanh a | tanh(b/2)], and
    z = tanh(a) sigmoid(b) = (tanh(a) tanh(b/2) + tanh a) / 2. The residual and skip convs
    are then one product [h_t | s | 1 | product | tanh a] @ [[I]; [b_res, b_skip]; [W/2]; [W/2]]
    (W = [W_res, W_skip]) written straight into the next layer's [h_t | s]. Per layer and
    step: k - 1 copies, two products, one tanh and one multiply.

    A conditional model's labels y (n,) give each layer a per-sample gate bias G_l[y] (n, D),
    its b half halved like the weights', added to [a | b/2] before the tanh (one more add
    per layer and step; none for an unconditional model).
    """

    def __init__(self, model, n: int, y=None):
        xp = backend.xp()
        dtype = model.causal.weight.dtype
        r, s, k = model.residual_channels, model.skip_channels, model.kernel
        width, half = model.dilation_channels, model.dilation_channels // 2

        # the first conv as k tables (K + 1, R), row K for the zero columns; each output column
        # sums one row of every table, so the bias is added to every row of the last one
        w_first = model.causal.weight.data                                   # (R, C_in, k)
        self.tables = []
        for j in range(k):
            table = w_first[:, :, j].T                                        # (C_in, R)
            if model.embed is not None:
                table = model.embed.weight.data @ table                       # (K, R)
            table = xp.concatenate([table, xp.zeros((1, r), dtype)])
            if j == k - 1:
                table = table + model.causal.bias.data
            self.tables.append(table)
        self.column_ids = [xp.full((n,), model.n_classes, xp.int64) for _ in range(k)]   # ids of columns t-k+1, ..., t

        # offsets in a slot's row buffer
        s_at = k * r
        one_at = s_at + s
        product_at = one_at + 1
        tanh_a_at = product_at + half
        tanh_b_at = tanh_a_at + half
        self.layers = []                                                     # (d, slots, W_dil, W_out, G[y])
        last = len(model.dilated) - 1
        for l, (conv, res, skip) in enumerate(zip(model.dilated, model.res, model.skip)):
            w_dil = xp.zeros((one_at + 1, width), dtype)                     # rows: taps | s (zero) | 1
            w_dil[:s_at] = conv.weight.data.transpose(2, 1, 0).reshape(k * r, width)
            w_dil[one_at] = conv.bias.data
            w_dil[:, half:] *= 0.5
            w_1x1 = xp.concatenate([res.weight.data[:, :, 0], skip.weight.data[:, :, 0]]).T   # (H, R + S)
            b_1x1 = xp.concatenate([res.bias.data, skip.bias.data])[None, :]
            w_out = xp.concatenate([xp.eye(r + s, dtype=dtype), b_1x1, 0.5 * w_1x1, 0.5 * w_1x1])
            if l == last:
                w_out[:, :r] = 0                                              # its residual output is never read
            gate_bias = None
            if y is not None:
                gate_bias = model.label_bias[l].weight.data[y]                # (n, D): a copy, rows G_l[y]
                gate_bias[:, half:] *= 0.5
            queue = xp.zeros((conv.dilation, n, tanh_b_at + half), dtype)
            queue[:, :, one_at] = 1.0
            slots = [_Slot(shifts=tuple((q[:, j * r:(j + 1) * r], q[:, (j + 1) * r:(j + 2) * r]) for j in range(k - 1)),
                           conv_in=q[:, :one_at + 1], gates=q[:, tanh_a_at:], tanh_a=q[:, tanh_a_at:tanh_b_at],
                           tanh_half_b=q[:, tanh_b_at:], product=q[:, product_at:tanh_a_at],
                           out_in=q[:, s_at - r:tanh_b_at], stream=q[:, s_at - r:one_at])
                     for q in queue]
            self.layers.append((conv.dilation, slots, w_dil, w_out, gate_bias))

        # after the last layer: [h | s | 1] (h stays 0); the head reads [s | 1], then [y | 1]
        self.final = xp.zeros((n, r + s + 1), dtype)
        self.final[:, r + s] = 1.0
        self.final_stream, self.final_s, self.head_in = self.final[:, :r + s], self.final[:, r:r + s], self.final[:, r:]
        self.hidden = xp.ones((n, s + 1), dtype)
        self.hidden_y = self.hidden[:, :s]
        self.w_head1 = xp.concatenate([model.head1.weight.data[:, :, 0].T, model.head1.bias.data[None, :]])
        self.w_head2 = xp.concatenate([model.head2.weight.data[:, :, 0].T, model.head2.bias.data[None, :]])

    def step(self, t: int, need_logits: bool = True):
        """Compute column t of every layer from the queues (x_<t is in `column_ids`); returns
        the logits (n, K) of x_t, or None when not needed (prompt steps)."""
        xp = backend.xp()
        tanh, matmul, multiply = xp.tanh, xp.matmul, xp.multiply
        slots = [layer_slots[t % d] for d, layer_slots, *_ in self.layers]
        for slot in slots:                                     # age: every block one place back
            for older, newer in slot.shifts:
                older[...] = newer
        h0 = slots[0].stream[:, :self.tables[0].shape[1]]     # the first conv: k lookups
        xp.add(self.tables[0][self.column_ids[0]], self.tables[1][self.column_ids[1]], out=h0)
        for table, ids in zip(self.tables[2:], self.column_ids[2:]):
            h0 += table[ids]
        last = len(slots) - 1
        for l, (_, _, w_dil, w_out, gate_bias) in enumerate(self.layers):
            _, conv_in, gates, tanh_a, tanh_half_b, product, out_in, _ = slots[l]
            matmul(conv_in, w_dil, out=gates)                  # [a | b/2]
            if gate_bias is not None:
                gates += gate_bias                             # + G_l[y], halved likewise
            tanh(gates, out=gates)                             # [tanh a | tanh(b/2)]
            multiply(tanh_a, tanh_half_b, out=product)
            matmul(out_in, w_out, out=slots[l + 1].stream if l < last else self.final_stream)
        if not need_logits:
            return None
        xp.maximum(self.final_s, 0, out=self.final_s)          # relu(s)
        matmul(self.head_in, self.w_head1, out=self.hidden_y)
        xp.maximum(self.hidden_y, 0, out=self.hidden_y)
        return matmul(self.hidden, self.w_head2)

    def advance(self, ids) -> None:
        """x_t becomes the newest input column (t + 1)."""
        self.column_ids = self.column_ids[1:] + [ids]

    def run(self, out, p: int, rng, temperature: float, top_k: int) -> None:
        """Fill out[:, p:] (ids (n, length), the prompt in out[:, :p]) step by step."""
        for t in range(out.shape[1]):
            if t < p:
                self.step(t, need_logits=False)
                ids = out[:, t]
            else:
                ids = sample_categorical(self.step(t), rng, temperature, top_k)
                out[:, t] = ids
            self.advance(ids)
