"""Completion (models/base.py "Completion"): `log_prob(x, observed=mask)` is log p(x_U | x_O)
and `sample(n, given=, observed=)` draws x_U from it, returning x_O unchanged.

For every model of the zoo (and every conditional one, with labels), on observed sets that
are a prefix of the model's ordering (of every mask set's, for a MADE mixture; hypothesis over
the prefix of each row; a sequence model's samples observe the same length in every row, as
a prompt does):

- sum over x_U of p(x_U | x_O) == 1, by enumeration, all rows' completions in one call;
- log_prob(x, observed) == log p(x) - log sum_{x_U'} p(x_O, x_U'), by brute force over
  every input (nothing of the model's completion is used for the reference);
- completion samples against that conditional (chi-square), the observed values unchanged,
  both samplers equal under one seed, the hidden values of `given` (NaN too) ignored, and a
  sequence model's completion the same sample as with `prompt=`; a MADE mixture weighs its
  mask sets by the evidence p_k(x_O);
- refusals: a set that is not a prefix of the ordering (the message names the ordering),
  given without observed and the reverse, masks of the wrong shape or not 0/1.

A Gaussian MADE is checked by quadrature over its one hidden variable. An order-agnostic
MADE (`resample_masks=True`) completes ANY observed set: normalisation, samples and the
observed values for arbitrary masks; a MADE trained in one ordering refuses such a set.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanoar
from nanoar import no_grad
from nanoar.models.base import SequenceModel
from nanoar.models.made import MADE

from ar_checks import (assert_completion_normalised, assert_completion_samples_match,
                       brute_force_completion_log_prob, chi_square_test, codes_of, completion_log_prob,
                       enumerate_inputs, prefix_mask)
from conftest import to_xp
from model_zoo import (CONDITIONAL_DISCRETE, DISCRETE, N_LABELS, classes, data, make, make_conditional,
                       order_agnostic_made, sample_options)
from strategies import fixture_settings

# every discrete model, unconditional ("zoo:...") and conditional ("cond:...")
KEYS = [f"zoo:{n}" for n in DISCRETE] + [f"cond:{n}" for n in CONDITIONAL_DISCRETE]
SEQUENCE_KEYS = [k for k in KEYS if k.split(":")[1] in ("wavenet", "wavenet-embedding-k3", "lstm", "transformer",
                                                         "transformer-tied-bias")]
# the hypothesis tests here score or sample several models per example: fewer examples (the
# 'thorough' profile still runs many)
few = settings(fixture_settings, max_examples=max(8, settings.default.max_examples // 3))


def build(key, seed=0):
    kind, name = key.split(":")
    return make(name, seed) if kind == "zoo" else make_conditional(name, seed)


def is_conditional(model):
    return model.n_labels > 0


def shape_of(model):
    return tuple(model.event_shape)


def dims(model):
    return int(np.prod(model.event_shape))


def flat_data(model, n, seed):
    """Valid host data (n, D) as float64."""
    return data(model, n, seed).reshape(n, -1).astype(np.float64)


def labels_for(model, n, seed):
    """Per-row labels for a conditional model, None for an unconditional one."""
    return np.random.default_rng(seed).integers(0, N_LABELS, n) if is_conditional(model) else None


def label_kw(y):
    return {} if y is None else {"y": y}


def orderings_of(model):
    """The orderings an observed set must be a prefix of: a MADE mixture's every mask set's
    (models/made.py, "Completion", case b), else the model's one ordering."""
    if isinstance(model, MADE) and model.num_masks > 1:
        return list(nanoar.to_numpy(model.orderings))
    return [np.asarray(model.ordering)]


def is_prefix(mask, ordering):
    by_position = np.asarray(mask, bool)[np.asarray(ordering)]
    return not (by_position[1:] & ~by_position[:-1]).any()


def completable(model):
    """Every observed set (D,) bool that the model completes exactly: a prefix of each of its
    orderings (the empty and the full set included), by size."""
    d = dims(model)
    masks = [np.array(m, bool) for m in itertools.product([False, True], repeat=d)]
    masks = [m for m in masks if all(is_prefix(m, o) for o in orderings_of(model))]
    return sorted(masks, key=lambda m: (m.sum(), tuple(~m)))


