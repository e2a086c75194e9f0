"""Tests for nanoar.data.  No network: downloads go to a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import socket
import struct
import tempfile
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoar import data
from nanoar.data import DataError

# ---------------------------------------------------------------------------
# A local HTTP server whose routes the tests fill in.
# ---------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        mode, body = self.server.routes.get(self.path, (None, None))
        self.server.hits.append(self.path)
        if body is None:
            self.send_error(404)
            return
        if mode == "hang":
            time.sleep(1.0)
        self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("truncate", "nolength"):
            # Send half, then the connection is closed (HTTP/1.0 handler).
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


class _Server:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.hits = []
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.httpd.routes[path] = (mode, body)
        return self.base + path

    @property
    def hits(self):
        return self.httpd.hits

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=60, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(IDX_DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_idx_round_trip(arr, gz):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.idx" + (".gz" if gz else ""))
        data.write_idx(path, arr)
        with open(path, "rb") as f:
            assert (f.read(2) == b"\x1f\x8b") == gz
        back = data.read_idx(path)
    assert back.shape == arr.shape
    assert back.dtype == arr.dtype
    assert back.dtype.isnative
    assert back.tobytes() == arr.tobytes()  # exact, NaN payloads included


def test_idx_header_is_big_endian_mnist_layout(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "imgs"
    data.write_idx(path, arr)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # MNIST images: magic 0x00000803
    assert struct.unpack(">3I", raw[4:16]) == (2, 3, 4)
    arr16 = np.array([1, 256], dtype=np.int16)
    data.write_idx(tmp_path / "s", arr16)
    assert (tmp_path / "s").read_bytes()[-4:] == b"\x00\x01\x01\x00"


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.int32)
    gz_named_plain = tmp_path / "plain.gz"
    data.write_idx(tmp_path / "tmp.gz", arr)
    # gzip content under a name without .gz, plain content under a .gz name
    os.rename(tmp_path / "tmp.gz", tmp_path / "nosuffix")
    data.write_idx(tmp_path / "p", arr)
    os.rename(tmp_path / "p", gz_named_plain)
    assert np.array_equal(data.read_idx(tmp_path / "nosuffix"), arr)
    assert np.array_equal(data.read_idx(gz_named_plain), arr)


def test_idx_truncated_plain(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    data.write_idx(path, np.zeros((5, 28, 28), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "size mismatch" in msg
    assert f"expected {len(raw)} bytes, got {len(raw) - 100}" in msg


def test_idx_trailing_garbage_is_size_mismatch(tmp_path):
    path = tmp_path / "x"
    data.write_idx(path, np.zeros(4, np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match="size mismatch"):
        data.read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    data.write_idx(path, np.arange(5000, dtype=np.int32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    assert str(path) in str(e.value) and "bad gzip stream" in str(e.value)


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    data.write_idx(path, np.arange(5000, dtype=np.int32))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad gzip stream") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("header", [b"PK\x03\x04", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00"])
def test_idx_bad_magic(tmp_path, header):
    path = tmp_path / "weird.bin"
    path.write_bytes(header + b"\x00" * 12)
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    assert "magic" in str(e.value) or "not an IDX file" in str(e.value)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x01")
    with pytest.raises(DataError, match="truncated header"):
        data.read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.read_idx(tmp_path / "nope")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        data.write_idx(tmp_path / "x", np.zeros(3, np.int64))


# ---------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------


def test_download_good(server, tmp_path, capsys):
    body = os.urandom(200_000)
    url = server.add("/good.bin", body)
    dest = tmp_path / "sub" / "good.bin"
    out = data.download([url], dest, sha(body), timeout=5)
    assert out == str(dest)
    assert dest.read_bytes() == body
    assert not os.path.exists(str(dest) + ".part")
    assert "downloading" in capsys.readouterr().err
    # Second call: verified cache, no request.
    n = len(server.hits)
    data.download([url], dest, sha(body), timeout=5)
    assert len(server.hits) == n


def test_download_single_url_string(server, tmp_path):
    body = b"hello"
    url = server.add("/s.txt", body)
    assert open(data.download(url, tmp_path / "s.txt", sha(body), timeout=5), "rb").read() == body


def test_download_bad_checksum(server, tmp_path):
    body = b"not what you expected" * 100
    url = server.add("/bad.bin", body)
    dest = tmp_path / "bad.bin"
    wanted = "0" * 64
    with pytest.raises(DataError) as e:
        data.download([url], dest, wanted, timeout=5)
    msg = str(e.value)
    assert "bad.bin" in msg and wanted in msg and sha(body) in msg
    assert os.listdir(tmp_path) == []  # neither final file nor .part


@pytest.mark.parametrize("mode", ["truncate", "nolength"])
def test_download_dropped_connection_leaves_no_file(server, tmp_path, mode):
    body = os.urandom(100_000)
    url = server.add(f"/drop-{mode}.bin", body, mode=mode)
    dest = tmp_path / "drop.bin"
    with pytest.raises(DataError):
        data.download([url], dest, sha(body), timeout=5)
    assert os.listdir(tmp_path) == []


def test_download_timeout(server, tmp_path):
    body = b"slow"
    url = server.add("/slow", body, mode="hang")
    with pytest.raises(DataError, match="timed out"):
        data.download([url], tmp_path / "slow", sha(body), timeout=0.2)
    assert os.listdir(tmp_path) == []


def test_part_file_is_not_taken_for_complete(server, tmp_path, dead_url):
    body = b"complete file" * 10
    dest = tmp_path / "f.bin"
    part = tmp_path / "f.bin.part"
    # Even a .part with the right bytes is not used: only the final name is.
    part.write_bytes(body)
    with pytest.raises(DataError):
        data.download([dead_url + "f.bin"], dest, sha(body), timeout=5)
    assert not dest.exists()
    # A stale .part is overwritten by a real download.
    part.write_bytes(b"stale half")
    url = server.add("/f.bin", body)
    data.download([url], dest, sha(body), timeout=5)
    assert dest.read_bytes() == body and not part.exists()


def test_download_falls_back_to_second_mirror(server, tmp_path, dead_url):
    body = b"mirrored" * 1000
    good = server.add("/m2/file.bin", body)
    bad_sum = server.add("/m3/file.bin", b"corrupt copy")
    urls = [dead_url + "file.bin", server.base + "/m1/file.bin", bad_sum, good]  # refused, 404, bad sum, good
    dest = tmp_path / "file.bin"
    data.download(urls, dest, sha(body), timeout=5)
    assert dest.read_bytes() == body
    assert os.listdir(tmp_path) == ["file.bin"]


def test_download_offline_message(server, tmp_path, dead_url):
    dest = tmp_path / "data" / "train-images-idx3-ubyte.gz"
    urls = [dead_url + "x", server.base + "/missing"]
    with pytest.raises(DataError) as e:
        data.download(urls, dest, "a" * 64, timeout=5)
    msg = str(e.value)
    assert "put it at exactly" in msg and str(dest) in msg
    assert urls[0] in msg and urls[1] in msg and "404" in msg
    assert not dest.exists()


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path, capsys):
    body = b"the real thing" * 50
    url = server.add("/re.bin", body)
    dest = tmp_path / "re.bin"
    dest.write_bytes(b"bit rot")
    data.download([url], dest, sha(body), timeout=5)
    assert dest.read_bytes() == body
    err = capsys.readouterr().err
    assert "corrupt" in err and str(dest) in err


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOAR_DATA", str(tmp_path / "n"))
    assert data.default_data_dir() == str(tmp_path / "n")
    monkeypatch.delenv("NANOAR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.default_data_dir() == os.path.join(str(tmp_path / "x"), "nanoar")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert data.default_data_dir() == os.path.join(str(tmp_path / "h"), ".cache", "nanoar")


# ---------------------------------------------------------------------------
# load_images with small synthetic stand-ins for the real files
# ---------------------------------------------------------------------------


def _gz_idx(arr) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.gz")
        data.write_idx(p, arr)
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
        files[key] = data._IdxFile(names[key], sha(blob), sha(plain), arr.shape)
        server.add("/tinymnist/" + names[key], blob)
    cfg = dict(files=files, mirrors=[server.base + "/tinymnist/"], system_dirs=[])
    monkeypatch.setitem(data._DATASETS, "mnist", cfg)
    return arrays, names, blobs


def test_load_images_downloads_then_uses_cache(tiny_mnist, tmp_path, dead_url):
    arrays, names, _ = tiny_mnist
    s = data.load_images("mnist", data_dir=str(tmp_path))
    assert s.dataset == "mnist" and not s.binary and s.valid is None
    assert s.train.shape == (20, 28, 28) and s.train.dtype == np.uint8
    assert np.array_equal(s.train, arrays["train_images"])
    assert np.array_equal(s.test_labels, arrays["test_labels"])
    assert sorted(os.listdir(tmp_path / "mnist")) == sorted(names.values())
    # Offline now: everything comes from the verified cache.
    s2 = data.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert np.array_equal(s2.test, arrays["test_images"])
    s3 = data.load_images("mnist", data_dir=str(tmp_path), labels=False, mirrors=[dead_url])
    assert s3.train_labels is None and s3.test_labels is None


def test_load_images_offline_error_names_path(tiny_mnist, tmp_path, dead_url):
    with pytest.raises(DataError) as e:
        data.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url])
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
    s = data.load_images("mnist", data_dir=str(tmp_path / "cache"), mirrors=[dead_url], search_dirs=[str(sysdir)])
    assert np.array_equal(s.train, arrays["train_images"])
    assert np.array_equal(s.train_labels, arrays["train_labels"])
    assert not (tmp_path / "cache").exists()  # nothing downloaded or cached


def test_load_images_wrong_local_copy_is_an_error(tiny_mnist, tmp_path, dead_url):
    _, names, _ = tiny_mnist
    sysdir = tmp_path / "sys"
    sysdir.mkdir()
    bad = sysdir / names["train_images"]
    data.write_idx(bad, np.zeros((20, 28, 28), np.uint8))
    with pytest.raises(DataError) as e:
        data.load_images("mnist", data_dir=str(tmp_path), mirrors=[dead_url], search_dirs=[str(sysdir)])
    assert str(bad) in str(e.value)


def test_load_images_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_images("cifar")


@pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package(tmp_path, dead_url):
    s = data.load_images("fashion-mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert s.train.shape == (60000, 28, 28) and s.test.shape == (10000, 28, 28)
    assert s.train.dtype == np.uint8 and s.train.max() == 255
    assert s.train_labels.shape == (60000,) and set(np.unique(s.test_labels)) == set(range(10))
    assert not os.path.exists(tmp_path / "fashion-mnist")


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
    monkeypatch.setattr(data, "_BINARIZED_MNIST_FILES", table)
    return arrays, [server.base + "/bm/"]


def test_binarized_mnist_download_parse_and_npz_cache(tiny_binarized, tmp_path, dead_url):
    arrays, mirrors = tiny_binarized
    s = data.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=mirrors)
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
    s2 = data.load_images("binarized-mnist", data_dir=str(tmp_path), mirrors=[dead_url])
    assert np.array_equal(s2.valid, arrays["valid"])


def test_amat_parser_general_whitespace():
    a = (np.random.default_rng(2).random((3, 28, 28)) < 0.5).astype(np.uint8)
    assert np.array_equal(data._parse_amat(_amat(a, b"\r\n"), 3, "f"), a)
    assert np.array_equal(data._parse_amat(_amat(a), 3, "f"), a)


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
        data._parse_amat(mutate(_amat(a)), 3, "binarized_mnist_test.amat")
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
    out = data.binarize_threshold(grey, threshold)
    assert out.dtype == np.float32 and out.shape == (grey.shape[0], 1) + grey.shape[1:]
    assert np.array_equal(out[:, 0], (grey / 255.0 > threshold).astype(np.float32))


def test_binarize_threshold_boundary():
    grey = np.array([[[0, 127, 128, 255]]], np.uint8)
    assert data.binarize_threshold(grey).ravel().tolist() == [0, 0, 1, 1]
    assert data.binarize_threshold(grey[:, None]).shape == (1, 1, 1, 4)  # (N,1,H,W) accepted too
    with pytest.raises(TypeError, match="uint8"):
        data.binarize_threshold(grey.astype(np.float32) / 255)


def test_binarize_dynamic_frequencies_match_grey_levels():
    levels = np.array([0, 1, 51, 128, 204, 254, 255], np.uint8)
    grey = np.broadcast_to(levels, (4000, 1, len(levels))).copy()
    out = data.binarize_dynamic(grey, np.random.default_rng(0))
    assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
    freq = out.mean(axis=(0, 1, 2))
    p = levels / 255.0
    n = grey.shape[0]
    assert freq[0] == 0.0 and freq[-1] == 1.0
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_binarize_dynamic_reproducible_and_fresh():
    grey = np.full((10, 28, 28), 128, np.uint8)
    a = data.binarize_dynamic(grey, np.random.default_rng(3))
    b = data.binarize_dynamic(grey, np.random.default_rng(3))
    assert np.array_equal(a, b)
    rng = np.random.default_rng(3)
    assert not np.array_equal(data.binarize_dynamic(grey, rng), data.binarize_dynamic(grey, rng))


def test_split_validation_is_last_ten_percent():
    tr, va = data.split_validation(60000)
    assert (tr.start, tr.stop, va.start, va.stop) == (0, 54000, 54000, 60000)
    x = np.arange(60000)
    assert np.array_equal(x[va], np.arange(54000, 60000))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(100, 10**7), fraction=st.floats(0.05, 0.5))
def test_split_validation_property(n, fraction):
    tr, va = data.split_validation(n, fraction)
    assert tr.start == 0 and tr.stop == va.start and va.stop == n
    assert va.stop - va.start == round(n * fraction)


def _grey_splits(n_train=100, n_test=30, labels=True):
    rng = np.random.default_rng(5)
    return data.ImageSplits(
        "mnist",
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        train_labels=np.arange(n_train, dtype=np.uint8) if labels else None,
        test_labels=np.zeros(n_test, np.uint8) if labels else None,
    )


def test_binary_image_data_threshold():
    s = _grey_splits()
    d = data.BinaryImageData(s, "threshold", threshold=0.5)
    assert d.describe() == "mnist, threshold 0.5"
    assert d.n_train == 90
    assert np.array_equal(d.valid, data.binarize_threshold(s.train[90:]))
    assert np.array_equal(d.test, data.binarize_threshold(s.test))
    assert np.array_equal(d.valid_labels, np.arange(90, 100))
    # One epoch sees each training image exactly once (labels = index here).
    seen = []
    for x, y in d.train_batches(16, np.random.default_rng(0), drop_last=False, with_labels=True):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
        assert np.array_equal(x, data.binarize_threshold(s.train[y]))
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(90))
    batches = list(d.train_batches(16, np.random.default_rng(0)))
    assert len(batches) == 5 and all(b.shape[0] == 16 for b in batches)  # drop_last


def test_binary_image_data_dynamic():
    s = _grey_splits()
    d = data.BinaryImageData(s, "dynamic", eval_seed=7)
    assert d.describe() == "mnist, dynamic (test binarized once, seed 7)"
    # Test set binarized once, with the documented seed; same every time.
    assert np.array_equal(d.test, data.binarize_dynamic(s.test, np.random.default_rng(7)))
    assert np.array_equal(d.test, data.BinaryImageData(s, "dynamic", eval_seed=7).test)
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
    s = data.ImageSplits("binarized-mnist", b(12), b(4), valid=b(5), binary=True)
    d = data.BinaryImageData(s, "fixed")
    assert d.describe() == "binarized-mnist, fixed binarization (Larochelle & Murray)"
    assert d.n_train == 12 and d.valid.shape == (5, 1, 28, 28) and d.valid.dtype == np.float32
    assert np.array_equal(d.valid[:, 0], s.valid)
    with pytest.raises(ValueError, match="already binary"):
        data.BinaryImageData(s, "threshold")
    with pytest.raises(ValueError):
        data.BinaryImageData(_grey_splits(), "fixed")
    with pytest.raises(ValueError, match="no labels"):
        next(d.train_batches(4, rng, with_labels=True))


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def test_load_text_downloads_and_caches(server, tmp_path, monkeypatch, dead_url):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    body = text.encode()
    url = server.add("/shakespeare.txt", body)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", sha(body))
    monkeypatch.chdir(tmp_path)  # no stray local copies
    assert data.load_text(data_dir=str(tmp_path / "cache"), mirrors=[url]) == text
    assert (tmp_path / "cache" / "tinyshakespeare" / "input.txt").read_bytes() == body
    assert data.load_text(data_dir=str(tmp_path / "cache"), mirrors=[dead_url]) == text


def test_load_text_prefers_verified_local_copy(tmp_path, monkeypatch, dead_url):
    body = "local copy\n".encode()
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", sha(body))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.txt").write_bytes(body)
    assert data.load_text(data_dir=str(tmp_path / "c"), mirrors=[dead_url]) == "local copy\n"
    # A local file that is something else is ignored (then download fails here).
    (tmp_path / "input.txt").write_text("something else")
    with pytest.raises(DataError, match="put it at exactly"):
        data.load_text(data_dir=str(tmp_path / "c"), mirrors=[dead_url])


def test_load_text_explicit_path(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo\n", encoding="utf-8")
    assert data.load_text(str(p)) == "héllo\n"
    with pytest.raises(DataError, match="not found"):
        data.load_text(str(tmp_path / "missing.txt"))


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_char_vocab_round_trip(text):
    v = data.CharVocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < len(v)
    assert v.decode(ids) == text
    assert v.chars == sorted(set(text))
    assert data.CharVocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_char_vocab_ids_are_sorted_order():
    v = data.CharVocab.from_text("hello world")
    assert "".join(v.chars) == " dehlorw"
    assert v.encode("dew").tolist() == [1, 2, 7]
    assert v.decode([0, 3]) == " h"
    assert v.decode(np.array([], np.int64)) == ""


def test_char_vocab_unknown_chars_are_listed():
    v = data.CharVocab.from_text("abc")
    with pytest.raises(ValueError) as e:
        v.encode("abzxyzq")
    msg = str(e.value)
    assert "4 character(s)" in msg
    for c in "qxyz":
        assert repr(c) in msg


def test_char_vocab_decode_out_of_range():
    v = data.CharVocab.from_text("ab")
    with pytest.raises(ValueError, match="ids must be in"):
        v.decode([0, 2])


def test_split_text():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    tr, va = data.split_text(text)
    assert len(tr) == 900 and len(va) == 100 and tr + va == text


def test_get_batch_shapes_and_shift():
    ids = np.arange(1000, dtype=np.int64)
    x, y = data.get_batch(ids, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(y, x + 1)  # y is the next id after each x
    assert np.array_equal(x - x[:, :1], np.broadcast_to(np.arange(16), (8, 16)))  # contiguous windows
    x2, _ = data.get_batch(ids, 8, 16, np.random.default_rng(0))
    assert np.array_equal(x, x2)  # reproducible from the rng


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 200), context=st.integers(1, 50), batch=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_get_windows_property(n, context, batch, seed):
    ids = np.random.default_rng(seed).integers(0, 65, n)
    if n < context + 1:
        with pytest.raises(ValueError):
            data.get_windows(ids, batch, context, np.random.default_rng(seed))
        return
    w = data.get_windows(ids, batch, context, np.random.default_rng(seed))
    assert w.shape == (batch, context + 1) and w.dtype == np.int64
    x, y = data.get_batch(ids, batch, context, np.random.default_rng(seed))
    assert np.array_equal(x, w[:, :-1]) and np.array_equal(y, w[:, 1:])
    # every window is a real slice of the text
    for row in w:
        starts = [s for s in range(n - context) if np.array_equal(ids[s : s + context + 1], row)]
        assert starts


def test_get_windows_covers_last_window():
    ids = np.arange(11)
    w = data.get_windows(ids, 200, 10, np.random.default_rng(0))
    assert np.all(w == np.arange(11))  # only one possible window, it is used


def test_sequential_windows_score_each_token_once():
    ids = np.arange(103)
    batches = list(data.sequential_windows(ids, context=10, batch_size=4))
    assert [b.shape for b in batches] == [(4, 11), (4, 11), (2, 11)]
    w = np.concatenate(batches)
    assert np.array_equal(w[:, 1:].ravel(), np.arange(1, 101))
    assert np.array_equal(w[1:, 0], w[:-1, -1])  # overlap by one token
