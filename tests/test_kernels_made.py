"""MADE's degree-ordered sampler (`nanoar.kernels.made.sample_by_degree`, the fast sampler of
every mask set) gives the samples of the naive sampler (one full masked forward pass per
variable) on the same noise, for random MADEs and GaussianMADEs: unconditional, with one
label per sample (per-sample biases), and completing observed values (any mask set, and an
order-agnostic model's completion sets)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import backend, no_grad
from nanoar.kernels.made import array_activation
from nanoar.models.made import GaussianMADE, MADE
from nanoar.tensor import Tensor, gelu, relu, sigmoid, tanh
from strategies import fixture_settings


@st.composite
def configs(draw, n_labels=0):
    """Small MADEs: 0-3 hidden layers (some narrower than d), natural, random or explicit
    orderings, 1-3 mask sets, every activation; `n_labels` classes."""
    d = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["natural", "random", "explicit"]))
    ordering = [int(i) for i in draw(st.permutations(range(d)))] if kind == "explicit" else kind
    return dict(d=d, hidden_sizes=draw(st.lists(st.integers(1, 12), max_size=3)),
                num_masks=draw(st.integers(1, 3)), ordering=ordering, seed=draw(st.integers(0, 2**16)),
                activation=draw(st.sampled_from(["relu", "tanh", "sigmoid", "gelu"])), n_labels=n_labels)


def both_samplers(model, k, n, seed, y=None, given=None, observed=None):
    """Mask set k's fast and naive samples from the same noise (n, D) (labels y (n,), a
    completion's given (n, D) and observed (n, D) bools: host arrays or None)."""
    model.mask_index = k
    noise = model.sample_noise(backend.make_rng(seed), n)
    y = None if y is None else model.check_labels(y, n)
    given = None if given is None else nanoar.to_device(given.astype(model.dtype))
    with no_grad():
        return (nanoar.to_numpy(model.sample_fast(noise, y, given, observed)),
                nanoar.to_numpy(model.sample_naive(noise, y, given, observed)))


def build(config, gaussian, scale, seed):
    """A model of `config` with weights (and label weights, random and non-zero) scaled."""
    nanoar.manual_seed(seed)
    model = (GaussianMADE if gaussian else MADE)(**config)
    for p in model.parameters():
        p.data *= scale
    rng = np.random.default_rng(seed)
    for label in [*model.layer_labels, *model.head_labels]:
        w = label.weight
        w.data = nanoar.to_device(rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1.0, 1.0], w.shape)).astype(w.dtype)
    if gaussian:  # scales of order 1: each sample stays finite through deep layers
        log_std = [model.log_std_head, *model.head_labels[1:]]
        for p in (p for m in log_std for p in m.parameters()):
            p.data *= 0.1
    return model


def assert_same(model, fast, naive):
    if model.kind == "real":
        assert np.isfinite(fast).all()
        np.testing.assert_allclose(fast, naive, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_array_equal(fast, naive)


@fixture_settings
@given(config=configs(), gaussian=st.booleans(), scale=st.floats(0.5, 3.0), seed=st.integers(0, 2**16))
def test_degree_ordered_sampler_equals_the_naive_sampler(float64, config, gaussian, scale, seed):
    model = build(config, gaussian, scale, seed)
    for k in range(model.num_masks):
        fast, naive = both_samplers(model, k, 40, seed + k)
        assert_same(model, fast, naive)


@fixture_settings
@given(config=configs(n_labels=3), gaussian=st.booleans(), scale=st.floats(0.5, 3.0), seed=st.integers(0, 2**16))
def test_degree_ordered_sampler_equals_the_naive_sampler_with_labels(float64, config, gaussian, scale, seed):
    """One label per sample: each sample's biases b + B[y] (n, H) in every layer and head."""
    model = build(config, gaussian, scale, seed)
    y = np.random.default_rng(seed).integers(0, 3, 40)
    for k in range(model.num_masks):
        fast, naive = both_samplers(model, k, 40, seed + k, y=y)
        assert_same(model, fast, naive)


@fixture_settings
@given(config=configs(n_labels=2), gaussian=st.booleans(), scale=st.floats(0.5, 3.0), seed=st.integers(0, 2**16),
       data=st.data())
def test_degree_ordered_sampler_equals_the_naive_sampler_completing(float64, config, gaussian, scale, seed, data):
    """A completion (any observed set per row: the samplers need not know which sets are
    exact): x_i = given_i where observed, the later variables conditioned on it, in both;
    the observed values come back unchanged."""
    model = build(config, gaussian, scale, seed)
    d = config["d"]
    rng = np.random.default_rng(seed)
    observed = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=d, max_size=d), min_size=1,
                                           max_size=4)), bool)
    observed = observed[np.arange(30) % len(observed)]                           # (30, D)
    given = rng.standard_normal((30, d)) if gaussian else rng.integers(0, 2, (30, d)).astype(float)
    y = rng.integers(0, 2, 30)
    for k in range(model.num_masks):
        fast, naive = both_samplers(model, k, 30, seed + k, y=y, given=given, observed=observed)
        assert_same(model, fast, naive)
        np.testing.assert_array_equal(fast[observed], given[observed])


