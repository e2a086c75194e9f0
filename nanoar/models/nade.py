"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray, 2011).

FVSBN gives every conditional its own logistic regression. NADE puts a hidden layer in
between and *shares* its input weights across the conditionals:

    h_i = sigmoid(a_i),   a_i = c + W[:, <i] x_<i = c + sum_{j<i} W[:, j] x_j     (H,)
    p(x_i = 1 | x_<i) = sigmoid(b_i + V_i . h_i)

with W: (H, D), c: (H,), V: (D, H), b: (D,). Conditional i uses the first i-1 columns of
the same W, which is what makes NADE cheap: the pre-activations obey the recurrence

    a_1 = c,   a_{i+1} = a_i + W[:, i] x_i,

so all D hidden vectors cost O(D H) per example instead of the O(D^2 H) of D separate
networks. The parameter count is 2DH + D + H, linear in D.

Likelihood in one parallel pass: the recurrence is a running (cumulative) sum along the
variable axis. Stack the terms [c, W[:, 1] x_1, ..., W[:, D-1] x_{D-1}] into an (N, D, H)
array; its cumsum along axis 1 is (a_1, ..., a_D). That is O(N D H) time and memory with
no Python loop over i, and differentiable through `cumsum` (whose backward is a reversed
cumsum). The alternative, one masked (D, D) matmul per hidden unit, is O(N D^2 H): the
running sum is the point of NADE. x_D feeds no conditional, so its column of W is unused.

Sampling runs the same recurrence forward, one variable at a time: O(D H) per sample.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..distributions import Bernoulli
from ..nn import init_uniform
from ..tensor import Tensor, concatenate, cumsum, is_grad_enabled, record_op, sigmoid_array
from .base import AutoregressiveModel, check_count


