"""NADE's likelihood pass as one autograd node (the textbook pass is `NADE.distribution`
with `fused = False`)."""
from __future__ import annotations

from .. import backend
from ..tensor import Tensor, is_grad_enabled, record_op, sigmoid_array


def _running_sum(xp, a, reverse: bool = False):
    """In place along axis 0: a[k] <- a[0] + ... + a[k] (reverse: a[k] + ... + a[-1]).

    On the CPU a loop of whole-slice adds (NumPy's cumsum along a leading axis is slower);
    on the GPU, where every call is a kernel launch, one cumsum.
    """
    if backend.prefers_few_calls():
        a[...] = xp.flip(xp.cumsum(xp.flip(a, axis=0), axis=0), axis=0) if reverse else xp.cumsum(a, axis=0)
        return a
    order = range(len(a) - 2, -1, -1) if reverse else range(1, len(a))
    step = 1 if reverse else -1
    for k in order:
        a[k] += a[k + step]
    return a


def nade_logits(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, block: int | None = None) -> Tensor:
    """NADE's logits: x (N, D) -> l (N, D), with W (H, D), c (H,) or (N, H), V (D, H), b (D,)
    or (N, D) (per-example biases: a class-conditional NADE passes c + C[y] and b + E[y]):

        a_i = c + sum_{j<i} W[:, j] x_j,   h_i = sigmoid(a_i),   l_i = b_i + V_i . h_i,

    the function `NADE.distribution` composes from `cumsum`, `sigmoid`, `mul` and `sum` when
    `fused` is False. It is the same running sum, taken `block` variables at a time with the
    running value a carried from one block to the next, so each step works on one
    (block, N, H) slab; of the (N, D, H) intermediates only h is kept, and only when a
    backward will follow.

    Backward, with g_i = dL/dl_i V_i h_i (1 - h_i) and G_i = sum_{k>=i} g_k (a reversed
    running sum, carried from block to block): dL/dc = G_1 per example (summed over n for a
    shared c), dL/db = dL/dl (likewise), dL/dW[:, j] = sum_n x_j G_{j+1},
    dL/dx_j = W[:, j] . G_{j+1}, dL/dV_i = sum_n dL/dl_i h_i.
    """
    xp = backend.array_module(W.data)
    xd, wt, vd = x.data, W.data.T, V.data  # wt[j] = W[:, j]
    n, d = xd.shape
    hidden = W.shape[0]
    if block is None:  # on the CPU, blocks of about 1 MB (block, N, H); on the GPU all of D
        block = d if backend.prefers_few_calls() else max(1, min(d, (1 << 18) // max(1, n * hidden)))
    bounds = [(lo, min(lo + block, d)) for lo in range(0, d, block)]
    xt = xp.ascontiguousarray(xd.T)  # (D, N): row j = x_j for the batch
    # h_i for every i, variable-major, kept for the backward; without one (evaluation) a
    # single block's slab is reused, so memory does not grow with D
    keep = is_grad_enabled() and any(t.requires_grad for t in (x, W, c, V, b))
    h = xp.empty((d if keep else block, n, hidden), W.dtype)
    logits = xp.empty((d, n), W.dtype)
    start = xp.broadcast_to(c.data, (n, hidden))  # (N, H): a at the block's first variable (a_1 = c)
    for lo, hi in bounds:
        a = h[lo:hi] if keep else h[:hi - lo]                                   # (B, N, H)
        a[0] = start
        xp.multiply(xt[lo:hi - 1, :, None], wt[lo:hi - 1, None, :], out=a[1:])  # W[:, j] x_j
        _running_sum(xp, a)                                                      # a_i
        start = a[-1] + xt[hi - 1, :, None] * wt[hi - 1]                        # a_hi
        sigmoid_array(a, out=a)                                                 # h_i
        logits[lo:hi] = xp.matmul(a, vd[lo:hi, :, None])[:, :, 0]              # V_i . h_i
    logits = logits.T + b.data  # (N, D) + (D,) or (N, D)

    def backward(gl):
        glt = xp.ascontiguousarray(gl.T)  # (D, N)
        gw, gv = xp.empty((d, hidden), W.dtype), xp.empty_like(vd)  # gw[j] = dL/dW[:, j]
        gx = xp.empty((d, n), W.dtype) if x.requires_grad else None
        later = xp.zeros((n, hidden), W.dtype)  # G_hi: nothing comes after the last variable
        for lo, hi in reversed(bounds):
            hb = h[lo:hi]
            gv[lo:hi] = xp.matmul(glt[lo:hi, None, :], hb)[:, 0, :]
            G = 1.0 - hb
            G *= hb
            G *= vd[lo:hi, None, :]
            G *= glt[lo:hi, :, None]  # g_i
            G[-1] += later
            _running_sum(xp, G, reverse=True)  # G_i for i in [lo, hi)
            # x_j feeds G_{j+1}: G[1:] inside the block, G_hi (`later`) for its last variable
            gw[lo:hi - 1] = xp.matmul(xt[lo:hi - 1, None, :], G[1:])[:, 0, :]
            gw[hi - 1] = xt[hi - 1] @ later
            if gx is not None:
                gx[lo:hi - 1] = xp.matmul(G[1:], wt[lo:hi - 1, :, None])[:, :, 0]
                gx[hi - 1] = later @ wt[hi - 1]
            later = G[0]
        gc = later if c.ndim == 2 else later.sum(axis=0)  # G_1: (N, H), or summed for a shared c
        gb = gl if b.ndim == 2 else gl.sum(axis=0)        # (N, D), or summed for a shared b
        return (None if gx is None else gx.T, gw.T, gc, gv, gb)
    return record_op(xp.ascontiguousarray(logits), (x, W, c, V, b), backward, "nade_logits")
