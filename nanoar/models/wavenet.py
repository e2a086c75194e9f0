"""WaveNet (van den Oord et al. 2016): an autoregressive model of sequences of class ids built
from stacks of dilated causal convolutions, with fast cached sampling (Paine et al. 2016).

    log p(x) = sum_t log p(x_t | x_{t-R}, ..., x_{t-1}),     x: int ids (N, T) in [0, K)

R = `receptive_field`. Every conditional is a softmax over K classes (a Categorical head), so
the model is exactly normalised for any T; x_0 is conditioned on nothing.

The network, in the (N, C, T) layout of `conv1d` ("columns" are time steps):

    input column t   i_t = f(x_{t-1}),  i_0 = 0 (the "start" column)      (N, C_in, T)
                     f = one-hot (C_in = K) or a learned embedding (C_in = embed_dim)
    causal conv      h^0 = CausalConv_k(i)                                (N, R_c, T)
    layer l, dilation d_l (n_stacks repeats of `dilations`):
        [a | b]   = DilatedCausalConv_{k, d_l}(h^l)                       (N, D_c, T)
        z^l       = tanh(a) * sigmoid(b)          (gated activation)       (N, D_c/2, T)
        h^{l+1}   = h^l + Conv1x1_res(z^l)        (residual)               (N, R_c, T)
        s^l       = Conv1x1_skip(z^l)             (skip)                   (N, S_c, T)
    head             logits = Conv1x1(ReLU(Conv1x1(ReLU(sum_l s^l))))    (N, K, T)

How it is computed (the same function, with far fewer temporaries): the first causal conv
on one-hot (or embedded) columns is k row lookups in tables W_j^T (or E W_j^T), see
`first_layer`; each residual layer is ONE autograd node, `residual_layer`, acting on the
channels-last stream u = [h | running skip sum] (N, T, R_c + S_c). `stack(h, fused=False)`
composes the primitive ops instead (conv1d, `gated_activation`, ...): the tests check that
both agree in values and gradients.

Because input column t holds x_{t-1} (the input is shifted right by one step) and every
convolution is causal (left padding only), output column t depends on x_{t-R}, ..., x_{t-1}
and never on x_t or later: one parallel pass gives every conditional exactly.

Receptive field: the first convolution sees k columns, a layer of dilation d adds d (k - 1);
columns are one step behind the data, so

    R = (k - 1) (1 + n_stacks * sum(dilations)) + 1        (1025 for the default model)

and p(x_t | x_<t) depends on exactly the R previous ids x_{t-R}, ..., x_{t-1}.

The default configuration is the benchmark `wavenet` of bench/torch_ref.py: K = 256, one-hot
input, k = 2, dilations 1, 2, ..., 512, 64 residual channels, 128 dilation channels (a 64
tanh half and a 64 sigmoid half), 64 skip channels, PyTorch default initialisation.

Sampling (`sample(..., method=...)`):

- 'naive' reruns the network on the last R input columns at every step (the reference):
  O(R) work per step.
- 'fast' (default) keeps, per layer, a queue of the layer's past input columns, so a step
  computes ONE new column per layer from the cached column d (k - 1), ..., d steps back:
  O(layers) work per step. It runs on plain arrays with precomputed weight matrices and
  preallocated buffers (Python overhead per step is what limits speed at batch 1); see
  `_FastSampler`. Both methods draw the same uniforms in the same order, so under one seed
  they return identical samples (up to floating-point rounding of the logits).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..distributions import Categorical, sample_categorical
from ..nn import CausalConv1d, Conv1d, Embedding
from ..tensor import Tensor, record_op, concatenate, embedding, matmul, no_grad, relu, transpose
from .base import SequenceModel, check_count


def gated_activation(y) -> Tensor:
    """z = tanh(a) * sigmoid(b), [a | b] = y split in halves along axis 1.

    y: (N, 2C, T) -> z: (N, C, T). One fused node instead of five (two slices, tanh, sigmoid,
    product): WaveNet applies it to its largest activations in every layer.
    dz/da = sigmoid(b) (1 - tanh(a)^2),  dz/db = tanh(a) sigmoid(b) (1 - sigmoid(b)).
    """
    xp = backend.array_module(y.data)
    c = y.shape[1] // 2
    ta = xp.tanh(y.data[:, :c])
    # sigmoid(b) = (1 + tanh(b / 2)) / 2: bounded for every b, and one transcendental op
    sb = xp.tanh(y.data[:, c:] * 0.5)
    sb += 1.0
    sb *= 0.5
    z = ta * sb

    def backward(gz):
        gy = xp.empty(y.shape, gz.dtype)
        gs = gz * sb
        xp.multiply(gs, 1.0 - ta * ta, out=gy[:, :c])
        gs *= ta
        xp.multiply(gs, 1.0 - sb, out=gy[:, c:])
        return (gy,)
    return record_op(z, (y,), backward, "gated_activation")


def residual_layer(u, weight, bias, res_weight, res_bias, skip_weight, skip_bias, dilation: int, split: int) -> Tensor:
    """One whole WaveNet layer as one node, on the channels-last stream u = [h | s] (residual
    h, running skip sum s): (N, T, R + S) -> (N, T, R + S), with R = `split`:

        [a | b] = DilatedCausalConv(h)        weight: (D, R, k), bias: (D,), dilation d
        z       = tanh(a) * sigmoid(b)        (N, T, D/2)
        u'      = [h + z W_res^T + b_res | s + z W_skip^T + b_skip]   (1x1 convs: (R|S, D/2, 1))

    Exactly `conv1d` + `gated_activation` + two 1x1 `conv1d` + two adds (the tests check
    values and gradients against that composition), but with one input and one output array
    per layer instead of a dozen temporaries: the residual and skip convs are ONE product
    with the stacked weights [W_res ; W_skip], and carrying the skip sum in the stream makes
    the skip accumulation the same add as the residual one. Channels-last, every product is
    one (N T, .) x (., .) matrix product, weight gradients included.
    Backward: g_u = g_u' + (conv input gradient, into the h columns); g_z = g_u' [W_res ; W_skip];
    the gate and the convolution as in `gated_activation` and `conv1d`.
    """
    xp = backend.array_module(u.data)
    ud = u.data
    n, t, c = ud.shape
    d_out, r, k = weight.shape
    half = d_out // 2
    w2 = weight.data.transpose(2, 1, 0).reshape(k * r, d_out)     # row j R + c <- W[:, c, j]
    w_rs = xp.concatenate([res_weight.data[:, :, 0], skip_weight.data[:, :, 0]]).T   # (D/2, R + S)

    def im2col():
        # cols[n, t, j] = h[n, t - (k - 1 - j) d] (0 before the start): no padded copy
        cols = xp.empty((n, t, k, r), ud.dtype)
        for j in range(k):
            shift = min((k - 1 - j) * dilation, t)
            cols[:, :shift, j] = 0
            cols[:, shift:, j] = ud[:, :t - shift, :r]
        return cols.reshape(n * t, k * r)

    # Only y (the gate values, in place) and the output stay alive for backward: the columns
    # and z are cheap to recompute, and every array kept is memory the next layers wait for.
    y = im2col() @ w2                                                # (N T, D)
    y += bias.data
    ta, sb = y[:, :half], y[:, half:]
    xp.tanh(ta, out=ta)                                              # tanh(a)
    sb *= 0.5                                                        # sigmoid(b) = (1 + tanh(b / 2)) / 2
    xp.tanh(sb, out=sb)
    sb += 1.0
    sb *= 0.5
    out = (ta * sb) @ w_rs
    out += xp.concatenate([res_bias.data, skip_bias.data])
    out = out.reshape(n, t, c)
    out += ud

    def backward(g):
        gu = xp.array(g, order="C")                                  # the identity path
        g2 = gu.reshape(n * t, c)
        g_wrs = (ta * sb).T @ g2                                     # (D/2, R + S)
        g_brs = g2.sum(axis=0)
        gs = g2 @ w_rs.T                                             # g_z
        gs *= sb
        gy = xp.empty((n * t, d_out), g.dtype)
        ga, gb_ = gy[:, :half], gy[:, half:]
        xp.multiply(ta, ta, out=ga)
        xp.subtract(1.0, ga, out=ga)
        ga *= gs                                                     # g_z sigmoid(b) (1 - tanh(a)^2)
        gs *= ta
        xp.subtract(1.0, sb, out=gb_)
        gb_ *= gs                                                    # g_z tanh(a) sigmoid(b) (1 - sigmoid(b))
        gw = (im2col().T @ gy).reshape(k, r, d_out).transpose(2, 1, 0)
        gb = gy.sum(axis=0)
        gcols = (gy @ w2.T).reshape(n, t, k, r)
        for j in range(k):
            shift = min((k - 1 - j) * dilation, t)
            gu[:, :t - shift, :r] += gcols[:, shift:, j]
        return (gu, gw, gb, g_wrs[:, :r].T[:, :, None], g_brs[:r], g_wrs[:, r:].T[:, :, None], g_brs[r:])
    return record_op(out, (u, weight, bias, res_weight, res_bias, skip_weight, skip_bias), backward, "residual_layer")


class WaveNet(SequenceModel):
    """WaveNet over sequences of ids in [0, n_classes), any length T.

    n_classes: K; residual_channels, dilation_channels (even: a tanh and a sigmoid half),
    skip_channels: widths; dilations: one stack's dilations (default 1, 2, ..., 512),
    repeated `n_stacks` times; kernel: k of every causal convolution (>= 2);
    input: 'onehot' (audio-style, C_in = K) or 'embedding' (characters, C_in = embed_dim,
    default residual_channels); seq_len: the default length T of `sample` and `event_shape`
    (scoring accepts any T).
    """

    kind = "categorical"
    variable_length = True

    def __init__(self, n_classes: int = 256, residual_channels: int = 64, dilation_channels: int = 128,
                 skip_channels: int = 64, dilations=tuple(2 ** i for i in range(10)), n_stacks: int = 1,
                 kernel: int = 2, input: str = "onehot", embed_dim: int | None = None, seq_len: int = 1024):
        if input not in ("onehot", "embedding"):
            raise ValueError(f"WaveNet: input must be 'onehot' or 'embedding', got {input!r}")
        if dilation_channels % 2:
            raise ValueError(f"WaveNet: dilation_channels must be even (tanh and sigmoid halves), got {dilation_channels}")
        if kernel < 2:
            raise ValueError(f"WaveNet: kernel must be >= 2, got {kernel}")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1 or n_stacks < 1:
            raise ValueError(f"WaveNet: need at least one dilation >= 1 and n_stacks >= 1, got {dilations}, {n_stacks}")
        if n_classes < 2 or seq_len < 1:
            raise ValueError(f"WaveNet: need n_classes >= 2 and seq_len >= 1, got {n_classes}, {seq_len}")
        self.n_classes, self.seq_len = int(n_classes), int(seq_len)
        self.residual_channels, self.dilation_channels = residual_channels, dilation_channels
        self.skip_channels, self.dilations, self.n_stacks = skip_channels, dilations, n_stacks
        self.kernel, self.input = kernel, input
        self.embed_dim = (embed_dim or residual_channels) if input == "embedding" else None
        self.layer_dilations = dilations * n_stacks
        c_in = n_classes if input == "onehot" else self.embed_dim
        half = dilation_channels // 2
        self.embed = Embedding(n_classes, self.embed_dim) if input == "embedding" else None
        self.causal = CausalConv1d(c_in, residual_channels, kernel)
        self.dilated = [CausalConv1d(residual_channels, dilation_channels, kernel, dilation=d) for d in self.layer_dilations]
        # The last layer's residual conv feeds nothing (only its skip reaches the head): it is
        # kept so the parameters are those of the reference model; it gets zero gradient.
        self.res = [Conv1d(half, residual_channels, 1) for _ in self.layer_dilations]
        self.skip = [Conv1d(half, skip_channels, 1) for _ in self.layer_dilations]
        self.head1 = Conv1d(skip_channels, skip_channels, 1)
        self.head2 = Conv1d(skip_channels, n_classes, 1)

    @property
    def event_shape(self) -> tuple:
        return (self.seq_len,)

    @property
    def receptive_field(self) -> int:
        """R: p(x_t | x_<t) depends on exactly x_{t-R}, ..., x_{t-1} (1025 by default)."""
        return (self.kernel - 1) * (1 + sum(self.layer_dilations)) + 1

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, residual_channels=self.residual_channels,
                    dilation_channels=self.dilation_channels, skip_channels=self.skip_channels,
                    dilations=list(self.dilations), n_stacks=self.n_stacks, kernel=self.kernel,
                    input=self.input, embed_dim=self.embed_dim, seq_len=self.seq_len)

    # ------------------------------------------------------------------ the network
    def trunk(self, columns, fused: bool = True) -> Tensor:
        """Input columns (N, C_in, T) -> logits (N, K, T); column t of the output sees input
        columns t - R + 1, ..., t (zeros before the first)."""
        return self.stack(self.causal(columns), fused)

    def stack(self, h, fused: bool = True) -> Tensor:
        """The first conv's output h (N, R_c, T) -> logits (N, K, T): the residual layers and
        the head. fused=False composes the primitive ops instead of `residual_layer` (the
        reference the fused node is tested against; same values and gradients)."""
        last = len(self.dilated) - 1
        if fused:
            xp = backend.array_module(h.data)
            n, r, t = h.shape
            # the channels-last stream [h | s] (N, T, R_c + S_c), s = 0 before the first layer
            u = concatenate([transpose(h, (0, 2, 1)), Tensor(xp.zeros((n, t, self.skip_channels), h.dtype))], axis=2)
            for conv, res, skip, d in zip(self.dilated, self.res, self.skip, self.layer_dilations):
                u = residual_layer(u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias, d, r)
            skips = transpose(u[:, :, r:], (0, 2, 1))
        else:
            skips = None
            for l, (conv, res, skip) in enumerate(zip(self.dilated, self.res, self.skip)):
                z = gated_activation(conv(h))
                s = skip(z)
                skips = s if skips is None else skips + s
                if l < last:
                    h = h + res(z)
        return self.head2(relu(self.head1(relu(skips))))

    def tap_tables(self) -> list:
        """The first causal conv on one-hot or embedded ids as k lookup tables (K + 1, R_c):
        table_j[x] = W_j^T onehot(x) (or W_j^T E[x]); row K is the zero start/padding column."""
        xp = backend.array_module(self.causal.weight.data)
        zero = Tensor(xp.zeros((1, self.residual_channels), self.causal.weight.dtype))
        tables = []
        for j in range(self.kernel):
            tap = transpose(self.causal.weight[:, :, j])                # (C_in, R_c)
            if self.input == "embedding":
                tap = matmul(self.embed.weight, tap)                     # (K, R_c)
            tables.append(concatenate([tap, zero]))
        return tables

    def first_layer(self, a) -> Tensor:
        """The first causal conv on the shifted ids a (N, T) -> h (N, R_c, T), by lookups.

        Output column t reads input columns t - k + 1 + j (tap j), and column c holds x_{c-1}
        (c >= 1) or zeros (c <= 0): so tap j looks up x_{t-k+j}, or the zero row before x_0.
        The same as `causal` on one-hot (embedded) columns, without building them.
        """
        xp = backend.array_module(a)
        n, t = a.shape
        h = None
        for j, table in enumerate(self.tap_tables()):
            back = self.kernel - j                                       # tap j reads x_{t - back}
            idx = xp.full((n, t), self.n_classes, xp.int64)
            idx[:, back:] = a[:, :max(t - back, 0)]
            look = embedding(table, idx, check=False)                    # (N, T, R_c)
            h = look if h is None else h + look
        return transpose(h + self.causal.bias, (0, 2, 1))

    def _features(self, ids) -> Tensor:
        """ids (N, L) -> input columns (N, C_in, L): f(ids), one-hot or embedded."""
        xp = backend.array_module(ids)
        n, length = ids.shape
        if self.input == "onehot":
            cols = xp.zeros((n, self.n_classes, length), self.causal.weight.dtype)
            cols[xp.arange(n)[:, None], ids, xp.arange(length)[None, :]] = 1
            return Tensor(cols)
        return transpose(self.embed(ids, check=False), (0, 2, 1))

    def _shifted(self, features) -> Tensor:
        """Columns f(x_0), ..., f(x_{T-1}) (N, C, T) -> start, f(x_0), ..., f(x_{T-2})."""
        n, c, _ = features.shape
        start = Tensor(backend.array_module(features.data).zeros((n, c, 1), features.dtype))
        return concatenate([start, features[:, :, :-1]], axis=2)

    def logits(self, x) -> Tensor:
        """ids (N, T) -> logits (N, K, T) of p(x_t | x_<t) for every t, in one pass."""
        return self.stack(self.first_layer(self.check_data(x)))

    def forward_from_inputs(self, e) -> Tensor:
        """Float features e: (N, T, C_in) of x_0, ..., x_{T-1} (one-hot rows, or embeddings)
        -> logits (N, T, K); logits[:, t] depends on e[:, :t] only (the shift is inside).

        The differentiable entry point for Jacobian checks of causality.
        """
        e = e if isinstance(e, Tensor) else Tensor(e)
        return transpose(self.trunk(self._shifted(transpose(e, (0, 2, 1)))), (0, 2, 1))

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_t | x_<t): ids (N, T) -> Tensor (N, T)."""
        a = self.check_data(x)
        return Categorical(self.stack(self.first_layer(a)), axis=1).log_prob(a, check=False)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed=None, length: int | None = None, temperature: float = 1.0,
               top_k: int = 0, prompt=None, method: str = "fast"):
        """Ancestral samples: int64 ids (n, length) on the current device, the prompt (ids
        (P,) or (n, P)) as their first P steps. temperature / top_k reshape each conditional
        (1.0 / 0: exact samples of the model). method: 'fast' (queues) or 'naive'."""
        n = check_count(n)
        length = self.seq_len if length is None else int(length)
        if method not in ("fast", "naive"):
            raise ValueError(f"WaveNet.sample: method must be 'fast' or 'naive', got {method!r}")
        out, p = self._start(n, length, prompt)
        rng = backend.make_rng(seed)
        with no_grad():
            if method == "fast":
                _FastSampler(self, n).run(out, p, rng, temperature, top_k)
            else:
                self._sample_naive(out, p, rng, temperature, top_k)
        return out

    def _sample_naive(self, out, p, rng, temperature, top_k):
        """Rerun the network on the last R input columns for every new step t >= p."""
        r = self.receptive_field
        for t in range(p, out.shape[1]):
            if t < r:  # the start column and x_0, ..., x_{t-1}
                cols = self._shifted(self._features(out[:, :t + 1]))
            else:      # x_{t-R}, ..., x_{t-1}: the zero padding left of them is out of reach
                cols = self._features(out[:, t - r:t])
            logits = self.trunk(cols).data[:, :, -1]
            out[:, t] = sample_categorical(logits, rng, temperature, top_k)


