"""Tests for nanoar.datasets.images: loading (downloads from 127.0.0.1, local copies, the
cache), the binarized-MNIST parser, binarization, the validation split, BinaryImageData."""

from __future__ import annotations

import gzip
import os
import pathlib
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


# ---------------------------------------------------------------------------
# Refusals: already-binary folders, too few images, bad thresholds
# ---------------------------------------------------------------------------


def _idx_folder(folder, train, test):
    datasets.write_idx(folder / "train-images-idx3-ubyte", train)
    datasets.write_idx(folder / "t10k-images-idx3-ubyte.gz", test)
    return str(folder)


@settings(max_examples=30, deadline=None)
@given(
    ones=hnp.arrays(np.bool_, st.tuples(st.integers(2, 8), st.integers(1, 4), st.integers(1, 4))),
    test_ones=hnp.arrays(np.bool_, st.tuples(st.integers(1, 4), st.just(4), st.just(4))),
    white=st.sampled_from([(1, 1), (255, 255), (1, 255), (255, 1)]),
)
def test_load_idx_folder_recognises_binary_images(ones, test_ones, white):
    """0/1 or 0/255 pixels (each file in either encoding) come back as 0/1 with binary=True,
    so that a threshold at a grey level does not turn them into zeros."""
    ones = np.broadcast_to(ones[:, :1, :1], (len(ones), 4, 4))  # the same H, W as the test images
    train, test = ones.astype(np.uint8) * white[0], test_ones.astype(np.uint8) * white[1]
    with tempfile.TemporaryDirectory() as d:
        s = datasets.load_idx_folder(_idx_folder(pathlib.Path(d), train.astype(np.uint8), test.astype(np.uint8)))
    assert s.binary and s.train.dtype == np.uint8 and s.test.dtype == np.uint8
    assert np.array_equal(s.train, ones) and np.array_equal(s.test, test_ones)
    data = datasets.BinaryImageData(s, "fixed", valid_fraction=0.5)
    assert data.describe().endswith("binary as given (fixed)")
    assert set(np.unique(data.test)) <= {0.0, 1.0} and np.array_equal(data.test[:, 0], test_ones)
    with pytest.raises(ValueError, match="already binary"):
        datasets.BinaryImageData(s, "threshold")


def test_load_idx_folder_grey_and_mixed_encodings(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 3, 3), dtype=np.uint8)
    black_white = (rng.random((4, 3, 3)) < 0.5).astype(np.uint8) * 255
    zero_one = black_white // 255
    # grey images, and 0/255 images beside grey ones, are grey levels: thresholding them is right
    s = datasets.load_idx_folder(_idx_folder(tmp_path / "a", grey, black_white))
    assert not s.binary and np.array_equal(s.test, black_white)
    assert datasets.pixel_levels(grey) == "grey" and datasets.pixel_levels(black_white) == "0/255"
    assert datasets.pixel_levels(zero_one) == "0/1" and datasets.pixel_levels(np.zeros((2, 2), np.uint8)) == "0/1"
    # 0/1 images beside grey ones: one of the two files is not what the other is
    with pytest.raises(DataError) as e:
        datasets.load_idx_folder(_idx_folder(tmp_path / "b", grey, zero_one))
    msg = str(e.value)
    assert str(tmp_path / "b" / "t10k-images-idx3-ubyte.gz") in msg and "train-images-idx3-ubyte" in msg
    assert "every pixel is 0 or 1" in msg and "grey levels" in msg


