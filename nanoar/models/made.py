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

Class-conditional MADE (n_labels = C > 0). The label y adds a learned per-class bias
(`nn.LabelBias`) to every hidden layer's pre-activation and to the output head(s):

    h_l = act(h_{l-1} (W_l * M_l) + b_l + B_l[y]),    outputs = h_L (W * M) + b + B[y].

The label is never masked: every unit sees it, and output i still sees only x_<i, so
p(x | y) = prod_i p(x_i | x_<i, y) is normalised for every y.

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
- `distribution(x, y, k)` and `log_prob_per_variable(x, y, k)` are mask set k's
  conditionals; the latter needs k: a mixture has no single set of D conditionals;
- `sample(n)` picks k uniformly per sample and samples ancestrally in ordering k: that IS
  a sample from the mixture.

Masks resampled every step (`resample_masks=True`; the paper's section 3.4, and the
order-agnostic NADE of Uria et al.). Each `next_mask()` moves to the next of the K sets AND
redraws it: a fresh ordering (with ordering='random'; 'natural' or an explicit permutation
keep theirs) and fresh hidden degrees, from `RandomState([seed, draws so far])`, so a
resumed run (`training_state`) draws what the uninterrupted one would have. The buffers
hold the K sets drawn last (a checkpoint keeps them), and `log_prob` stays the exact
mixture over those K sets. Trained so with random orderings, the weights are trained on
the conditionals of every ordering, which is what makes the completion of ANY observed set
meaningful (see `MADE`'s docstring, "Completion"). A unit whose inputs change from step to
step cannot tell an absent input from an input equal to 0, so with resampled masks every
layer is also fed its mask (`MaskedLinear(mask_input=True)`: + 1 (U * M)), as order-
agnostic NADE (Uria et al.) feeds the network its mask.

Shapes: x: (N, D); weights of layer l: (in, out); masks buffer `masks_l`: (K, in, out);
`degrees_l`: (K, units of layer l) with l = 0 the inputs; `orderings`: (K, D).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import backend
from ..distributions import Bernoulli, Gaussian
from ..kernels.made import sample_by_degree
from ..nn import LabelBias, MaskedLinear
from ..tensor import Tensor, concatenate, gelu, logsumexp, relu, sigmoid, stack, tanh, where
from .base import AutoregressiveModel, batch_mean, check_n_labels

_ACTIVATIONS = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid, "gelu": gelu}


def draw_mask_set(d: int, hidden_sizes, ordering, rng):
    """One mask set's ordering (d,) and degrees [inputs (d,), hidden layer 1 (H_1,), ...],
    int64, drawn from rng (a `numpy.random.RandomState`): the permutation first (ordering
    'random'; 'natural' is 0..d-1, an explicit permutation is itself), then each hidden
    layer's degrees."""
    if isinstance(ordering, str):
        order = rng.permutation(d) if ordering == "random" else np.arange(d)
    else:
        order = np.asarray(ordering)
    m = np.empty(d, np.int64)
    m[order] = np.arange(1, d + 1)  # the degree of an input is its 1-based position
    degrees = [m]
    for size in hidden_sizes:
        # min(., d - 1) only matters for d = 1, where no hidden unit can feed an output.
        m = rng.randint(min(m.min(), d - 1), d, size=size).astype(np.int64)
        degrees.append(m)
    return order.astype(np.int64), degrees


def made_degrees(d: int, hidden_sizes, num_masks: int = 1, ordering="natural", seed: int = 0):
    """Orderings (K, d) and degrees [inputs (K, d), hidden layer 1 (K, H_1), ...], int64:
    K = num_masks sets drawn one after another from `RandomState(seed)` (`draw_mask_set`).

    ordering: 'natural' (0..d-1 for every mask set), 'random' (a fresh permutation per mask
    set) or one explicit permutation (shared by every mask set; only degrees differ).
    """
    rng = np.random.RandomState(seed)
    sets = [draw_mask_set(d, hidden_sizes, ordering, rng) for _ in range(num_masks)]
    orders = np.array([order for order, _ in sets], np.int64)
    return orders, [np.array([degrees[l] for _, degrees in sets], np.int64) for l in range(len(hidden_sizes) + 1)]


