"""Masked multi-head self-attention as one autograd node, and its KV-cached form for
sampling (the textbook attention is `CharTransformer.attention` with `fused = False`:
split into heads, q k^T / sqrt(d), the causal mask, softmax, A v, heads merged, each a
Tensor op)."""
from __future__ import annotations

import math

from .. import backend
from ..tensor import Tensor, record_op


def split_heads(qkv, n: int, n_heads: int):
    """The fused projection qkv: (N T, 3D) array -> q, k, v: (N, h, T, d) views (no copy)."""
    # T = (N T) / N; an empty batch (N = 0) has no rows whatever T, and T = 1 keeps every axis non-empty
    t, d = qkv.shape[0] // n if n else 1, qkv.shape[1] // (3 * n_heads)
    a = qkv.reshape(n, t, 3, n_heads, d).transpose(2, 0, 3, 1, 4)
    return a[0], a[1], a[2]


def merge_heads(y):
    """y: (N, h, T, d) -> (N T, h d), each position's heads side by side."""
    n, h, t, d = y.shape
    return y.transpose(0, 2, 1, 3).reshape(n * t, h * d)


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
    """Masked multi-head self-attention of N sequences of T positions, as one node: the
    function the textbook path composes from split, matmul, the mask, softmax and reshapes.

    qkv: (N T, 3D) Tensor = [q | k | v] projections (rows: sequence-major positions)
    -> y: (N T, D), the heads' outputs A v side by side per position (before W_proj).
    Backward, per head, with A the attention weights and s = 1 / sqrt(d) (the chain rule
    through A v, the softmax and the scaled product):
    gv = A^T gy,  gA = gy v^T,  gS = A (gA - sum(gA A, -1)),  gq = s gS k,  gk = s gS^T q.
    """
    xp = backend.array_module(qkv.data)
    q, k, v = split_heads(qkv.data, n, n_heads)
    _, h, t, d = q.shape
    y, a = attention(q, k, v)                                     # (N, h, T, d), (N, h, T, T)

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
    return record_op(merge_heads(y), (qkv,), backward, "causal_self_attention")


def kv_cache(n: int, n_heads: int, context: int, head_dim: int, dtype) -> dict:
    """Room for the keys and values of `context` positions of n sequences: k, v (N, h, context, d)."""
    xp = backend.xp()
    return dict(k=xp.zeros((n, n_heads, context, head_dim), dtype), v=xp.zeros((n, n_heads, context, head_dim), dtype))


def cached_attention(qkv, n: int, n_heads: int, cache: dict, pos: int) -> Tensor:
    """`causal_self_attention` for the positions pos, ..., pos + T - 1 of N sequences whose
    earlier positions' keys and values are in `cache` (a `kv_cache`; sampling, no gradient).

    qkv: (N T, 3D) Tensor of the new positions -> y: (N T, D), the rows of the full pass at
    those positions: their keys and values are written into the cache, and their queries
    attend to the keys of positions 0, ..., pos + T - 1, the causal mask being the same.
    """
    q, k, v = split_heads(qkv.data, n, n_heads)
    end = pos + q.shape[2]
    cache["k"][:, :, pos:end] = k
    cache["v"][:, :, pos:end] = v
    y, _ = attention(q, cache["k"][:, :, :end], cache["v"][:, :, :end])
    return Tensor(merge_heads(y))
