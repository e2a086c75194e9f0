"""FVSBN: its logits are the lecture's formula, its mask blocks the weights on and above the
diagonal, and a fit reaches the entropy of a distribution it represents exactly (a binary
Markov chain). The protocol's identities are in test_protocol.py."""
import math

import numpy as np
import pytest

import nanoar
from ar_checks import enumerate_inputs
from nanoar import no_grad
from nanoar.models.fvsbn import FVSBN
from nanoar.optim import Adam


def make(d, seed=0):
    nanoar.manual_seed(seed)
    return FVSBN(d)


def binary(n, d, seed):
    return np.random.default_rng(seed).integers(0, 2, size=(n, d)).astype(nanoar.default_dtype())


def test_logits_are_the_lecture_formula(float64):
    """l_i = b_i + sum_{j<i} W_ij x_j, written as the explicit double loop."""
    model = make(6, seed=3)
    x = binary(4, 6, seed=1)
    W, b = model.W.numpy(), model.b.numpy()
    expected = np.array([[b[i] + sum(W[i, j] * row[j] for j in range(i)) for i in range(6)] for row in x])
    logits = model.distribution(model.as_input(x)).logits
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_mask_is_strictly_lower_triangular_and_blocks_gradients(float64):
    """Weights on and above the diagonal never matter: zero gradient, no effect on log p or
    on the samples."""
    model = make(5, seed=1)
    assert np.array_equal(nanoar.to_numpy(model.mask), np.tril(np.ones((5, 5)), k=-1))
    x = binary(8, 5, seed=2)
    model.zero_grad()
    (-model.log_prob(x).mean()).backward()
    assert np.all(model.W.grad[np.triu_indices(5)] == 0)
    before, samples = model.log_prob(x).numpy(), model.sample(20, seed=0)
    model.W.data[np.triu_indices(5)] += 10.0
    np.testing.assert_array_equal(model.log_prob(x).numpy(), before)
    np.testing.assert_array_equal(model.sample(20, seed=0), samples)


def test_checkpoint_keys():
    assert sorted(make(5).state_dict()) == ["W", "b", "mask"]


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
        loss, _ = model.training_loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        cross_entropy = -(p_true * model.log_prob(xs.astype(np.float32)).numpy()).sum()
    assert cross_entropy < entropy + 0.02, f"cross-entropy {cross_entropy:.4f} vs entropy {entropy:.4f}"


def test_bad_data_and_sizes_are_refused():
    model = make(4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    for d in (0, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            FVSBN(d)