@pytest.mark.parametrize("cls", [MADE, GaussianMADE])
def test_completion_mask_sets_and_whole_samples_agree(float64, cls):
    """Through `sample`: each completion case (one set, a mixture, an order-agnostic model
    with a different observed set per row) gives the same samples under one seed by both
    methods, with labels."""
    nanoar.manual_seed(0)
    models = [cls(6, [10, 9], ordering="random", seed=1, n_labels=2),
              cls(6, [10, 9], num_masks=3, ordering=[3, 1, 0, 5, 2, 4], seed=2, n_labels=2),
              cls(6, [10, 9], num_masks=2, ordering="random", resample_masks=True, seed=3, n_labels=2)]
    rng = np.random.default_rng(0)
    given = rng.standard_normal((50, 6)) if cls is GaussianMADE else rng.integers(0, 2, (50, 6)).astype(float)
    y = rng.integers(0, 2, 50)
    for model in models:
        for p in model.parameters():
            p.data *= 2.0 if cls is MADE else 0.5
        if model.order_agnostic:
            observed = rng.random((50, 6)) < 0.4
            model.next_mask()
        else:
            observed = np.zeros((50, 6), bool)
            observed[:, model.ordering[:3]] = rng.random((50, 1)) < 0.7  # the first three, or none
        fast = model.sample(50, seed=4, y=y, given=given, observed=observed)
        naive = model.sample(50, seed=4, y=y, given=given, observed=observed, method="naive")
        assert_same(model, fast, naive)
        np.testing.assert_array_equal(fast[observed], given[observed])


def test_forced_noise_works_in_the_binary_fast_sampler(float64):
    """`force_observed`'s noise (u = -1: drawn as 1, u = 2: drawn as 0) gives the naive
    sampler's samples in the fast one too (its logit transform sends u outside (0, 1) to
    -inf and +inf)."""
    nanoar.manual_seed(0)
    model = MADE(6, [12], ordering="random", seed=1)
    for p in model.parameters():
        p.data *= 3.0
    rng = np.random.default_rng(0)
    given, observed = rng.integers(0, 2, (40, 6)).astype(float), rng.random((40, 6)) < 0.5
    noise = model.force_observed(rng.random((40, 6)), given, observed)
    with no_grad():
        fast, naive = model.sample_fast(noise), model.sample_naive(noise)
    np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(fast[observed], given[observed])


@pytest.mark.parametrize("cls", [MADE, GaussianMADE])
def test_degree_ordered_sampler_at_benchmark_depth(float64, cls):
    """A wider model whose hidden layers hold units of every degree (many blocks per step)."""
    nanoar.manual_seed(1)
    model = cls(30, [40, 25], num_masks=2, ordering="random", seed=3)
    for p in model.parameters():
        p.data *= 2.0
    for k in range(2):
        fast, naive = both_samplers(model, k, 200, k)
        np.testing.assert_allclose(fast, naive, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, op", [("relu", relu), ("tanh", tanh), ("sigmoid", sigmoid), ("gelu", gelu)])
def test_array_activations_are_the_tensor_ops(float64, name, op):
    v = np.random.default_rng(0).standard_normal((5, 7)) * 4
    np.testing.assert_array_equal(array_activation(name, np)(v.copy()), op(Tensor(v)).numpy())
