"""Heads: the distribution of one variable given the network's output.

Exactness lives here, so only stable formulas are used: log-sigmoid for Bernoulli,
log-softmax for Categorical. `log_prob` returns an elementwise Tensor (the model sums it
over variables); `draw(noise)` turns given noise into values (so two samplers fed the same
noise draw the same values) and `sample(rng)` draws that noise itself.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor, bernoulli_log_prob, gather, log_softmax, sigmoid_array, softmax


class Bernoulli:
    """p(x = 1) = sigmoid(logits).  logits: (...) ; x in {0, 1}: (...)."""

    def __init__(self, logits: Tensor):
        self.logits = logits

    @property
    def probs(self):
        return sigmoid_array(self.logits.data)

    def log_prob(self, x) -> Tensor:
        """log p(x) = x l - softplus(l), exact at |l| = 1e4."""
        return bernoulli_log_prob(self.logits, x.data if isinstance(x, Tensor) else x)

    def draw(self, u):
        """0/1 array in the logits' dtype from uniforms u ~ U[0, 1) of the same shape:
        x = [u < sigmoid(l)], which is 1 with probability sigmoid(l)."""
        p = self.probs
        return (u < p).astype(p.dtype)

    def sample(self, rng=None):
        rng = backend.make_rng() if rng is None else rng
        return self.draw(rng.random(self.logits.shape, dtype=self.logits.dtype))


class Categorical:
    """p(x = k) = softmax(logits)_k along `axis`.  logits: (..., K, ...) ; x: int (...)."""

    def __init__(self, logits: Tensor, axis: int = -1):
        self.logits, self.axis = logits, axis

    @property
    def probs(self):
        return softmax(self.logits, self.axis).data

    def log_prob(self, x, check: bool = True) -> Tensor:
        """log p(x) = log_softmax(logits)[x], the class picked along `axis`. check=False
        skips the range check of x (already checked: it costs a GPU sync)."""
        x = x.data if isinstance(x, Tensor) else x
        xp = backend.array_module(self.logits.data)
        idx = xp.expand_dims(x, self.axis)
        lp = gather(log_softmax(self.logits, self.axis), idx, self.axis, check)
        return lp.reshape(x.shape)

    def sample(self, rng=None, temperature: float = 1.0, top_k: int = 0):
        """int64 class ids (...): inverse-CDF draws from softmax(logits / T), optionally
        restricted to the k most likely classes (top_k=0: all)."""
        rng = backend.make_rng() if rng is None else rng
        return sample_categorical(self.logits.data, rng, temperature, top_k, self.axis)


def check_temperature(temperature, where: str = "") -> float:
    """A sampling temperature as a float: a finite number > 0 (1.0 samples the model's own
    conditionals), else ValueError naming `temperature`. Bools and strings are refused."""
    if (isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, (int, float, np.integer, np.floating))
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"{where}temperature must be a finite number > 0 (1.0: the model's own conditionals), "
                         f"got {temperature!r}")
    return float(temperature)


def check_top_k(top_k, where: str = "") -> int:
    """top_k as an int: a non-negative integer (0: every class), numpy integers too, else
    ValueError naming `top_k`. Bools, floats and strings are refused."""
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"{where}top_k must be a non-negative integer (0: sample among all classes), got {top_k!r}")
    return int(top_k)


def sample_categorical(logits, rng, temperature: float = 1.0, top_k: int = 0, axis: int = -1):
    """Draw class ids from softmax(logits / temperature) along `axis` (array in, array out).

    temperature: a finite number > 0; top_k: a non-negative integer, the number of most
    likely classes kept (0, or K or more: all). Both are checked (`check_temperature`,
    `check_top_k`) before any array work.
    """
    temperature, top_k = check_temperature(temperature), check_top_k(top_k)
    xp = backend.array_module(logits)
    if axis not in (-1, logits.ndim - 1):  # (moveaxis costs more than the rest at batch 1)
        logits = xp.moveaxis(logits, axis, -1)
    z = logits - logits.max(axis=-1, keepdims=True)  # <= 0, the most likely class at 0
    if temperature != 1.0:
        # z / temperature, as a product by 1 / temperature kept finite and non-zero in z's
        # dtype: a tiny temperature then gives (near-)greedy draws, never 0 * inf = NaN
        info = np.finfo(z.dtype if z.dtype.kind == "f" else np.float64)
        with np.errstate(over="ignore"):  # (a far-from-greedy class may reach -inf: weight 0)
            z = z * min(max(1.0 / temperature, float(info.tiny)), float(info.max))
    k = z.shape[-1]
    if top_k and top_k < k:
        kth = xp.sort(z, axis=-1)[..., -top_k][..., None]
        z = xp.where(z < kth, -xp.inf, z)
    p = xp.exp(z)
    cdf = xp.cumsum(p, axis=-1)
    u = rng.random(z.shape[:-1] + (1,), dtype=cdf.dtype) * cdf[..., -1:]
    # the first class whose cumulative mass exceeds u; min() guards the last-class rounding
    ids = (cdf <= u).sum(axis=-1)
    return xp.minimum(ids, k - 1).astype(xp.int64)


class Gaussian:
    """Diagonal normal N(mean, exp(log_std)^2), elementwise.  mean, log_std: (...)."""

    _HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

    def __init__(self, mean: Tensor, log_std: Tensor):
        self.mean, self.log_std = mean, log_std

    def log_prob(self, x) -> Tensor:
        """log N(x; mu, sigma^2) = -(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        z = (x - self.mean) * (-self.log_std).exp()
        return z * z * -0.5 - self.log_std - self._HALF_LOG_2PI

    def draw(self, z):
        """Values from standard normal noise z of the same shape: x = mean + exp(log_std) z."""
        mu = self.mean.data
        return mu + backend.array_module(mu).exp(self.log_std.data) * z

    def sample(self, rng=None):
        rng = backend.make_rng() if rng is None else rng
        return self.draw(rng.standard_normal(self.mean.shape, dtype=self.mean.dtype))