def made_masks(degrees):
    """0/1 masks (..., in, out), hidden layers then output, from degrees [(..., D), (..., H_1),
    ...] (one mask set's, or K sets' with a leading axis K, as `made_degrees` gives them)."""
    hidden = [(m_out[..., None, :] >= m_in[..., :, None]) for m_in, m_out in zip(degrees[:-1], degrees[1:])]
    output = degrees[0][..., None, :] > degrees[-1][..., :, None]
    return [m.astype(np.float64) for m in hidden + [output]]


def completion_ordering(observed, seed: int) -> np.ndarray:
    """The ordering an order-agnostic MADE completes `observed` ((D,) bools) in: the observed
    variables in a random order, then the hidden ones in a random order, both from
    `RandomState(seed)`. A uniformly random ordering (what training draws) that puts the
    observed set first is exactly this; listing each group by index instead gives structured
    orderings that the training never showed the network."""
    observed = np.asarray(observed, bool)
    rng = np.random.RandomState(seed)
    first = rng.permutation(np.flatnonzero(observed))
    return np.concatenate([first, rng.permutation(np.flatnonzero(~observed))]).astype(np.int64)


class MaskSet(NamedTuple):
    """One autoregressive model of MADE's shared weights: what the samplers need of it."""

    ordering: np.ndarray  # (D,) host ints: the generation order
    degrees: list         # [(D,), (H_1,), ..., (H_L,)] host ints: the degrees of every layer's units
    masks: list           # [(D, H_1), ..., (H_L, D)] device arrays in the parameters' dtype


