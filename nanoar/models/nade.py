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
cumsum). x_D feeds no conditional, so its column of W is unused.

Class-conditional (n_labels > 0): the label y adds its class's bias in two places, to the
hidden pre-activation, a_1 = c + C[y] (so every a_i carries it), and to the output,
l_i = b_i + V_i . h_i + E[y]_i, with C: (n_labels, H) and E: (n_labels, D). The label is never
masked: every conditional sees it, and conditional i still sees only x_<i, for every y.

Sampling runs the same recurrence forward, one variable at a time: O(D H) per sample.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..distributions import Bernoulli
from ..kernels.nade import nade_logits
from ..nn import LabelBias, init_uniform
from ..tensor import concatenate, cumsum, sigmoid, sigmoid_array
from .base import AutoregressiveModel, check_n_labels


class NADE(AutoregressiveModel):
    """NADE(d, hidden, n_labels=0): binary data (N, d), `hidden` = H shared sigmoid units,
    class-conditional on a label y in [0, n_labels) when n_labels > 0.

    Parameters (names as in the paper): `W` (H, d), `c` (H,), `V` (d, H), `b` (d,); each
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan-in d for W, c and H for V, b. With labels,
    `C` and `E` (`LabelBias`, weights (n_labels, H) and (n_labels, d), zero at first): the
    class's hidden and output biases. Natural ordering 1..d.
    """

    kind = "binary"
    fused = True  # the likelihood pass as one node (nanoar/kernels/nade.py)

    def __init__(self, d: int, hidden: int, n_labels: int = 0):
        for name, v in (("d", d), ("hidden", hidden)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"NADE: {name} must be a positive integer, got {v!r}")
        self.d, self.hidden, self.n_labels = int(d), int(hidden), check_n_labels(n_labels, "NADE: ")
        self.event_shape = (self.d,)
        self.W = init_uniform((self.hidden, self.d), 1.0 / math.sqrt(self.d))
        self.c = init_uniform((self.hidden,), 1.0 / math.sqrt(self.d))
        self.V = init_uniform((self.d, self.hidden), 1.0 / math.sqrt(self.hidden))
        self.b = init_uniform((self.d,), 1.0 / math.sqrt(self.hidden))
        if self.n_labels:
            self.C = LabelBias(self.n_labels, self.hidden)  # (n_labels, H): row y = class y's hidden bias
            self.E = LabelBias(self.n_labels, self.d)       # (n_labels, D): row y = class y's output bias

    def config(self) -> dict:
        return {"d": self.d, "hidden": self.hidden, "n_labels": self.n_labels}

    def biases(self, y=None):
        """The hidden and output biases of each example: y None -> c (H,), b (D,); labels y
        (N,) -> c + C[y] (N, H), b + E[y] (N, D)."""
        if y is None:
            return self.c, self.b
        return self.c + self.C(y), self.b + self.E(y)         # (N, H), (N, D)

    def distribution(self, x, y=None) -> Bernoulli:
        """p(x_i = 1 | x_<i[, y]) = sigmoid(b_i + V_i . sigmoid(a_i) [+ E[y]_i]) for every i, the
        a_i (from a_1 = c [+ C[y]]) as one running sum over the variables. x: (N, D), y:
        checked labels (N,) or None."""
        c, b = self.biases(y)                                    # (H,), (D,); or (N, H), (N, D)
        if self.fused:
            return Bernoulli(nade_logits(x, self.W, c, self.V, b))
        n, H = x.shape[0], self.hidden
        xp = backend.array_module(x.data)
        first = c.reshape(-1, 1, H) + xp.zeros((n, 1, H), self.W.dtype)  # (N, 1, H): a_1 for each example
        steps = x[:, :-1, None] * self.W.T[:-1]                  # (N, D-1, H): W[:, j] x_j for j < D
        a = cumsum(concatenate([first, steps], axis=1), axis=1)  # (N, D, H): a_i = a_1 + sum_{j<i} W[:, j] x_j
        h = sigmoid(a)                                           # (N, D, H): h_i
        logits = (h * self.V).sum(axis=-1) + b                   # (N, D): l_i = b_i [+ E[y]_i] + V_i . h_i
        return Bernoulli(logits)

    def sample_fast(self, noise, y=None):
        """Ancestral sampling with the recurrence, on plain arrays: after drawing x_i the
        pre-activation is updated in place, a += W[:, i] x_i, so step i costs O(n H) and never
        revisits x_<i. x_i = [u_i < sigmoid(l_i)], the rule of `Bernoulli.draw`. With labels,
        each sample starts from its own a_1 = c + C[y] and adds its own b + E[y].
        noise: uniforms (n, D), y: checked labels (n,) or None -> x: (n, D)."""
        xp = backend.array_module(noise)
        n = noise.shape[0]
        Wt = xp.ascontiguousarray(self.W.data.T)         # (D, H): row i = W[:, i]
        c, b = (t.data for t in self.biases(y))          # (H,), (D,); or (n, H), (n, D)
        V = self.V.data                                  # (D, H)
        x = xp.zeros((n, self.d), Wt.dtype)              # (n, D)
        a = xp.empty((n, self.hidden), Wt.dtype)         # (n, H): a_1 = c [+ C[y]]
        a[...] = c
        h, step = xp.empty_like(a), xp.empty_like(a)     # (n, H) each
        for i in range(self.d):
            sigmoid_array(a, out=h)                      # (n, H): h_i
            logit = h @ V[i] + b[..., i]                 # (n,): l_i
            x[:, i] = noise[:, i] < sigmoid_array(logit)
            xp.multiply(x[:, i:i + 1], Wt[i], out=step)  # (n, H): W[:, i] x_i
            a += step                                    # a_{i+1}
        return x
