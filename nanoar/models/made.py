"""MADE: the masked autoencoder for distribution estimation (Germain et al., 2015).

Take an ordinary MLP x -> D outputs and delete connections until output i can only see
the inputs that come before variable i in a chosen ordering; then output i is a valid
conditional p(x_i | x_<i), and one forward pass gives all D of them. Connections are
deleted by multiplying each weight matrix with a fixed 0/1 mask, built from *degrees*:

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
- `log_prob_mask(x, k)` is log p_k(x) of one mask set (default: the current one): use it
  as the training loss, with `next_mask()` once per step;
- `log_prob_per_variable(x)` needs k: a mixture has no single set of D conditionals;
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
from ..nn import Linear
from ..tensor import Tensor, gelu, logsumexp, matmul, no_grad, relu, sigmoid, stack, tanh
from .base import AutoregressiveModel, check_count

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
    Buffers: `orderings`, `degrees_0..L`, `masks_0..L` (see the module docstring).
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
        self.layers = [Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:])]
        self._make_heads(sizes[-1])
        orders, degrees = made_degrees(self.d, hidden_sizes, self.num_masks, ordering, self.seed)
        dtype = backend.default_dtype()
        self.register_buffer("orderings", backend.to_device(orders))
        for l, m in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", backend.to_device(m))
        for l, m in enumerate(made_masks(degrees)):
            self.register_buffer(f"masks_{l}", backend.to_device(m.astype(dtype)))

    # ---------------------------------------------------------------- heads (GaussianMADE overrides)
    def _make_heads(self, width: int) -> None:
        self.head = Linear(width, self.d)

    def _heads(self) -> list:
        return [self.head]

    def _log_prob_terms(self, outs, a) -> Tensor:
        """log p(x_i | x_<i) from the head outputs: Bernoulli on the logits."""
        return Bernoulli(outs[0]).log_prob(a)

    def _noise(self, rng, shape, dtype):
        return rng.random(shape, dtype=dtype)

    def _prepare_noise(self, u):
        """u < sigmoid(l) is the event logit(u) < l: transform the noise once, so that no step
        needs a sigmoid. u = 0 gives -inf (always 1), exactly as u < sigmoid(l) does."""
        xp = backend.array_module(u)
        with np.errstate(divide="ignore"):
            return xp.log(u) - xp.log1p(-u)

    def _draw(self, outs, noise):
        """x_i from the head outputs for variable i and its prepared noise: [logit(u) < l]."""
        return noise < outs[0]

    # ---------------------------------------------------------------- masks
    def config(self) -> dict:
        return {"d": self.d, "hidden_sizes": list(self.hidden_sizes), "num_masks": self.num_masks,
                "ordering": self._ordering_arg, "seed": self.seed, "activation": self.activation}

    @property
    def ordering(self) -> np.ndarray:
        """Generation order of the current mask set (`mask_index`)."""
        return backend.to_numpy(self.orderings)[self.mask_index]

    def masks(self, k=None) -> list:
        """Host copies of the (in, out) masks of mask set k (default: the current one)."""
        k = self._mask_id(k)
        return [backend.to_numpy(getattr(self, f"masks_{l}"))[k] for l in range(len(self.layers) + 1)]

    def next_mask(self) -> int:
        """Switch to the next of the K mask sets (cyclically); returns its index. The training
        loop calls it once per step (a no-op for K = 1)."""
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

    # ---------------------------------------------------------------- likelihood
    def _input(self, x) -> Tensor:
        """Checked data as a Tensor; a Tensor passes through (keeping its graph)."""
        a = self.check_data(x)
        return x if isinstance(x, Tensor) else Tensor(a, dtype=self.head_dtype)

    @property
    def head_dtype(self):
        return self._heads()[0].weight.dtype

    def _outputs(self, xt: Tensor, k: int) -> list:
        """The masked MLP under mask set k: (N, D) -> one (N, D) Tensor per head."""
        act = _ACTIVATIONS[self.activation]
        h = xt
        for l, layer in enumerate(self.layers):
            h = act(matmul(h, layer.weight * getattr(self, f"masks_{l}")[k]) + layer.bias)
        out_mask = getattr(self, f"masks_{len(self.layers)}")[k]
        return [matmul(h, head.weight * out_mask) + head.bias for head in self._heads()]

    def log_prob_per_variable(self, x, k=None) -> Tensor:
        """log p_k(x_i | x_<i) under mask set k: (N, D) -> Tensor (N, D).

        With K > 1, k must be given: the mixture has no single set of D conditionals.
        """
        if k is None and self.num_masks > 1:
            raise ValueError(f"{type(self).__name__}: with num_masks={self.num_masks} the model is a mixture of "
                             f"{self.num_masks} autoregressive models and has no per-variable factorisation; "
                             "pass k=<mask index> for one mask set's conditionals, or use log_prob(x)")
        xt = self._input(x)
        return self._log_prob_terms(self._outputs(xt, self._mask_id(k)), xt.data)

    def log_prob_mask(self, x, k=None) -> Tensor:
        """log p_k(x) of one mask set (default: the current one): (N, D) -> Tensor (N,).
        The training loss for K > 1; equal to `log_prob` for K = 1."""
        xt = self._input(x)
        return self._log_prob_terms(self._outputs(xt, self._mask_id(k)), xt.data).sum(axis=1)

    def log_prob(self, x) -> Tensor:
        """Exact log-likelihood: log p(x) = logsumexp_k log p_k(x) - log K: (N, D) -> (N,)."""
        xt = self._input(x)
        per_mask = [self._log_prob_terms(self._outputs(xt, k), xt.data).sum(axis=1) for k in range(self.num_masks)]
        if self.num_masks == 1:
            return per_mask[0]
        return logsumexp(stack(per_mask, axis=0), axis=0) - math.log(self.num_masks)

    def logits(self, x, k=None) -> Tensor:
        """The logits of p_k(x_i = 1 | x_<i) for every i: (N, D) -> Tensor (N, D)."""
        return self._outputs(self._input(x), self._mask_id(k))[0]

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, seed=None):
        """Exact ancestral samples from the model (the mixture for K > 1): (n, d) array.

        Randomness, from `backend.make_rng(seed)`: for K > 1 first v ~ U[0, 1)^n picks mask set
        k = floor(K v) per sample; then one noise array (n, d) indexed by variable (u ~ U[0, 1)
        and x_i = [u_i < p_i] for binary data, evaluated as [logit(u_i) < l_i]; z ~ N(0, 1) and
        x_i = mu_i + sigma_i z_i for real data). Sampling is sequential in each mask set's
        ordering and batched over that set's samples (see `_sample_mask`), on plain arrays.
        """
        n = check_count(n)
        xp = backend.xp()
        rng = backend.make_rng(seed)
        dtype = self.head_dtype
        which = None
        if self.num_masks > 1:
            which = np.minimum((backend.to_numpy(rng.random(n)) * self.num_masks).astype(np.int64), self.num_masks - 1)
        noise = self._noise(rng, (n, self.d), dtype)
        if which is None:
            return self._sample_mask(0, noise)
        x = xp.empty((n, self.d), dtype)
        for k in range(self.num_masks):
            rows = np.flatnonzero(which == k)
            if rows.size:
                rows = backend.to_device(rows)
                x[rows] = self._sample_mask(k, noise[rows])
        return x

    def _sample_mask(self, k: int, noise):
        """Ancestral sampling under mask set k, computing every hidden unit exactly once.

        A hidden unit of degree g depends only on the variables at positions 1..g of the
        ordering, so it is final as soon as those are sampled. Sort each layer's units by
        degree: at step p (drawing the variable at position p + 1, p = 0..D-1) the units of
        degree p become computable, and they form one contiguous block per layer. The whole
        loop therefore costs about one forward pass plus O(D) small array calls, instead of
        the D full forward passes of the naive sampler. Work in position space (column p =
        variable ordering[p]); the masked, permuted weights are computed once per call.
        noise: (m, D) by variable -> x: (m, D) by variable.
        """
        xp = backend.array_module(noise)
        order = backend.to_numpy(self.orderings)[k]
        m = noise.shape[0]
        act_fn = _ACTIVATIONS[self.activation]

        def act(v):  # in place on a fresh array; the Tensor op itself where it is not trivial
            if self.activation == "relu":
                return xp.maximum(v, 0, out=v)
            if self.activation == "tanh":
                return xp.tanh(v, out=v)
            return act_fn(Tensor(v, dtype=v.dtype)).data

        with no_grad():
            rows = order  # the previous layer's units, in sampling order
            weights, biases, ends = [], [], []
            for l, layer in enumerate(self.layers):
                deg = backend.to_numpy(getattr(self, f"degrees_{l + 1}"))[k]
                perm = np.argsort(deg, kind="stable")
                w = layer.weight.data * getattr(self, f"masks_{l}")[k]
                weights.append(w[backend.to_device(rows)][:, backend.to_device(perm)])
                biases.append(layer.bias.data[backend.to_device(perm)])
                ends.append(np.searchsorted(deg[perm], np.arange(self.d), side="right"))  # units of degree <= g
                rows = perm
            out_mask = getattr(self, f"masks_{len(self.layers)}")[k]
            rows_d, order_d = backend.to_device(rows), backend.to_device(order)
            heads = [(xp.ascontiguousarray((h.weight.data * out_mask)[rows_d][:, order_d].T), h.bias.data[order_d])
                     for h in self._heads()]  # row p: output weights of the variable at position p
            z = self._prepare_noise(noise[:, order_d])
            x = xp.zeros((m, self.d), noise.dtype)
            hs = [xp.zeros((m, size), x.dtype) for size in self.hidden_sizes]
            for p in range(self.d):
                prev, cut = x, p  # inputs of degree <= p: positions 0..p-1, all sampled
                for l in range(len(self.layers)):
                    s, e = (ends[l][p - 1] if p else 0), ends[l][p]
                    if e > s:  # (a product over an empty prefix is left out: only the bias)
                        hs[l][:, s:e] = act(biases[l][s:e] + (prev[:, :cut] @ weights[l][:cut, s:e] if cut else 0))
                    prev, cut = hs[l], e
                outs = [b[p] + (prev[:, :cut] @ wt[p, :cut] if cut else 0) for wt, b in heads]
                x[:, p] = self._draw(outs, z[:, p])
        inverse = np.empty(self.d, np.int64)
        inverse[order] = np.arange(self.d)
        return x[:, backend.to_device(inverse)]


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
        self.mean_head = Linear(width, self.d)
        self.log_std_head = Linear(width, self.d)

    def _heads(self) -> list:
        return [self.mean_head, self.log_std_head]

    def _log_prob_terms(self, outs, a) -> Tensor:
        mean, log_std = outs
        return Gaussian(mean, log_std).log_prob(Tensor(a, dtype=mean.dtype))

    def _noise(self, rng, shape, dtype):
        return rng.standard_normal(shape, dtype=dtype)

    def _prepare_noise(self, z):
        return z

    def _draw(self, outs, noise):
        mean, log_std = outs
        return mean + backend.array_module(noise).exp(log_std) * noise

    def logits(self, x, k=None):
        raise TypeError("GaussianMADE has no logits; use params(x, k) -> (mean, log_std)")

    def params(self, x, k=None):
        """(mean, log_std) of p_k(x_i | x_<i) for every i: two Tensors (N, D)."""
        mean, log_std = self._outputs(self._input(x), self._mask_id(k))
        return mean, log_std