def partial(model, size):
    """A completable set observing about `size` variables (some hidden and some observed where
    the model has such a set; a MADE mixture of different orderings may have none)."""
    sets = completable(model)
    inner = [m for m in sets if 0 < m.sum() < len(m)] or sets
    return min(inner, key=lambda m: abs(int(m.sum()) - size))


@st.composite
def completable_rows(draw, model, same=False, max_rows=3):
    """Observed sets (rows, D) bool, each a completable set (hypothesis over the prefix of
    every row); the same set in every row with `same` (a sequence model's samples)."""
    sets = completable(model)
    if same:
        return np.repeat(draw(st.sampled_from(sets))[None], draw(st.integers(1, max_rows)), axis=0)
    return np.array(draw(st.lists(st.sampled_from(sets), min_size=1, max_size=max_rows)))


# ---------------------------------------------------------------------------- log_prob(x, observed)
@few
@pytest.mark.parametrize("key", KEYS)
@given(data=st.data())
def test_completion_is_normalised_over_the_hidden_variables(float64, key, data):
    """For prefixes of the ordering, one per row: sum_{x_U} exp(log_prob(x, observed)) == 1,
    every row's completions scored in one call with per-row masks (and labels)."""
    model = build(key)
    observed = data.draw(completable_rows(model), label="observed")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    given_rows = flat_data(model, len(observed), seed)
    assert_completion_normalised(model, given_rows, observed, shape_of(model), classes(model),
                                 y=labels_for(model, len(observed), seed), atol=1e-6)


@few
@pytest.mark.parametrize("key", KEYS)
@given(data=st.data())
def test_completion_log_prob_is_the_brute_force_conditional(float64, key, data):
    """log_prob(x, observed) == log p(x) - log sum_{x_U'} p(x_O, x_U') for every row, with
    per-row prefixes and labels."""
    model = build(key)
    observed = data.draw(completable_rows(model), label="observed")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = flat_data(model, len(observed), seed)
    y = labels_for(model, len(observed), seed)
    got = completion_log_prob(model, x, observed, shape_of(model), y)
    want = brute_force_completion_log_prob(model, x, observed, shape_of(model), classes(model), y)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9,
                               err_msg=f"log p(x_U | x_O) observing {[np.flatnonzero(m).tolist() for m in observed]}")


