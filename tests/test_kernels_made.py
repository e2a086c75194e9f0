"""MADE's degree-ordered sampler (`nanoar.kernels.made.sample_by_degree`, the fast sampler of
every mask set) gives the samples of the naive sampler (one full masked forward pass per
variable) on the same noise, for random MADEs and GaussianMADEs."""
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
def configs(draw):
    """Small MADEs: 0-3 hidden layers (some narrower than d), natural, random or explicit
    orderings, 1-3 mask sets, every activation."""
    d = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["natural", "random", "explicit"]))
    ordering = [int(i) for i in draw(st.permutations(range(d)))] if kind == "explicit" else kind
    return dict(d=d, hidden_sizes=draw(st.lists(st.integers(1, 12), max_size=3)),
                num_masks=draw(st.integers(1, 3)), ordering=ordering, seed=draw(st.integers(0, 2**16)),
                activation=draw(st.sampled_from(["relu", "tanh", "sigmoid", "gelu"])))


def both_samplers(model, k, n, seed):
    """Mask set k's fast and naive samples from the same noise (n, D)."""
    model.mask_index = k
    noise = model.sample_noise(backend.make_rng(seed), n)
    with no_grad():
        return nanoar.to_numpy(model.sample_fast(noise)), nanoar.to_numpy(model.sample_naive(noise))


@fixture_settings
@given(config=configs(), gaussian=st.booleans(), scale=st.floats(0.5, 3.0), seed=st.integers(0, 2**16))
def test_degree_ordered_sampler_equals_the_naive_sampler(float64, config, gaussian, scale, seed):
    nanoar.manual_seed(seed)
    model = (GaussianMADE if gaussian else MADE)(**config)
    for p in model.parameters():
        p.data *= scale
    if gaussian:  # scales of order 1: each sample stays finite through deep layers
        for p in model.log_std_head.parameters():
            p.data *= 0.1
    for k in range(model.num_masks):
        fast, naive = both_samplers(model, k, 40, seed + k)
        if gaussian:
            assert np.isfinite(fast).all()
            np.testing.assert_allclose(fast, naive, rtol=1e-9, atol=1e-9)
        else:
            np.testing.assert_array_equal(fast, naive)


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