class MADE(AutoregressiveModel):
    """MADE(d, hidden_sizes, num_masks=1, ordering='natural', seed=0, activation='relu',
    n_labels=0, resample_masks=False).

    Binary data (N, d); Bernoulli head on the logits of the masked MLP
    d -> hidden_sizes[0] -> ... -> d. `ordering`: 'natural', 'random' or a permutation of
    range(d) (generation order: `ordering[0]` first). `seed` draws the orderings and degrees
    (weights come from the backend's host generator, as for every module). `activation`:
    'relu', 'tanh', 'sigmoid' or 'gelu'. hidden_sizes=[] is allowed (the output mask then
    acts on the inputs directly: an FVSBN in the given ordering). `n_labels` = C > 0: class-
    conditional on y in [0, C). `resample_masks`: redraw the mask set at every training step
    (see the module docstring); with ordering='random' the model is *order-agnostic*.

    Parameters: `layers[l].weight` (in, out), `layers[l].bias`, `head.weight`, `head.bias`;
    with labels, `layer_labels[l].weight` (C, H_l) and `head_labels[0].weight` (C, d)
    (`LabelBias`, zero at first). Buffers: `orderings`, `degrees_0..L`, `masks_0..L` (see
    the module docstring). The layers are `MaskedLinear`s whose `mask` is pointed at mask
    set k before each forward.

    Completion (`sample(n, given=, observed=)`, `log_prob(x, observed=)`), with labels y or
    without; which distribution is sampled and scored depends on the model:

    a. K = 1, not order-agnostic: the observed set must come first in the ordering (else a
       ValueError). Scored: log p(x_U | x_O) = sum over the hidden variables i of
       log p(x_i | x_<i), the model's own conditionals; sampled: ancestrally in the
       ordering, the observed values kept. Both exact.
    b. K > 1, not order-agnostic: the observed set must come first in EVERY mask set's
       ordering (else a ValueError). Scored: the mixture's exact conditional,
       log p(x_U | x_O) = logsumexp_k log p_k(x) - logsumexp_k log p_k(x_O), with
       log p_k(x_O) the sum of set k's conditionals over the observed prefix; sampled: k per
       sample from the posterior p_k(x_O) / sum_j p_j(x_O) (v ~ U[0, 1) by inverse CDF),
       then set k's conditional, ancestrally in ordering k. Both exact for the mixture that
       `log_prob(x)` scores.
    c. Order-agnostic (resample_masks=True with ordering='random'): ANY observed set. Each
       row uses ONE autoregressive model of the shared weights, the ordering o that lists
       the observed variables and then the hidden ones, each group in a random order
       (`completion_ordering`: an ordering as training draws them, given that the observed
       set comes first), with hidden degrees drawn from `RandomState(seed)`
       (`completion_mask_set`); o depends only on the observed set and the seed. Scored,
       log p_o(x_U | x_O) = sum over the hidden i of log p_o(x_i | x_<i); sampled,
       ancestrally in o, the observed values kept. Both exact for that one ordering's
       model p_o, which is NOT the mixture that `log_prob(x)` scores (its conditional
       differs from p_o's); rows with the same observed set share one pass.
    A MADE that is not order-agnostic refuses an observed set that does not come first in
    its orderings (ValueError), since its conditionals of the other orderings are untrained.
    Real data (`GaussianMADE`) follows the same cases; its samplers take the observed values
    (x_i = given_i where observed) instead of forced noise.
    """

    kind = "binary"

    def __init__(self, d: int, hidden_sizes, num_masks: int = 1, ordering="natural", seed: int = 0,
                 activation: str = "relu", n_labels: int = 0, resample_masks: bool = False):
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
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or not 0 <= seed < 2**32:
            raise ValueError(f"{name}: seed must be an integer in [0, 2**32), got {seed!r}")
        if not isinstance(resample_masks, (bool, np.bool_)):
            raise ValueError(f"{name}: resample_masks must be True or False, got {resample_masks!r}")
        self.d, self.hidden_sizes, self.num_masks = int(d), hidden_sizes, int(num_masks)
        self.seed, self.activation, self._ordering_arg = int(seed), activation, ordering
        self.n_labels, self.resample_masks = check_n_labels(n_labels, f"{name}: "), bool(resample_masks)
        self.event_shape = (self.d,)
        self.mask_index = 0   # the current mask set
        self.mask_draws = 0   # how many sets `next_mask` has redrawn (resample_masks)

        sizes = [self.d, *hidden_sizes]
        # Resampled masks: every layer is also fed its mask (`MaskedLinear(mask_input=True)`).
        self.layers = [MaskedLinear(i, o, mask_input=self.resample_masks) for i, o in zip(sizes[:-1], sizes[1:])]
        self._make_heads(sizes[-1])
        # The label's biases (zero at first): one (C, H_l) per hidden layer, one (C, d) per head.
        self.layer_labels = [LabelBias(self.n_labels, h) for h in hidden_sizes] if self.n_labels else []
        self.head_labels = [LabelBias(self.n_labels, self.d) for _ in self._heads()] if self.n_labels else []
        orders, degrees = made_degrees(self.d, hidden_sizes, self.num_masks, ordering, self.seed)
        dtype = backend.default_dtype()
        self.register_buffer("orderings", backend.to_device(orders))
        for l, m in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", backend.to_device(m))
        for l, m in enumerate(made_masks(degrees)):
            self.register_buffer(f"masks_{l}", backend.to_device(m.astype(dtype)))

    def _make_heads(self, width: int) -> None:
        self.head = MaskedLinear(width, self.d, mask_input=self.resample_masks)

    def _heads(self) -> list:
        return [self.head]

    def config(self) -> dict:
        return {"d": self.d, "hidden_sizes": list(self.hidden_sizes), "num_masks": self.num_masks,
                "ordering": self._ordering_arg, "seed": self.seed, "activation": self.activation,
                "n_labels": self.n_labels, "resample_masks": self.resample_masks}

    # ---------------------------------------------------------------- mask sets
    @property
    def ordering(self) -> np.ndarray:
        """Generation order of the current mask set (`mask_index`)."""
        return backend.to_numpy(self.orderings)[self.mask_index]

    @property
    def factorises(self) -> bool:
        return self.num_masks == 1

    @property
    def order_agnostic(self) -> bool:
        """Trained on a fresh random ordering every step: completes any observed set."""
        return self.resample_masks and self._ordering_arg == "random"

    def masks(self, k=None) -> list:
        """Host copies of the (in, out) masks of mask set k (default: the current one)."""
        k = self._mask_id(k)
        return [backend.to_numpy(getattr(self, f"masks_{l}"))[k] for l in range(len(self.layers) + 1)]

    def mask_set(self, k=None) -> MaskSet:
        """Stored mask set k (default: the current one): its ordering and degrees on the host
        (one copy per layer: the inputs' degrees are the positions in the ordering), its
        masks as views of the buffers."""
        k = self._mask_id(k)
        order = backend.to_numpy(self.orderings[k])
        positions = np.empty(self.d, np.int64)
        positions[order] = np.arange(1, self.d + 1)                                   # = degrees_0[k]
        hidden = [backend.to_numpy(getattr(self, f"degrees_{l}")[k]) for l in range(1, len(self.layers) + 1)]
        masks = [getattr(self, f"masks_{l}")[k] for l in range(len(self.layers) + 1)]
        return MaskSet(order, [positions, *hidden], masks)

    def completion_mask_set(self, observed) -> MaskSet:
        """The mask set an order-agnostic MADE completes with when `observed` ((D,) bools) is
        observed: the ordering `completion_ordering(observed, seed)`, and hidden degrees drawn
        from `RandomState(seed)` (`made_degrees`), the same for every call."""
        order = completion_ordering(observed, self.seed)                          # (D,)
        orders, degrees = made_degrees(self.d, self.hidden_sizes, 1, order, self.seed)
        masks = [backend.to_device(m[0].astype(self.dtype)) for m in made_masks(degrees)]
        return MaskSet(orders[0], [m[0] for m in degrees], masks)

    def next_mask(self) -> int:
        """Switch to the next of the K mask sets (cyclically) and return its index; with
        `resample_masks`, redraw that set first (from `RandomState([seed, mask_draws])`, a
        fresh ordering if ordering='random', fresh hidden degrees), in the buffers. Training
        calls it once per step (a no-op for K = 1 without resampling)."""
        self.mask_index = (self.mask_index + 1) % self.num_masks
        if self.resample_masks:
            rng = np.random.RandomState([self.seed, self.mask_draws])
            self.mask_draws += 1
            self._store_mask_set(self.mask_index, *draw_mask_set(self.d, self.hidden_sizes, self._ordering_arg, rng))
        return self.mask_index

    def _store_mask_set(self, k: int, order, degrees) -> None:
        """Write mask set k (an ordering (D,) and degrees, host) into the buffers, in place."""
        self.orderings[k] = backend.to_device(order)
        for l, m in enumerate(degrees):
            getattr(self, f"degrees_{l}")[k] = backend.to_device(m)
        for l, m in enumerate(made_masks(degrees)):
            buffer = getattr(self, f"masks_{l}")
            buffer[k] = backend.to_device(m.astype(buffer.dtype))

    def training_state(self) -> dict:
        """JSON state a resumed run needs beyond the arrays: where the mask cycle stands, and
        how many mask sets have been redrawn."""
        return {"mask_index": self.mask_index, "mask_draws": self.mask_draws}

    def load_training_state(self, state: dict) -> None:
        self.mask_index = self._mask_id(state.get("mask_index", 0))
        draws = state.get("mask_draws", 0)
        if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 0:
            raise ValueError(f"{type(self).__name__}: mask_draws must be a non-negative integer, got {draws!r}")
        self.mask_draws = int(draws)

    def _mask_id(self, k) -> int:
        if k is None:
            return self.mask_index
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_masks:
            raise ValueError(f"{type(self).__name__}: mask index must be an integer in [0, {self.num_masks}), got {k!r}")
        return int(k)

    def _use_masks(self, k) -> None:
        """Point every layer's mask at mask set k: an index (default: the current set; views
        of the buffers, looked up at forward time because `load_state_dict` replaces the
        buffers' arrays) or a `MaskSet`."""
        if isinstance(k, MaskSet):
            masks = k.masks
        else:
            k = self._mask_id(k)
            masks = [getattr(self, f"masks_{l}")[k] for l in range(len(self.layers) + 1)]
        for layer, mask in zip(self.layers, masks):
            layer.mask = mask
        for head in self._heads():
            head.mask = masks[-1]

    # ---------------------------------------------------------------- likelihood
    def hidden_units(self, x, y=None, k=None):
        """The masked MLP's last hidden layer under mask set k (an index, default the current
        set, or a `MaskSet`), with the labels' biases: x (N, D), y checked labels (N,) or
        None -> (N, H_L). Also points the heads at set k's output mask."""
        if (y is None) == bool(self.n_labels):  # a conditional model without y, or y without one
            self.check_labels(y, x.shape[0])     # raises, saying which
        self._use_masks(k)
        act = _ACTIVATIONS[self.activation]
        h = x                                    # (N, D)
        for l, layer in enumerate(self.layers):
            a = layer(h)                         # (N, H_l): h (W_l * M_l) + b_l
            if y is not None:
                a = a + self.layer_labels[l](y)  # (N, H_l): + B_l[y], never masked
            h = act(a)
        return h

    def distribution(self, x, y=None, k=None) -> Bernoulli:
        """The conditionals p_k(x_i | x_<i[, y]) of mask set k (default: the current one; or
        a `MaskSet`). x: (N, D), y: checked labels (N,) or None."""
        h = self.hidden_units(x, y, k)               # (N, H_L)
        logits = self.head(h)                        # (N, D): h (W * M) + b
        if y is not None:
            logits = logits + self.head_labels[0](y)  # (N, D): + B[y]
        return Bernoulli(logits)

    def log_prob_per_variable(self, x, y=None, k=None):
        """log p_k(x_i | x_<i[, y]) under mask set k: (N, D) -> Tensor (N, D).

        With K > 1, k must be given: the mixture has no single set of D conditionals.
        """
        if k is None and self.num_masks > 1:
            raise ValueError(f"{type(self).__name__}: with num_masks={self.num_masks} the model is a mixture of "
                             f"{self.num_masks} autoregressive models and has no per-variable factorisation; "
                             "pass k=<mask index> for one mask set's conditionals, or use log_prob(x)")
        x = self.as_input(x)
        y = self.check_labels(y, x.shape[0])
        return self.distribution(x, y, k).log_prob(x)

    def log_prob_mask(self, x, k=None, y=None):
        """log p_k(x[ | y]) of one mask set (default: the current one): (N, D) -> Tensor (N,)."""
        x = self.as_input(x)
        y = self.check_labels(y, x.shape[0])
        return self.distribution(x, y, k).log_prob(x).sum(axis=1)

    def log_prob(self, x, y=None, observed=None):
        """Exact log-likelihood: log p(x[ | y]) = logsumexp_k log p_k(x) - log K: (N, D) -> (N,).

        With `observed` ((D,) or (N, D), 0/1), the completion's log p(x_U | x_O[, y]): cases
        a, b and c of the class docstring (K = 1; the mixture's conditional; an order-
        agnostic model's ordering o)."""
        x = self.as_input(x)
        n = x.shape[0]
        y = self.check_labels(y, n)
        if observed is not None:
            observed = self.check_observed(observed, n)                      # (N, D) host bools
            if self.order_agnostic:
                return self._completion_log_prob(x, y, observed)
        per_set = [self.distribution(x, y, k).log_prob(x) for k in range(self.num_masks)]  # K x (N, D)
        if self.num_masks == 1:
            (lp,) = per_set
            return lp.sum(axis=1) if observed is None else where(backend.to_device(~observed), lp, 0.0).sum(axis=1)
        full = stack([lp.sum(axis=1) for lp in per_set])                     # (K, N): log p_k(x)
        if observed is None:
            return logsumexp(full, axis=0) - math.log(self.num_masks)         # (N,)
        seen = backend.to_device(observed)
        prefix = stack([where(seen, lp, 0.0).sum(axis=1) for lp in per_set])  # (K, N): log p_k(x_O)
        return logsumexp(full, axis=0) - logsumexp(prefix, axis=0)            # (N,): log p(x_U | x_O)

    def _completion_log_prob(self, x, y, observed):
        """Case c: log p_o(x_U | x_O[, y]) with each row's ordering o (observed variables
        first), one pass per distinct observed set. x: Tensor (N, D), observed (N, D) host."""
        parts, order = [], []
        for pattern, rows in _rows_by_pattern(observed):
            r = backend.to_device(rows)
            xr, yr = (x, y) if len(rows) == x.shape[0] else (x[r], None if y is None else y[r])
            lp = self.distribution(xr, yr, self.completion_mask_set(pattern)).log_prob(xr)  # (n_g, D)
            parts.append(where(backend.to_device(~pattern), lp, 0.0).sum(axis=1))          # (n_g,): hidden i only
            order.append(rows)
        if not parts:                                                                       # N = 0
            return x.sum(axis=1)
        if len(parts) == 1:
            return parts[0]
        inverse = np.argsort(np.concatenate(order), kind="stable")                         # back to row order
        return concatenate(parts)[backend.to_device(inverse)]                              # (N,)

    def training_loss(self, x, state=None, y=None):
        """One step of order- and connectivity-agnostic training: the next mask set (redrawn,
        with `resample_masks`), and the mean of -log p_k(x[ | y]) under it (for K = 1 without
        resampling, the mean negative log-likelihood)."""
        self.next_mask()
        return -batch_mean(self.log_prob_mask(x, y=y)), state

    def check_completable(self, observed) -> None:
        """Refuse a completion this model cannot do exactly (see the class docstring): unless
        it is order-agnostic, the observed variables of every row must come first in every
        mask set's ordering. observed: (n, D) host bools."""
        if self.order_agnostic:
            return
        for k, order in enumerate(backend.to_numpy(self.orderings)):
            by_position = observed[:, order]                                  # (n, D) in generation order
            late = by_position[:, 1:] & ~by_position[:, :-1]                 # observed after a hidden one
            if late.any():
                row, p = np.argwhere(late)[0]
                hidden = order[np.flatnonzero(~by_position[row, :p + 1])[0]]
                where_ = f"mask set {k}'s ordering" if self.num_masks > 1 else "the model's ordering"
                raise ValueError(
                    f"{type(self).__name__}: cannot complete exactly: variable {int(order[p + 1])} is observed but "
                    f"comes after the hidden variable {int(hidden)} in {where_}; this MADE completes only sets whose "
                    "observed variables come first in every mask set's ordering; to complete any set, train an "
                    "order-agnostic MADE (resample_masks=True with ordering='random', i.e. "
                    "train_mnist.py --ordering random --resample-masks)")

    # ---------------------------------------------------------------- sampling
    def _sample(self, n: int, rng, method: str, y=None, given=None, observed=None):
        """Samples (n, D), the cases of the class docstring. Without completion, or for
        cases a and b: for K > 1, first v ~ U[0, 1)^n picks mask set k per sample (k =
        floor(K v), or by inverse CDF of the posterior over k given x_O), then the noise
        (n, D) is drawn and each mask set's samples are drawn ancestrally in its ordering by
        `method`. Case c: the noise, then each observed set's rows in its ordering o."""
        if given is not None:
            given = given.astype(self.dtype, copy=False)
        if given is not None and self.order_agnostic:
            noise = self.sample_noise(rng, n)
            groups = [(self.completion_mask_set(pattern), rows) for pattern, rows in _rows_by_pattern(observed)]
        else:
            which = np.zeros(n, np.int64)
            if self.num_masks > 1:
                v = backend.to_numpy(rng.random(n)).astype(np.float64)                     # (n,)
                which = self._pick_mask_sets(v, y, given, observed)
            noise = self.sample_noise(rng, n)
            groups = [(k, np.flatnonzero(which == k)) for k in range(self.num_masks)]     # stored set k
        sampler = self.sample_naive if method == "naive" else self.sample_fast
        x = backend.xp().empty((n, self.d), self.dtype)
        for k, rows in groups:
            if rows.size:
                r = backend.to_device(rows)
                x[r] = sampler(noise[r], None if y is None else y[r], None if given is None else given[r],
                               None if observed is None else observed[rows], k)
        return x

    def _pick_mask_sets(self, v, y, given, observed) -> np.ndarray:
        """The mask set of each sample (n,) host ints from v ~ U[0, 1) (n,): k = floor(K v)
        (uniform weights 1/K), or for a completion the inverse CDF of the posterior
        w_k = p_k(x_O) / sum_j p_j(x_O) at v (case b)."""
        K = self.num_masks
        if given is None:
            return np.minimum((v * K).astype(np.int64), K - 1)
        x = Tensor(given, dtype=self.dtype)
        seen = backend.to_device(observed)
        log_w = stack([where(seen, self.distribution(x, y, k).log_prob(x), 0.0).sum(axis=1)
                       for k in range(K)])                                 # (K, n): log p_k(x_O)
        log_w = backend.to_numpy(log_w.data).astype(np.float64)
        w = np.exp(log_w - log_w.max(axis=0))
        cdf = np.cumsum(w / w.sum(axis=0), axis=0)                           # (K, n)
        return (v[None, :] >= cdf[:-1]).sum(axis=0)                          # the first k with v < cdf_k

    def sample_naive(self, noise, y=None, given=None, observed=None, k=None):
        """Ancestral sampling as the lecture draws it, under mask set k (an index, default the
        current set, or a `MaskSet`): for each variable i in its ordering, one full pass over
        the partly sampled data gives p(x_i | x_<i[, y]) and x_i is drawn from it, or, where
        a completion observes it, set to its given value. noise: (n, D) from `sample_noise`;
        y: checked labels (n,) or None; given (n, D) and observed (n, D) host bools, or None
        -> x: (n, D)."""
        mask_set = k if isinstance(k, MaskSet) else self.mask_set(k)
        xp = backend.xp()
        keep = None if observed is None else backend.to_device(observed)
        n, d = noise.shape
        x = xp.zeros((n, d), self.dtype)
        for i in mask_set.ordering:
            dist = self.distribution(Tensor(x, dtype=self.dtype), y, mask_set)  # D passes
            x[:, i] = dist.draw(noise)[:, i]
            if keep is not None:
                x[:, i] = xp.where(keep[:, i], given[:, i], x[:, i])
        return x

    def sample_fast(self, noise, y=None, given=None, observed=None, k=None):
        """The samples of `sample_naive(noise, y, given, observed, k)`, each hidden unit
        computed once, in degree order (`kernels.made.sample_by_degree`)."""
        mask_set = k if isinstance(k, MaskSet) else self.mask_set(k)
        self._use_masks(mask_set)
        biases = self.biases(y)                                                  # hidden layers, then heads
        layers = [(layer.weight.data * mask, b) for layer, mask, b in zip(self.layers, mask_set.masks, biases)]
        heads = [(head.weight.data * mask_set.masks[-1], b) for head, b in zip(self._heads(), biases[len(layers):])]
        keep = None if observed is None else backend.to_device(observed)
        return sample_by_degree(self._draw_noise(noise), mask_set.ordering, layers, mask_set.degrees[1:], heads,
                                self.activation, self._draw, given, keep)

    def biases(self, y=None) -> list:
        """The bias of every hidden layer and then every head under the masks in place, as
        arrays: b (out,) (with resampled masks b + 1 (U * M), `MaskedLinear.effective_bias`),
        or with labels y (n,) plus B[y] (n, out), one per sample."""
        layers = [*self.layers, *self._heads()]
        if y is None:
            return [layer.effective_bias().data for layer in layers]
        labels = [*self.layer_labels, *self.head_labels]
        return [layer.effective_bias().data + label(y).data for layer, label in zip(layers, labels)]

    @staticmethod
    def _draw_noise(u):
        """The uniforms as `_draw` compares them: u < sigmoid(l) is the event logit(u) < l, so
        the noise is transformed once and no step needs a sigmoid (u <= 0 gives -inf: always
        1; u >= 1 gives +inf: always 0, as u < sigmoid(l); so noise forced by
        `force_observed` works too)."""
        xp = backend.array_module(u)
        u = xp.clip(u, 0, 1)
        with np.errstate(divide="ignore"):
            return xp.log(u) - xp.log1p(-u)

    @staticmethod
    def _draw(outs, t):
        """x_i from the head's output for variable i: [u_i < sigmoid(l_i)], the rule of
        `Bernoulli.draw`, as [logit(u_i) < l_i]."""
        (logits,) = outs
        return t < logits


