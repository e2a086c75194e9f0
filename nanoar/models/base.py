"""The protocol every autoregressive model follows.

By the chain rule, any distribution over D variables factorises in a chosen ordering:

    log p(x) = sum_i log p(x_{o_i} | x_{o_1}, ..., x_{o_{i-1}})

A model maps data to the parameters of all D conditionals in ONE parallel pass (masks or
causal convolutions guarantee conditional i sees only the variables before it), so

- `log_prob_per_variable(x) -> Tensor (N, *event_shape)`: log p(x_i | x_<i) for every i;
- `log_prob(x) -> Tensor (N,)`: their sum, the exact log-likelihood in nats;
- `sample(n, seed=None) -> array (n, *event_shape)`: ancestral sampling, one variable at a
  time in `ordering`, each drawn from the same conditional that `log_prob` scores.

`ordering` is explicit: a flat array of variable indices (into the raveled event) in the
order they are generated. Data that the model cannot score (a 0.5 in binary data, a class
id out of range, the wrong shape) is refused by `check_data` with a clear error.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn import Module
from ..tensor import Tensor


class AutoregressiveModel(Module):
    """Base class. Subclasses set `event_shape`, `kind` ('binary', 'categorical' or 'real'),
    `n_classes` (categorical), `ordering`, and implement `log_prob_per_variable` and `sample`.
    """

    event_shape: tuple = ()
    kind: str = "binary"
    n_classes: int = 2
    # Sequence models (WaveNet, char LSTM/transformer) score any length: with this flag
    # `check_data` accepts (N, T) for every T >= 1, and `event_shape` is only the default
    # length (of `sample` and of the enumerating tests).
    variable_length: bool = False

    @property
    def ordering(self) -> np.ndarray:
        """Generation order of the flattened variables (natural raster order by default)."""
        return np.arange(int(np.prod(self.event_shape)))

    def config(self) -> dict:
        """The constructor arguments, JSON-able: `type(model)(**model.config())` rebuilds it."""
        raise NotImplementedError

    def check_data(self, x):
        """Validate `x` (array or Tensor of shape (N, *event_shape)) and return its array.

        Binary data must be exactly 0 or 1; categorical data integer ids in [0, n_classes);
        real data finite. Arrays must live on the current device (no implicit copies).
        """
        a = x.data if isinstance(x, Tensor) else x
        if not hasattr(a, "shape"):
            a = np.asarray(a)
            a = backend.to_device(a) if backend.get_device() != "cpu" else a
        backend.check_same_device(a, f"{type(self).__name__}: ")
        name = type(self).__name__
        if self.variable_length:
            if a.ndim != 2 or a.shape[1] < 1:
                raise ValueError(f"{name}: expected sequences of shape (N, T) with T >= 1, got {tuple(a.shape)}")
        elif a.ndim != 1 + len(self.event_shape) or tuple(a.shape[1:]) != tuple(self.event_shape):
            raise ValueError(f"{name}: expected data of shape (N, {', '.join(map(str, self.event_shape))}), got {tuple(a.shape)}")
        xp = backend.array_module(a)
        if self.kind == "binary":
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{name}: binary data must be numeric, got dtype {a.dtype}")
            if a.size and not bool(((a == 0) | (a == 1)).all()):
                bad = a[(a != 0) & (a != 1)].ravel()[:3]
                raise ValueError(f"{name}: binary data must contain only 0 and 1, found values such as {backend.to_numpy(bad).tolist()}")
        elif self.kind == "categorical":
            if a.dtype.kind == "f":
                if a.size and not bool((a == xp.round(a)).all()):
                    raise ValueError(f"{name}: class ids must be integers, got non-integer floats")
                a = a.astype(xp.int64)
            elif a.dtype.kind not in "iu":
                raise TypeError(f"{name}: class ids must be integers, got dtype {a.dtype}")
            lo, hi = backend.value_range(a) if a.size else (0, 0)
            if lo < 0 or hi >= self.n_classes:
                raise ValueError(f"{name}: class ids must lie in [0, {self.n_classes}), got range [{lo}, {hi}]")
        else:
            if a.dtype.kind not in "iuf":
                raise TypeError(f"{name}: real data must be numeric, got dtype {a.dtype}")
            if a.size and not bool(xp.isfinite(a).all()):
                raise ValueError(f"{name}: real data contains NaN or inf")
        return a

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_i | x_<i) for every variable: (N, *event_shape) -> Tensor (N, *event_shape)."""
        raise NotImplementedError

    def log_prob(self, x) -> Tensor:
        """Exact log-likelihood in nats: (N, *event_shape) -> Tensor (N,)."""
        lp = self.log_prob_per_variable(x)
        return lp.reshape(lp.shape[0], -1).sum(axis=1)

    def sample(self, n: int, seed=None, **options):
        """Exact ancestral samples: an array (n, *event_shape) on the current device."""
        raise NotImplementedError


def check_count(n) -> int:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of samples must be a positive integer, got {n!r}")
    return int(n)
