"""MADE: the masked autoencoder for distribution estimation (Germain et al., 2015).

Take an ordinary MLP x -> D outputs and delete connections until output i can only see
the inputs that come before variable i in a chosen ordering; then output i is a valid
conditional p(x_i | x_<i), and one forward pass gives all D of them. Connections are
deleted by multiplying each weight matrix with a fixed 0/1 mask (`nn.MaskedLinear`), built
from *degrees*:

    input unit i:   m(i) = position of variable i in the ordering, in 1..D
    hidden unit k:  m(k) drawn uniformly from [min of the previous layer's degrees, D - 1]
    hidden mask:    M[j, k] = 1  iff  m(k) >= m(j)     (unit k may see what unit j saw)
    output mask:    M[k, i] = 1  iff  m(i) >  m(k)     (strict: output i must not see x_i)

By induction a hidden unit of degree m depends only on inputs of degree <= m, so output i
depends only on inputs of degree < m(i): the variables before i. Hidden degrees stop at
D - 1 because a unit of degree D could feed no output. (Masks are stored (in, out), like
`nn.MaskedLinear`; degrees are drawn with `numpy.random.RandomState(seed)`, mask set by mask
set, first hidden layer first, so seed 0 with the natural ordering gives the masks of
`bench/torch_ref.py`.)

Order- and connectivity-agnostic training (num_masks = K > 1). K mask sets (and, with
ordering='random', K orderings) are fixed at construction; training uses one per step and
cycles through them (`next_mask()`), so the shared weights learn K autoregressive models
at once. As a density, the K models form the uniform MIXTURE

    p(x) = (1/K) sum_k p_k(x),    log p(x) = logsumexp_k log p_k(x) - log K,

which is exactly normalised because every p_k is. Averaging the K *logits* instead is not a
density: with different orderings, the averaged conditional of variable i sees variables that
come after i in some orderings, the product of the averaged conditionals is no longer a
chain-rule factorisation, and it does not sum to 1 over x (tests/test_made.py shows it).
(When all K masks share one ordering, averaged logits do give a normalised model, but a
different one from the ensemble that was trained; the mixture is the ensemble either way.)

So, for K > 1:
- `log_prob(x)` is the mixture log-likelihood (K forward passes): use it for evaluation;
- `training_loss(x)` moves to the next mask set and returns -log p_k(x) of that one set
  (`log_prob_mask(x, k)`), as in the paper;
- `distribution(x, k)` and `log_prob_per_variable(x, k)` are mask set k's conditionals; the
  latter needs k: a mixture has no single set of D conditionals;
- `sample(n)` picks k uniformly per sample and samples ancestrally in ordering k: that IS
  a sample from the mixture.

Shapes: x: (N, D); weights of layer l: (in, out); masks buffer `masks_l`: (K, in, out);
`degrees_l`: (K, units of layer l) with l = 0 the inputs; `orderings`: (K, D).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..distributions import Bernoulli, Gaussian
from ..kernels.made import sample_by_degree
from ..nn import MaskedLinear
from ..tensor import gelu, logsumexp, relu, sigmoid, stack, tanh
from .base import AutoregressiveModel, batch_mean

_ACTIVATIONS = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid, "gelu": gelu}


def made_degrees(d: int, hidden_sizes, num_masks: int = 1, ordering="natural", seed: int = 0):
    """Orderings (K, d) and degrees [inputs (K, d), hidden layer 1 (K, H_1), ...], int64.

    ordering: 'natural' (0..d-1 for every mask set), 'random' (a fresh permutation per mask
    set) or one explicit permutation (shared by every mask set; only degrees differ).
    """
    rng = np.random.RandomState(seed)
    orders, degrees = [], [[] for _ in range(len(hidden_sizes) + 1)]
    for _ in range(num_masks):
        if isinstance(ordering, str):
            order = rng.permutation(d) if ordering == "random" else np.arange(d)
        else:
            order = np.asarray(ordering)
        m = np.empty(d, np.int64)
        m[order] = np.arange(1, d + 1)  # the degree of an input is its 1-based position
        orders.append(order)
        degrees[0].append(m)
        for layer, size in enumerate(hidden_sizes, start=1):
            # min(., d - 1) only matters for d = 1, where no hidden unit can feed an output.
            m = rng.randint(min(m.min(), d - 1), d, size=size).astype(np.int64)
            degrees[layer].append(m)
    return np.array(orders, np.int64), [np.array(m, np.int64) for m in degrees]


def made_masks(degrees):
    """(K, in, out) 0/1 masks, hidden layers then output, from `made_degrees`'s degrees."""
    hidden = [(m_out[:, None, :] >= m_in[:, :, None]) for m_in, m_out in zip(degrees[:-1], degrees[1:])]
    output = degrees[0][:, None, :] > degrees[-1][:, :, None]
    return [m.astype(np.float64) for m in hidden + [output]]


