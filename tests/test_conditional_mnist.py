"""Conditioning and completion end to end: train_mnist.py --conditional (p(x | class), the
generative classifier, per-class samples) and --complete (the hidden pixels of a mask filled
in exactly), on tiny labelled data."""
import json
import os
import sys

import numpy as np
import pytest

import nanoar
from nanoar import conditioning, datasets, training
from nanoar.checkpoint import load_checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mnist  # noqa: E402
from labelled_images import labelled  # noqa: E402,F401  (a fixture)


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


MADE = ["--model", "made", "--hidden-sizes", 32, "--epochs", 6, "--batch-size", 30, "--lr", 3e-3, "--n-samples", 6,
        "--quiet"]


def train(folder, out, *flags):
    nanoar.set_device("cpu", seed=0)
    train_mnist.main([str(a) for a in ["--dataset", folder, "--out", out, *MADE, *flags]])


def final_record(out):
    """The run's final "test" record."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "test"][-1]


@pytest.fixture(scope="module")
def runs(labelled, tmp_path_factory):
    """The same MADE trained on the same data and epochs, unconditional and conditional, and
    an order-agnostic one."""
    d = tmp_path_factory.mktemp("runs")
    train(labelled, d / "plain")
    train(labelled, d / "conditional", "--conditional")
    train(labelled, d / "agnostic", "--ordering", "random", "--resample-masks", "--num-masks", 2)
    return d


def test_conditional_run_reports_the_classifier_and_beats_the_unconditional_model(runs, labelled):
    plain, cond = final_record(runs / "plain"), final_record(runs / "conditional")
    assert cond["test_nll"] < plain["test_nll"]                  # the class tells the model something
    assert cond["accuracy"] > 0.6                                 # chance is about 1/3
    assert (runs / "conditional" / "confusion.png").stat().st_size > 0
    _, meta = load_checkpoint(runs / "conditional" / "best.npz")
    assert meta["data"]["conditional"] is True
    model, _, _ = training.load_run(str(runs / "conditional" / "best.npz"), "train_mnist")
    assert model.n_labels == 3


def test_the_reported_figures_are_the_models(runs, labelled):
    """The accuracy and the marginal NLL recomputed from log p(x | c) of every class."""
    model, _, meta = training.load_run(str(runs / "conditional" / "best.npz"), "train_mnist")
    ds, _, _ = train_mnist.load_data(meta["data"], None)
    ll = conditioning.class_log_likelihoods(model, ds.test)
    with nanoar.no_grad():
        for c in range(3):
            direct = -nanoar.to_numpy(model.log_prob(ds.test.reshape(len(ds.test), -1), y=c).data)
            np.testing.assert_allclose(-ll[:, c], direct, rtol=1e-5)
    prior = conditioning.log_prior(ds.train_labels, 3)
    post = conditioning.log_posterior(ll, prior)
    np.testing.assert_allclose(np.exp(post).sum(axis=1), 1.0, rtol=1e-9)
    record = final_record(runs / "conditional")
    y = ds.test_labels.astype(np.int64)
    assert record["accuracy"] == pytest.approx(float((post.argmax(axis=1) == y).mean()))
    marginal = conditioning.log_marginal(ll, prior)
    assert record["marginal_nll"] == pytest.approx(float(-marginal.mean()), rel=1e-6)
    # p(x) >= p(x | y) p(y) for every example: the marginal is never below the joint
    assert (marginal >= ll[np.arange(len(y)), y] + prior[y] - 1e-9).all()


def test_eval_and_sample_of_a_conditional_checkpoint(runs, capsys):
    ckpt = runs / "conditional" / "best.npz"
    train_mnist.main(["--eval", str(ckpt), "--quiet"])
    out = capsys.readouterr().out
    assert "-log p(x | y)" in out and "marginal" in out and "accuracy" in out
    train_mnist.main(["--sample", str(ckpt), "--n-samples", "9"])
    assert "row c: class c" in capsys.readouterr().out


def test_score_refuses_a_conditional_model(runs, capsys):
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--score", str(runs / "conditional" / "best.npz"), "--quiet"])
    assert e.value.code == 1 and "class-conditional" in capsys.readouterr().err


def test_conditional_run_resumes(labelled, tmp_path):
    """Interrupted after 2 epochs and resumed: the same model as an uninterrupted run."""
    train(labelled, tmp_path / "whole", "--conditional", "--epochs", 3)
    train(labelled, tmp_path / "parts", "--conditional", "--epochs", 2)
    nanoar.set_device("cpu", seed=0)
    train_mnist.main([str(a) for a in ["--out", tmp_path / "parts", "--resume", "--epochs", 3, "--quiet"]])
    a, _ = load_checkpoint(tmp_path / "whole" / "last.npz")
    b, _ = load_checkpoint(tmp_path / "parts" / "last.npz")
    for k in a:
        if k.startswith("model."):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("mask", conditioning.MASKS)
def test_complete_with_an_order_agnostic_made(runs, mask, tmp_path, capsys):
    ckpt = runs / "agnostic" / "best.npz"
    train_mnist.main(["--complete", str(ckpt), "--mask", mask, "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert (tmp_path / f"complete-{mask}.png").stat().st_size > 0
    nats = float(out.split(f"mask {mask}: ")[1].split(" nats")[0])
    assert 0 < nats < 64 * np.log(2)


def test_complete_keeps_the_observed_pixels(runs):
    """What --complete draws: observed pixels unchanged, the hidden ones from the model."""
    model, _, meta = training.load_run(str(runs / "agnostic" / "best.npz"), "train_mnist")
    ds, _, _ = train_mnist.load_data(meta["data"], None)
    masks = conditioning.completion_masks("center", 4, 8, 8).reshape(4, -1)
    x = ds.test[:4].reshape(4, -1)
    filled = nanoar.to_numpy(model.sample(4, seed=0, given=x, observed=masks))
    np.testing.assert_array_equal(filled[masks], x[masks])
    assert set(np.unique(filled).tolist()) <= {0.0, 1.0}


def test_complete_refuses_what_a_fixed_order_model_cannot_do(runs, tmp_path, capsys):
    ckpt = runs / "plain" / "best.npz"
    train_mnist.main(["--complete", str(ckpt), "--mask", "top", "--out", str(tmp_path), "--quiet"])
    assert "mask top" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--complete", str(ckpt), "--mask", "bottom", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "--mask bottom" in err and "order-agnostic" in err
    assert not (tmp_path / "complete-bottom.png").exists()


def test_conditional_completion_uses_the_true_class(runs, tmp_path, capsys):
    train_mnist.main(["--complete", str(runs / "conditional" / "best.npz"), "--mask", "top", "--out", str(tmp_path),
                      "--quiet"])
    assert "the true class given" in capsys.readouterr().out


def test_conditional_needs_labels(tmp_path, capsys):
    folder = tmp_path / "nolabels"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 20)):
        datasets.write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)).astype(np.uint8))
    with pytest.raises(SystemExit) as e:
        train(folder, tmp_path / "run", "--conditional")
    assert e.value.code == 1 and "no class labels" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("pattern", conditioning.MASKS)
def test_completion_masks(pattern):
    """Half of the pixels (about, for center and random) are observed; the half masks are
    the halves they name, and top is a prefix of the raster order."""
    m = conditioning.completion_masks(pattern, 50, 28, 28, np.random.default_rng(0))
    assert m.shape == (50, 1, 28, 28) and m.dtype == bool
    frac = m.mean()
    assert 0.45 < frac < 0.8 if pattern in ("center", "random") else frac == 0.5
    flat = m.reshape(50, -1)
    if pattern == "top":
        assert (flat[:, :392].all() and not flat[:, 392:].any())
    if pattern == "left":
        assert m[:, 0, :, :14].all() and not m[:, 0, :, 14:].any()


def test_confusion_matrix_counts_pairs():
    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    cm = conditioning.confusion_matrix(true, predicted, 4)
    for i in range(4):
        for j in range(4):
            assert cm[i, j] == ((true == i) & (predicted == j)).sum()
    assert cm.sum() == 200 and np.trace(cm) == (true == predicted).sum()


def test_log_prior_is_the_training_frequencies():
    prior = conditioning.log_prior([0, 0, 1, 3], 5)
    np.testing.assert_allclose(np.exp(prior), [0.5, 0.25, 0, 0.25, 0])
