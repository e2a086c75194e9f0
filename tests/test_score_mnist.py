"""Anomaly detection end to end: train_mnist.py --classes and --perturb (a background model's
inputs, at their stated rate), the built-in out-of-distribution sets, and --score on tiny
labelled data: its table, scores.json, histograms and the cached training likelihoods."""
import json
import os
import sys

import numpy as np
import pytest

import nanoar
from nanoar import anomaly, datasets, training
from nanoar.checkpoint import load_checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mnist  # noqa: E402
from labelled_images import labelled  # noqa: E402,F401  (a fixture)


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


@pytest.fixture(scope="module")
def runs(labelled, tmp_path_factory):
    """A MADE trained on classes 0 and 1, and its background model (--perturb 0.2)."""
    d = tmp_path_factory.mktemp("runs")
    small = ["--dataset", labelled, "--classes", "0,1", "--model", "made", "--hidden-sizes", 32, "--epochs", 8,
             "--batch-size", 30, "--lr", 3e-3, "--n-samples", 2, "--quiet"]
    nanoar.set_device("cpu", seed=0)
    train_mnist.main([str(a) for a in small + ["--out", d / "model"]])
    train_mnist.main([str(a) for a in small + ["--out", d / "background", "--perturb", 0.2]])
    return d


def test_classes_train_on_those_classes_only(labelled, runs):
    _, meta = load_checkpoint(runs / "model" / "best.npz")
    assert meta["data"]["classes"] == [0, 1] and meta["data"]["perturb"] == 0.0
    ds, _, held_out = train_mnist.load_data(meta["data"], None)
    labels = datasets.read_idx(labelled / "train-labels-idx1-ubyte.gz")
    test_labels = datasets.read_idx(labelled / "t10k-labels-idx1-ubyte.gz")
    assert ds.n_train + len(ds.valid) == np.isin(labels, [0, 1]).sum()
    assert set(ds.test_labels.tolist()) == {0, 1}
    assert len(held_out) == (test_labels == 2).sum()
    _, bg_meta = load_checkpoint(runs / "background" / "best.npz")
    assert bg_meta["data"]["perturb"] == 0.2


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_perturbed_batches_replace_values_at_the_stated_rate(rate):
    """Each value is replaced with probability `rate` by a fair coin, so of all-zero images a
    fraction rate/2 turns on, and of all-one images rate/2 turns off."""
    n, side = 400, 8
    for value in (0, 1):
        images = datasets.ImageSplits("const", np.full((n, side, side), value, np.uint8),
                                      np.full((2, side, side), value, np.uint8), binary=True)
        ds = datasets.BinaryImageData(images, "fixed")
        batches = training.EpochBatches(ds, 50, 7, (1, side, side), seed=3, perturb=rate)
        x = np.concatenate([batches.next() for _ in range(7)])
        changed = np.mean(x != value)
        sd = np.sqrt(rate / 2 * (1 - rate / 2) / x.size)
        assert abs(changed - rate / 2) < 5 * sd + 1e-12


def test_perturbed_batches_replay_exactly_on_resume():
    rng = np.random.default_rng(0)
    images = datasets.ImageSplits("grey", rng.integers(0, 256, (300, 6, 6), dtype=np.uint8),
                                  rng.integers(0, 256, (5, 6, 6), dtype=np.uint8))
    ds = datasets.BinaryImageData(images, "dynamic")
    first = training.EpochBatches(ds, 20, 10, (1, 6, 6), seed=1, perturb=0.3)
    seen = [first.next() for _ in range(13)]
    state = first.state()
    after = [first.next() for _ in range(5)]
    resumed = training.EpochBatches(ds, 20, 10, (1, 6, 6), saved=state, seed=1, perturb=0.3)
    for a, b in zip(after, [resumed.next() for _ in range(5)]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(seen, seen[1:]))


