"""FVSBN: the protocol's identities, the mask, gradients, sampling, and a fit that must reach
the entropy of a distribution the model can represent exactly (a binary Markov chain)."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanoar
from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match,
                       enumerate_inputs)
from nanoar import no_grad
from nanoar.models.fvsbn import FVSBN
from nanoar.optim import Adam

# float64 is function-scoped but only sets the default dtype, which no example changes.
fixture_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])


def make(d, seed=0, scale=1.0):
    """A model with weights scaled by `scale` (large scales give peaked conditionals)."""
    nanoar.manual_seed(seed)
    model = FVSBN(d)
    for p in model.parameters():
        p.data *= scale
    return model


def binary(n, d, seed):
    return np.random.default_rng(seed).integers(0, 2, size=(n, d)).astype(nanoar.default_dtype())


@fixture_settings
@given(d=st.integers(1, 10), seed=st.integers(0, 2**16), scale=st.floats(0.5, 4.0))
def test_normalised_by_enumeration(float64, d, seed, scale):
    assert_normalised(make(d, seed, scale), atol=1e-6)


@fixture_settings
@given(d=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_autoregressive_by_jacobian_and_perturbation(float64, d, seed):
    model = make(d, seed, scale=2.0)
    x = binary(4, d, seed)
    assert_jacobian_autoregressive(model.logits, x, model.ordering)
    assert_future_does_not_matter(model, x, np.random.default_rng(seed))


@fixture_settings
@given(d=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_one_pass_equals_one_conditional_at_a_time(float64, d, seed):
    model = make(d, seed, scale=2.0)
    assert_one_pass_equals_sequential(model, binary(5, d, seed), np.random.default_rng(seed))


def test_logits_are_the_lecture_formula(float64):
    """l_i = b_i + sum_{j<i} W_ij x_j, written as the explicit double loop."""
    model = make(6, seed=3)
    x = binary(4, 6, seed=1)
    W, b = model.W.numpy(), model.b.numpy()
    expected = np.array([[b[i] + sum(W[i, j] * row[j] for j in range(i)) for i in range(6)] for row in x])
    np.testing.assert_allclose(model.logits(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_mask_is_strictly_lower_triangular_and_blocks_gradients(float64):
    """Weights on and above the diagonal never matter: zero gradient, no effect on log p."""
    model = make(5, seed=1)
    assert np.array_equal(nanoar.to_numpy(model.mask), np.tril(np.ones((5, 5)), k=-1))
    x = binary(8, 5, seed=2)
    model.zero_grad()
    (-model.log_prob(x).mean()).backward()
    assert np.all(model.W.grad[np.triu_indices(5)] == 0)
    before = model.log_prob(x).numpy()
    model.W.data[np.triu_indices(5)] += 10.0
    np.testing.assert_array_equal(model.log_prob(x).numpy(), before)


@pytest.mark.parametrize("d, seed", [(3, 0), (4, 1)])
def test_samples_match_likelihood(float64, d, seed):
    assert_samples_match(make(d, seed, scale=2.0), 20000, seed=seed)


def test_samples_are_reproducible_and_binary():
    model = make(7, seed=0)
    a, b = model.sample(50, seed=5), model.sample(50, seed=5)
    assert a.shape == (50, 7) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.sample(50, seed=6))


def test_param_grads(float64):
    model = make(6, seed=4, scale=2.0)
    x = binary(7, 6, seed=4)
    assert_param_grads(model, lambda: -model.log_prob(x).mean())


def test_fit_reaches_entropy_of_a_markov_chain():
    """x_1 ~ Ber(0.3), x_i = x_{i-1} w.p. 0.85: an FVSBN represents it exactly (l_i =
    b_i + W_{i,i-1} x_{i-1}), so after 300 Adam steps on 2000 samples the cross-entropy to the
    true distribution must be within 0.02 nats of its entropy H = h(0.3) + 4 h(0.15)."""
    d, p1, stay = 5, 0.3, 0.85
    xs = enumerate_inputs((d,)).astype(int)
    p_true = np.where(xs[:, 0] == 1, p1, 1 - p1) * np.prod(np.where(xs[:, 1:] == xs[:, :-1], stay, 1 - stay), axis=1)
    h = lambda q: -q * math.log(q) - (1 - q) * math.log(1 - q)  # noqa: E731
    entropy = h(p1) + (d - 1) * h(1 - stay)
    assert abs(-(p_true * np.log(p_true)).sum() - entropy) < 1e-12
    data = xs[np.random.default_rng(0).choice(len(xs), size=2000, p=p_true)].astype(np.float32)

    model = make(d, seed=0)
    opt = Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = -model.log_prob(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        cross_entropy = -(p_true * model.log_prob(xs.astype(np.float32)).numpy()).sum()
    assert cross_entropy < entropy + 0.02, f"cross-entropy {cross_entropy:.4f} vs entropy {entropy:.4f}"


def test_bad_data_is_refused():
    model = make(4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros(4))
    with pytest.raises(ValueError):
        FVSBN(0)
    with pytest.raises(ValueError):
        model.sample(0)


def test_config_and_state_dict_rebuild_the_model():
    model = make(5, seed=2)
    clone = FVSBN(**model.config())
    clone.load_state_dict({k: nanoar.to_numpy(v) for k, v in model.state_dict().items()})
    x = binary(6, 5, seed=0)
    np.testing.assert_array_equal(clone.log_prob(x).numpy(), model.log_prob(x).numpy())
    assert sorted(model.state_dict()) == ["W", "b", "mask"]


def test_same_log_prob_on_every_device(device):
    """Weights made on the CPU, loaded on `device`: the same log-likelihoods (float32)."""
    nanoar.set_device("cpu", seed=0)
    model = make(6, seed=7, scale=2.0)
    x = binary(20, 6, seed=3)
    ref = model.log_prob(x).numpy()
    state = {k: nanoar.to_numpy(v) for k, v in model.state_dict().items()}
    nanoar.set_device(device, seed=0)
    other = FVSBN(**model.config())
    other.load_state_dict(state)
    got = nanoar.to_numpy(other.log_prob(nanoar.to_device(x)).data)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_sampling_on_every_device(device):
    model = make(3, seed=1, scale=2.0)
    s = model.sample(100, seed=0)
    assert nanoar.backend.is_device_array(s) == (device == "cuda")
    assert_samples_match(model, 20000, seed=1)