class _FastSampler:
    """Fast WaveNet generation (Paine et al. 2016): per-layer queues of past columns.

    Layer l (dilation d, kernel k) needs, to compute its output column t, its input columns
    h_{t-(k-1)d}, ..., h_{t-d}, h_t. Each layer keeps a queue of d slots, one per residue of
    t mod d: the slot used at step t was last used at step t - d and still holds that step's
    columns, so "aging" them by one block (h_{t-d} moves one place back, the oldest drops
    out) leaves exactly the past columns step t needs. A step computes ONE column per
    layer, in a handful of array calls on plain arrays (at batch 1 the Python overhead per
    call, not arithmetic, sets the speed, so every trick below removes calls):

    - each slot is one row buffer laid out as the matrix products want their operands:
          [h_{t-(k-1)d}, ..., h_{t-d}, h_t | s | 1 | ab | a | b]     (R each | S | 1 | H x 3)
      with s the running skip sum entering the layer and 1 a constant column for biases;
    - the dilated conv is ONE product [h..., s, 1] @ W_dil written into [a | b] (rows of
      W_dil for s are zero, its bias is the row of the constant 1);
    - the gate: sigmoid(b) = (1 + tanh(b/2)) / 2, so with the b half of W_dil pre-scaled by
      1/2 (exact in binary floating point) ONE tanh in place turns [a | b] into
      [tanh a | tanh(b/2)], and ONE product gives ab = tanh(a) tanh(b/2);
      then z = (ab + tanh a) / 2;
    - the residual AND skip 1x1 convs are ONE product
          [h_t, s, 1, ab, tanh a] @ [[I], [b_res, b_skip], [W/2], [W/2]],  W = [W_res, W_skip]
      written straight into the next layer's slot as its [h_t | s]: the skip sum travels
      with the residual stream (the residual-layer trick of `residual_layer`);
    - the first causal conv on one-hot (or embedded) columns is a sum of k row lookups in
      tables (K + 1, R) (row K: the zero start/padding column; for embeddings the table is
      E W_j^T), the conv bias folded into the last table;
    - the head's biases are the rows of constant-1 columns too, its ReLUs in place.
    Per layer and step: one copy (aging), two products, one tanh, one multiply.
    """

    def __init__(self, model: WaveNet, n: int):
        xp = backend.xp()
        dt = model.causal.weight.dtype
        K, R, S = model.n_classes, model.residual_channels, model.skip_channels
        D, k = model.dilation_channels, model.kernel
        H = D // 2
        get = lambda p: p.data.astype(dt, copy=False)  # noqa: E731

        # first causal conv as k tables (K + 1, R); row K is the zero start column
        wc = get(model.causal.weight)                              # (R, C_in, k)
        self.taps = []
        for j in range(k):
            tap = wc[:, :, j].T                                    # (C_in, R)
            if model.input == "embedding":
                tap = get(model.embed.weight) @ tap                # (K, R)
            tap = xp.concatenate([tap, xp.zeros((1, R), dt)])
            if j == k - 1:
                tap = tap + get(model.causal.bias)  # every column gets the bias once
            self.taps.append(tap)
        self.col_ids = [xp.full((n,), K, xp.int64) for _ in range(k)]  # ids of columns t-k+1..t

        hs_, one, ab_, a_, b_ = k * R, k * R + S, k * R + S + 1, k * R + S + 1 + H, k * R + S + 1 + 2 * H
        width = b_ + H
        self.layers = []   # per layer: (d, per-slot views, W_dil, W_res_skip)
        for l, (conv, res, skip, d) in enumerate(zip(model.dilated, model.res, model.skip, model.layer_dilations)):
            w = get(conv.weight)                                   # (D, R, k)
            wd = xp.zeros((one + 1, D), dt)
            wd[:k * R] = w.transpose(2, 1, 0).reshape(k * R, D)   # row j R + c <- w[:, c, j]
            wd[one] = get(conv.bias)
            wd[:, H:] *= 0.5
            w_rs = xp.concatenate([get(res.weight)[:, :, 0], get(skip.weight)[:, :, 0]]).T   # (H, R + S)
            b_rs = xp.concatenate([get(res.bias), get(skip.bias)])[None, :]
            wr = xp.concatenate([xp.eye(R + S, dtype=dt), b_rs, 0.5 * w_rs, 0.5 * w_rs])  # rows: h_t, s | 1 | ab | tanh a
            if l == len(model.dilated) - 1:
                wr[:, :R] = 0  # the unused last residual (keeps the final buffer's h at 0)
            queue = xp.zeros((d, n, width), dt)
            queue[:, :, one] = 1.0
            slots = [(tuple((q[:, j * R:(j + 1) * R], q[:, (j + 1) * R:(j + 2) * R]) for j in range(k - 1)),
                      q[:, :one + 1], q[:, a_:], q[:, a_:b_], q[:, b_:], q[:, ab_:a_], q[:, hs_ - R:b_],
                      q[:, hs_ - R:one])
                     for q in queue]
            self.layers.append((d, slots, wd, wr))
        # after the last layer: [h | s | 1], then the head [s1 | 1]
        self.final = xp.zeros((n, R + S + 1), dt)
        self.final[:, R + S] = 1.0
        self.final_hs, self.final_s, self.final_in = self.final[:, :R + S], self.final[:, R:R + S], self.final[:, R:]
        self.mid = xp.ones((n, S + 1), dt)
        self.mid_s = self.mid[:, :S]
        self.w1 = xp.concatenate([get(model.head1.weight)[:, :, 0].T, get(model.head1.bias)[None, :]])
        self.w2 = xp.concatenate([get(model.head2.weight)[:, :, 0].T, get(model.head2.bias)[None, :]])
        self.k = k

    def step(self, t: int, need_logits: bool = True):
        """Compute column t of every layer from the cached columns (x_<t is in col_ids);
        returns the logits (n, K) of x_t (or None when not needed: prompt steps)."""
        xp = backend.xp()
        tanh, matmul, multiply = xp.tanh, xp.matmul, xp.multiply
        layers = self.layers
        views = [slots[t % d] for d, slots, _, _ in layers]
        for v in views:                                # age the columns: h_{t-jd} one block back
            for dst, src in v[0]:
                dst[...] = src
        # first causal conv: h_t of layer 0 = sum of k table rows (bias in the last table)
        cur = views[0][7][:, :self.taps[0].shape[1]]
        xp.add(self.taps[0][self.col_ids[0]], self.taps[1][self.col_ids[1]], out=cur)
        for j in range(2, self.k):
            cur += self.taps[j][self.col_ids[j]]
        last = len(layers) - 1
        for l, (_, _, wd, wr) in enumerate(layers):
            _, dil_in, ab_b, a, b, ab, res_in, _ = views[l]
            matmul(dil_in, wd, out=ab_b)               # [a | b/2]
            tanh(ab_b, out=ab_b)                       # [tanh a | tanh(b/2)]
            multiply(a, b, out=ab)
            matmul(res_in, wr, out=views[l + 1][7] if l < last else self.final_hs)
        if not need_logits:
            return None
        s = self.final_s
        xp.maximum(s, 0, out=s)
        matmul(self.final_in, self.w1, out=self.mid_s)
        xp.maximum(self.mid_s, 0, out=self.mid_s)
        return matmul(self.mid, self.w2)

    def advance(self, ids) -> None:
        """Append x_t: it becomes the newest input column (t + 1)."""
        self.col_ids = self.col_ids[1:] + [ids]

    def run(self, out, p, rng, temperature, top_k) -> None:
        for t in range(out.shape[1]):
            if t < p:
                self.step(t, need_logits=False)
                ids = out[:, t]
            else:
                ids = sample_categorical(self.step(t), rng, temperature, top_k)
                out[:, t] = ids
            self.advance(ids)