def test_built_in_outlier_sets():
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, size=(500, 5, 7), dtype=np.uint8)
    make = lambda name, top=255, mean_on=0.3: datasets.outlier_images(name, test, top, mean_on, rng)  # noqa: E731
    for name in datasets.OUTLIER_SETS:
        out = make(name)
        assert out.shape == test.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(make("inverted"), 255 - test)
    np.testing.assert_array_equal(make("vflip"), test[:, ::-1])
    np.testing.assert_array_equal(make("hflip"), test[:, :, ::-1])
    const = make("constant")
    assert (const == const[:, :1, :1]).all() and len(np.unique(const[:, 0, 0])) > 100
    bern = make("bernoulli")
    assert set(np.unique(bern).tolist()) == {0, 255} and abs(np.mean(bern == 255) - 0.3) < 0.02
    noise = make("noise", top=1)
    assert set(np.unique(noise).tolist()) == {0, 1} and abs(noise.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(make("inverted", top=1), 1 - test)   # (0/1 data are inverted by 1 - x)
    with pytest.raises(ValueError):
        make("bogus")


def test_score_end_to_end(labelled, runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "scores"
    args = ["--score", runs / "model" / "best.npz", "--background", runs / "background" / "best.npz",
            "--out", out, "--quiet"]
    train_mnist.main([str(a) for a in args])
    printed = capsys.readouterr().out
    report = json.loads((out / "scores.json").read_text())
    expected_sets = [*datasets.OUTLIER_SETS, "held-out-classes"]
    assert list(report["sets"]) == expected_sets
    for name in expected_sets:
        assert (out / f"scores-{name}.png").stat().st_size > 1000
        assert f"against {name}" in printed
        rows = report["sets"][name]["scores"]
        assert set(rows) >= {"NLL", "1 - p-value", "likelihood ratio (-LLR)", "complexity (PNG)",
                             "complexity (zlib)", "typicality B=1", "typicality B=5", "typicality B=10",
                             "typicality B=25"}
        for m in rows.values():
            assert 0 <= m["auroc"] <= 1 and 0 <= m["aupr"] <= 1 and 0 <= m["fpr95"] <= 1
    # the model of rows and columns tells inverted images and noise from its test set; and it
    # has never seen a diagonal (a blank image, half the constant set, it may well like)
    for name in ("noise", "inverted", "held-out-classes"):
        assert report["sets"][name]["scores"]["NLL"]["auroc"] > 0.9, name
    assert report["in_distribution"]["n"] == report["sets"]["vflip"]["n"]
    assert report["sets"]["held-out-classes"]["n"] == (datasets.read_idx(labelled / "t10k-labels-idx1-ubyte.gz")
                                                       == 2).sum()

    # the training likelihoods are cached beside the checkpoint: a second scoring computes
    # only the outlier sets' (and no training image's)
    cache = runs / "model" / "best.npz.nll.npz"
    arrays, meta = load_checkpoint(cache)
    assert len(arrays["train"]) > 500 and meta["checkpoint_sha256"] == anomaly.file_digest(runs / "model" / "best.npz")
    sizes = []
    real = anomaly.example_nll
    monkeypatch.setattr(anomaly, "example_nll", lambda model, x, *a, **k: sizes.append(len(x)) or real(model, x, *a, **k))
    train_mnist.main([str(a) for a in ["--score", runs / "model" / "best.npz", "--against", "noise", "--out", out,
                                       "--quiet"]])
    assert sizes == [report["in_distribution"]["n"]]
    assert list(json.loads((out / "scores.json").read_text())["sets"]) == ["noise"]


def test_score_against_other_data_binary_or_grey(labelled, runs, tmp_path, capsys):
    """Another data set is binarized like the model's data; already-binary images are taken
    as they are (not thresholded to black)."""
    rng = np.random.default_rng(5)
    grey, binary = tmp_path / "grey", tmp_path / "binary"
    for folder, top in ((grey, 255), (binary, 1)):
        folder.mkdir()
        for split, n in (("train", 10), ("t10k", 40)):
            x = (rng.random((n, 8, 8)) < 0.5) * top
            datasets.write_idx(folder / f"{split}-images-idx3-ubyte", x.astype(np.uint8))
    train_mnist.main([str(a) for a in ["--score", runs / "model" / "best.npz", "--against", f"{grey},{binary}",
                                       "--out", tmp_path / "s", "--quiet"]])
    report = json.loads((tmp_path / "s" / "scores.json").read_text())
    nll = [report["sets"][str(f)]["nll"] for f in (grey, binary)]
    assert nll[0] == pytest.approx(nll[1], rel=0.1)         # the same kind of noise either way
    assert "binary as given" in report["sets"][str(binary)]["description"]
    assert (tmp_path / "s" / "scores-grey.png").exists() and (tmp_path / "s" / "scores-binary.png").exists()


def test_sets_of_the_same_name_get_a_picture_each(runs, tmp_path, capsys):
    rng = np.random.default_rng(6)
    folders = [tmp_path / side / "data" for side in ("a", "b")]
    for folder in folders:
        folder.mkdir(parents=True)
        for split, n in (("train", 4), ("t10k", 30)):
            datasets.write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
    train_mnist.main([str(a) for a in ["--score", runs / "model" / "best.npz", "--against", ",".join(map(str, folders)),
                                       "--out", tmp_path / "s", "--quiet"]])
    report = json.loads((tmp_path / "s" / "scores.json").read_text())
    pictures = [report["sets"][str(f)]["histograms"] for f in folders]
    assert len(set(pictures)) == 2 and all(os.path.exists(p) for p in pictures)


def test_scoring_without_matplotlib_stops_before_any_work(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as e:
        train_mnist.main([str(a) for a in ["--score", runs / "model" / "best.npz", "--out", tmp_path / "s", "--quiet"]])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "s").exists()


def test_a_folder_of_test_images_alone_can_be_scored_against(runs, tmp_path, capsys):
    folder = tmp_path / "only-test"
    folder.mkdir()
    rng = np.random.default_rng(7)
    datasets.write_idx(folder / "t10k-images-idx3-ubyte.gz", (rng.random((20, 8, 8)) < 0.5).astype(np.uint8) * 255)
    train_mnist.main([str(a) for a in ["--score", runs / "model" / "best.npz", "--against", folder,
                                       "--out", tmp_path / "s", "--quiet"]])
    report = json.loads((tmp_path / "s" / "scores.json").read_text())
    entry = report["sets"][str(folder)]
    assert entry["n"] == 20 and "binary as given" in entry["description"]
    assert entry["scores"]["NLL"]["auroc"] > 0.9   # noise, to a model of bars
