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

Speed: the positions of all sequences are the rows of one (N T, D) matrix, so every Linear
is a single 2-D product; attention (split into heads, masked softmax, A v, heads merged) is
one autograd node, `causal_self_attention`, with its own backward.

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
from ..nn import Embedding, LayerNorm, Linear, Module, Parameter, init_normal
from ..tensor import Tensor, record_op, concatenate, gelu, matmul, no_grad, transpose
from .base import SequenceModel, check_count


def split_heads(qkv, n: int, n_heads: int):
    """The fused projection qkv: (N T, 3D) array -> q, k, v: (N, h, T, d) views (no copy)."""
    t, d = qkv.shape[0] // n, qkv.shape[1] // (3 * n_heads)
    a = qkv.reshape(n, t, 3, n_heads, d).transpose(2, 0, 3, 1, 4)
    return a[0], a[1], a[2]


def attention(q, k, v):
    """softmax(q k^T / sqrt(d) + M) v on arrays, with the causal mask M_{ts} = -inf for s > t.

    q: (..., Tq, d), k, v: (..., Tk, d) with Tq <= Tk: query i sits at position Tk - Tq + i
    (the last Tq positions), so Tq = Tk is a full pass and Tq = 1 one new step against a KV
    cache. -> y: (..., Tq, d), and the attention weights A: (..., Tq, Tk).
    """
    xp = backend.array_module(q)
    tq, tk = q.shape[-2], k.shape[-2]
    a = q @ k.swapaxes(-1, -2)
    a *= 1.0 / math.sqrt(q.shape[-1])
    if tk > 1:  # -inf on the keys after each query: they get weight exp(-inf) = 0
        a += xp.triu(xp.full((tq, tk), -xp.inf, a.dtype), k=tk - tq + 1)
    a -= a.max(axis=-1, keepdims=True)
    xp.exp(a, out=a)
    a /= a.sum(axis=-1, keepdims=True)
    return a @ v, a


def causal_self_attention(qkv, n: int, n_heads: int) -> Tensor:
    """Masked multi-head self-attention of N sequences of T positions, as one node.

    qkv: (N T, 3D) = [q | k | v] projections (rows: sequence-major positions)
    -> y: (N T, D), the heads' outputs A v concatenated per position (before W_proj).
    Backward, per head, with A the attention weights and s = 1 / sqrt(d):
    gv = A^T gy,  gA = gy v^T,  gS = A (gA - sum(gA A, -1)),  gq = s gS k,  gk = s gS^T q.
    """
    xp = backend.array_module(qkv.data)
    q, k, v = split_heads(qkv.data, n, n_heads)
    _, h, t, d = q.shape
    y, a = attention(q, k, v)                                     # (N, h, T, d), (N, h, T, T)
    y = y.transpose(0, 2, 1, 3).reshape(n * t, h * d)

    def backward(gy):
        gy = gy.reshape(n, t, h, d).transpose(0, 2, 1, 3)         # (N, h, T, d)
        g = xp.empty((n, t, 3, h, d), gy.dtype)
        gq, gk, gv = g.transpose(2, 0, 3, 1, 4)                   # views into g
        gv[...] = a.swapaxes(-1, -2) @ gy
        ga = gy @ v.swapaxes(-1, -2)
        ga -= (ga * a).sum(axis=-1, keepdims=True)
        ga *= a
        ga *= 1.0 / math.sqrt(d)
        gq[...] = ga @ k
        gk[...] = ga.swapaxes(-1, -2) @ q
        return (g.reshape(n * t, 3 * h * d),)
    return record_op(y, (qkv,), backward, "causal_self_attention")


