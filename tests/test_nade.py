"""NADE: the parallel pass is the paper's formula (both paths), the last input column is
unused, and a fit reaches the entropy of a strongly dependent distribution. The protocol's
identities are in test_protocol.py; the fused pass against the textbook one in
test_kernels_nade.py."""
import numpy as np
import pytest

import nanoar
from ar_checks import enumerate_inputs
from nanoar import no_grad
from nanoar.models.nade import NADE
from nanoar.optim import Adam


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


@pytest.mark.parametrize("fused", [True, False])
def test_parallel_pass_is_the_papers_formula(float64, fused):
    """a_i = c + W[:, <i] x_<i and l_i = b_i + V_i . sigmoid(a_i), one i at a time."""
    model = make(7, 5, seed=2, scale=2.0)
    model.fused = fused
    x = binary(6, 7, seed=0)
    W, c, V, b = (p.numpy() for p in (model.W, model.c, model.V, model.b))
    a = [c + x[:, :i] @ W[:, :i].T for i in range(7)]
    logits = np.stack([b[i] + sigmoid(a[i]) @ V[i] for i in range(7)], axis=1)
    got = model.distribution(model.as_input(x)).logits
    np.testing.assert_allclose(got.numpy(), logits, rtol=1e-12, atol=1e-12)


def test_fused_is_a_switch_not_part_of_the_config():
    model = make(3, 2)
    assert NADE.fused is True and model.fused is True
    model.fused = False
    assert NADE.fused is True and "fused" not in model.config()


@pytest.mark.parametrize("fused", [True, False])
def test_last_input_column_is_unused(float64, fused):
    """x_D feeds no conditional, so W[:, D-1] gets exactly zero gradient."""
    model = make(5, 3, seed=0)
    model.fused = fused
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
    # is computed once per distinct row, weighted by its frequency (the same loss).
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


def test_checkpoint_keys():
    assert sorted(make(5, 4).state_dict()) == ["V", "W", "b", "c"]


def test_bad_data_and_sizes_are_refused():
    model = make(4, 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    for d, hidden in ((4, 0), (0, 3)):
        with pytest.raises(ValueError, match="positive integer"):
            NADE(d, hidden)
