"""Class-conditional models (`n_labels = C > 0`, see models/base.py "Conditioning") and the
generative classifier of nanoar/conditioning.py, on every conditional model of the zoo:

sum_x p(x | y) = 1 for every y, the autoregressive property in x for every y, samples for a
label (and per-sample labels) against p(x | y), both samplers equal under one seed, the
label changing the likelihood, Bayes' rule for p(y | x), the training loss with labels,
the refusals of bad labels (and of labels given to an unconditional model), a scalar label
broadcast, and an unconditional model as the conditional one with zero label weights.

The conditional zoo (tests/model_zoo.py CONDITIONAL) sets every label weight (zero at
init: a conditional model starts as its unconditional one) to random non-zero values, or
y would have no effect and half of these tests could not fail.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import no_grad
from nanoar.models import build_model, model_name
from nanoar.models.base import SequenceModel
from nanoar.models.made import GaussianMADE, MADE

from ar_checks import assert_future_does_not_matter, assert_normalised, assert_samples_match, enumerate_inputs
from conftest import to_xp
from model_zoo import (CONDITIONAL_DISCRETE, CONDITIONAL_NAMES, N_LABELS, NAMES, _labelled, classes, data,
                       label_parameters, make, make_conditional, sample_options)
from strategies import fixture_settings

LABELS = range(N_LABELS)


def host(t):
    """A Tensor's (or device array's) values as host float64."""
    return nanoar.to_numpy(getattr(t, "data", t)).astype(np.float64)


def all_inputs(model):
    return enumerate_inputs(model.event_shape, classes(model))


def log_probs_by_label(model, x):
    """log p(x | y = c) for every row of x and class c: (N, C) host float64."""
    with no_grad():
        return np.stack([host(model.log_prob(to_xp(x), y=c)) for c in LABELS], axis=1)


# ---------------------------------------------------------------------------- the zoo itself
@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_conditional_zoo_models_have_random_label_weights(name):
    model = make_conditional(name)
    assert model.n_labels == N_LABELS
    params = label_parameters(model)
    assert params, "no label parameters found"
    for pname, p in params:
        assert np.abs(host(p)).min() > 0, f"{pname} has zero entries"


# ---------------------------------------------------------------------------- exactness, for every y
@pytest.mark.parametrize("name", CONDITIONAL_DISCRETE)
def test_normalised_for_every_label(float64, name):
    """sum over all inputs of p(x | y) == 1, for each y."""
    model = make_conditional(name)
    for c in LABELS:
        assert_normalised(model, n_classes=classes(model), atol=1e-6, y=c)


def test_gaussian_normalised_for_every_label_by_quadrature(float64):
    """The density p(x | y) integrates to 1 for each y: a 2-D conditional Gaussian MADE on a
    fine grid (scales near 1, so that +-12 holds the mass to this tolerance)."""
    nanoar.manual_seed(0)
    model = _labelled(GaussianMADE(2, [4], ordering="random", seed=1, n_labels=N_LABELS), scale=0.3)
    for p in model.log_std_head.parameters():
        p.data *= 0.25
    g = np.linspace(-12, 12, 801)
    x = to_xp(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2))
    totals = []
    with no_grad():
        for c in LABELS:
            totals.append(np.exp(host(model.log_prob(x, y=c))).sum() * (g[1] - g[0]) ** 2)
    np.testing.assert_allclose(totals, 1.0, atol=1e-6, err_msg="integral of p(x | y) over x, for y = 0, 1, 2")


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_autoregressive_for_every_label(float64, name):
    """Changing the variables after position k of the ordering leaves every conditional up to
    k unchanged, for each label and for per-row labels (sequence models past their receptive
    field; a MADE mixture mask set by mask set)."""
    model = make_conditional(name)
    length = 9 if isinstance(model, SequenceModel) else None
    if length:
        model.seq_len = length
    x = data(model, 3, seed=1, length=length)
    n_classes = 2 if model.kind == "real" else classes(model)
    for y in [*LABELS, np.array([2, 0, 1])]:
        for k in range(getattr(model, "num_masks", 1)):
            options = {"k": k} if getattr(model, "num_masks", 1) > 1 else {}
            if options:
                model.mask_index = k
            assert_future_does_not_matter(model, x, np.random.default_rng(2), n_classes=n_classes, y=y, **options)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", CONDITIONAL_DISCRETE)
@pytest.mark.parametrize("method", ["fast", "naive"])
def test_samples_match_the_likelihood_for_each_label(float64, name, method):
    """Chi-square of samples of one label against p(x | y), for each y; and of samples with
    per-sample labels against the pairs (y, x)."""
    model = make_conditional(name)
    model.seq_len = min(getattr(model, "seq_len", 3), 3)
    n = 3000 if method == "fast" else 800
    for c in LABELS:
        assert_samples_match(model, n, n_classes=classes(model), seed=c, method=method, y=c,
                             **sample_options(model))
    labels = np.random.default_rng(5).integers(0, N_LABELS, n)
    assert_samples_match(model, n, n_classes=classes(model), seed=7, method=method, y=labels,
                         **sample_options(model))


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_naive_and_fast_samplers_agree_with_labels(float64, name):
    model = make_conditional(name)
    for y in (1, np.array([0, 2, 1, 1, 0, 2, 2])):
        fast = nanoar.to_numpy(model.sample(7, seed=3, y=y, **sample_options(model)))
        naive = nanoar.to_numpy(model.sample(7, seed=3, y=y, method="naive", **sample_options(model)))
        assert fast.shape == (7, *model.event_shape)
        if model.kind == "real":
            np.testing.assert_allclose(fast, naive, rtol=1e-9, atol=1e-9)
        else:
            np.testing.assert_array_equal(fast, naive)


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_samples_depend_on_the_label(float64, name):
    """Under one seed, the same noise gives different samples for different labels (the
    label weights are far from zero), and a sample's label is its own: row i of a batch with
    labels y equals row i of the batch drawn with the single label y_i."""
    model = make_conditional(name)
    n = 40
    per_label = [nanoar.to_numpy(model.sample(n, seed=4, y=c, **sample_options(model))) for c in LABELS]
    for a in range(N_LABELS):
        for b in range(a + 1, N_LABELS):
            assert not np.array_equal(per_label[a], per_label[b]), f"samples for y={a} and y={b} are identical"
    labels = np.arange(n) % N_LABELS
    mixed = nanoar.to_numpy(model.sample(n, seed=4, y=labels, **sample_options(model)))
    if isinstance(model, SequenceModel) or model.kind == "real" or getattr(model, "num_masks", 1) > 1:
        # (a sequence sampler draws one class per row and step from a shared generator, so the
        # rows of a batch interleave their randomness; the noise-per-variable models do not)
        return
    for c in LABELS:
        np.testing.assert_array_equal(mixed[labels == c], per_label[c][labels == c],
                                      err_msg=f"rows with label {c} differ from the samples drawn with y={c}")


# ---------------------------------------------------------------------------- the label matters
@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_the_label_changes_the_likelihood(float64, name):
    """log p(x | y) differs across y (for the inputs as a whole, and by a clear margin)."""
    model = make_conditional(name)
    x = all_inputs(model) if model.kind != "real" else data(model, 16, seed=3)
    ll = log_probs_by_label(model, x)
    for a in range(N_LABELS):
        for b in range(a + 1, N_LABELS):
            gap = np.abs(ll[:, a] - ll[:, b]).max()
            assert gap > 1e-2, f"log p(x | y={a}) and log p(x | y={b}) differ by at most {gap:.2g}"


@pytest.mark.parametrize("name", CONDITIONAL_DISCRETE)
def test_generative_classifier_is_bayes_rule(float64, name):
    """softmax_y(log p(x | y) + log p(y)) sums to 1 over y and equals p(y | x) from the joint
    table p(x, y) = p(x | y) p(y) over every x and y (which itself sums to 1), and the
    marginal logsumexp_y equals log sum_y p(x, y)."""
    from nanoar import conditioning  # noqa: PLC0415

    model = make_conditional(name)
    x = all_inputs(model)
    prior = np.log(np.array([0.2, 0.3, 0.5]))
    ll = conditioning.class_log_likelihoods(model, x)
    np.testing.assert_allclose(ll, log_probs_by_label(model, x), rtol=1e-12, atol=1e-12)
    post = conditioning.log_posterior(ll, prior)
    assert post.shape == (len(x), N_LABELS)
    np.testing.assert_allclose(np.exp(post).sum(axis=1), 1.0, atol=1e-12)
    joint = np.exp(ll) * np.exp(prior)                          # (X, C): p(x, y), by brute force
    assert abs(joint.sum() - 1.0) < 1e-6, f"p(x, y) sums to {joint.sum()!r} over every x and y"
    np.testing.assert_allclose(np.exp(post), joint / joint.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(conditioning.log_marginal(ll, prior), np.log(joint.sum(axis=1)), rtol=1e-9)


@pytest.mark.parametrize("name", CONDITIONAL_DISCRETE)
def test_generative_classifier_recovers_the_sampled_labels(float64, name):
    """Draw (y, x) from p(y) p(x | y): among the samples that share an input x, the share of
    each label estimates p(y | x); the predicted posterior must explain the labels: the mean
    log p(y_i | x_i) over the samples is close to its expectation under the model, the mean
    over x of sum_y p(y | x) log p(y | x) (both estimate -H(Y | X))."""
    model = make_conditional(name)
    model.seq_len = min(getattr(model, "seq_len", 3), 3)
    rng = np.random.default_rng(11)
    n = 4000
    labels = rng.integers(0, N_LABELS, n)
    x = nanoar.to_numpy(model.sample(n, seed=12, y=labels, **sample_options(model))).astype(np.float64)
    ll = log_probs_by_label(model, x)
    post = ll - np.logaddexp.reduce(ll, axis=1, keepdims=True)      # uniform prior
    got = post[np.arange(n), labels].mean()
    want = (np.exp(post) * post).sum(axis=1).mean()
    se = post[np.arange(n), labels].std() / math.sqrt(n)
    assert abs(got - want) < 6 * se + 1e-9, f"mean log p(y_i | x_i) = {got:.4f}, expected {want:.4f} (se {se:.4f})"
    # a wrong-label posterior (the labels shifted by one) is clearly worse
    assert post[np.arange(n), (labels + 1) % N_LABELS].mean() < got - 6 * se


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_training_loss_with_labels_is_the_mean_nll(float64, name):
    """training_loss(x, y=y) = -mean log p(x | y) (per id for sequences; a MADE mixture trains
    one mask set per step, so its loss is that set's), its gradient reaches the label
    weights, and other labels give another loss."""
    model = make_conditional(name)
    x = to_xp(data(model, 6, seed=9))
    y = np.array([0, 1, 2, 2, 1, 0])
    loss, state = model.training_loss(x, None, y=y)
    loss.backward()
    assert loss.shape == () and math.isfinite(loss.item())
    grads = [np.abs(host(p.grad)).sum() if p.grad is not None else 0.0 for _, p in label_parameters(model)]
    assert sum(grads) > 0, "the loss's gradient does not reach the label weights"
    with no_grad():
        if getattr(model, "num_masks", 1) > 1:
            lp = host(model.log_prob_per_variable(x, y=y, k=model.mask_index)).sum(axis=1)
        else:
            lp = host(model.log_prob(x, y=y))
    per = model.seq_len if isinstance(model, SequenceModel) else 1
    assert loss.item() == pytest.approx(-lp.mean() / per, rel=1e-12)
    if getattr(model, "num_masks", 1) > 1:
        model.mask_index = (model.mask_index - 1) % model.num_masks   # the same mask set again
    other, _ = model.training_loss(x, None, y=(y + 1) % N_LABELS)
    assert other.item() != pytest.approx(loss.item(), rel=1e-6), "the loss does not depend on the labels"


# ---------------------------------------------------------------------------- broadcasting, refusals
@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_one_label_broadcasts(float64, name):
    """y = c (an int, a numpy int, a 0-d array, an integral float) means c for every example."""
    model = make_conditional(name)
    x = to_xp(data(model, 5, seed=2))
    with no_grad():
        want = host(model.log_prob(x, y=np.full(5, 2)))
        for y in (2, np.int64(2), np.array(2), 2.0):
            np.testing.assert_array_equal(host(model.log_prob(x, y=y)), want, err_msg=f"y={y!r}")
    s = nanoar.to_numpy(model.sample(5, seed=1, y=np.full(5, 1), **sample_options(model)))
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(5, seed=1, y=1, **sample_options(model))), s)


def _calls(model, n=4):
    """Each entry point that takes y, as a function of y."""
    x = to_xp(data(model, n, seed=0))
    return {
        "log_prob": lambda y: model.log_prob(x, y=y),
        "sample": lambda y: model.sample(n, seed=0, y=y, **sample_options(model)),
        "training_loss": lambda y: model.training_loss(x, None, y=y),
    }


BAD_LABELS = {
    "wrong length": (np.array([0, 1, 2]), r"\by\b.*shape|label"),
    "two axes": (np.zeros((4, 1), int), r"\by\b.*shape|label"),
    "too large": (np.array([0, 1, 3, 0]), r"\[0, 3\)"),
    "negative": (-1, r"\[0, 3\)"),
    "non-integer float": (np.array([0.5, 1.0, 0.0, 2.0]), r"\by\b|label"),
    "string": ("a", r"\by\b|label"),
    "strings": (np.array(["0", "1", "2", "0"]), r"\by\b|label"),
    "booleans": (np.array([True, False, True, False]), r"\by\b|label"),
}


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_refused(name, case):
    model = make_conditional(name)
    y, match = BAD_LABELS[case]
    for entry, call in _calls(model).items():
        with pytest.raises(ValueError, match=match):
            call(y)


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_a_conditional_model_requires_labels(name):
    model = make_conditional(name)
    x = to_xp(data(model, 3, seed=0))
    for call in (lambda: model.log_prob(x), lambda: model.sample(3, **sample_options(model)),
                 lambda: model.training_loss(x, None)):
        with pytest.raises(ValueError, match=r"class-conditional.*\by\b"):
            call()


@pytest.mark.parametrize("name", NAMES)
def test_an_unconditional_model_refuses_labels(name):
    model = make(name)
    assert model.n_labels == 0 and not label_parameters(model)
    for entry, call in _calls(model).items():
        for y in (0, np.zeros(4, int)):
            with pytest.raises(ValueError, match=r"not class-conditional"):
                call(y)


# ---------------------------------------------------------------------------- unconditional = zero label weights
@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_zero_label_weights_give_the_unconditional_model(float64, name):
    """A conditional model whose label weights are zero (as at init) is, for every y, the
    unconditional model with the same other weights: the same likelihood and, under one
    seed, the same samples. The unconditional one has no label parameters and n_labels 0."""
    cond = make_conditional(name)
    config = {**cond.config(), "n_labels": 0}
    plain = build_model(model_name(cond), config)
    assert plain.n_labels == 0 and not label_parameters(plain)
    labelled = {n for n, _ in label_parameters(cond)}
    state = {k: nanoar.to_numpy(v) for k, v in cond.state_dict().items() if k not in labelled}
    assert set(state) == set(plain.state_dict()), "the conditional model's other weights are not the unconditional's"
    plain.load_state_dict(state)
    for _, p in label_parameters(cond):
        p.data = p.data * 0
    x = to_xp(data(cond, 6, seed=4))
    with no_grad():
        want = host(plain.log_prob(x))
        s = nanoar.to_numpy(plain.sample(6, seed=2, **sample_options(plain)))
        for c in LABELS:
            np.testing.assert_allclose(host(cond.log_prob(x, y=c)), want, rtol=1e-12, atol=1e-12)
            got = nanoar.to_numpy(cond.sample(6, seed=2, y=c, **sample_options(cond)))
            np.testing.assert_allclose(got, s, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_config_rebuilds_the_conditional_model(float64, name):
    model = make_conditional(name)
    assert model.config().get("n_labels") == N_LABELS
    clone = build_model(model_name(model), model.config())
    clone.load_state_dict({k: nanoar.to_numpy(v) for k, v in model.state_dict().items()})
    x = to_xp(data(model, 3, seed=8))
    with no_grad():
        for c in LABELS:
            np.testing.assert_array_equal(host(clone.log_prob(x, y=c)), host(model.log_prob(x, y=c)))


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_float32_stays_float32_with_labels(name):
    """Without float64 asked for, a conditional model's likelihood and every gradient, the
    label weights' included, stay float32."""
    model = make_conditional(name)
    lp = model.log_prob(to_xp(data(model, 3, seed=8)), y=np.arange(3) % N_LABELS)
    assert lp.dtype == np.float32
    (-lp.mean()).backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


# ---------------------------------------------------------------------------- a property over labels
@fixture_settings
@given(st.sampled_from(CONDITIONAL_DISCRETE), st.lists(st.integers(0, N_LABELS - 1), min_size=1, max_size=6),
       st.integers(0, 2**16))
def test_per_example_labels_score_each_example_with_its_own(float64, name, labels, seed):
    """log_prob(x, y) with one label per example equals, row by row, log_prob with that row's
    label for all: the batch does not mix the labels of its examples."""
    model = make_conditional(name)
    x = data(model, len(labels), seed=seed)
    labels = np.array(labels)
    with no_grad():
        got = host(model.log_prob(to_xp(x), y=labels))
    np.testing.assert_allclose(got, log_probs_by_label(model, x)[np.arange(len(x)), labels], rtol=1e-12, atol=1e-12)


def test_order_agnostic_made_builder_is_conditional_too(float64):
    """(sanity of the zoo's builder: an order-agnostic MADE takes labels like any MADE)"""
    from model_zoo import order_agnostic_made  # noqa: PLC0415

    model = order_agnostic_made(seed=1, n_labels=N_LABELS)
    assert isinstance(model, MADE) and model.n_labels == N_LABELS
    assert_normalised(model, atol=1e-6, y=1)