@pytest.mark.parametrize(
    "n_train, n_test, match",
    [
        (1, 3, r"train-images-idx3-ubyte: holds 1 image\(s\); at least 2 are needed"),
        (0, 3, r"train-images-idx3-ubyte: holds 0 image\(s\); at least 2 are needed"),
        (8, 0, r"t10k-images-idx3-ubyte.gz: holds 0 image\(s\); at least 1 is needed \(to test on\)"),
    ],
)
def test_load_idx_folder_with_too_few_images(tmp_path, n_train, n_test, match):
    rng = np.random.default_rng(1)
    folder = _idx_folder(tmp_path, rng.integers(0, 256, (n_train, 5, 5), dtype=np.uint8),
                         rng.integers(0, 256, (n_test, 5, 5), dtype=np.uint8))
    with pytest.raises(DataError, match=match):
        datasets.load_idx_folder(folder)
    datasets.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 0, 5), np.uint8))
    with pytest.raises(DataError, match="H, W >= 1"):
        datasets.load_idx_folder(folder)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), fraction=st.sampled_from([0.1, 0.05, 0.2, 0.5, 0.9, 0.01]))
def test_binary_image_data_says_how_many_images_a_split_needs(n, fraction):
    rng = np.random.default_rng(n)
    s = datasets.ImageSplits("mine", rng.integers(0, 256, (n, 2, 2), dtype=np.uint8),
                             rng.integers(0, 256, (1, 2, 2), dtype=np.uint8))
    need = datasets.min_examples_for_split(fraction)
    if n >= need:
        d = datasets.BinaryImageData(s, "threshold", valid_fraction=fraction)
        assert d.n_train >= 1 and len(d.valid) >= 1 and d.n_train + len(d.valid) == n
    else:
        with pytest.raises(DataError) as e:
            datasets.BinaryImageData(s, "threshold", valid_fraction=fraction)
        assert str(e.value) == (f"mine: {n} training image(s) are too few to hold out {fraction:.0%} for "
                                f"validation and train on the rest: at least {need} are needed")


def test_min_examples_for_split():
    assert datasets.min_examples_for_split(0.1) == 6  # round(0.5) == 0
    assert datasets.min_examples_for_split(0.5) == 2
    assert datasets.min_examples_for_split(1e-6) == 500001
    for f in (0.1, 0.33, 0.9, 0.999):
        n = datasets.min_examples_for_split(f)
        datasets.split_validation(n, f)
        with pytest.raises(ValueError):
            datasets.split_validation(n - 1, f)


def test_binary_image_data_without_test_images():
    s = datasets.ImageSplits("none", np.zeros((10, 2, 2), np.uint8), np.zeros((0, 2, 2), np.uint8))
    with pytest.raises(DataError, match="^none: 0 test images; at least 1 is needed$"):
        datasets.BinaryImageData(s)
    with pytest.raises(ValueError, match="valid_fraction must be in"):
        datasets.BinaryImageData(_grey_splits(), valid_fraction=0.0)


@settings(max_examples=40, deadline=None)
@given(threshold=st.floats(allow_nan=True).filter(lambda t: not 0.0 <= t <= 1.0)
       | st.sampled_from([True, False, "0.5", None, np.float32("nan"), -1, 2, np.int64(3)]))
