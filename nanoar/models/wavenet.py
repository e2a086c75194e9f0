"""WaveNet (van den Oord et al. 2016): an autoregressive model of sequences of class ids built
from stacks of dilated causal convolutions.

    log p(x) = sum_t log p(x_t | x_{t-R}, ..., x_{t-1}),     x: int ids (N, T) in [0, K)

R = `receptive_field`. Every conditional is a softmax over K classes (a Categorical head), so
the model is exactly normalised for any T; x_0 is conditioned on nothing.

The network, in the (N, C, T) layout of `conv1d` ("columns" are time steps):

    input column t   i_t = f(x_{t-1}),  i_0 = 0 (the start column)       (N, C_in, T)
                     f = one-hot (C_in = K) or a learned embedding (C_in = embed_dim)
    causal conv      h = CausalConv_k(i)                                  (N, R_c, T)
    layer l, dilation d_l (n_stacks repeats of `dilations`):
        z   = gated_activation(DilatedCausalConv_{k, d_l}(h) + G_l[y])    (N, D_c/2, T)
              (= tanh(a) * sigmoid(b), [a | b] the conv's two halves)
        h   = h + Conv1x1_res(z)          (residual)                      (N, R_c, T)
        s_l = Conv1x1_skip(z)             (skip)                          (N, S_c, T)
    head             logits = Conv1x1(ReLU(Conv1x1(ReLU(sum_l s_l))))     (N, K, T)

Global conditioning (section 2.5 of the paper). A model built with `n_labels = C > 0` models
p(x | y) for a label y in [0, C) (a speaker, a class), and each layer's gates see it:
z = tanh(W_f * h + V_f^T e_y) * sigmoid(W_g * h + V_g^T e_y), e_y the one-hot of y. V^T e_y
is row y of a learned table, so it is the per-class bias G_l[y] (`nn.LabelBias`, width D_c,
zero at initialisation) added to every column of the layer's pre-activation. It is the same
for every t, so the causal property in x holds for every y. An unconditional model
(n_labels = 0) has no such tables and its state is unchanged.

`WaveNet.forward` composes exactly these layers. With `fused` (the default) `distribution`
computes the same function with the kernels of `nanoar.kernels.wavenet`: the first conv as
table lookups of the ids, and each layer as one autograd node on a channels-last stream.

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

Sampling: the naive sampler reruns the network on the last R ids at every step
(`next_logits`); the fast one keeps a queue of past columns per layer, so a step computes one
new column per layer (Paine et al. 2016, `nanoar.kernels.wavenet.QueueSampler`).
"""
from __future__ import annotations

from .. import backend
from ..distributions import Categorical
from ..kernels.wavenet import QueueSampler, fused_logits
from ..nn import CausalConv1d, Conv1d, Embedding, LabelBias, gated_activation
from ..tensor import Tensor, concatenate, no_grad, relu, transpose
from .base import SequenceModel, check_n_labels


