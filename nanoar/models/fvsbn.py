"""FVSBN: the fully visible sigmoid belief network, the lecture's first autoregressive model.

Each conditional is a logistic regression on the variables before it:

    p(x_i = 1 | x_<i) = sigmoid(b_i + sum_{j < i} W_ij x_j),        i = 1..D

so the whole model is one (D, D) weight matrix that is *strictly lower triangular* (row i
holds the coefficients of conditional i, and only columns j < i may be non-zero) plus a bias.
The D(D-1)/2 + D parameters grow quadratically in D; there is no hidden layer, so no
conditional can be more than a linear function of its context (NADE and MADE fix that).

All D logits come out of ONE masked matrix product, l = x (W * M)^T + b with M the strictly
lower-triangular 0/1 mask: the mask, not a loop, is what makes conditional i blind to
x_i, ..., x_D. Entries of W above the diagonal exist but never matter and get zero gradient.

Class-conditional (n_labels = C > 0): every conditional also gets its class's bias, a row of
B: (C, D), l = x (W * M)^T + b + B[y]. The label is never masked: all D conditionals see it,
and conditional i still sees only x_<i, for every y.

Shapes: x: (N, D) in {0, 1}; y: (N,) in [0, C); W, M: (D, D); b: (D,); B: (C, D); logits: (N, D).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..distributions import Bernoulli
from ..nn import LabelBias, init_uniform
from ..tensor import matmul, sigmoid_array
from .base import AutoregressiveModel, check_n_labels


class FVSBN(AutoregressiveModel):
    """FVSBN(d, n_labels=0): logistic-regression conditionals in the natural order 1..d,
    class-conditional on a label y in [0, n_labels) when n_labels > 0.

    Parameters: `W` (d, d), lecture indexing W[i, j] = weight of x_j in conditional i, and `b`
    (d,), both U(-1/sqrt(d), 1/sqrt(d)) like a Linear layer of fan-in d; with labels, `B`
    (`LabelBias`, weight (n_labels, d), zero at first). Buffer: `mask` (d, d), strictly lower
    triangular.
    """

    kind = "binary"

    def __init__(self, d: int, n_labels: int = 0):
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"FVSBN: d must be a positive integer, got {d!r}")
        self.d, self.n_labels = int(d), check_n_labels(n_labels, "FVSBN: ")
        self.event_shape = (self.d,)
        bound = 1.0 / math.sqrt(self.d)
        self.W = init_uniform((self.d, self.d), bound)
        self.b = init_uniform((self.d,), bound)
        # k=-1: the diagonal is excluded too, or x_i would predict itself and p would not sum to 1.
        mask = np.tril(np.ones((self.d, self.d)), k=-1).astype(backend.default_dtype())
        self.register_buffer("mask", backend.to_device(mask))
        if self.n_labels:
            self.B = LabelBias(self.n_labels, self.d)      # (C, D): row y = the bias of class y

    def config(self) -> dict:
        return {"d": self.d, "n_labels": self.n_labels}

    def distribution(self, x, y=None) -> Bernoulli:
        """p(x_i = 1 | x_<i[, y]) = sigmoid(l_i), l_i = b_i + sum_{j<i} W_ij x_j [+ B[y]_i], for
        every i at once. x: (N, D), y: checked labels (N,) or None."""
        logits = matmul(x, (self.W * self.mask).T) + self.b  # (N, D) @ (D, D) + (D,) -> (N, D)
        if y is not None:
            logits = logits + self.B(y)                      # (N, D) + (N, D): the label, unmasked
        return Bernoulli(logits)

    def sample_fast(self, noise, y=None):
        """Ancestral sampling on plain arrays: step i needs only x_<i, so its logit is the dot
        product of x_<i with the first i entries of row i of W (the mask would zero the rest),
        O(n D^2) in all instead of D full passes. x_i = [u_i < sigmoid(l_i)], the rule of
        `Bernoulli.draw`. With labels, each sample's bias is b + B[y].
        noise: uniforms (n, D), y: checked labels (n,) or None -> x: (n, D)."""
        xp = backend.array_module(noise)
        n = noise.shape[0]
        W, b = self.W.data, self.b.data                              # (D, D), (D,)
        if y is not None:
            b = b + self.B(y).data                                   # (n, D): b + B[y] per sample
        x = xp.zeros((n, self.d), W.dtype)                           # (n, D)
        for i in range(self.d):
            logit = b[..., i] + (x[:, :i] @ W[i, :i] if i else 0)    # (n,); x_1 has no context: b_1
            x[:, i] = noise[:, i] < sigmoid_array(logit)
        return x