def _rows_by_pattern(observed):
    """The rows of a completion mask grouped by their observed set: [(pattern (D,) bools,
    rows (host ints))], one per distinct row of observed (N, D)."""
    if not len(observed):
        return []
    patterns, group = np.unique(observed, axis=0, return_inverse=True)
    group = group.reshape(-1)
    return [(pattern, np.flatnonzero(group == g)) for g, pattern in enumerate(patterns)]


class GaussianMADE(MADE):
    """GaussianMADE(d, hidden_sizes, num_masks=1, ordering='natural', seed=0, activation='relu',
    n_labels=0, resample_masks=False).

    Real data (N, d): the same masked MLP with two heads sharing the output mask,

        p(x_i | x_<i) = N(x_i; mu_i(x_<i), exp(log_std_i(x_<i))^2),

    so log p(x) = sum_i [-(x_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2]. With
    linear conditional means and constant log_std this is exactly a full-covariance Gaussian
    (the Cholesky factorisation of its precision), so correlated Gaussian data is a natural
    test. Parameters as in MADE, with `mean_head` and `log_std_head` instead of `head`
    (with labels, `head_labels[0]` and `head_labels[1]` add B[y] to each). Completion as in
    MADE (cases a, b, c): the samplers set x_i = given_i where observed, else draw it.
    """

    kind = "real"

    def _make_heads(self, width: int) -> None:
        self.mean_head = MaskedLinear(width, self.d, mask_input=self.resample_masks)
        self.log_std_head = MaskedLinear(width, self.d, mask_input=self.resample_masks)

    def _heads(self) -> list:
        return [self.mean_head, self.log_std_head]

    def distribution(self, x, y=None, k=None) -> Gaussian:
        """The conditionals N(mu_i, sigma_i^2) of mask set k (default: the current one; or a
        `MaskSet`), given y with labels."""
        h = self.hidden_units(x, y, k)                                  # (N, H_L)
        mean, log_std = self.mean_head(h), self.log_std_head(h)         # (N, D) each: h (W * M) + b
        if y is not None:
            mean, log_std = mean + self.head_labels[0](y), log_std + self.head_labels[1](y)  # + B[y]
        return Gaussian(mean, log_std)

    @staticmethod
    def _draw_noise(z):
        return z

    @staticmethod
    def _draw(outs, z):
        """x_i from the heads' outputs for variable i: mu_i + exp(log_std_i) z_i, the rule of
        `Gaussian.draw`."""
        mean, log_std = outs
        return mean + backend.array_module(z).exp(log_std) * z