class Block(Module):
    """Pre-LayerNorm transformer block: u + Attn(LN1(u)), then + MLP(LN2(u)).

    u: (N T, D), the positions of N sequences as rows: every Linear is one 2-D product.
    """

    def __init__(self, dim: int, n_heads: int, bias: bool, resid_std: float):
        self.n_heads = n_heads
        self.ln1, self.ln2 = LayerNorm(dim), LayerNorm(dim)
        self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.proj = Linear(dim, dim, bias=bias)
        self.fc = Linear(dim, 4 * dim, bias=bias)
        self.fc2 = Linear(4 * dim, dim, bias=bias)
        for lin, std in ((self.qkv, 0.02), (self.proj, resid_std), (self.fc, 0.02), (self.fc2, resid_std)):
            lin.weight = init_normal(lin.weight.shape, std)
            if lin.bias is not None:
                lin.bias = Parameter(backend.xp().zeros(lin.bias.shape, backend.default_dtype()))

    def forward(self, u, n: int, cache=None, pos: int = 0):
        """u: (N T, D) -> (N T, D) for N sequences. With `cache` (a dict of preallocated key
        and value arrays (N, h, context, d); no gradient), the T rows of each sequence are
        positions pos, ..., pos + T - 1: their keys and values are written into the cache and
        the queries attend to positions 0, ..., pos + T - 1."""
        qkv = self.qkv(self.ln1(u))
        if cache is None:
            att = causal_self_attention(qkv, n, self.n_heads)
        else:
            q, k, v = split_heads(qkv.data, n, self.n_heads)
            end = pos + q.shape[2]
            cache["k"][:, :, pos:end] = k
            cache["v"][:, :, pos:end] = v
            y, _ = attention(q, cache["k"][:, :, :end], cache["v"][:, :, :end])
            att = Tensor(y.transpose(0, 2, 1, 3).reshape(u.shape))
        u = u + self.proj(att)
        return u + self.fc2(gelu(self.fc(self.ln2(u))))


