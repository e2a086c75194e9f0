"""A character-level transformer (GPT-style decoder): an autoregressive model of id sequences
with masked (causal) multi-head self-attention (Vaswani et al. 2017; Radford et al. 2019).

    log p(x) = sum_t log p(x_t | x_<t),     x: int ids (N, T) in [0, K)

Exactness at t = 0: the input is the sequence shifted right by one with a start token
BOS = K in front (an extra embedding row), so position t of the input holds x_{t-1}
(position 0: BOS) and the output at position t, which attends to input positions <= t only,
is the conditional of x_t given x_<t. x_0 is conditioned on nothing, and every conditional is
a softmax over the K real classes (BOS is never predicted): exactly normalised.

Shapes (N batch, T positions, D = dim, h heads of d = D / h, L = n_layers):

    u^0 = E_tok[[BOS, x_0, ..., x_{T-2}]] + E_pos[0..T-1]                       (N, T, D)
    block:  u = u + Attn(LN1(u));   u = u + MLP(LN2(u))          (pre-LayerNorm)
      Attn: [q | k | v] = y W_qkv  (D -> 3D), split into heads        (N, h, T, d)
            A = softmax(q k^T / sqrt(d) + M),  M_{ts} = -inf for s > t   (N, h, T, T)
            out = concat_heads(A v) W_proj                            (N, T, D)
      MLP:  GELU(y W_fc) W_fc2   (D -> 4D -> D)
    logits = LN_f(u^L) W_head        (untied by default; tied=True uses E_tok[:K]^T)

The positions of all sequences are the rows of one (N T, D) matrix, so every Linear is a
single 2-D product. `CharTransformer.attention` is written from Tensor ops; with `fused`
(the default) the same attention runs as one autograd node,
`nanoar.kernels.attention.causal_self_attention`.

Initialisation (GPT-2): every Linear and embedding weight ~ N(0, 0.02^2), the residual
output projections W_proj and W_fc2 ~ N(0, (0.02 / sqrt(2 L))^2), biases 0, LayerNorm 1/0.
Linear layers have no biases by default (bias=False); LayerNorms keep theirs.

Context: position embeddings exist for `context` positions, so sequences of up to `context`
ids are scored exactly with the full history (one pass). A longer sequence is scored with a
sliding window: x_t (t >= context) is conditioned on [BOS, x_{t-context+1}, ..., x_{t-1}], the
same window as training (always BOS first, positions 0..context-1). The model is then a
context-limited AR model (order context - 1 Markov in that regime), still exactly
normalised, since every conditional is a softmax that depends on x_<t only.

The default-sized benchmark model `chargpt` is CharTransformer(65, context=64, n_layers=4,
n_heads=4, dim=128, bias=False, tied=False), scored on sequences of 64 ids. It is the network
of bench/torch_ref.py's CharGPT (same fused qkv split q, k, v, same block), except that the
GELU is nanoar's tanh approximation (the reference uses the exact erf form) and that
CharTransformer has the BOS row (the reference scores x_1.. given x_0 instead).

Sampling: 'fast' keeps a KV cache (each layer's keys and values of past positions, appended
one position per step: O(T) work per step); 'naive' reruns the network on the whole window
at every step. Both draw the same uniforms in the same order, so under one seed they give
identical samples (up to floating-point rounding of the logits). Past `context`, the window
slides and every position changes, so both recompute the window for those steps.
"""
from __future__ import annotations

import math

from .. import backend
from ..distributions import Categorical, sample_categorical
from ..kernels.attention import cached_attention, causal_self_attention, kv_cache
from ..nn import Embedding, LayerNorm, Linear, Module, init_constant, init_normal
from ..tensor import Tensor, concatenate, gelu, getitem, matmul, no_grad, softmax, split, transpose
from .base import SequenceModel


def init_gpt2(lin: Linear, std: float) -> None:
    """GPT-2's initialisation of a Linear layer: weight ~ N(0, std^2), bias 0."""
    lin.weight = init_normal(lin.weight.shape, std)
    if lin.bias is not None:
        lin.bias = init_constant(lin.bias.shape, 0.0)


class Block(Module):
    """The layers of one pre-LayerNorm block, u + Attn(LN1(u)) then + MLP(LN2(u)), which
    `CharTransformer.forward_embedded` applies: LN1, qkv (D -> 3D) and proj (D -> D) around
    the attention, LN2, fc (D -> 4D) and fc2 (4D -> D) in the MLP."""

    def __init__(self, dim: int, bias: bool, resid_std: float):
        self.ln1, self.ln2 = LayerNorm(dim), LayerNorm(dim)
        self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.proj = Linear(dim, dim, bias=bias)
        self.fc = Linear(dim, 4 * dim, bias=bias)
        self.fc2 = Linear(4 * dim, dim, bias=bias)
        for lin, std in ((self.qkv, 0.02), (self.proj, resid_std), (self.fc, 0.02), (self.fc2, resid_std)):
            init_gpt2(lin, std)