@pytest.mark.parametrize("key", KEYS)
def test_completion_log_prob_of_one_mask_for_all(float64, key):
    """A mask of the event's shape applies to every row (the same as repeating it), and the
    empty mask gives log_prob(x), the full mask 0."""
    model = build(key)
    x = flat_data(model, 5, 3)
    y = labels_for(model, 5, 3)
    one = partial(model, 2)
    with no_grad():
        got = model.log_prob(to_xp(x.reshape(5, *shape_of(model))), **label_kw(y), observed=one.reshape(shape_of(model)))
    np.testing.assert_allclose(nanoar.to_numpy(got.data), completion_log_prob(model, x, np.repeat(one[None], 5, 0),
                                                                             shape_of(model), y), rtol=1e-12)
    none = completion_log_prob(model, x, np.zeros_like(x, bool), shape_of(model), y)
    with no_grad():
        full = nanoar.to_numpy(model.log_prob(to_xp(x.reshape(5, *shape_of(model))), **label_kw(y)).data)
    np.testing.assert_allclose(none, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(completion_log_prob(model, x, np.ones_like(x, bool), shape_of(model), y), 0.0,
                               atol=1e-12)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method", ["fast", "naive"])
def test_completion_samples_match_the_conditional(float64, key, method):
    """Chi-square of completions against the brute-force p(x_U | x_O[, y]) for prefixes of
    lengths 1 and 2; the observed values come back unchanged."""
    model = build(key)
    y = 1 if is_conditional(model) else None
    n = 3000 if method == "fast" else 800
    for p, seed in ((1, 5), (2, 6)):
        given_row = flat_data(model, 1, seed)[0]
        observed = partial(model, p)
        assert_completion_samples_match(model, n, given_row, observed, shape_of(model), classes(model), seed=seed,
                                        y=y, method=method, **sample_options(model))


@few
@pytest.mark.parametrize("key", KEYS)
@given(data=st.data())
def test_naive_and_fast_completions_agree(float64, key, data):
    """Under one seed both samplers give the same completions, per-row givens and prefixes
    (the same length in every row for sequences) and per-row labels; observed values are
    returned unchanged."""
    model = build(key)
    observed = data.draw(completable_rows(model, same=isinstance(model, SequenceModel)), label="observed")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    n = len(observed)
    g = flat_data(model, n, seed)
    y = labels_for(model, n, seed)
    kw = dict(seed=seed, given=g.reshape(n, *shape_of(model)), observed=observed.reshape(n, *shape_of(model)),
              **label_kw(y), **sample_options(model))
    fast = nanoar.to_numpy(model.sample(n, **kw)).reshape(n, -1)
    naive = nanoar.to_numpy(model.sample(n, method="naive", **kw)).reshape(n, -1)
    np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(fast[observed], g[observed], err_msg="a completion changed an observed value")


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method", ["fast", "naive"])
def test_hidden_values_of_given_are_ignored(float64, key, method):
    """given's entries where the mask is 0 (NaN, or any valid value) change nothing."""
    model = build(key)
    n = 6
    observed = np.repeat(partial(model, 2)[None], n, axis=0)
    g = flat_data(model, n, 1)
    other = np.where(observed, g, flat_data(model, n, 2))
    nan = np.where(observed, g, np.nan)
    y = labels_for(model, n, 3)
    out = []
    for given_rows in (g, other, nan):
        out.append(nanoar.to_numpy(model.sample(n, seed=9, method=method, given=given_rows.reshape(n, *shape_of(model)),
                                                observed=observed.reshape(n, *shape_of(model)), **label_kw(y),
                                                **sample_options(model))))
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


@pytest.mark.parametrize("key", KEYS)
def test_a_completion_of_nothing_is_a_sample_and_of_everything_the_given(float64, key):
    """An all-zero mask draws the same samples as plain `sample` under one seed; an all-one
    mask returns given."""
    model = build(key)
    n = 5
    y = labels_for(model, n, 4)
    g = flat_data(model, n, 4).reshape(n, *shape_of(model))
    plain = nanoar.to_numpy(model.sample(n, seed=2, **label_kw(y), **sample_options(model)))
    empty = nanoar.to_numpy(model.sample(n, seed=2, given=g, observed=np.zeros(shape_of(model)), **label_kw(y),
                                         **sample_options(model)))
    np.testing.assert_array_equal(empty, plain)
    full = nanoar.to_numpy(model.sample(n, seed=2, given=g, observed=np.ones(shape_of(model), bool), **label_kw(y),
                                        **sample_options(model)))
    np.testing.assert_array_equal(full, g)


@pytest.mark.parametrize("key", SEQUENCE_KEYS)
@pytest.mark.parametrize("method", ["fast", "naive"])
@pytest.mark.parametrize("p", [1, 3])
def test_a_sequence_completion_is_a_prompt(float64, key, method, p):
    """For sequences, completing an observed prefix of length p is sampling with that prompt:
    the same samples under one seed."""
    model = build(key)
    n = 6
    g = flat_data(model, n, p).astype(np.int64)
    y = labels_for(model, n, p)
    observed = prefix_mask(model.ordering, [p] * n)
    completed = model.sample(n, seed=p, method=method, given=g, observed=observed, **label_kw(y),
                             **sample_options(model))
    prompted = model.sample(n, seed=p, method=method, prompt=g[:, :p], **label_kw(y), **sample_options(model))
    np.testing.assert_array_equal(nanoar.to_numpy(completed), nanoar.to_numpy(prompted))


@pytest.mark.parametrize("key", SEQUENCE_KEYS)
def test_a_sequence_completion_refuses_ragged_prefixes_and_a_prompt(key):
    model = build(key)
    g = flat_data(model, 2, 0)
    y = labels_for(model, 2, 0)
    with pytest.raises(ValueError, match="same length"):
        model.sample(2, given=g, observed=prefix_mask(model.ordering, [1, 2]), **label_kw(y))
    with pytest.raises(ValueError, match="prompt"):
        model.sample(2, given=g, observed=prefix_mask(model.ordering, [1, 1]), prompt=g[:, :1], **label_kw(y))


@pytest.mark.parametrize("p", [2, 3])
def test_a_mixture_completion_weighs_its_mask_sets_by_the_evidence(float64, p):
    """A MADE mixture (K mask sets, one ordering) completes from p(x_U | x_O) = sum_k
    w_k p_k(x_U | x_O) with w_k proportional to p_k(x_O), not 1/K: on the (given, label)
    where the two differ most, the samples match the first and are told from the second."""
    model = make_conditional("made-mixture")
    xs = enumerate_inputs((4,))
    observed = prefix_mask(model.ordering, [p])[0]
    best = None
    for c in range(N_LABELS):
        with no_grad():
            pk = np.exp(np.stack([nanoar.to_numpy(model.log_prob_mask(to_xp(xs), k=k, y=c).data)
                                  for k in range(model.num_masks)]))                    # (K, 16)
        for g in xs[::2 ** (4 - p)]:                                                # every x_O
            match = (xs[:, observed] == g[observed]).all(axis=1)
            exact = pk[:, match].sum(axis=0) / pk[:, match].sum()
            uniform = (pk[:, match] / pk[:, match].sum(axis=1, keepdims=True)).mean(axis=0)
            gap = np.abs(exact - uniform).sum() / 2
            if best is None or gap > best[0]:
                best = (gap, c, g, uniform)
    gap, c, g, uniform = best
    assert gap > 0.03, f"the mask sets agree too well (total variation {gap:.3f}) for this test to tell"
    n = 8000
    s = assert_completion_samples_match(model, n, g, observed, (4,), 2, seed=p, y=c)
    counts = np.bincount(codes_of(s[:, ~observed], 2), minlength=len(uniform))
    with pytest.raises(AssertionError):  # ... and the test could fail: 1/K weights are rejected
        chi_square_test(counts, uniform * n)


# ---------------------------------------------------------------------------- refusals
@few
@pytest.mark.parametrize("key", KEYS)
@given(data=st.data())
def test_only_prefixes_of_the_ordering_are_completed(key, data):
    """Any mask: a prefix of the ordering (of every mask set's, for a MADE mixture) is scored
    and sampled; any other set is refused by log_prob and by sample with a ValueError that
    names the ordering."""
    model = build(key)
    d = dims(model)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=d, max_size=d), label="mask"))
    g = flat_data(model, 2, 0).reshape(2, *shape_of(model))
    y = labels_for(model, 2, 0)
    m = mask.reshape(shape_of(model))
    if all(is_prefix(mask, o) for o in orderings_of(model)):
        model.log_prob(to_xp(g), **label_kw(y), observed=m)
        model.sample(2, seed=0, given=g, observed=m, **label_kw(y), **sample_options(model))
        return
    with pytest.raises(ValueError, match="ordering"):
        model.log_prob(to_xp(g), **label_kw(y), observed=m)
    with pytest.raises(ValueError, match="ordering"):
        model.sample(2, seed=0, given=g, observed=m, **label_kw(y), **sample_options(model))


