"""FVSBN: its logits are the lecture's formula, its mask blocks the weights on and above the
diagonal, and a fit reaches the entropy of a distribution it represents exactly (a binary
Markov chain). Class-conditional FVSBN (n_labels > 0): the label's bias on every conditional,
normalised for every label, autoregressive in x for every label, both samplers equal, exact
gradients. The protocol's identities are in test_protocol.py; cross-model conditioning
checks in test_conditioning.py."""
import math

import numpy as np
import pytest

import nanoar
from ar_checks import assert_param_grads, enumerate_inputs
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
    assert sorted(FVSBN(5, n_labels=3).state_dict()) == ["B.weight", "W", "b", "mask"]


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
    for n_labels in (-1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="n_labels must be a non-negative integer"):
            FVSBN(4, n_labels=n_labels)


# ---------------------------------------------------------------------------- class-conditional
LABELS = 3


def make_conditional(d, seed=0):
    """FVSBN(d, n_labels=3) with W scaled up and the label biases B set to random non-zero
    values (they start at zero, which would hide a label that never arrives)."""
    nanoar.manual_seed(seed)
    model = FVSBN(d, n_labels=LABELS)
    model.W.data *= 3.0
    rng = np.random.default_rng(seed + 100)
    model.B.weight.data[...] = nanoar.to_device(rng.uniform(0.5, 2.0, (LABELS, d)) * rng.choice([-1, 1], (LABELS, d)))
    return model


def log_prob_host(model, x, y):
    with no_grad():
        return nanoar.to_numpy(model.log_prob(nanoar.to_device(x), y=y).data)


def test_conditional_logits_are_the_lecture_formula(float64):
    """l_i = b_i + B[y]_i + sum_{j<i} W_ij x_j: the label's bias on every conditional, x_1's too."""
    model = make_conditional(5, seed=3)
    x, y = binary(6, 5, seed=1), np.array([0, 1, 2, 2, 1, 0])
    W, b, B = model.W.numpy(), model.b.numpy(), model.B.weight.numpy()
    expected = np.array([[b[i] + B[k, i] + sum(W[i, j] * row[j] for j in range(i)) for i in range(5)]
                         for row, k in zip(x, y)])
    logits = model.distribution(model.as_input(x), model.check_labels(y, 6)).logits
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_conditional_is_normalised_for_every_label_and_the_label_matters(float64):
    """sum_x p(x | y) = 1 for each y (d = 4, all 16 inputs), and the three p(. | y) differ."""
    model = make_conditional(4, seed=1)
    xs = enumerate_inputs((4,))
    lps = [log_prob_host(model, xs, y) for y in range(LABELS)]
    for y, lp in enumerate(lps):
        assert abs(np.exp(lp).sum() - 1.0) < 1e-12, f"label {y}: sum of p(x | y) is {np.exp(lp).sum()!r}"
    for y in range(1, LABELS):
        assert np.abs(lps[y] - lps[0]).min() > 1e-6, "changing y must change log p(x | y) of every x"
    per_example = log_prob_host(model, xs[:3], np.arange(3))  # one label per example
    np.testing.assert_allclose(per_example, [lps[k][k] for k in range(3)], rtol=1e-12)


def test_conditional_parameter_gradients_match_finite_differences(float64):
    """Every parameter, the label biases B included, through the training loss with labels."""
    model = make_conditional(5, seed=6)
    x, y = binary(9, 5, seed=7), np.arange(9) % LABELS
    assert_param_grads(model, lambda: model.training_loss(x, y=y)[0], n_checks=8)
    model.zero_grad()
    model.training_loss(x, y=np.zeros(9, int))[0].backward()
    assert np.all(model.B.weight.grad[1:] == 0) and np.any(model.B.weight.grad[0] != 0)  # only y's row learns


def test_conditional_config_names_its_labels():
    """(The round trip and float32 hold for every conditional model: test_conditioning.py.)"""
    model = make_conditional(4, seed=8)
    assert model.config() == {"d": 4, "n_labels": LABELS}
    assert model.sample(3, y=0).dtype == np.float32


def test_unconditional_model_is_unchanged():
    """n_labels = 0 (the default) adds no parameter, is in the config, refuses y; an old
    config without n_labels still builds it."""
    model = make(4, seed=0)
    assert model.n_labels == 0 and model.config() == {"d": 4, "n_labels": 0}
    assert sorted(FVSBN(**{"d": 4}).state_dict()) == ["W", "b", "mask"]
    x = binary(3, 4, seed=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        model.log_prob(x, y=0)
    with pytest.raises(ValueError, match="pass y"):
        make_conditional(4).log_prob(x)