def _running_sum(xp, a, reverse: bool = False):
    """In place along axis 0: a[k] <- a[0] + ... + a[k] (reverse: a[k] + ... + a[-1]).

    On the CPU a loop of whole-slice adds: NumPy's cumsum along a leading axis is about 15x
    slower (measured on (16, 100, 500) float32). On the GPU one cumsum is one launch.
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
    """The whole NADE pass as one autograd node: x (N, D) -> logits (N, D).

    a_i = c + sum_{j<i} W[:, j] x_j,  h_i = sigmoid(a_i),  l_i = b_i + V_i . h_i.

    The same function as composing `cumsum`, `sigmoid`, `mul` and `sum` (as `pre_activations`
    does; tests/test_nade.py checks values and every gradient), computed `block` variables
    at a time so that each step of the pipeline (products, running sum, sigmoid, the V_i
    products; in the backward, h (1 - h) V g and the reversed running sum) works on a block
    that is still in cache, instead of streaming whole (N, D, H) arrays (157 MB each at
    MNIST size, H = 500, batch 100) through memory a dozen times. Only h (D, N, H) is kept,
    for the backward, and only when there will be one. On the GPU, where array calls cost more than memory traffic, the
    default block is all of D.

    Backward, with g_i = dL/dl_i V_i h_i (1 - h_i) and G_i = sum_{k>=i} g_k (a reversed
    running sum, carried from block to block): dL/dc = sum_n G_1,
    dL/dW[:, j] = sum_n x_j G_{j+1}, dL/dx_j = W[:, j] . G_{j+1}, dL/dV_i = sum_n dL/dl_i h_i.
    """
    xp = backend.array_module(W.data)
    xd, wt, vd = x.data, W.data.T, V.data  # wt[j] = W[:, j]
    n, d = xd.shape
    hidden = W.shape[0]
    if block is None:  # about 1 MB per (block, N, H) slab on the CPU: it stays in cache
        block = d if backend.prefers_few_calls() else max(1, min(d, (1 << 18) // max(1, n * hidden)))
    bounds = [(lo, min(lo + block, d)) for lo in range(0, d, block)]
    xt = xp.ascontiguousarray(xd.T)  # (D, N): row j = x_j for the batch
    # h_i for every i, variable-major, kept for the backward; without one (evaluation) a
    # single block's slab is reused, so memory does not grow with D
    keep = is_grad_enabled() and any(t.requires_grad for t in (x, W, c, V, b))
    h = xp.empty((d if keep else block, n, hidden), W.dtype)
    logits = xp.empty((d, n), W.dtype)
    start = xp.broadcast_to(c.data, (n, hidden))  # a at the block's first variable
    for lo, hi in bounds:
        a = h[lo:hi] if keep else h[:hi - lo]
        a[0] = start
        xp.multiply(xt[lo:hi - 1, :, None], wt[lo:hi - 1, None, :], out=a[1:])
        _running_sum(xp, a)
        start = a[-1] + xt[hi - 1, :, None] * wt[hi - 1]  # a_hi
        sigmoid_array(a, out=a)
        logits[lo:hi] = xp.matmul(a, vd[lo:hi, :, None])[:, :, 0]  # l_i = V_i . h_i
    logits = logits.T + b.data

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
        return (None if gx is None else gx.T, gw.T, later.sum(axis=0), gv, gl.sum(axis=0))
    return record_op(xp.ascontiguousarray(logits), (x, W, c, V, b), backward, "nade_logits")


class NADE(AutoregressiveModel):
    """NADE(d, hidden): binary data (N, d), `hidden` = H shared sigmoid units.

    Parameters (names as in the paper): `W` (H, d), `c` (H,), `V` (d, H), `b` (d,); each
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan-in d for W, c and H for V, b.
    Natural ordering 1..d.
    """

    kind = "binary"

    def __init__(self, d: int, hidden: int):
        for name, v in (("d", d), ("hidden", hidden)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"NADE: {name} must be a positive integer, got {v!r}")
        self.d, self.hidden = int(d), int(hidden)
        self.event_shape = (self.d,)
        self.W = init_uniform((self.hidden, self.d), 1.0 / math.sqrt(self.d))
        self.c = init_uniform((self.hidden,), 1.0 / math.sqrt(self.d))
        self.V = init_uniform((self.d, self.hidden), 1.0 / math.sqrt(self.hidden))
        self.b = init_uniform((self.d,), 1.0 / math.sqrt(self.hidden))

    def config(self) -> dict:
        return {"d": self.d, "hidden": self.hidden}

    def _input(self, x) -> Tensor:
        """Checked data as a Tensor; a Tensor passes through (keeping its graph)."""
        a = self.check_data(x)
        return x if isinstance(x, Tensor) else Tensor(a, dtype=self.W.dtype)

    def pre_activations(self, x) -> Tensor:
        """a_i = c + sum_{j<i} W[:, j] x_j for every i: (N, D) -> Tensor (N, D, H).

        The exclusive running sum written as an inclusive one: cumsum over i of the terms
        [c, W[:, 1] x_1, ..., W[:, D-1] x_{D-1}] (term i+1 is what step i adds to a).
        """
        xt = self._input(x)
        return self._pre_activations(xt)

    def _pre_activations(self, xt: Tensor) -> Tensor:
        n = xt.shape[0]
        xp = backend.array_module(xt.data)
        steps = xt[:, :-1, None] * self.W.T[:-1]                       # (N, D-1, H): W[:, j] x_j
        first = self.c.reshape(1, 1, self.hidden) + xp.zeros((n, 1, self.hidden), self.W.dtype)  # c, per example
        return cumsum(concatenate([first, steps], axis=1), axis=1)  # (N, D, H)

    def logits(self, x) -> Tensor:
        """l_i = b_i + V_i . sigmoid(a_i): (N, D) -> Tensor (N, D)."""
        return self._logits(self._input(x))

    def _logits(self, xt: Tensor) -> Tensor:
        return nade_logits(xt, self.W, self.c, self.V, self.b)

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_i | x_<i) = x_i l_i - softplus(l_i): (N, D) -> Tensor (N, D)."""
        xt = self._input(x)
        return Bernoulli(self._logits(xt)).log_prob(xt.data)

    def sample(self, n: int, seed=None):
        """Ancestral sampling with the incremental recurrence: (n, d) array of 0/1.

        Randomness: u ~ U[0, 1) of shape (n, d) is drawn once from `backend.make_rng(seed)`,
        and x_i = [u_i < p(x_i = 1 | x_<i)], the rule of `Bernoulli.sample`. After drawing
        x_i the hidden pre-activation is updated in place, a += W[:, i] x_i, so step i costs
        O(n H) and never revisits x_<i: O(n d H) in all, on plain arrays (no graph), with the
        state a, its update and x preallocated.
        """
        n = check_count(n)
        xp = backend.xp()
        Wt = xp.ascontiguousarray(self.W.data.T)  # row i = W[:, i], the update of step i
        V, b, c = self.V.data, self.b.data, self.c.data
        u = backend.make_rng(seed).random((n, self.d), dtype=Wt.dtype)
        x = xp.zeros((n, self.d), Wt.dtype)
        a = xp.empty((n, self.hidden), Wt.dtype)
        a[...] = c
        h, step = xp.empty_like(a), xp.empty_like(a)
        for i in range(self.d):
            # h = sigmoid(a) in place, as 0.5 tanh(a / 2) + 0.5: no allocation per step
            xp.multiply(a, 0.5, out=h)
            xp.tanh(h, out=h)
            h *= 0.5
            h += 0.5
            logit = h @ V[i] + b[i]
            x[:, i] = u[:, i] < sigmoid_array(logit)
            xp.multiply(x[:, i:i + 1], Wt[i], out=step)
            a += step
        return x