class MADE(AutoregressiveModel):
    """MADE(d, hidden_sizes, num_masks=1, ordering='natural', seed=0, activation='relu').

    Binary data (N, d); Bernoulli head on the logits of the masked MLP
    d -> hidden_sizes[0] -> ... -> d. `ordering`: 'natural', 'random' or a permutation of
    range(d) (generation order: `ordering[0]` first). `seed` draws the orderings and degrees
    (weights come from the backend's host generator, as for every module). `activation`:
    'relu', 'tanh', 'sigmoid' or 'gelu'. hidden_sizes=[] is allowed (the output mask then
    acts on the inputs directly: an FVSBN in the given ordering).

    Parameters: `layers[l].weight` (in, out), `layers[l].bias`, `head.weight`, `head.bias`.
    Buffers: `orderings`, `degrees_0..L`, `masks_0..L` (see the module docstring). The layers
    are `MaskedLinear`s whose `mask` is pointed at mask set k before each forward.
    """

    kind = "binary"

    def __init__(self, d: int, hidden_sizes, num_masks: int = 1, ordering="natural", seed: int = 0,
                 activation: str = "relu"):
        name = type(self).__name__
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"{name}: d must be a positive integer, got {d!r}")
        hidden_sizes = [int(h) for h in hidden_sizes]
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"{name}: hidden sizes must be positive, got {hidden_sizes}")
        if not isinstance(num_masks, (int, np.integer)) or num_masks < 1:
            raise ValueError(f"{name}: num_masks must be a positive integer, got {num_masks!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if isinstance(ordering, str):
            if ordering not in ("natural", "random"):
                raise ValueError(f"{name}: ordering must be 'natural', 'random' or a permutation, got {ordering!r}")
        else:
            ordering = [int(i) for i in np.asarray(ordering).ravel()]
            if sorted(ordering) != list(range(d)):
                raise ValueError(f"{name}: ordering must be a permutation of range({d}), got {ordering}")
        self.d, self.hidden_sizes, self.num_masks = int(d), hidden_sizes, int(num_masks)
        self.seed, self.activation, self._ordering_arg = int(seed), activation, ordering
        self.event_shape = (self.d,)
        self.mask_index = 0

        sizes = [self.d, *hidden_sizes]
        self.layers = [MaskedLinear(i, o) for i, o in zip(sizes[:-1], sizes[1:])]
        self._make_heads(sizes[-1])
        orders, degrees = made_degrees(self.d, hidden_sizes, self.num_masks, ordering, self.seed)
        dtype = backend.default_dtype()
        self.register_buffer("orderings", backend.to_device(orders))
        for l, m in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", backend.to_device(m))
        for l, m in enumerate(made_masks(degrees)):
            self.register_buffer(f"masks_{l}", backend.to_device(m.astype(dtype)))

    def _make_heads(self, width: int) -> None:
        self.head = MaskedLinear(width, self.d)

    def _heads(self) -> list:
        return [self.head]

    def config(self) -> dict:
        return {"d": self.d, "hidden_sizes": list(self.hidden_sizes), "num_masks": self.num_masks,
                "ordering": self._ordering_arg, "seed": self.seed, "activation": self.activation}

    # ---------------------------------------------------------------- mask sets
    @property
    def ordering(self) -> np.ndarray:
        """Generation order of the current mask set (`mask_index`)."""
        return backend.to_numpy(self.orderings)[self.mask_index]

    @property
    def factorises(self) -> bool:
        return self.num_masks == 1

    def masks(self, k=None) -> list:
        """Host copies of the (in, out) masks of mask set k (default: the current one)."""
        k = self._mask_id(k)
        return [backend.to_numpy(getattr(self, f"masks_{l}"))[k] for l in range(len(self.layers) + 1)]

    def next_mask(self) -> int:
        """Switch to the next of the K mask sets (cyclically); returns its index. Training
        calls it once per step (a no-op for K = 1)."""
        self.mask_index = (self.mask_index + 1) % self.num_masks
        return self.mask_index

    def training_state(self) -> dict:
        """JSON state a resumed run needs beyond the arrays: where the mask cycle stands."""
        return {"mask_index": self.mask_index}

    def load_training_state(self, state: dict) -> None:
        self.mask_index = self._mask_id(state.get("mask_index", 0))

    def _mask_id(self, k) -> int:
        if k is None:
            return self.mask_index
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_masks:
            raise ValueError(f"{type(self).__name__}: mask index must be an integer in [0, {self.num_masks}), got {k!r}")
        return int(k)

    def _use_mask_set(self, k: int) -> None:
        """Point every layer's mask at mask set k (views of this model's buffers, looked up
        at forward time because `load_state_dict` replaces the buffers' arrays)."""
        for l, layer in enumerate(self.layers):
            layer.mask = getattr(self, f"masks_{l}")[k]
        for head in self._heads():
            head.mask = getattr(self, f"masks_{len(self.layers)}")[k]

    # ---------------------------------------------------------------- likelihood
    def hidden_units(self, x, k=None):
        """The masked MLP's last hidden layer under mask set k (default: the current one)."""
        self._use_mask_set(self._mask_id(k))
        act = _ACTIVATIONS[self.activation]
        h = x                        # (N, D)
        for layer in self.layers:
            h = act(layer(h))        # (N, H_l): act(h (W_l * M_l) + b_l)
        return h

    def distribution(self, x, y=None, k=None) -> Bernoulli:
        """The conditionals p_k(x_i | x_<i) of mask set k (default: the current one)."""
        h = self.hidden_units(x, k)     # (N, H_L)
        return Bernoulli(self.head(h))  # logits (N, D): h (W * M) + b

    def log_prob_per_variable(self, x, y=None, k=None):
        """log p_k(x_i | x_<i) under mask set k: (N, D) -> Tensor (N, D).

        With K > 1, k must be given: the mixture has no single set of D conditionals.
        """
        if k is None and self.num_masks > 1:
            raise ValueError(f"{type(self).__name__}: with num_masks={self.num_masks} the model is a mixture of "
                             f"{self.num_masks} autoregressive models and has no per-variable factorisation; "
                             "pass k=<mask index> for one mask set's conditionals, or use log_prob(x)")
        x = self.as_input(x)
        return self.distribution(x, k=k).log_prob(x)

    def log_prob_mask(self, x, k=None):
        """log p_k(x) of one mask set (default: the current one): (N, D) -> Tensor (N,)."""
        x = self.as_input(x)
        return self.distribution(x, k=k).log_prob(x).sum(axis=1)

    def log_prob(self, x, y=None, observed=None):
        """Exact log-likelihood: log p(x) = logsumexp_k log p_k(x) - log K: (N, D) -> (N,)."""
        if self.num_masks == 1:
            return super().log_prob(x, y, observed)
        x = self.as_input(x)
        per_mask = stack([self.distribution(x, k=k).log_prob(x).sum(axis=1) for k in range(self.num_masks)])  # (K, N)
        return logsumexp(per_mask, axis=0) - math.log(self.num_masks)  # (N,)

    def training_loss(self, x, state=None, y=None):
        """One step of order- and connectivity-agnostic training: the next mask set, and the
        mean of -log p_k(x) under it (for K = 1, the mean negative log-likelihood)."""
        self.next_mask()
        return -batch_mean(self.log_prob_mask(x)), state

    # ---------------------------------------------------------------- sampling
    def _sample(self, n: int, rng, method: str, y=None, given=None, observed=None):
        """For K > 1, samples of the mixture: first v ~ U[0, 1)^n picks mask set
        k = floor(K v) per sample, then the noise (n, D) is drawn and each mask set's
        samples are drawn ancestrally in its ordering by `method`."""
        if self.num_masks == 1:
            return super()._sample(n, rng, method, y, given, observed)
        which = np.minimum((backend.to_numpy(rng.random(n)) * self.num_masks).astype(np.int64), self.num_masks - 1)
        noise = self.sample_noise(rng, n)
        x = backend.xp().empty((n, self.d), self.dtype)
        current = self.mask_index
        try:
            for k in range(self.num_masks):
                rows = np.flatnonzero(which == k)
                if rows.size:
                    self.mask_index = k
                    rows = backend.to_device(rows)
                    x[rows] = self.sample_naive(noise[rows]) if method == "naive" else self.sample_fast(noise[rows])
        finally:
            self.mask_index = current
        return x

    def sample_fast(self, noise, y=None):
        """The samples of `sample_naive(noise)` under the current mask set, each hidden unit
        computed once, in degree order (`kernels.made.sample_by_degree`)."""
        k = self.mask_index
        self._use_mask_set(k)
        degrees = [backend.to_numpy(getattr(self, f"degrees_{l}"))[k] for l in range(1, len(self.layers) + 1)]
        return sample_by_degree(self._draw_noise(noise), self.ordering, self.layers, degrees, self._heads(),
                                self.activation, self._draw)

    @staticmethod
    def _draw_noise(u):
        """The uniforms as `_draw` compares them: u < sigmoid(l) is the event logit(u) < l, so
        the noise is transformed once and no step needs a sigmoid (u = 0 gives -inf: always 1,
        as u < sigmoid(l))."""
        xp = backend.array_module(u)
        with np.errstate(divide="ignore"):
            return xp.log(u) - xp.log1p(-u)

    @staticmethod
    def _draw(outs, t):
        """x_i from the head's output for variable i: [u_i < sigmoid(l_i)], the rule of
        `Bernoulli.draw`, as [logit(u_i) < l_i]."""
        (logits,) = outs
        return t < logits


class GaussianMADE(MADE):
    """GaussianMADE(d, hidden_sizes, num_masks=1, ordering='natural', seed=0, activation='relu').

    Real data (N, d): the same masked MLP with two heads sharing the output mask,

        p(x_i | x_<i) = N(x_i; mu_i(x_<i), exp(log_std_i(x_<i))^2),

    so log p(x) = sum_i [-(x_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2]. With
    linear conditional means and constant log_std this is exactly a full-covariance Gaussian
    (the Cholesky factorisation of its precision), so correlated Gaussian data is a natural
    test. Parameters as in MADE, with `mean_head` and `log_std_head` instead of `head`.
    """

    kind = "real"

    def _make_heads(self, width: int) -> None:
        self.mean_head = MaskedLinear(width, self.d)
        self.log_std_head = MaskedLinear(width, self.d)

    def _heads(self) -> list:
        return [self.mean_head, self.log_std_head]

    def distribution(self, x, y=None, k=None) -> Gaussian:
        """The conditionals N(mu_i, sigma_i^2) of mask set k (default: the current one)."""
        h = self.hidden_units(x, k)                              # (N, H_L)
        return Gaussian(self.mean_head(h), self.log_std_head(h))  # mean, log_std: (N, D) each

    @staticmethod
    def _draw_noise(z):
        return z

    @staticmethod
    def _draw(outs, z):
        """x_i from the heads' outputs for variable i: mu_i + exp(log_std_i) z_i, the rule of
        `Gaussian.draw`."""
        mean, log_std = outs
        return mean + backend.array_module(z).exp(log_std) * z