class CharTransformer(SequenceModel):
    """GPT-style transformer over ids in [0, n_classes), exact with a BOS start token.

    context: positions (the longest exactly-scored sequence); n_layers, n_heads, dim: size
    (dim divisible by n_heads); bias: biases in the Linear layers; tied: output head = token
    embedding^T (default False: a separate head). seq_len: default length of `sample` and
    `event_shape` (default: context); scoring accepts any T (sliding window past context).
    """

    fused = True  # attention as one node (nanoar.kernels.attention); False: Tensor ops

    def __init__(self, n_classes: int, context: int = 64, n_layers: int = 4, n_heads: int = 4, dim: int = 128,
                 bias: bool = False, tied: bool = False, seq_len: int | None = None):
        if dim % n_heads:
            raise ValueError(f"CharTransformer: dim {dim} is not divisible by n_heads {n_heads}")
        if n_classes < 2 or context < 1 or n_layers < 1:
            raise ValueError("CharTransformer: need n_classes >= 2, context >= 1, n_layers >= 1, "
                             f"got {n_classes}, {context}, {n_layers}")
        self.n_classes, self.context, self.n_layers = int(n_classes), int(context), n_layers
        self.n_heads, self.dim, self.bias, self.tied = n_heads, dim, bool(bias), bool(tied)
        self.seq_len = int(context if seq_len is None else seq_len)
        self.tok = Embedding(n_classes + 1, dim, std=0.02)  # row n_classes: BOS
        self.pos = Embedding(context, dim, std=0.02)
        resid_std = 0.02 / math.sqrt(2 * n_layers)
        self.blocks = [Block(dim, self.bias, resid_std) for _ in range(n_layers)]
        self.ln_f = LayerNorm(dim)
        self.head = None
        if not tied:
            self.head = Linear(dim, n_classes, bias=self.bias)
            init_gpt2(self.head, 0.02)

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, context=self.context, n_layers=self.n_layers, n_heads=self.n_heads,
                    dim=self.dim, bias=self.bias, tied=self.tied, seq_len=self.seq_len)

    # ------------------------------------------------------------------ the network
    def forward(self, ids, caches=None, pos: int = 0) -> Tensor:
        """Input ids (N, T), at positions pos, ..., pos + T - 1 <= context (position 0 holds
        BOS) -> logits (N, T, K). With `caches` (sampling: one `kv_cache` per block) the
        earlier positions' keys and values come from the caches."""
        e = self.tok(ids, check=False)                                     # (N, T, D)
        return self.forward_embedded(e, caches, pos)

    def forward_embedded(self, e, caches=None, pos: int = 0) -> Tensor:
        """`forward` from the token embeddings e (N, T, D) of the input ids."""
        n, t, d = e.shape
        u = (e + self.pos.weight[pos:pos + t]).reshape(n * t, d)          # (N T, D): positions as rows
        for l, b in enumerate(self.blocks):
            qkv = b.qkv(b.ln1(u))                                          # (N T, 3D)
            a = self.attention(qkv, n, None if caches is None else caches[l], pos)  # (N T, D)
            u = u + b.proj(a)                                              # (N T, D)
            u = u + b.fc2(gelu(b.fc(b.ln2(u))))                            # (N T, D)
        y = self.ln_f(u)                                                   # (N T, D)
        if self.tied:
            logits = matmul(y, transpose(self.tok.weight[:self.n_classes]))  # (N T, K)
        else:
            logits = self.head(y)                                          # (N T, K)
        return logits.reshape(n, t, self.n_classes)                        # (N, T, K)

    def attention(self, qkv, n: int, cache=None, pos: int = 0) -> Tensor:
        """Masked multi-head self-attention of n sequences: qkv (N T, 3D) = [q | k | v] ->
        (N T, D), the heads' outputs A v side by side (before W_proj)."""
        if cache is not None:
            return cached_attention(qkv, n, self.n_heads, cache, pos)   # sampling, against the KV cache
        if self.fused:
            return causal_self_attention(qkv, n, self.n_heads)         # the same as one node
        t = qkv.shape[0] // n if n else 1  # (an empty batch has no rows whatever T; 1 keeps the axes non-empty)
        h, d = self.n_heads, self.dim // self.n_heads
        xp = backend.array_module(qkv.data)
        q, k, v = split(qkv, 3, axis=1)                                     # (N T, D) each
        q, k, v = (z.reshape(n, t, h, d).transpose(0, 2, 1, 3) for z in (q, k, v))  # (N, h, T, d) each
        scores = matmul(q, k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(d))  # (N, h, T, T): q_t . k_s / sqrt(d)
        scores = scores + xp.triu(xp.full((t, t), -xp.inf, scores.dtype), k=1)  # (N, h, T, T): -inf where s > t
        a = softmax(scores, axis=-1)                                        # (N, h, T, T): each row sums to 1
        y = matmul(a, v)                                                    # (N, h, T, d)
        return y.transpose(0, 2, 1, 3).reshape(n * t, h * d)                # (N T, D): heads side by side

    def _with_bos(self, a):
        """ids (N, T) -> (N, T + 1) with BOS in front."""
        xp = backend.array_module(a)
        return xp.concatenate([xp.full((a.shape[0], 1), self.bos, a.dtype), a], axis=1)

    # ------------------------------------------------------------------ likelihood
    def distribution(self, a, y=None) -> Categorical:
        """p(x_t | x_<t) for every t: checked ids (N, T) -> Categorical over (N, T)."""
        return Categorical(self._logits(self.tok(self._with_bos(a[:, :-1]), check=False)))

    def input_features(self, ids) -> Tensor:
        """The token embeddings of the ids, as constant float features: (N, T) -> (N, T, D)."""
        with no_grad():
            return self.tok(ids)

    def forward_from_inputs(self, e) -> Tensor:
        """Token embeddings e (N, T, D) of x_0, ..., x_{T-1} -> logits (N, T, K) of
        p(x_t | x_<t): the BOS embedding goes in front and e[:, -1] is dropped, so
        logits[:, t] depends on e[:, :t] only."""
        e = e if isinstance(e, Tensor) else Tensor(e)
        xp = backend.xp()
        bos = self.tok(xp.full((e.shape[0], 1), self.bos, xp.int64), check=False)  # (N, 1, D)
        return self._logits(concatenate([bos, e[:, :-1]], axis=1))

    def _logits(self, e) -> Tensor:
        """The input embeddings e (N, T, D) of [BOS, x_0, ..., x_{T-2}] -> logits (N, T, K) of
        every x_t: the first `context` positions in one pass, and each later x_t as the last
        position of its window [BOS, x_{t-context+1}, ..., x_{t-1}]."""
        n, t, d = e.shape
        c = self.context
        if t <= c:
            return self.forward_embedded(e)
        first = self.forward_embedded(e[:, :c])                                   # (N, c, K)
        # the window of x_t' (t' >= c) is input positions 0 (BOS), t' - c + 2, ..., t'; the
        # windows are batched, but each is a full pass
        xp = backend.xp()
        rows = xp.arange(c, t)[:, None] + xp.arange(1 - c, 1)[None, :]           # (T - c, c)
        rows[:, 0] = 0
        win = getitem(e, (slice(None), rows), check=False).reshape(n * (t - c), c, d)  # (N (T - c), c, D)
        rest = self.forward_embedded(win)[:, -1]                                  # (N (T - c), K)
        return concatenate([first, rest.reshape(n, t - c, self.n_classes)], axis=1)  # (N, T, K)

    # ------------------------------------------------------------------ sampling
    def next_logits(self, prefix, y=None):
        """The logits (n, K) of x_t given prefix = x_<t (n, t): one pass over the window
        [BOS, x_{t-context+1}, ..., x_{t-1}] (all of x_<t while t < context)."""
        window = prefix[:, max(0, prefix.shape[1] - self.context + 1):]
        return self.forward(self._with_bos(window)).data[:, -1]

    def sample_fast(self, out, p: int, rng, temperature: float, top_k: int, y=None) -> None:
        """A KV cache while t < context: the prompt's positions in one pass, then one new
        position per step; past the context, the window as in `next_logits`."""
        n, length = out.shape
        c = self.context
        caches = [kv_cache(n, self.n_heads, c, self.dim // self.n_heads, self.tok.weight.dtype) for _ in self.blocks]
        if 0 < p < c:  # positions 0, ..., p - 1 (inputs BOS, x_0, ..., x_{p-2})
            self.forward(self._with_bos(out[:, :p - 1]), caches, pos=0)
        for t in range(p, length):
            if t < c:  # position t (input x_{t-1}, or BOS) against the cached keys and values
                ids = self._with_bos(out[:, :0]) if t == 0 else out[:, t - 1:t]
                logits = self.forward(ids, caches, pos=t).data[:, -1]
            else:
                logits = self.next_logits(out[:, :t])
            out[:, t] = sample_categorical(logits, rng, temperature, top_k)