def test_a_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match=r"^threshold must be a number in \[0, 1\]"):
        datasets.BinaryImageData(_grey_splits(20, 2), "threshold", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        datasets.binarize_threshold(np.zeros((1, 2, 2), np.uint8), threshold)
    with pytest.raises(ValueError, match="threshold"):  # whatever the binarization: a bad value is a mistake
        datasets.BinaryImageData(_grey_splits(20, 2), "dynamic", threshold=threshold)


def test_thresholds_0_and_1_are_accepted():
    for t in (0, 1, 0.0, 1.0, np.float32(0.25)):
        assert datasets.BinaryImageData(_grey_splits(20, 2), "threshold", threshold=t).threshold == float(t)


# ---------------------------------------------------------------------------
# MNIST content hashes: a copy of the wrong dataset in the MNIST cache
# ---------------------------------------------------------------------------


def test_mnist_and_fashion_mnist_tables_have_content_hashes():
    for table in (images._MNIST_FILES, images._FASHION_MNIST_FILES):
        for spec in table.values():
            assert len(spec.content_sha256) == 64 and int(spec.content_sha256, 16) >= 0
    mnist = {s.content_sha256 for s in images._MNIST_FILES.values()}
    fashion = {s.content_sha256 for s in images._FASHION_MNIST_FILES.values()}
    assert len(mnist) == len(fashion) == 4 and not mnist & fashion


@pytest.fixture
def tiny_fashion(server, monkeypatch, tiny_mnist):
    """A 20/8-image 'fashion-mnist' beside tiny_mnist, with the same file names."""
    rng = np.random.default_rng(9)
    _, names, _ = tiny_mnist
    files, blobs = {}, {}
    for key, shape in (("train_images", (20, 28, 28)), ("test_images", (8, 28, 28)),
                       ("train_labels", (20,)), ("test_labels", (8,))):
        arr = rng.integers(0, 256 if "images" in key else 10, shape, dtype=np.uint8)
        blobs[key] = _gz_idx(arr)
        files[key] = images._IdxFile(names[key], sha(blobs[key]), sha(gzip.decompress(blobs[key])), arr.shape)
        server.add("/tinyfashion/" + names[key], blobs[key])
    monkeypatch.setitem(images._DATASETS, "fashion-mnist",
                        dict(files=files, mirrors=[server.base + "/tinyfashion/"], system_dirs=[]))
    return names, blobs


def test_a_fashion_mnist_file_in_the_mnist_cache_is_refused(tiny_mnist, tiny_fashion, tmp_path, dead_url, capsys):
    arrays, names, mnist_blobs = tiny_mnist
    _, fashion_blobs = tiny_fashion
    cache = tmp_path / "mnist"
    cache.mkdir()
    # gunzipped, under the plain name: refused, and the message says what it is
    plain = cache / names["train_images"][:-3]
    plain.write_bytes(gzip.decompress(fashion_blobs["train_images"]))
    with pytest.raises(DataError) as e:
        datasets.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert str(plain) in str(e.value) and "it holds fashion-mnist's train-images-idx3-ubyte.gz" in str(e.value)
    plain.unlink()
    # as the .gz: offline it is refused and left in place; online it is replaced and kept as .bad
    gz = cache / names["train_images"]
    gz.write_bytes(fashion_blobs["train_images"])
    with pytest.raises(DataError, match="left in place"):
        datasets.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert "it holds fashion-mnist's" in capsys.readouterr().err
    assert gz.read_bytes() == fashion_blobs["train_images"]
    s = datasets.load_images("mnist", data_dir=str(tmp_path))
    assert np.array_equal(s.train, arrays["train_images"])
    assert (cache / (names["train_images"] + ".bad")).read_bytes() == fashion_blobs["train_images"]


def test_a_repackaged_gz_in_the_cache_is_used_offline(tiny_mnist, tmp_path, no_pooch):
    """A .gz with other bytes (gzip header) but the same data passes by its content hash."""
    arrays, names, blobs = tiny_mnist
    cache = tmp_path / "mnist"
    cache.mkdir()
    for key, name in names.items():
        (cache / name).write_bytes(gzip.compress(gzip.decompress(blobs[key]), mtime=777))
        assert sha((cache / name).read_bytes()) != sha(blobs[key])
    s = datasets.load_images("mnist", data_dir=str(tmp_path))
    assert np.array_equal(s.test, arrays["test_images"]) and sorted(os.listdir(cache)) == sorted(names.values())


@pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_the_real_fashion_mnist_labels_are_not_mnist(tmp_path, dead_url, capsys):
    with open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", "rb") as f:
        plain = gzip.decompress(f.read())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(plain)
    with pytest.raises(DataError) as e:
        images._load_idx_file(images._MNIST_FILES["test_labels"], [], str(tmp_path), [dead_url])
    assert "it holds fashion-mnist's t10k-labels-idx1-ubyte.gz" in str(e.value)
