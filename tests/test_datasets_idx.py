"""Tests for nanoar.datasets.idx: IDX round trips, layout and every kind of bad file."""

from __future__ import annotations

import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoar.datasets import DataError, parse_idx, read_idx, write_idx

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
        write_idx(path, arr)
        with open(path, "rb") as f:
            assert (f.read(2) == b"\x1f\x8b") == gz
        back = read_idx(path)
    assert back.shape == arr.shape
    assert back.dtype == arr.dtype
    assert back.dtype.isnative
    assert back.tobytes() == arr.tobytes()  # exact, NaN payloads included


def test_idx_header_is_big_endian_mnist_layout(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "imgs"
    write_idx(path, arr)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # MNIST images: magic 0x00000803
    assert struct.unpack(">3I", raw[4:16]) == (2, 3, 4)
    arr16 = np.array([1, 256], dtype=np.int16)
    write_idx(tmp_path / "s", arr16)
    assert (tmp_path / "s").read_bytes()[-4:] == b"\x00\x01\x01\x00"


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.int32)
    gz_named_plain = tmp_path / "plain.gz"
    write_idx(tmp_path / "tmp.gz", arr)
    # gzip content under a name without .gz, plain content under a .gz name
    os.rename(tmp_path / "tmp.gz", tmp_path / "nosuffix")
    write_idx(tmp_path / "p", arr)
    os.rename(tmp_path / "p", gz_named_plain)
    assert np.array_equal(read_idx(tmp_path / "nosuffix"), arr)
    assert np.array_equal(read_idx(gz_named_plain), arr)


def test_idx_truncated_plain(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "size mismatch" in msg
    assert f"expected {len(raw)} bytes, got {len(raw) - 100}" in msg


def test_idx_trailing_garbage_is_size_mismatch(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros(4, np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match="size mismatch"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "bad gzip stream" in str(e.value)


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad gzip stream") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("header", [b"PK\x03\x04", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00"])
def test_idx_bad_magic(tmp_path, header):
    path = tmp_path / "weird.bin"
    path.write_bytes(header + b"\x00" * 12)
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in str(e.value)
    assert "magic" in str(e.value) or "not an IDX file" in str(e.value)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x01")
    with pytest.raises(DataError, match="truncated header"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))


def test_parse_idx_bytes_and_name_in_errors():
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    raw = bytes([0, 0, 0x0E, 2]) + struct.pack(">2I", 2, 3) + arr.astype(">f8").tobytes()
    assert np.array_equal(parse_idx(raw), arr)
    with pytest.raises(DataError, match="^blob: size mismatch"):
        parse_idx(raw[:-1], name="blob")


def test_write_idx_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "x.gz"
    write_idx(path, np.ones(3, np.uint8))
    assert np.array_equal(read_idx(path), np.ones(3, np.uint8))
    assert os.listdir(path.parent) == ["x.gz"]
