"""nanoar.anomaly: the metrics against brute-force counts (ties included), the p-value's
definition and its uniformity on in-distribution data, and the scores' definitions."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoar import anomaly
from nanoar.models import build_model

# small integer scores make ties common
scores = st.lists(st.integers(0, 6), min_size=1, max_size=25).map(lambda v: np.array(v, float))


def brute_auroc(a, b):
    wins = sum((y > x) + 0.5 * (y == x) for x in a for y in b)
    return wins / (len(a) * len(b))


def brute_flagged(a, b):
    """(TPR, FPR, precision) when flagging scores >= t, for every distinct score t."""
    out = []
    for t in sorted(set(a) | set(b), reverse=True):
        tp, fp = sum(y >= t for y in b), sum(x >= t for x in a)
        out.append((tp / len(b), fp / len(a), tp / (tp + fp)))
    return out


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_auroc_is_the_pairwise_count(a, b):
    assert anomaly.auroc(a, b) == pytest.approx(brute_auroc(a, b), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_aupr_is_average_precision_over_distinct_thresholds(a, b):
    expected, last_recall = 0.0, 0.0
    for recall, _, precision in brute_flagged(a, b):
        expected += (recall - last_recall) * precision
        last_recall = recall
    assert anomaly.aupr(a, b) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(scores, scores, st.sampled_from([0.5, 0.8, 0.95, 1.0]))
def test_fpr_at_tpr_is_the_smallest_fpr_reaching_the_tpr(a, b, tpr):
    expected = min(fpr for t, fpr, _ in brute_flagged(a, b) if t >= tpr - 1e-12)
    assert anomaly.fpr_at_tpr(a, b, tpr) == pytest.approx(expected, abs=1e-12)


def test_metrics_on_separated_and_identical_scores():
    assert anomaly.metrics([0, 1, 2], [3, 4]) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    m = anomaly.metrics([1, 1, 1], [1, 1])
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0 and m["aupr"] == pytest.approx(2 / 5)
    assert anomaly.auroc([3, 4], [0, 1]) == 0.0


@pytest.mark.parametrize("bad", [([], [1.0]), ([1.0], []), ([np.nan], [1.0]), ([1.0], [np.inf])])
def test_metrics_refuse_empty_or_non_finite_scores(bad):
    with pytest.raises(ValueError):
        anomaly.auroc(*bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=20), st.lists(st.integers(0, 5), min_size=1, max_size=10))
def test_p_value_counts_reference_examples_as_or_less_likely(ref, x):
    ref, x = np.array(ref, float), np.array(x, float)
    expected = [(1 + sum(r >= v for r in ref)) / (len(ref) + 1) for v in x]
    np.testing.assert_allclose(anomaly.p_values(x, ref), expected)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_p_values_of_in_distribution_data_are_uniform(seed):
    """Reference and scored examples both drawn from a tiny model: the p-values are then
    uniform on {1..N+1}/(N+1); the KS distance to U(0, 1) stays under a loose bound."""
    model = build_model("made", {"d": 6, "hidden_sizes": [8], "seed": seed % 1000})
    ref = anomaly.example_nll(model, model.sample(2000, seed=seed))
    x = anomaly.example_nll(model, model.sample(400, seed=seed + 1))
    p = np.sort(anomaly.p_values(x, ref))
    n = len(p)
    # p-values are conservative (P(p <= u) <= u) and, with ties in a discrete model, lumpy;
    # compare the empirical CDF with U(0,1) from above only where it can exceed it
    ks = np.max(np.arange(1, n + 1) / n - p)
    assert ks < 1.63 / math.sqrt(n) + 0.02   # the 1% Kolmogorov critical value, plus slack


def test_p_values_flag_improbable_examples():
    model = build_model("made", {"d": 16, "hidden_sizes": [16], "seed": 0})
    ref = anomaly.example_nll(model, model.sample(500, seed=0))
    p = anomaly.p_values([ref.max() + 1, ref.min() - 1], ref)
    assert p[0] == pytest.approx(1 / 501) and p[1] == 1.0


def test_example_nll_matches_log_prob_in_any_batching():
    model = build_model("made", {"d": 10, "hidden_sizes": [12], "seed": 3})
    x = model.sample(37, seed=1)
    whole = -model.log_prob(x).data
    for bs in (1, 5, 37, 100):
        np.testing.assert_allclose(anomaly.example_nll(model, x, bs), whole, rtol=1e-6)


def test_likelihood_ratio_and_complexity_definitions():
    np.testing.assert_allclose(anomaly.likelihood_ratio([10.0, 3.0], [12.0, 1.0]), [2.0, -2.0])
    np.testing.assert_allclose(anomaly.complexity_score([math.log(2) * 100], [60.0]), [40.0])


def test_compressed_lengths_rank_simple_images_below_noise():
    rng = np.random.default_rng(0)
    flat = np.zeros((3, 28, 28), np.uint8)
    noise = (rng.random((3, 28, 28)) < 0.5).astype(np.uint8)
    for bits in (anomaly.png_bits, anomaly.zlib_bits):
        lf, ln = bits(flat), bits(noise)
        assert (lf < ln).all() and (lf > 0).all()
        assert len(set(lf)) == 1        # a function of the image alone
    # 784 random bits cannot be stored in (much) fewer than 784 bits
    assert (anomaly.png_bits(noise) > 784).all() and (anomaly.zlib_bits(noise) > 784).all()


def test_typicality_threshold_has_its_false_positive_rate():
    rng = np.random.default_rng(0)
    ref = rng.normal(100, 10, size=20000)
    for b in (1, 5, 25):
        h, eps = anomaly.typicality_threshold(ref, b, 0.05, np.random.default_rng(1))
        assert h == pytest.approx(ref.mean())
        fresh = anomaly.batch_means(rng.normal(100, 10, size=100000), b, rng)
        assert np.mean(np.abs(fresh - h) > eps) == pytest.approx(0.05, abs=0.015)
        assert eps == pytest.approx(1.96 * 10 / math.sqrt(b), rel=0.1)


def test_batch_means_are_of_disjoint_batches():
    nll = np.arange(10.0)
    m = anomaly.batch_means(nll, 3, np.random.default_rng(0))
    assert len(m) == 3 and m.sum() * 3 == pytest.approx(nll.sum() - (45 - m.sum() * 3))
    with pytest.raises(ValueError):
        anomaly.batch_means(nll, 11, np.random.default_rng(0))


def test_cached_nll_is_kept_and_refused_when_the_checkpoint_changes(tmp_path, capsys):
    from nanoar.training import save_run

    model = build_model("made", {"d": 8, "hidden_sizes": [8], "seed": 0})
    ckpt = str(tmp_path / "best.npz")
    save_run(ckpt, model, script="train_mnist")
    x = model.sample(20, seed=0)
    first = anomaly.cached_nll(model, ckpt, {"train": x}, "data A")
    calls = []
    real = anomaly.example_nll
    anomaly.example_nll = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = anomaly.cached_nll(model, ckpt, {"train": x}, "data A")
        assert calls == [] and np.array_equal(first["train"], again["train"])
        anomaly.cached_nll(model, ckpt, {"train": x}, "data B")            # other data: recomputed
        assert calls == [1]
        model.parameters()[0].data += 1.0
        save_run(ckpt, model, script="train_mnist")                          # another checkpoint
        changed = anomaly.cached_nll(model, ckpt, {"train": x}, "data B")
        assert calls == [1, 1] and not np.allclose(changed["train"], first["train"])
    finally:
        anomaly.example_nll = real
    assert "another checkpoint or other data" in capsys.readouterr().out


def test_a_cache_that_cannot_be_written_costs_only_a_note(tmp_path, capsys, monkeypatch):
    from nanoar.training import save_run

    model = build_model("made", {"d": 8, "hidden_sizes": [8], "seed": 0})
    ckpt = str(tmp_path / "best.npz")
    save_run(ckpt, model, script="train_mnist")
    x = model.sample(10, seed=0)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(anomaly, "save_checkpoint", read_only)
    got = anomaly.cached_nll(model, ckpt, {"train": x}, "data")
    np.testing.assert_allclose(got["train"], -model.log_prob(x).data, rtol=1e-6)
    assert "could not keep" in capsys.readouterr().out