@pytest.mark.parametrize("key", KEYS)
def test_given_and_observed_go_together(key):
    model = build(key)
    g = flat_data(model, 2, 0).reshape(2, *shape_of(model))
    m = partial(model, 1).reshape(shape_of(model))
    y = labels_for(model, 2, 0)
    with pytest.raises(ValueError, match="observed"):
        model.sample(2, given=g, **label_kw(y), **sample_options(model))
    with pytest.raises(ValueError, match="given"):
        model.sample(2, observed=m, **label_kw(y), **sample_options(model))


@pytest.mark.parametrize("key", KEYS)
def test_bad_masks_are_refused(key):
    """Masks of the wrong shape (one variable too many, the wrong number of rows) or with
    values other than 0/1 (2, 0.5) get a ValueError from log_prob and from sample."""
    model = build(key)
    shape = shape_of(model)
    g = flat_data(model, 3, 0).reshape(3, *shape)
    y = labels_for(model, 3, 0)
    good = [m for m in completable(model) if m.any()][0].astype(np.float64)  # some variable observed
    bad = {
        "one too many": np.append(good, 0.0),
        "wrong rows": np.repeat(good.reshape(1, *shape), 2, axis=0),
        "a 2": np.where(good > 0, 2.0, 0.0).reshape(shape),
        "a 0.5": np.where(good > 0, 0.5, 0.0).reshape(shape),
        "strings": np.array(["1"] + ["0"] * (good.size - 1)).reshape(shape),
    }
    for what, mask in bad.items():
        with pytest.raises(ValueError, match="observed"):
            model.log_prob(to_xp(g), **label_kw(y), observed=mask)
        with pytest.raises(ValueError, match="observed"):
            model.sample(3, given=g, observed=mask, **label_kw(y), **sample_options(model))
    with pytest.raises(ValueError, match="given"):  # given of the wrong shape
        model.sample(3, given=g.reshape(3, -1)[:, :-1], observed=good.reshape(shape), **label_kw(y),
                     **sample_options(model))


