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

Shapes: x: (N, D) in {0, 1}; W, M: (D, D); b: (D,); logits: (N, D).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..distributions import Bernoulli
from ..nn import init_uniform
from ..tensor import Tensor, matmul, sigmoid_array
from .base import AutoregressiveModel, check_count


class FVSBN(AutoregressiveModel):
    """FVSBN(d): logistic-regression conditionals in the natural order 1..d.

    Parameters: `W` (d, d), lecture indexing W[i, j] = weight of x_j in conditional i, and `b`
    (d,), both U(-1/sqrt(d), 1/sqrt(d)) like a Linear layer of fan-in d. Buffer: `mask`
    (d, d), strictly lower triangular.
    """

    kind = "binary"

    def __init__(self, d: int):
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"FVSBN: d must be a positive integer, got {d!r}")
        self.d = int(d)
        self.event_shape = (self.d,)
        bound = 1.0 / math.sqrt(self.d)
        self.W = init_uniform((self.d, self.d), bound)
        self.b = init_uniform((self.d,), bound)
        # k=-1: the diagonal is excluded too, or x_i would predict itself and p would not sum to 1.
        mask = np.tril(np.ones((self.d, self.d)), k=-1).astype(backend.default_dtype())
        self.register_buffer("mask", backend.to_device(mask))

    def config(self) -> dict:
        return {"d": self.d}

    def logits(self, x) -> Tensor:
        """l_i = b_i + sum_{j<i} W_ij x_j for every i at once: (N, D) -> Tensor (N, D).

        `x` may be a Tensor that requires grad (the Jacobian test differentiates through it).
        """
        return self._logits(self._input(x))

    def _input(self, x) -> Tensor:
        """Checked data as a Tensor; a Tensor passes through (keeping its graph)."""
        a = self.check_data(x)
        return x if isinstance(x, Tensor) else Tensor(a, dtype=self.W.dtype)

    def _logits(self, xt: Tensor) -> Tensor:
        return matmul(xt, (self.W * self.mask).T) + self.b

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_i | x_<i) = x_i l_i - softplus(l_i): (N, D) -> Tensor (N, D)."""
        xt = self._input(x)
        return Bernoulli(self._logits(xt)).log_prob(xt.data)

    def sample(self, n: int, seed=None):
        """Ancestral sampling, pixel by pixel: (n, d) array of 0/1 in the model's dtype.

        Randomness: u ~ U[0, 1) of shape (n, d) is drawn once from `backend.make_rng(seed)`,
        and x_i = [u_i < sigmoid(l_i)], the same rule as `Bernoulli.sample`. Step i needs only
        x_<i, so its logit is the dot product with the first i entries of row i of W (the mask
        would zero the rest): O(n d^2) in total, on plain arrays, no graph.
        """
        n = check_count(n)
        xp = backend.xp()
        W, b = self.W.data * self.mask, self.b.data
        u = backend.make_rng(seed).random((n, self.d), dtype=W.dtype)
        x = xp.zeros((n, self.d), W.dtype)
        for i in range(self.d):
            logit = b[i] + (x[:, :i] @ W[i, :i] if i else 0)  # x_1 has no context: just b_1
            x[:, i] = u[:, i] < sigmoid_array(logit)
        return x
