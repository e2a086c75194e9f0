"""NADE: the parallel pass is the paper's formula (both paths), the last input column is
unused, and a fit reaches the entropy of a strongly dependent distribution. Class-conditional
NADE (n_labels > 0): the label's biases in the hidden pre-activation and the output,
normalised for every label, autoregressive in x for every label, both samplers equal, exact
gradients. The protocol's identities are in test_protocol.py; the fused pass against the
textbook one in test_kernels_nade.py; cross-model conditioning checks in test_conditioning.py."""
import numpy as np
import pytest

import nanoar
from ar_checks import assert_param_grads, enumerate_inputs
from nanoar import Tensor, no_grad
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
    assert sorted(NADE(5, 4, n_labels=3).state_dict()) == ["C.weight", "E.weight", "V", "W", "b", "c"]


def test_bad_data_and_sizes_are_refused():
    model = make(4, 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    for d, hidden in ((4, 0), (0, 3)):
        with pytest.raises(ValueError, match="positive integer"):
            NADE(d, hidden)
    for n_labels in (-1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="n_labels must be a non-negative integer"):
            NADE(4, 3, n_labels=n_labels)


# ---------------------------------------------------------------------------- class-conditional
LABELS = 3


def make_conditional(d, hidden, seed=0, scale=2.0):
    """NADE(d, hidden, n_labels=3) with its weights scaled up and the label biases C and E set
    to random non-zero values (they start at zero, which would hide a label that never arrives)."""
    nanoar.manual_seed(seed)
    model = NADE(d, hidden, n_labels=LABELS)
    rng = np.random.default_rng(seed + 100)
    for p in (model.W, model.c, model.V, model.b):
        p.data *= scale
    for p in (model.C.weight, model.E.weight):
        p.data[...] = nanoar.to_device(rng.uniform(0.5, 2.0, p.shape) * rng.choice([-1, 1], p.shape))
    return model


def log_prob_host(model, x, y):
    with no_grad():
        return nanoar.to_numpy(model.log_prob(nanoar.to_device(x), y=y).data)


@pytest.mark.parametrize("fused", [True, False])
def test_conditional_pass_is_the_formula(float64, fused):
    """a_i = c + C[y] + W[:, <i] x_<i and l_i = b_i + E[y]_i + V_i . sigmoid(a_i), one i at a time."""
    model = make_conditional(6, 4, seed=2)
    model.fused = fused
    x, y = binary(5, 6, seed=0), np.array([0, 1, 2, 2, 1])
    W, c, V, b = (p.numpy() for p in (model.W, model.c, model.V, model.b))
    C, E = model.C.weight.numpy()[y], model.E.weight.numpy()[y]   # (5, H), (5, D)
    a = [c + C + x[:, :i] @ W[:, :i].T for i in range(6)]
    logits = np.stack([b[i] + E[:, i] + sigmoid(a[i]) @ V[i] for i in range(6)], axis=1)
    got = model.distribution(model.as_input(x), model.check_labels(y, 5)).logits
    np.testing.assert_allclose(got.numpy(), logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_conditional_is_normalised_for_every_label_and_the_label_matters(float64, fused):
    """sum_x p(x | y) = 1 for each y (d = 4, all 16 inputs), and the three p(. | y) differ."""
    model = make_conditional(4, 3, seed=1)
    model.fused = fused
    xs = enumerate_inputs((4,))
    lps = [log_prob_host(model, xs, y) for y in range(LABELS)]
    for y, lp in enumerate(lps):
        assert abs(np.exp(lp).sum() - 1.0) < 1e-12, f"label {y}: sum of p(x | y) is {np.exp(lp).sum()!r}"
    for y in range(1, LABELS):
        assert np.abs(lps[y] - lps[0]).min() > 1e-6, "changing y must change log p(x | y) of every x"
    per_example = log_prob_host(model, xs[:3], np.arange(3))  # one label per example
    np.testing.assert_allclose(per_example, [lps[k][k] for k in range(3)], rtol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_conditional_is_autoregressive_in_x_for_every_label(float64, fused):
    """d l_i / d x_j = 0 for j >= i, whatever the label: the label is never masked, and never
    opens a path from a later variable."""
    model = make_conditional(5, 3, seed=2)
    model.fused = fused
    x = binary(4, 5, seed=3)
    for y in range(LABELS):
        for i in range(5):
            xt = Tensor(nanoar.to_device(x), requires_grad=True)
            logits = model.distribution(xt, model.check_labels(y, 4)).logits
            logits[:, i].sum().backward()
            g = np.abs(nanoar.to_numpy(xt.grad)).sum(axis=0)
            assert np.all(g[i:] == 0) and (i == 0 or np.all(g[:i] != 0)), (y, i, g)


def test_conditional_fast_sampler_equals_naive(float64):
    """For a label per sample, or one for all: the same noise gives the same samples."""
    model = make_conditional(6, 4, seed=4)
    noise = nanoar.to_device(np.random.default_rng(0).random((30, 6)))
    y = model.check_labels(np.arange(30) % LABELS, 30)
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample_fast(noise, y)),
                                  nanoar.to_numpy(model.sample_naive(noise, y)))
    for labels in (1, np.arange(30) % LABELS):
        fast, naive = (nanoar.to_numpy(model.sample(30, seed=5, y=labels, method=m)) for m in ("fast", "naive"))
        np.testing.assert_array_equal(fast, naive)
    by_label = [nanoar.to_numpy(model.sample(200, seed=5, y=k)) for k in range(LABELS)]
    assert not np.array_equal(by_label[0], by_label[1]), "the label must change the samples"


@pytest.mark.parametrize("fused", [True, False])
def test_conditional_parameter_gradients_match_finite_differences(float64, fused):
    """Every parameter, the label biases C and E included, through the training loss with labels."""
    model = make_conditional(5, 3, seed=6)
    model.fused = fused
    x, y = binary(9, 5, seed=7), np.arange(9) % LABELS
    assert_param_grads(model, lambda: model.training_loss(x, y=y)[0], n_checks=8)
    model.zero_grad()
    model.training_loss(x, y=np.zeros(9, int))[0].backward()
    for p in (model.C.weight, model.E.weight):  # only y's rows learn
        assert np.all(p.grad[1:] == 0) and np.any(p.grad[0] != 0)


def test_conditional_config_and_float32_on_both_paths():
    model = make_conditional(4, 3, seed=8)
    assert model.config() == {"d": 4, "hidden": 3, "n_labels": LABELS}
    x, y = binary(5, 4, seed=9), np.array([2, 0, 1, 1, 2])
    for fused in (True, False):   # the zoo's model runs the fused path only: both here
        model.fused = fused
        model.zero_grad()
        lp = model.log_prob(x, y=y)
        assert lp.dtype == np.float32 and model.sample(3, y=0).dtype == np.float32
        (-lp.mean()).backward()
        assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_unconditional_model_is_unchanged():
    """n_labels = 0 (the default) adds no parameter, is in the config, refuses y; an old
    config without n_labels still builds it."""
    model = make(4, 3, seed=0)
    assert model.n_labels == 0 and model.config() == {"d": 4, "hidden": 3, "n_labels": 0}
    assert sorted(NADE(**{"d": 4, "hidden": 3}).state_dict()) == ["V", "W", "b", "c"]
    x = binary(3, 4, seed=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        model.log_prob(x, y=0)
    with pytest.raises(ValueError, match="pass y"):
        make_conditional(4, 3).log_prob(x)
