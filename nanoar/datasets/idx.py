"""IDX files: the format MNIST and Fashion-MNIST ship in.

Layout (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"):

  bytes 0-1   0x00 0x00
  byte  2     element type (see _IDX_DTYPES)
  byte  3     number of dimensions, ndim
  4*ndim      the dimensions, each a big-endian unsigned 32-bit int
  rest        the elements, C order, big-endian

MNIST distributes these gzip-compressed.  gzip is recognised by its magic
bytes rather than by a ".gz" suffix, because people gunzip files and keep the
name, or rename them, and a wrong guess would turn into a confusing "bad magic"
error.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from .download import DataError, atomic_write

__all__ = ["parse_idx", "read_idx", "write_idx", "gunzip_if_needed", "IDX_MAX_NDIM"]

_GZIP_MAGIC = b"\x1f\x8b"

# Element-type byte -> big-endian NumPy dtype as stored in the file.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# The most dimensions accepted: NumPy's own limit is 32 (NumPy 1) or 64 (NumPy 2), and
# real IDX files have 1 to 4; a header byte above this is a corrupt or foreign file.
IDX_MAX_NDIM = 32
# Native dtype -> element-type byte, for write_idx.
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


def gunzip_if_needed(raw: bytes, name: str) -> bytes:
    """``raw`` decompressed if it starts with the gzip magic, else ``raw`` itself.

    Raises:
        DataError: a gzip stream that is truncated or corrupt (``name`` is
            used in the message).
    """
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # OSError covers gzip.BadGzipFile and CRC errors; EOFError a
        # truncated stream; zlib.error a corrupt deflate block.
        raise DataError(f"{name}: bad gzip stream ({e})") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file.

    Args:
        data: the file contents.
        name: used in error messages (normally the file's path).

    Returns:
        An array with the file's shape and a native-byte-order dtype
        (uint8, int8, int16, int32, float32 or float64).
    """
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file: only {len(data)} bytes, the header alone is at least 4")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{name}: bad magic {data[:4].hex(' ')}: not an IDX file (an IDX file starts with 00 00)")
    if code not in _IDX_DTYPES:
        raise DataError(
            f"{name}: unknown IDX element type 0x{code:02x} (magic {data[:4].hex(' ')}); "
            f"known types: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    if not 1 <= ndim <= IDX_MAX_NDIM:
        raise DataError(f"{name}: bad IDX header: {ndim} dimensions (an IDX file has 1 to {IDX_MAX_NDIM})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name}: truncated header: {ndim} dimensions need {header_len} header bytes, got {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[code]
    # Python ints: the product of up to 32 dimensions of up to 2**32 - 1 never overflows.
    expected = header_len + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        # Short: truncated download or copy.  Long: not what the header
        # claims either; better to refuse than to silently ignore data.
        raise DataError(
            f"{name}: size mismatch: header says shape {shape} of {dtype.name}, "
            f"so expected {expected} bytes, got {len(data)}"
        )
    if math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        # no elements (a dimension is 0), but the others multiply past what an array can be
        raise DataError(f"{name}: bad IDX header: shape {shape} is too large for an array")
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order (and a writeable copy rather than a view of `data`).
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or plain (detected by content, not by name).

    Returns:
        The array, e.g. (60000, 28, 28) uint8 for MNIST training images or
        (60000,) uint8 for its labels.

    Raises:
        DataError: missing file, bad gzip stream, bad magic, size mismatch.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return parse_idx(gunzip_if_needed(raw, path), name=path)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed if ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    The folder is created if needed; the write is atomic (``atomic_write``).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(
            f"write_idx({path!r}): dtype {array.dtype} has no IDX type code; "
            "use uint8, int8, int16, int32, float32 or float64"
        )
    if not 1 <= array.ndim <= IDX_MAX_NDIM or any(d >= 2**32 for d in array.shape):
        raise ValueError(
            f"write_idx({path!r}): shape {array.shape} does not fit an IDX header "
            f"(1 to {IDX_MAX_NDIM} dimensions, each below 2**32)"
        )
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same array, same bytes
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(payload)