class CharTransformer(SequenceModel):
    """GPT-style transformer over ids in [0, n_classes), exact with a BOS start token.

    context: positions (the longest exactly-scored sequence); n_layers, n_heads, dim: size
    (dim divisible by n_heads); bias: biases in the Linear layers; tied: output head = token
    embedding^T (default False: a separate head). seq_len: default length of `sample` and
    `event_shape` (default: context); scoring accepts any T (sliding window past context).
    """

    kind = "categorical"
    variable_length = True

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
        self.blocks = [Block(dim, n_heads, self.bias, resid_std) for _ in range(n_layers)]
        self.ln_f = LayerNorm(dim)
        self.head = None
        if not tied:
            self.head = Linear(dim, n_classes, bias=self.bias)
            self.head.weight = init_normal(self.head.weight.shape, 0.02)
            if self.bias:
                self.head.bias = Parameter(backend.xp().zeros(n_classes, backend.default_dtype()))

    @property
    def event_shape(self) -> tuple:
        return (self.seq_len,)

    @property
    def bos(self) -> int:
        """The start token id (= n_classes), input position 0."""
        return self.n_classes

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, context=self.context, n_layers=self.n_layers, n_heads=self.n_heads,
                    dim=self.dim, bias=self.bias, tied=self.tied, seq_len=self.seq_len)

    # ------------------------------------------------------------------ the network
    def _logits_from_embeddings(self, e, caches=None, pos: int = 0) -> Tensor:
        """Token embeddings e (N, T, D) at positions pos, ... -> logits (N, T, K)."""
        n, t, d = e.shape
        u = (e + self.pos.weight[pos:pos + t]).reshape(n * t, d)  # rows: 2-D products below
        for l, block in enumerate(self.blocks):
            u = block(u, n, None if caches is None else caches[l], pos)
        y = self.ln_f(u)
        if self.tied:
            logits = matmul(y, transpose(self.tok.weight[:self.n_classes]))
        else:
            logits = self.head(y)
        return logits.reshape(n, t, self.n_classes)

    def window_logits(self, ids, check: bool = True) -> Tensor:
        """Input ids (N, T <= context), position 0 first (BOS or a window's BOS) -> (N, T, K).
        check=False: the ids are already checked (skips a GPU sync)."""
        return self._logits_from_embeddings(self.tok(ids, check))

    def _with_bos(self, a):
        xp = backend.array_module(a)
        return xp.concatenate([xp.full((a.shape[0], 1), self.bos, a.dtype), a], axis=1)

    def logits(self, x) -> Tensor:
        """ids (N, T) -> logits (N, T, K) of p(x_t | x_<t) (sliding window past context)."""
        return self._logits(self.check_data(x))

    def _logits(self, a) -> Tensor:
        """`logits` of checked ids a."""
        n, t = a.shape
        c = self.context
        first = self.window_logits(self._with_bos(a[:, :min(t, c) - 1]), check=False)
        if t <= c:
            return first
        xp = backend.array_module(a)
        # windows for t' = c, ..., T - 1: [BOS, x_{t'-c+1}, ..., x_{t'-1}]; the last position's
        # output is the conditional of x_{t'}. Windows are batched, but each is a full pass.
        starts = xp.arange(1, t - c + 1)[:, None] + xp.arange(c - 1)[None, :]     # (T - c, c - 1)
        win = a[:, starts].reshape(-1, c - 1)                                        # (N (T - c), c - 1)
        rest = self.window_logits(self._with_bos(win), check=False)[:, -1].reshape(n, t - c, -1)
        return concatenate([first, rest], axis=1)

    def forward_from_inputs(self, e) -> Tensor:
        """Float token embeddings e (N, T <= context, D) of x_0, ..., x_{T-1} -> logits
        (N, T, K); the BOS embedding goes in front and e[:, -1] is dropped, so logits[:, t]
        depends on e[:, :t] only (the differentiable entry point for Jacobian checks)."""
        e = e if isinstance(e, Tensor) else Tensor(e)
        n = e.shape[0]
        xp = backend.xp()
        bos = self.tok(xp.full((n, 1), self.bos, xp.int64), check=False)
        return self._logits_from_embeddings(concatenate([bos, e[:, :-1]], axis=1))

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_t | x_<t): ids (N, T) -> Tensor (N, T)."""
        a = self.check_data(x)
        return Categorical(self._logits(a)).log_prob(a, check=False)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed=None, length: int | None = None, temperature: float = 1.0,
               top_k: int = 0, prompt=None, method: str = "fast"):
        """Ancestral samples: int64 ids (n, length), the prompt ((P,) or (n, P)) first.
        method: 'fast' (KV cache, O(T) per step) or 'naive' (full window recompute)."""
        n = check_count(n)
        length = self.seq_len if length is None else int(length)
        if method not in ("fast", "naive"):
            raise ValueError(f"CharTransformer.sample: method must be 'fast' or 'naive', got {method!r}")
        out, p = self._start(n, length, prompt)
        rng = backend.make_rng(seed)
        xp, c = backend.xp(), self.context
        d = self.dim // self.n_heads
        dt = self.tok.weight.dtype
        caches = [dict(k=xp.zeros((n, self.n_heads, c, d), dt), v=xp.zeros((n, self.n_heads, c, d), dt))
                  for _ in self.blocks]
        with no_grad():
            start = 0
            if method == "fast" and p > 1:
                # the prompt's positions 0, ..., m - 1 (inputs BOS, x_0, ..., x_{m-2}) in one pass
                start = min(p, c)
                self._logits_from_embeddings(self.tok(self._with_bos(out[:, :start - 1]), check=False), caches, pos=0)
            for t in range(start, length):
                if t < p and (method == "naive" or t >= c):
                    continue  # a prompt id: nothing to draw, and no cache to fill
                if method == "fast" and t < c:
                    # one new position t (input x_{t-1}, or BOS) against the cached keys/values
                    ids = xp.full((n, 1), self.bos, xp.int64) if t == 0 else out[:, t - 1:t]
                    logits = self._logits_from_embeddings(self.tok(ids, check=False), caches, pos=t).data[:, -1]
                else:
                    # the whole window: BOS and the last min(t, context - 1) ids
                    logits = self.window_logits(self._with_bos(out[:, max(0, t - c + 1):t]), check=False).data[:, -1]
                if t >= p:
                    out[:, t] = sample_categorical(logits, rng, temperature, top_k)
        return out