# ---------------------------------------------------------------------------- Gaussian MADE
GAUSSIAN_KEYS = ["zoo:gaussian-made", "cond:gaussian-made"]


def _gaussian_grid(model, given_row, y):
    """The hidden variable (the last of the ordering, the first two observed) on a grid fine
    and wide enough for its conditional: rows (G, 3) and the spacing."""
    order = model.ordering
    with no_grad():
        dist = model.distribution(model.as_input(to_xp(given_row[None])), model.check_labels(y, 1))
    h = int(order[-1])
    mu = float(nanoar.to_numpy(dist.mean.data).reshape(-1)[h])
    sd = math.exp(float(nanoar.to_numpy(dist.log_std.data).reshape(-1)[h]))
    grid = np.linspace(mu - 12 * sd, mu + 12 * sd, 4001)
    rows = np.repeat(given_row[None], len(grid), 0)
    rows[:, h] = grid
    return rows, grid[1] - grid[0], h


@few
@pytest.mark.parametrize("key", GAUSSIAN_KEYS)
@given(values=st.lists(st.floats(-2, 2), min_size=3, max_size=3))
def test_gaussian_completion_by_quadrature(float64, key, values):
    """Observing the first two variables of the ordering: the density of the third,
    exp(log_prob(x, observed)), integrates to 1, and equals p(x) / integral p(x_O, u) du."""
    model = build(key)
    y = 1 if is_conditional(model) else None
    observed = prefix_mask(model.ordering, [2])[0]
    rows, du, _ = _gaussian_grid(model, np.array(values), y)
    lp = completion_log_prob(model, rows, np.repeat(observed[None], len(rows), 0), (3,), y)
    assert abs(np.exp(lp).sum() * du - 1) < 1e-6, f"p(x_U | x_O) integrates to {np.exp(lp).sum() * du!r}"
    with no_grad():
        joint = nanoar.to_numpy(model.log_prob(to_xp(rows), **label_kw(y)).data)
    m = joint.max()
    np.testing.assert_allclose(lp, joint - (m + math.log(np.exp(joint - m).sum() * du)), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("key", GAUSSIAN_KEYS)
def test_gaussian_completion_samples(float64, key):
    """Completions of a Gaussian MADE: the observed values unchanged, the hidden one in 20
    bins of equal probability under the quadrature CDF of p(x_U | x_O) (chi-square), the
    two samplers equal."""
    model = build(key)
    y = 2 if is_conditional(model) else None
    observed = prefix_mask(model.ordering, [2])[0]
    given_row = np.array([0.3, -0.7, 1.1])
    rows, du, h = _gaussian_grid(model, given_row, y)
    pdf = np.exp(completion_log_prob(model, rows, np.repeat(observed[None], len(rows), 0), (3,), y)) * du
    cdf = np.cumsum(pdf) / pdf.sum()
    edges = np.interp(np.arange(1, 20) / 20, cdf, rows[:, h])
    n = 4000
    s = nanoar.to_numpy(model.sample(n, seed=1, given=given_row, observed=observed, **label_kw(y)))
    assert s.shape == (n, 3)
    np.testing.assert_array_equal(s[:, observed], np.broadcast_to(given_row[observed], (n, 2)))
    counts = np.bincount(np.searchsorted(edges, s[:, h]), minlength=20)
    chi_square_test(counts, np.full(20, n / 20), what="Gaussian completion samples")
    naive = nanoar.to_numpy(model.sample(50, seed=1, method="naive", given=given_row, observed=observed,
                                         **label_kw(y)))
    np.testing.assert_allclose(naive, s[:50], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- order-agnostic MADE
@st.composite
def any_masks(draw, d, max_rows=3):
    return np.array(draw(st.lists(st.lists(st.booleans(), min_size=d, max_size=d), min_size=1, max_size=max_rows)))


@few
@pytest.mark.parametrize("n_labels", [0, N_LABELS])
@given(data=st.data())
def test_order_agnostic_made_completes_any_set(float64, n_labels, data):
    """ANY observed set, one per row: sum over x_U of p(x_U | x_O) == 1 in one call with
    per-row masks, and each row's value is the one it gets scored alone (the ordering chosen
    for a set does not depend on the other rows)."""
    model = order_agnostic_made(seed=data.draw(st.integers(0, 3), label="made seed"), n_labels=n_labels)
    observed = data.draw(any_masks(4), label="masks")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    n = len(observed)
    g = flat_data(model, n, seed)
    y = labels_for(model, n, seed)
    assert_completion_normalised(model, g, observed, (4,), 2, y=y, atol=1e-6)
    together = completion_log_prob(model, g, observed, (4,), y)
    alone = [completion_log_prob(model, g[r:r + 1], observed[r:r + 1], (4,), None if y is None else y[r:r + 1])[0]
             for r in range(n)]
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)


@settings(fixture_settings, max_examples=max(6, settings.default.max_examples // 4))
@given(mask=st.lists(st.booleans(), min_size=4, max_size=4), seed=st.integers(0, 2**16))
def test_order_agnostic_made_completion_samples(float64, mask, seed):
    """ANY observed set: completions match exp(log_prob(x, observed)) (chi-square), keep the
    observed values, and the two samplers agree."""
    model = order_agnostic_made(seed=seed % 4)
    observed = np.array(mask)
    g = flat_data(model, 1, seed)[0]
    s = assert_completion_samples_match(model, 3000, g, observed, (4,), 2, seed=seed, reference="observed")
    naive = nanoar.to_numpy(model.sample(3000, seed=seed, method="naive", given=g, observed=observed))
    np.testing.assert_array_equal(naive, s)


def test_order_agnostic_made_completes_a_conditional_set_with_labels(float64):
    model = order_agnostic_made(seed=1, n_labels=N_LABELS)
    observed = np.array([False, True, False, True])
    g = flat_data(model, 1, 0)[0]
    assert_completion_samples_match(model, 3000, g, observed, (4,), 2, seed=3, y=2, reference="observed")


def test_a_made_trained_in_one_ordering_refuses_a_non_prefix_set():
    """Without order-agnostic training a MADE completes only prefixes of its ordering."""
    nanoar.manual_seed(0)
    model = MADE(4, [8, 8], ordering="random", seed=5)
    order = model.ordering
    mask = np.zeros(4, bool)
    mask[order[1]] = True                      # the second variable observed, the first hidden
    x = flat_data(model, 2, 0)
    with pytest.raises(ValueError, match="ordering"):
        model.log_prob(to_xp(x), observed=mask)
    with pytest.raises(ValueError, match="ordering"):
        model.sample(2, given=x, observed=mask)