class WaveNet(SequenceModel):
    """WaveNet over sequences of ids in [0, n_classes), any length T.

    n_classes: K; residual_channels, dilation_channels (even: a tanh and a sigmoid half),
    skip_channels: widths; dilations: one stack's dilations (default 1, 2, ..., 512),
    repeated `n_stacks` times; kernel: k of every causal convolution (>= 2);
    input: 'onehot' (audio-style, C_in = K) or 'embedding' (characters, C_in = embed_dim,
    default residual_channels); seq_len: the default length T of `sample` and `event_shape`
    (scoring accepts any T); n_labels: C > 0 for a model of p(x | y), y in [0, C) (global
    conditioning), 0 (default) for an unconditional one.
    """

    fused = True  # lookups and one node per layer (nanoar.kernels.wavenet); False: the layers

    def __init__(self, n_classes: int = 256, residual_channels: int = 64, dilation_channels: int = 128,
                 skip_channels: int = 64, dilations=tuple(2 ** i for i in range(10)), n_stacks: int = 1,
                 kernel: int = 2, input: str = "onehot", embed_dim: int | None = None, seq_len: int = 1024,
                 n_labels: int = 0):
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
        self.n_labels = check_n_labels(n_labels, "WaveNet: ")
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
        self.res = [Conv1d(half, residual_channels, 1) for _ in self.layer_dilations]
        self.skip = [Conv1d(half, skip_channels, 1) for _ in self.layer_dilations]
        self.head1 = Conv1d(skip_channels, skip_channels, 1)
        self.head2 = Conv1d(skip_channels, n_classes, 1)
        # G_l: each layer's per-class bias of its gates (conditional models only)
        self.label_bias = [LabelBias(self.n_labels, dilation_channels) for _ in self.layer_dilations] \
            if self.n_labels else None

    @property
    def receptive_field(self) -> int:
        """R: p(x_t | x_<t) depends on exactly x_{t-R}, ..., x_{t-1} (1025 by default)."""
        return (self.kernel - 1) * (1 + sum(self.layer_dilations)) + 1

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, residual_channels=self.residual_channels,
                    dilation_channels=self.dilation_channels, skip_channels=self.skip_channels,
                    dilations=list(self.dilations), n_stacks=self.n_stacks, kernel=self.kernel,
                    input=self.input, embed_dim=self.embed_dim, seq_len=self.seq_len, n_labels=self.n_labels)

    # ------------------------------------------------------------------ the network
    def encode(self, a) -> Tensor:
        """f(x_t) for every t: ids a (N, T) -> float rows (N, T, C_in), one-hot rows (K) or
        embeddings (E)."""
        if self.embed is not None:
            return self.embed(a, check=False)                            # (N, T, E)
        xp = backend.array_module(a)
        return Tensor(xp.eye(self.n_classes, dtype=self.causal.weight.dtype)[a])   # (N, T, K)

    def input_columns(self, e) -> Tensor:
        """Features e (N, T, C_in) of x_0, ..., x_{T-1} -> input columns i (N, C_in, T):
        the zero start column, then f(x_0), ..., f(x_{T-2}) (shifted right by one step)."""
        n, t, c = e.shape
        start = Tensor(backend.array_module(e.data).zeros((n, 1, c), e.dtype))   # (N, 1, C_in)
        shifted = concatenate([start, e[:, :t - 1]], axis=1)             # (N, T, C_in)
        return transpose(shifted, (0, 2, 1))                             # (N, C_in, T)

    def forward(self, i, y=None) -> Tensor:
        """Input columns i (N, C_in, T) (and checked labels y (N,) of a conditional model) ->
        logits (N, K, T); column t sees columns <= t."""
        h = self.causal(i)                                               # (N, R_c, T)
        skips = 0
        for l, (conv, res, skip) in enumerate(zip(self.dilated, self.res, self.skip)):
            g = conv(h)                                                  # (N, D_c, T)
            if y is not None:
                g = g + self.label_bias[l](y, trailing=1)                # (N, D_c, T) + G_l[y] (N, D_c, 1)
            z = gated_activation(g)                                      # (N, D_c/2, T)
            skips = skips + skip(z)                                      # (N, S_c, T)
            h = h + res(z)                                               # (N, R_c, T)
        hidden = relu(self.head1(relu(skips)))                           # (N, S_c, T)
        return self.head2(hidden)                                        # (N, K, T)

    def logits(self, a, y=None) -> Tensor:
        """Checked ids a (N, T) (and checked labels y (N,) of a conditional model) -> logits
        (N, K, T): column t those of p(x_t | x_<t[, y])."""
        if self.fused:
            return fused_logits(self, a, y)  # the same function (nanoar.kernels.wavenet)
        return self.forward(self.input_columns(self.encode(a)), y)       # (N, K, T)

    def distribution(self, a, y=None) -> Categorical:
        """p(x_t | x_<t[, y]) for every t, in one pass: checked ids (N, T) and labels
        (`check_labels`) -> Categorical over (N, T), logits (N, K, T)."""
        return Categorical(self.logits(a, y), axis=1)

    def input_features(self, ids) -> Tensor:
        """`encode(ids)` as constant float features (N, T, C_in), the input of
        `forward_from_inputs`."""
        with no_grad():
            return self.encode(ids)

    def forward_from_inputs(self, e, y=None) -> Tensor:
        """Float features e (N, T, C_in) of x_0, ..., x_{T-1} (one-hot rows or embeddings),
        and the labels y of a conditional model (checked here) -> logits (N, T, K);
        logits[:, t] depends on e[:, :t] only (the shift is inside)."""
        e = e if isinstance(e, Tensor) else Tensor(e)
        y = self.check_labels(y, e.shape[0])
        return transpose(self.forward(self.input_columns(e), y), (0, 2, 1))

    # ------------------------------------------------------------------ sampling
    def next_logits(self, prefix, y=None):
        """The logits (n, K) of x_t given prefix = x_<t (n, t) (and checked labels y (n,)): one
        pass of the network over the last R ids, all that x_t sees, and a stand-in for x_t,
        which the last output column does not read. Nothing is cached; t = 0 is allowed."""
        xp = backend.array_module(prefix)
        n, t = prefix.shape
        window = prefix[:, max(t - self.receptive_field, 0):]                      # (n, min(t, R))
        a = xp.concatenate([window, xp.zeros((n, 1), window.dtype)], axis=1)       # (n, min(t, R) + 1)
        return self.logits(a, y).data[:, :, -1]

    def sample_fast(self, out, p: int, rng, temperature: float, top_k: int, y=None) -> None:
        """Fill out[:, p:] with one column per layer and step, from per-layer queues of past
        columns (`QueueSampler`, with the labels y (n,) of a conditional model): the same draws
        as the naive loop."""
        QueueSampler(self, out.shape[0], y).run(out, p, rng, temperature, top_k)
