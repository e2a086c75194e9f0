"""Tests for nanoar.datasets.images: loading (downloads from 127.0.0.1, local copies, the
cache), the binarized-MNIST parser, binarization, the validation split, BinaryImageData."""

from __future__ import annotations

import gzip
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datasets_fixtures import clear_proxies, dead_url, no_pooch, server, sha  # noqa: F401 (fixtures)
from nanoar import datasets
from nanoar.datasets import DataError, images

# ---------------------------------------------------------------------------
# load_images with small synthetic stand-ins for the real files
# ---------------------------------------------------------------------------


def _gz_idx(arr) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.gz")
        datasets.write_idx(p, arr)
        with open(p, "rb") as f:
            return f.read()


@pytest.fixture
def tiny_mnist(server, monkeypatch):
    """Replace MNIST's file table with 20/8-image synthetic files on the local server."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 20, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 8, dtype=np.uint8),
    }
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    files, blobs = {}, {}
    for key, arr in arrays.items():
        blob = _gz_idx(arr)
        blobs[key] = blob
        plain = gzip.decompress(blob)
        files[key] = images._IdxFile(names[key], sha(blob), sha(plain), arr.shape)
        server.add("/tinymnist/" + names[key], blob)
    cfg = dict(files=files, mirrors=[server.base + "/tinymnist/"], system_dirs=[])
    monkeypatch.setitem(images._DATASETS, "mnist", cfg)
    return arrays, names, blobs


def test_load_images_downloads_then_uses_cache(tiny_mnist, tmp_path, dead_url):
    arrays, names, _ = tiny_mnist
    s = datasets.load_images("mnist", data_dir=str(tmp_path))
    assert s.dataset == "mnist" and not s.binary and s.valid is None
    assert s.train.shape == (20, 28, 28) and s.train.dtype == np.uint8
    assert np.array_equal(s.train, arrays["train_images"])
    assert np.array_equal(s.test_labels, arrays["test_labels"])
    assert sorted(os.listdir(tmp_path / "mnist")) == sorted(names.values())
    # Offline now: everything comes from the verified cache.
    s2 = datasets.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert np.array_equal(s2.test, arrays["test_images"])
    s3 = datasets.load_images("mnist", data_dir=str(tmp_path), labels=False, mirrors=[dead_url])
    assert s3.train_labels is None and s3.test_labels is None


def test_load_images_offline_error_names_path(tiny_mnist, tmp_path, dead_url):
    with pytest.raises(DataError) as e:
        datasets.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert os.path.join(str(tmp_path), "mnist", "train-images-idx3-ubyte.gz") in str(e.value)


def test_load_images_search_dir_gz_or_plain(tiny_mnist, tmp_path, dead_url):
    arrays, names, blobs = tiny_mnist
    sysdir = tmp_path / "sys"
    sysdir.mkdir()
    # Like Debian: recompressed .gz (different bytes, same content) ...
    for key in ("train_images", "test_images"):
        (sysdir / names[key]).write_bytes(gzip.compress(gzip.decompress(blobs[key]), mtime=12345))
    # ... and un-gzipped copies under the name without .gz.
    for key in ("train_labels", "test_labels"):
        (sysdir / names[key][:-3]).write_bytes(gzip.decompress(blobs[key]))
    s = datasets.load_images("mnist", data_dir=str(tmp_path / "cache"), mirrors=[dead_url], search_dirs=[str(sysdir)])
    assert np.array_equal(s.train, arrays["train_images"])
    assert np.array_equal(s.train_labels, arrays["train_labels"])
    assert not (tmp_path / "cache").exists()  # nothing downloaded or cached


def test_load_images_wrong_local_copy_is_an_error(tiny_mnist, tmp_path, dead_url):
    _, names, _ = tiny_mnist
    sysdir = tmp_path / "sys"
    sysdir.mkdir()
    bad = sysdir / names["train_images"]
    datasets.write_idx(bad, np.zeros((20, 28, 28), np.uint8))
    with pytest.raises(DataError) as e:
        datasets.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url], search_dirs=[str(sysdir)])
    assert str(bad) in str(e.value)


def test_load_images_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_images("cifar")


@pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package(tmp_path, dead_url, no_pooch):
    s = datasets.load_images("fashion-mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert s.train.shape == (60000, 28, 28) and s.test.shape == (10000, 28, 28)
    assert s.train.dtype == np.uint8 and s.train.max() == 255
    assert s.train_labels.shape == (60000,) and set(np.unique(s.test_labels)) == set(range(10))
    assert not os.path.exists(tmp_path / "fashion-mnist")


def test_local_copies_need_no_pooch(tiny_mnist, no_pooch, tmp_path):
    arrays, names, blobs = tiny_mnist
    # A read-only folder such as Debian's, with the training files ...
    sysdir = tmp_path / "sys"
    sysdir.mkdir()
    for key in ("train_images", "train_labels"):
        (sysdir / names[key]).write_bytes(blobs[key])
    # ... and the test files put into the cache by hand: one as the mirrors'
    # .gz, one gunzipped.
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    (cache / names["test_images"]).write_bytes(blobs["test_images"])
    (cache / names["test_labels"][:-3]).write_bytes(gzip.decompress(blobs["test_labels"]))
    s = datasets.load_images("mnist", data_dir=str(tmp_path / "cache"), search_dirs=[str(sysdir)])
    assert np.array_equal(s.train, arrays["train_images"])
    assert np.array_equal(s.test_labels, arrays["test_labels"])
    # Only a file that has to be downloaded needs pooch, and the error says so.
    os.remove(cache / names["test_images"])
    with pytest.raises(DataError, match="pip install pooch") as e:
        datasets.load_images("mnist", data_dir=str(tmp_path / "cache"), search_dirs=[str(sysdir)])
    assert str(cache / names["test_images"]) in str(e.value)


def test_load_idx_folder(tmp_path, no_pooch):
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, (12, 8, 9), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 8, 9), dtype=np.uint8)
    datasets.write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    s = datasets.load_idx_folder(str(tmp_path))
    assert s.dataset == str(tmp_path) and not s.binary and s.train_labels is None
    assert np.array_equal(s.train, train) and np.array_equal(s.test, test)
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", test[:, :, :8])
    with pytest.raises(DataError, match="train images are"):
        datasets.load_idx_folder(str(tmp_path))
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", test.astype(np.float32))
    with pytest.raises(DataError, match="expected uint8 images"):
        datasets.load_idx_folder(str(tmp_path))
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
        datasets.load_idx_folder(str(tmp_path))


# binarized MNIST ----------------------------------------------------------


def _amat(rows: np.ndarray, newline: bytes = b"\n") -> bytes:
    return b"".join(b" ".join(b"%d" % v for v in r) + newline for r in rows.reshape(len(rows), 784))


@pytest.fixture
def tiny_binarized(server, monkeypatch):
    rng = np.random.default_rng(1)
    sizes = {"train": 6, "valid": 3, "test": 2}
    arrays, table = {}, {}
    for split, n in sizes.items():
        a = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8)
        body = _amat(a)
        name = f"binarized_mnist_{split}.amat"
        server.add("/bm/" + name, body)
        arrays[split] = a
        table[split] = (name, sha(body), n)
    monkeypatch.setattr(images, "_BINARIZED_MNIST_FILES", table)
    return arrays, [server.base + "/bm/"]


def test_binarized_mnist_download_parse_and_npz_cache(tiny_binarized, tmp_path, dead_url):
    arrays, mirrors = tiny_binarized
    s = datasets.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=mirrors)
    assert s.binary and s.train_labels is None
    for split in ("train", "valid", "test"):
        got = getattr(s, split)
        assert got.dtype == np.uint8 and got.shape == arrays[split].shape
        assert np.array_equal(got, arrays[split])
    npz = tmp_path / "binarized-mnist" / "binarized_mnist.npz"
    assert npz.exists()
    # Offline with the .amat files gone: the .npz cache suffices.
    for split in arrays:
        os.remove(tmp_path / "binarized-mnist" / f"binarized_mnist_{split}.amat")
    s2 = datasets.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert np.array_equal(s2.valid, arrays["valid"])


def test_binarized_mnist_placed_by_hand_needs_no_pooch(tiny_binarized, no_pooch, tmp_path):
    arrays, _ = tiny_binarized
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    for split, a in arrays.items():
        (folder / f"binarized_mnist_{split}.amat").write_bytes(_amat(a))
    s = datasets.load_images("binarized-mnist", data_dir=str(tmp_path))
    assert np.array_equal(s.test, arrays["test"])
    assert (folder / "binarized_mnist.npz").exists()


def test_binarized_mnist_unreadable_npz_is_rebuilt(tiny_binarized, tmp_path, capsys):
    arrays, mirrors = tiny_binarized
    datasets.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=mirrors)
    npz = tmp_path / "binarized-mnist" / "binarized_mnist.npz"
    npz.write_bytes(b"not a zip")
    s = datasets.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=mirrors)
    assert np.array_equal(s.train, arrays["train"])
    assert "ignoring unreadable cache" in capsys.readouterr().err
    with np.load(npz) as z:
        assert np.array_equal(z["valid"], arrays["valid"])


def test_amat_parser_general_whitespace():
    a = (np.random.default_rng(2).random((3, 28, 28)) < 0.5).astype(np.uint8)
    assert np.array_equal(images.parse_amat(_amat(a, b"\r\n"), 3, "f"), a)
    assert np.array_equal(images.parse_amat(_amat(a), 3, "f"), a)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.replace(b"1", b"2", 1), "other than 0 and 1"),
        (lambda b: b[: b.index(b"\n")] + b" 0" + b[b.index(b"\n") :], "785 values"),
        (lambda b: b + b"0 " * 783 + b"0\n", "expected 3 rows, got 4"),
    ],
)
def test_amat_parser_is_strict(mutate, match):
    a = np.ones((3, 28, 28), np.uint8)
    with pytest.raises(DataError, match=match) as e:
        images.parse_amat(mutate(_amat(a)), 3, "binarized_mnist_test.amat")
    assert "binarized_mnist_test.amat" in str(e.value)


# ---------------------------------------------------------------------------
# Binarization, validation split, BinaryImageData
# ---------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    grey=hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))),
    threshold=st.floats(0.0, 1.0),
)
def test_binarize_threshold_semantics(grey, threshold):
    out = datasets.binarize_threshold(grey, threshold)
    assert out.dtype == np.float32 and out.shape == (grey.shape[0], 1) + grey.shape[1:]
    assert np.array_equal(out[:, 0], (grey / 255.0 > threshold).astype(np.float32))


def test_binarize_threshold_boundary():
    grey = np.array([[[0, 127, 128, 255]]], np.uint8)
    assert datasets.binarize_threshold(grey).ravel().tolist() == [0, 0, 1, 1]
    assert datasets.binarize_threshold(grey[:, None]).shape == (1, 1, 1, 4)  # (N,1,H,W) accepted too
    with pytest.raises(TypeError, match="uint8"):
        datasets.binarize_threshold(grey.astype(np.float32) / 255)


def test_binarize_dynamic_frequencies_match_grey_levels():
    levels = np.array([0, 1, 51, 128, 204, 254, 255], np.uint8)
    grey = np.broadcast_to(levels, (4000, 1, len(levels))).copy()
    out = datasets.binarize_dynamic(grey, np.random.default_rng(0))
    assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
    freq = out.mean(axis=(0, 1, 2))
    p = levels / 255.0
    n = grey.shape[0]
    assert freq[0] == 0.0 and freq[-1] == 1.0
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_binarize_dynamic_reproducible_and_fresh():
    grey = np.full((10, 28, 28), 128, np.uint8)
    a = datasets.binarize_dynamic(grey, np.random.default_rng(3))
    b = datasets.binarize_dynamic(grey, np.random.default_rng(3))
    assert np.array_equal(a, b)
    rng = np.random.default_rng(3)
    assert not np.array_equal(datasets.binarize_dynamic(grey, rng), datasets.binarize_dynamic(grey, rng))


def test_split_validation_is_last_ten_percent():
    tr, va = datasets.split_validation(60000)
    assert (tr.start, tr.stop, va.start, va.stop) == (0, 54000, 54000, 60000)
    x = np.arange(60000)
    assert np.array_equal(x[va], np.arange(54000, 60000))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(100, 10**7), fraction=st.floats(0.05, 0.5))
def test_split_validation_property(n, fraction):
    tr, va = datasets.split_validation(n, fraction)
    assert tr.start == 0 and tr.stop == va.start and va.stop == n
    assert va.stop - va.start == round(n * fraction)


def _grey_splits(n_train=100, n_test=30, labels=True):
    rng = np.random.default_rng(5)
    return datasets.ImageSplits(
        "mnist",
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        train_labels=np.arange(n_train, dtype=np.uint8) if labels else None,
        test_labels=np.zeros(n_test, np.uint8) if labels else None,
    )


def test_binary_image_data_threshold():
    s = _grey_splits()
    d = datasets.BinaryImageData(s, "threshold", threshold=0.5)
    assert d.describe() == "mnist, threshold 0.5"
    assert d.n_train == 90
    assert np.array_equal(d.valid, datasets.binarize_threshold(s.train[90:]))
    assert np.array_equal(d.test, datasets.binarize_threshold(s.test))
    assert np.array_equal(d.valid_labels, np.arange(90, 100))
    # One epoch sees each training image exactly once (labels = index here).
    seen = []
    for x, y in d.train_batches(16, np.random.default_rng(0), drop_last=False, with_labels=True):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
        assert np.array_equal(x, datasets.binarize_threshold(s.train[y]))
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(90))
    batches = list(d.train_batches(16, np.random.default_rng(0)))
    assert len(batches) == 5 and all(b.shape[0] == 16 for b in batches)  # drop_last


def test_binary_image_data_dynamic():
    s = _grey_splits()
    d = datasets.BinaryImageData(s, "dynamic", eval_seed=7)
    assert d.describe() == "mnist, dynamic (test binarized once, seed 7)"
    # Test set binarized once, with the documented seed; same every time.
    assert np.array_equal(d.test, datasets.binarize_dynamic(s.test, np.random.default_rng(7)))
    assert np.array_equal(d.test, datasets.BinaryImageData(s, "dynamic", eval_seed=7).test)
    assert set(np.unique(d.valid)) <= {0.0, 1.0}
    # Each epoch re-samples the training pixels.
    rng = np.random.default_rng(0)
    e1 = {int(y[i]): x[i] for x, y in d.train_batches(10, rng, with_labels=True) for i in range(len(y))}
    e2 = {int(y[i]): x[i] for x, y in d.train_batches(10, rng, with_labels=True) for i in range(len(y))}
    assert sorted(e1) == sorted(e2) == list(range(90))
    assert any(not np.array_equal(e1[k], e2[k]) for k in e1)


def test_binary_image_data_fixed_and_errors():
    rng = np.random.default_rng(0)
    b = lambda n: (rng.random((n, 28, 28)) < 0.5).astype(np.uint8)  # noqa: E731
    s = datasets.ImageSplits("binarized-mnist", b(12), b(4), valid=b(5), binary=True)
    d = datasets.BinaryImageData(s, "fixed")
    assert d.describe() == "binarized-mnist, fixed binarization (Larochelle & Murray)"
    assert d.n_train == 12 and d.valid.shape == (5, 1, 28, 28) and d.valid.dtype == np.float32
    assert np.array_equal(d.valid[:, 0], s.valid)
    with pytest.raises(ValueError, match="already binary"):
        datasets.BinaryImageData(s, "threshold")
    with pytest.raises(ValueError):
        datasets.BinaryImageData(_grey_splits(), "fixed")
    with pytest.raises(ValueError, match="no labels"):
        next(d.train_batches(4, rng, with_labels=True))
