"""Tests for nanoar.datasets.idx: IDX round trips, layout and every kind of bad file."""

from __future__ import annotations

import os
import pathlib
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


# ---------------------------------------------------------------------------
# Headers that cannot be read: one short DataError line naming the file
# ---------------------------------------------------------------------------

KNOWN_CODES = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}


def _refused(tmp_path, raw: bytes, name="h.idx") -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 300, msg
    return msg


@settings(max_examples=40, deadline=None)
@given(code=st.integers(0, 255).filter(lambda c: c not in KNOWN_CODES))
def test_idx_unknown_element_type(code):
    with tempfile.TemporaryDirectory() as d:
        msg = _refused(pathlib.Path(d), bytes([0, 0, code, 1]) + struct.pack(">I", 2) + b"\x00\x00")
    assert f"unknown IDX element type 0x{code:02x}" in msg and "0x08" in msg


@settings(max_examples=40, deadline=None)
@given(ndim=st.sampled_from([0]) | st.integers(33, 255))
def test_idx_zero_or_absurd_number_of_dimensions(ndim):
    """0 dimensions (a scalar: not what an IDX file holds) or more than IDX_MAX_NDIM."""
    with tempfile.TemporaryDirectory() as d:
        msg = _refused(pathlib.Path(d), bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x01" * ndim + b"\x07")
    assert f"{ndim} dimensions (an IDX file has 1 to 32)" in msg


def test_idx_size_is_computed_without_overflow(tmp_path):
    """Dimensions whose product overflows 64 bits are a size mismatch with the exact count,
    not a wrapped (or negative) one that could match a small file."""
    dims = [2**32 - 1] * 3
    msg = _refused(tmp_path, bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", *dims) + b"\x00" * 64)
    assert f"expected {16 + (2**32 - 1) ** 3 * 8} bytes, got {16 + 64}" in msg and "size mismatch" in msg
    # 2**64 elements of one byte wrap to 0 in int64: the file with no data is still refused
    msg = _refused(tmp_path, bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2**32 - 1, 2**32 - 1), name="w")
    assert "size mismatch" in msg
    # no elements (a 0 dimension) and no data, but the other dimensions are more than an array can have
    msg = _refused(tmp_path, bytes([0, 0, 0x08, 4]) + struct.pack(">4I", 0, 2**32 - 1, 2**32 - 1, 2**32 - 1), name="z")
    assert "too large for an array" in msg


def test_idx_header_messages_are_one_line(tmp_path):
    assert "truncated header" in _refused(tmp_path, bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x01")
    assert "bad magic" in _refused(tmp_path, b"\x00\x01\x08\x01" + b"\x00" * 8)
    assert "not an IDX file" in _refused(tmp_path, b"\x00\x00")
    assert "size mismatch" in _refused(tmp_path, bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00" * 4)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=48)
    | st.builds(
        lambda code, dims, extra: bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + extra,
        st.sampled_from(sorted(KNOWN_CODES)) | st.integers(0, 255),
        st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 4), max_size=40),
        st.binary(max_size=32),
    )
)
def test_idx_any_bytes_give_an_array_or_a_data_error(raw):
    """Whatever the bytes, parse_idx returns an array of the header's shape or raises
    DataError: never an overflow, a NumPy error or a huge allocation."""
    try:
        arr = parse_idx(raw, name="fuzz")
    except DataError as e:
        assert str(e).startswith("fuzz: ") and "\n" not in str(e)
        return
    assert arr.ndim == raw[3] and arr.nbytes == len(raw) - 4 - 4 * raw[3]


def test_write_idx_refuses_what_read_idx_refuses(tmp_path):
    with pytest.raises(ValueError, match="does not fit an IDX header"):
        write_idx(tmp_path / "scalar", np.array(3, np.uint8))
    with pytest.raises(ValueError, match="1 to 32 dimensions"):
        write_idx(tmp_path / "deep", np.zeros((1,) * 33, np.uint8))
