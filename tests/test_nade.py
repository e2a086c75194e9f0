"""NADE: the protocol's identities, the parallel cumsum pass against the paper's formula,
incremental sampling against a sampler that recomputes everything, gradients, and a fit."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanoar
from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match,
                       enumerate_inputs)
from nanoar import Tensor, gradcheck, no_grad
from nanoar.models.nade import NADE
from nanoar.optim import Adam
from nanoar.tensor import cumsum

fixture_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])


def make(d, hidden, seed=0, scale=1.0):
    nanoar.manual_seed(seed)
    model = NADE(d, hidden)
    for p in model.parameters():
        p.data *= scale
    return model


def binary(n, d, seed):
    return np.random.default_rng(seed).integers(0, 2, size=(n, d)).astype(nanoar.default_dtype())


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@fixture_settings
@given(d=st.integers(1, 10), hidden=st.integers(1, 8), seed=st.integers(0, 2**16), scale=st.floats(0.5, 4.0))
def test_normalised_by_enumeration(float64, d, hidden, seed, scale):
    assert_normalised(make(d, hidden, seed, scale), atol=1e-6)


@fixture_settings
@given(d=st.integers(1, 8), hidden=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_autoregressive_by_jacobian_and_perturbation(float64, d, hidden, seed):
    model = make(d, hidden, seed, scale=2.0)
    x = binary(4, d, seed)
    assert_jacobian_autoregressive(model.logits, x, model.ordering)
    assert_future_does_not_matter(model, x, np.random.default_rng(seed))


@fixture_settings
@given(d=st.integers(1, 8), hidden=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_one_pass_equals_one_conditional_at_a_time(float64, d, hidden, seed):
    model = make(d, hidden, seed, scale=2.0)
    assert_one_pass_equals_sequential(model, binary(5, d, seed), np.random.default_rng(seed))


def test_parallel_pass_is_the_papers_formula(float64):
    """a_i = c + W[:, <i] x_<i and l_i = b_i + V_i . sigmoid(a_i), one i at a time."""
    model = make(7, 5, seed=2, scale=2.0)
    x = binary(6, 7, seed=0)
    W, c, V, b = (p.numpy() for p in (model.W, model.c, model.V, model.b))
    a = np.stack([c + x[:, :i] @ W[:, :i].T for i in range(7)], axis=1)
    np.testing.assert_allclose(model.pre_activations(x).numpy(), a, rtol=1e-12, atol=1e-12)
    logits = np.stack([b[i] + sigmoid(a[:, i]) @ V[i] for i in range(7)], axis=1)
    np.testing.assert_allclose(model.logits(x).numpy(), logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum_gradient(float64, axis):
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4, 2)), requires_grad=True)
    assert gradcheck(lambda t: cumsum(t, axis), [x])
    np.testing.assert_array_equal(cumsum(x, axis).numpy(), np.cumsum(x.numpy(), axis=axis))


def naive_sample(model, n, seed):
    """The reference sampler: for each i, the full parallel pass on the partial sample, with
    the noise drawn as `sample` documents it (u ~ U[0, 1)^(n, d) from default_rng(seed))."""
    u = np.random.default_rng(seed).random((n, model.d), dtype=model.W.dtype)
    x = np.zeros((n, model.d))
    for i in range(model.d):
        with no_grad():
            p = sigmoid(model.logits(x).numpy()[:, i])
        x[:, i] = u[:, i] < p
    return x


@pytest.mark.parametrize("d, hidden, seed", [(1, 3, 0), (6, 4, 1), (12, 9, 2)])
def test_incremental_sampling_equals_naive_conditionals(float64, d, hidden, seed):
    model = make(d, hidden, seed, scale=3.0)
    fast = model.sample(200, seed=seed + 10)
    np.testing.assert_array_equal(fast, naive_sample(model, 200, seed + 10))


@pytest.mark.parametrize("d, hidden, seed", [(3, 4, 0), (4, 3, 1)])
def test_samples_match_likelihood(float64, d, hidden, seed):
    assert_samples_match(make(d, hidden, seed, scale=3.0), 20000, seed=seed)


def test_param_grads(float64):
    model = make(6, 4, seed=4, scale=2.0)
    x = binary(7, 6, seed=4)
    assert_param_grads(model, lambda: -model.log_prob(x).mean())


def test_last_input_column_is_unused(float64):
    """x_D feeds no conditional, so W[:, D-1] gets exactly zero gradient."""
    model = make(5, 3, seed=0)
    x = binary(8, 5, seed=0)
    (-model.log_prob(x).mean()).backward()
    assert np.all(model.W.grad[:, -1] == 0) and np.any(model.W.grad[:, :-1] != 0)


def two_prototype_mixture(d=6, flip=0.1):
    """All inputs and their probabilities under p(x) = 1/2 prod_i Ber(x_i; q_i) + 1/2 prod_i
    Ber(x_i; 1 - q_i), q = (0.9, ..., 0.1, ...): strongly dependent pixels."""
    xs = enumerate_inputs((d,)).astype(int)
    q = np.where(np.arange(d) < d // 2, 1 - flip, flip)
    comp = lambda qq: np.prod(np.where(xs == 1, qq, 1 - qq), axis=1)  # noqa: E731
    return xs, 0.5 * comp(q) + 0.5 * comp(1 - q)


def test_fit_reaches_entropy_of_a_mixture():
    """After 400 Adam steps on 3000 samples, the cross-entropy to the true distribution is
    within 0.05 nats of its entropy (independent pixels would be 1.53 nats worse)."""
    xs, p_true = two_prototype_mixture()
    entropy = -(p_true * np.log(p_true)).sum()
    marg = (p_true[:, None] * xs).sum(axis=0)
    independent = -(p_true * np.log(np.where(xs == 1, marg, 1 - marg)).sum(axis=1)).sum()
    assert independent - entropy > 1.5
    # Full-batch training on 3000 samples; they hold at most 64 distinct rows, so the mean NLL
    # is computed once per distinct row, weighted by its frequency (the same loss, 50x cheaper).
    counts = np.bincount(np.random.default_rng(0).choice(len(xs), size=3000, p=p_true), minlength=len(xs))
    rows, freq = xs.astype(np.float32), nanoar.to_device((counts / counts.sum()).astype(np.float32))

    model = make(6, 16, seed=0)
    opt = Adam(model.parameters(), lr=0.03)
    for _ in range(400):
        loss = -(model.log_prob(rows) * freq).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        cross_entropy = -(p_true * model.log_prob(xs.astype(np.float32)).numpy()).sum()
    assert cross_entropy < entropy + 0.05, f"cross-entropy {cross_entropy:.4f} vs entropy {entropy:.4f}"


def test_bad_data_is_refused():
    model = make(4, 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    with pytest.raises(ValueError):
        NADE(4, 0)


def test_config_and_state_dict_rebuild_the_model():
    model = make(5, 4, seed=2)
    clone = NADE(**model.config())
    clone.load_state_dict({k: nanoar.to_numpy(v) for k, v in model.state_dict().items()})
    x = binary(6, 5, seed=0)
    np.testing.assert_array_equal(clone.log_prob(x).numpy(), model.log_prob(x).numpy())
    np.testing.assert_array_equal(clone.sample(9, seed=1), model.sample(9, seed=1))


def test_same_log_prob_on_every_device(device):
    nanoar.set_device("cpu", seed=0)
    model = make(6, 5, seed=7, scale=2.0)
    x = binary(20, 6, seed=3)
    ref = model.log_prob(x).numpy()
    state = {k: nanoar.to_numpy(v) for k, v in model.state_dict().items()}
    nanoar.set_device(device, seed=0)
    other = NADE(**model.config())
    other.load_state_dict(state)
    got = nanoar.to_numpy(other.log_prob(nanoar.to_device(x)).data)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_same_gradients_on_every_device(device, float64):
    """The fused pass's backward on each device (on the GPU it runs as one block, with
    cumsums instead of the CPU's loop of adds) against the CPU's."""
    nanoar.set_device("cpu", seed=0)
    model = make(9, 5, seed=8, scale=2.0)
    x = binary(7, 9, seed=4)
    (-model.log_prob(x).sum()).backward()
    ref = {k: p.grad.copy() for k, p in model.named_parameters()}
    state = {k: nanoar.to_numpy(v) for k, v in model.state_dict().items()}
    nanoar.set_device(device, seed=0)
    other = NADE(**model.config())
    other.load_state_dict(state)
    (-other.log_prob(nanoar.to_device(x)).sum()).backward()
    for k, p in other.named_parameters():
        np.testing.assert_allclose(nanoar.to_numpy(p.grad), ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_sampling_on_every_device(device):
    model = make(3, 4, seed=1, scale=3.0)
    s = model.sample(100, seed=0)
    assert nanoar.backend.is_device_array(s) == (device == "cuda")
    assert_samples_match(model, 20000, seed=1)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, None])
def test_fused_nade_pass_matches_the_composed_ops_and_finite_differences(float64, block):
    """Every block size (one variable at a time, uneven last blocks, all of D at once)."""
    from nanoar import Tensor, gradcheck, sigmoid
    from nanoar.models.nade import nade_logits

    rng = np.random.default_rng(5)
    model = NADE(7, 3)
    xb = (rng.random((4, 7)) < 0.5).astype(np.float64)
    composed = (sigmoid(model.pre_activations(xb)) * model.V).sum(axis=-1) + model.b
    fused = nade_logits(Tensor(xb), model.W, model.c, model.V, model.b, block=block)
    np.testing.assert_allclose(fused.numpy(), composed.numpy(), rtol=1e-12, atol=1e-12)
    with nanoar.no_grad():  # evaluation reuses one block's buffer
        evaluated = nade_logits(Tensor(xb), model.W, model.c, model.V, model.b, block=block)
    np.testing.assert_array_equal(evaluated.numpy(), fused.numpy())
    xt = Tensor(xb + 0.1 * rng.standard_normal((4, 7)), requires_grad=True)  # the op takes any real x
    assert gradcheck(lambda *ts: nade_logits(*ts, block=block), [xt, model.W, model.c, model.V, model.b])
