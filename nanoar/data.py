"""Data loading for nanoar: image datasets (MNIST family) and character-level text.

Everything here is host-side NumPy.  Models run on whatever backend they like;
the training loop converts a batch to the device array type itself.

Contents, in reading order:

1. IDX files -- the format MNIST and Fashion-MNIST ship in (``read_idx``,
   ``write_idx``).
2. Downloads -- ``download`` fetches a file from a list of mirrors into a
   cache directory, verifying a SHA-256 checksum before the file is used.
3. Image datasets -- ``load_images`` for ``'mnist'``, ``'fashion-mnist'`` and
   ``'binarized-mnist'``.
4. Binarization and splits -- ``binarize_threshold``, ``binarize_dynamic``,
   ``split_validation`` and ``BinaryImageData``, which yields shuffled training
   batches of 0/1 images.
5. Text -- tiny Shakespeare, ``CharVocab``, ``split_text``, ``get_batch`` and
   ``get_windows``.

Every error that is the data's fault (missing, corrupt, wrong format, failed
download) is a ``DataError``, a ``ValueError`` whose message names the file and
says what is wrong.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.request
import zlib
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "DataError",
    "read_idx",
    "parse_idx",
    "write_idx",
    "download",
    "sha256_file",
    "default_data_dir",
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SYSTEM_DIRS",
    "BINARIZED_MNIST_MIRRORS",
    "ImageSplits",
    "load_images",
    "binarize_threshold",
    "binarize_dynamic",
    "split_validation",
    "BinaryImageData",
    "TINY_SHAKESPEARE_URL",
    "TINY_SHAKESPEARE_SHA256",
    "load_text",
    "CharVocab",
    "split_text",
    "get_batch",
    "get_windows",
    "sequential_windows",
]


class DataError(ValueError):
    """A data file is missing, corrupt, of the wrong format, or could not be downloaded.

    The message always names the file (its path, or the URL for a download).
    """


# ---------------------------------------------------------------------------
# 1. IDX files
# ---------------------------------------------------------------------------
#
# Layout (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"):
#
#   bytes 0-1   0x00 0x00
#   byte  2     element type (see _IDX_DTYPES)
#   byte  3     number of dimensions, ndim
#   4*ndim      the dimensions, each a big-endian unsigned 32-bit int
#   rest        the elements, C order, big-endian
#
# MNIST distributes these gzip-compressed.  We recognise gzip by its magic
# bytes rather than by a ".gz" suffix, because people gunzip files and keep
# the name, or rename them, and a wrong guess would turn into a confusing
# "bad magic" error.

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
# Native dtype -> element-type byte, for write_idx.
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


def _read_bytes(path: str) -> bytes:
    """Whole file contents, gunzipped if the file starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return _maybe_gunzip(raw, path)


def _maybe_gunzip(raw: bytes, name: str) -> bytes:
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
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise DataError(
            f"{name}: bad magic {data[:4].hex(' ')}: an IDX file starts with 00 00, "
            f"then an element type in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}}, then ndim"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name}: truncated header: {ndim} dimensions need {header_len} header bytes, got {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        # Short: truncated download or copy.  Long: not what the header
        # claims either; better to refuse than to silently ignore data.
        raise DataError(
            f"{name}: size mismatch: header says shape {shape} of {dtype.name}, "
            f"so expected {expected} bytes, got {len(data)}"
        )
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
    return parse_idx(_read_bytes(path), name=path)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed if ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    The write is atomic (temporary file + rename).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(
            f"write_idx({path!r}): dtype {array.dtype} has no IDX type code; "
            "use uint8, int8, int16, int32, float32 or float64"
        )
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"write_idx({path!r}): shape {array.shape} does not fit an IDX header")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same array, same bytes
    _atomic_write_bytes(path, payload)


def _atomic_write_bytes(path: str, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------
# 2. Downloads and the cache directory
# ---------------------------------------------------------------------------


def default_data_dir() -> str:
    """Where downloaded datasets are cached.

    ``$NANOAR_DATA`` if set, else ``$XDG_CACHE_HOME/nanoar``, else
    ``~/.cache/nanoar``.  The folder is created on first download, not here.
    """
    if os.environ.get("NANOAR_DATA"):
        return os.environ["NANOAR_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nanoar")


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (files may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _log(msg: str) -> None:
    # Progress goes to stderr so that it never mixes with a program's output.
    print(f"nanoar: {msg}", file=sys.stderr, flush=True)


def _fetch_to(url: str, part: str, timeout: float) -> tuple[str, int]:
    """Stream ``url`` into ``part``; return (sha256 hex, byte count).

    Raises on any network failure, including a body shorter than its
    Content-Length (a dropped connection), so that a partial file is never
    reported as a success.
    """
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
        length = resp.headers.get("Content-Length")
        while True:
            # If the server closes early, http.client may raise IncompleteRead
            # or just return b"" -- hence the explicit length check below.
            # Without a Content-Length, only the checksum can catch it.
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            h.update(chunk)
            n += len(chunk)
        if length is not None and n != int(length):
            raise ConnectionError(f"connection closed after {n} of {length} bytes")
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest(), n


def download(
    urls: str | Sequence[str],
    dest_path: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 30.0,
) -> str:
    """Make sure ``dest_path`` holds the file with checksum ``sha256``; return the path.

    * If ``dest_path`` exists and its SHA-256 matches, nothing is downloaded.
      If it exists but does not match (a corrupt or old cached copy), a message
      says so on stderr, the file is deleted and downloaded again.
    * Otherwise each URL in ``urls`` is tried in turn.  The body is streamed
      into ``dest_path + '.part'`` in the same folder and only renamed to
      ``dest_path`` (``os.replace``, atomic) after the checksum matches, so a
      file at ``dest_path`` is always complete.  A leftover ``.part`` from an
      interrupted run is simply overwritten.
    * A mirror that fails (network error, HTTP error, truncated body, wrong
      checksum) is skipped and the next one tried; its ``.part`` is deleted.
    * If every mirror fails, a DataError lists each failure -- a checksum
      mismatch names the expected and actual hash -- and says exactly where to
      put the file by hand for offline use.

    Args:
        urls: one URL or a list of mirrors' URLs for the same file.
        dest_path: final location of the file.
        sha256: expected hex SHA-256, or None to skip verification (only for
            files whose format the caller checks strictly itself).
        timeout: seconds for connecting and for each read.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest_path = os.path.abspath(os.fspath(dest_path))
    expected = sha256.lower() if sha256 else None

    if os.path.exists(dest_path):
        if expected is None:
            return dest_path
        actual = sha256_file(dest_path)
        if actual == expected:
            return dest_path
        _log(
            f"cached file {dest_path} is corrupt or out of date "
            f"(sha256 {actual}, expected {expected}); deleting it and downloading again"
        )
        os.remove(dest_path)

    os.makedirs(os.path.dirname(dest_path), exist_ok=True)
    part = dest_path + ".part"
    failures = []
    for url in urls:
        _log(f"downloading {url} -> {dest_path}")
        try:
            actual, nbytes = _fetch_to(url, part, timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:
            # OSError: URLError, HTTPError, timeouts, refused/reset connections.
            # HTTPException: IncompleteRead, bad status lines.
            # ValueError: a malformed URL.
            _remove_quietly(part)
            failures.append(f"{url}: {type(e).__name__}: {e}")
            _log(f"  failed: {type(e).__name__}: {e}")
            continue
        if expected is not None and actual != expected:
            _remove_quietly(part)
            failures.append(
                f"{url}: checksum mismatch for {os.path.basename(dest_path)}: "
                f"expected sha256 {expected}, got {actual} ({nbytes} bytes)"
            )
            _log(f"  failed: {failures[-1]}")
            continue
        os.replace(part, dest_path)
        _log(f"  done, {nbytes} bytes")
        return dest_path

    lines = "\n".join("  " + f for f in failures) or "  (no URLs given)"
    raise DataError(
        f"could not download {os.path.basename(dest_path)}:\n{lines}\n"
        f"To use it offline, get the file yourself and put it at exactly\n  {dest_path}\n"
        + (f"(its sha256 must be {expected})" if expected else "")
    )


# ---------------------------------------------------------------------------
# 3. Image datasets
# ---------------------------------------------------------------------------

# Mirrors of the original MNIST files, in the order torchvision uses them
# (yann.lecun.com itself now often refuses downloads).
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

FASHION_MNIST_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
]

# Debian/Ubuntu's package `dataset-fashion-mnist` installs the four files here,
# gzipped, under their usual names.
FASHION_MNIST_SYSTEM_DIRS = ["/usr/share/datasets/fashion-mnist"]

BINARIZED_MNIST_MIRRORS = [
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
]


@dataclasses.dataclass(frozen=True)
class _IdxFile:
    """One file of an IDX dataset and what a good copy of it looks like."""

    name: str  # as on the mirrors, e.g. "train-images-idx3-ubyte.gz"
    sha256: str  # of the .gz exactly as the mirrors serve it
    # SHA-256 of the decompressed IDX bytes.  It identifies the data whatever
    # the compression (a repackaged .gz, or a file someone gunzipped), so local
    # copies are accepted if either hash matches.  None where we do not know it;
    # then a local copy that is not the mirrors' .gz is only checked for shape.
    content_sha256: str | None
    shape: tuple  # what read_idx must return


# MNIST checksums: the SHA-256 of the files on the mirrors above.  Checked
# against TensorFlow Datasets' url_checksums/mnist.txt and several other
# independent projects (they all agree).  Content hashes not known here.
_MNIST_FILES = {
    "train_images": _IdxFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        None,
        (60000, 28, 28),
    ),
    "train_labels": _IdxFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        None,
        (60000,),
    ),
    "test_images": _IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        None,
        (10000, 28, 28),
    ),
    "test_labels": _IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        None,
        (10000,),
    ),
}

# Fashion-MNIST checksums.
# * sha256 (the .gz on the S3 mirror): from TensorFlow Datasets'
#   url_checksums/fashion_mnist.txt, which several other projects repeat; the
#   upstream README only gives MD5s.
# * content_sha256 (the gunzipped IDX bytes): computed from Debian's
#   dataset-fashion-mnist 0.0~git20200523.55506a9-1.  Debian's .gz files are
#   NOT byte-identical to upstream's (24 or 23 bytes shorter: the gzip header
#   lost the original file name and got a new mtime), but their deflate
#   streams are: putting back the name and the 2017-08-31 mtime reproduces
#   exactly the upstream sha256 above for all four files.  So the decompressed
#   data, which is what these hashes cover, is the same.
_FASHION_MNIST_FILES = {
    "train_images": _IdxFile(
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        (60000, 28, 28),
    ),
    "train_labels": _IdxFile(
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        (60000,),
    ),
    "test_images": _IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        (10000, 28, 28),
    ),
    "test_labels": _IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        (10000,),
    ),
}

# The fixed binarization of Larochelle & Murray (2011): text files of rows of
# 784 space-separated 0/1 values.  Checksums and sizes from TensorFlow
# Datasets' url_checksums/binarized_mnist.txt (sizes: exactly rows * 784 * 2
# bytes, i.e. one digit plus one space or newline per value).  On top of the
# checksum, _parse_amat checks the format strictly (row count, 784 columns,
# only 0/1), so a file given by hand with sha256 unknown is still validated.
_BINARIZED_MNIST_FILES = {
    "train": ("binarized_mnist_train.amat", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d", 50000),
    "valid": ("binarized_mnist_valid.amat", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2", 10000),
    "test": ("binarized_mnist_test.amat", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c", 10000),
}

_DATASETS = {
    "mnist": dict(files=_MNIST_FILES, mirrors=MNIST_MIRRORS, system_dirs=[]),
    "fashion-mnist": dict(
        files=_FASHION_MNIST_FILES, mirrors=FASHION_MNIST_MIRRORS, system_dirs=FASHION_MNIST_SYSTEM_DIRS
    ),
}


@dataclasses.dataclass
class ImageSplits:
    """The images of one dataset, as stored (no binarization applied yet).

    Attributes:
        dataset: 'mnist', 'fashion-mnist' or 'binarized-mnist'.
        train: (N_train, 28, 28) uint8.  Grey levels 0..255, or 0/1 when
            ``binary`` is True.
        test: (N_test, 28, 28) uint8, same encoding.
        valid: (N_valid, 28, 28) uint8 for datasets with an official
            validation split (binarized-mnist), else None; then hold out part
            of ``train`` with ``split_validation``.
        train_labels, test_labels: (N,) uint8 class labels, or None when the
            dataset has none (binarized-mnist) or they were not requested.
        binary: True if the pixels are already 0/1.
    """

    dataset: str
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    binary: bool = False


def _verify_local_idx(path: str, spec: _IdxFile) -> np.ndarray:
    """Read a local copy of an IDX file and check that it holds the expected data.

    Accepted if the file's sha256 is the mirrors' one, or its decompressed
    bytes have the known content sha256; where no content hash is known, if
    it parses with the expected shape and dtype.  Raises DataError otherwise.
    """
    with open(path, "rb") as f:
        raw = f.read()
    data = _maybe_gunzip(raw, path)
    arr = parse_idx(data, name=path)
    if hashlib.sha256(raw).hexdigest() == spec.sha256:
        return arr
    if spec.content_sha256 is not None:
        if hashlib.sha256(data).hexdigest() != spec.content_sha256:
            raise DataError(
                f"{path}: not the expected {spec.name}: neither the file's sha256 ({spec.sha256}) "
                f"nor that of its decompressed data ({spec.content_sha256}) matches"
            )
    elif arr.shape != tuple(spec.shape) or arr.dtype != np.uint8:
        raise DataError(f"{path}: expected {spec.shape} uint8 for {spec.name}, got {arr.shape} {arr.dtype}")
    return arr


def _load_idx_file(spec: _IdxFile, search_dirs: Sequence[str], cache_dir: str, mirrors: Sequence[str]) -> np.ndarray:
    """Find ``spec`` locally (gzipped or not) or download it, verify it, read it.

    Order: each folder of ``search_dirs`` (read-only copies such as Debian's),
    trying the .gz name and the name without .gz; then a file without .gz in
    ``cache_dir`` (put there by hand); then ``download`` into ``cache_dir``,
    which uses the cached .gz if its checksum matches and re-downloads it if
    not.  A local copy that exists but is wrong is an error, not skipped:
    silently using some other copy would hide the problem.
    """
    plain = spec.name[:-3] if spec.name.endswith(".gz") else spec.name
    candidates = [os.path.join(d, n) for d in search_dirs for n in (spec.name, plain)]
    candidates.append(os.path.join(cache_dir, plain))
    for path in candidates:
        if os.path.isfile(path):
            try:
                return _verify_local_idx(path, spec)
            except DataError as e:
                raise DataError(f"{e}\nDelete or replace {path} and try again.") from None
    path = download([m + spec.name for m in mirrors], os.path.join(cache_dir, spec.name), spec.sha256)
    arr = read_idx(path)
    if arr.shape != tuple(spec.shape):
        raise DataError(f"{path}: expected shape {spec.shape}, got {arr.shape}")
    return arr


def _parse_amat(raw: bytes, rows: int, name: str) -> np.ndarray:
    """Parse a binarized-MNIST .amat file into (rows, 28, 28) uint8 0/1.

    The files are ``rows`` lines of 784 values "0"/"1" separated by single
    spaces.  That fixed layout lets us decode 39 million values with one
    NumPy reshape instead of a text parser (seconds instead of a minute); a
    file with other whitespace falls back to a general split.
    """
    width = 784 * 2
    if len(raw) == rows * width:
        grid = np.frombuffer(raw, dtype=np.uint8).reshape(rows, width)
        seps = grid[:, 1::2]
        if (seps[:, :-1] == ord(" ")).all() and (seps[:, -1] == ord("\n")).all():
            digits = grid[:, 0::2]
            if not np.isin(digits, (ord("0"), ord("1"))).all():
                raise DataError(f"{name}: values other than 0 and 1")
            return (digits - ord("0")).astype(np.uint8).reshape(rows, 28, 28)
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines = lines[:-1]
    if len(lines) != rows:
        raise DataError(f"{name}: expected {rows} rows, got {len(lines)}")
    out = np.empty((rows, 784), dtype=np.uint8)
    for i, line in enumerate(lines):
        tokens = line.split()
        if len(tokens) != 784:
            raise DataError(f"{name}: row {i + 1} has {len(tokens)} values, expected 784")
        if any(t not in (b"0", b"1") for t in tokens):
            raise DataError(f"{name}: row {i + 1} has values other than 0 and 1")
        out[i] = [t == b"1" for t in tokens]
    return out.reshape(rows, 28, 28)


def _load_binarized_mnist(cache_dir: str, mirrors: Sequence[str]) -> ImageSplits:
    """Load Larochelle & Murray's fixed binarized MNIST (50000/10000/10000).

    Parsed arrays are cached in ``binarized_mnist.npz`` beside the .amat files;
    the .npz is rebuilt if it is unreadable or has the wrong shapes.
    """
    npz_path = os.path.join(cache_dir, "binarized_mnist.npz")
    shapes = {split: (rows, 28, 28) for split, (_, _, rows) in _BINARIZED_MNIST_FILES.items()}
    if os.path.isfile(npz_path):
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in shapes}
            if all(arrays[k].shape == s and arrays[k].dtype == np.uint8 and arrays[k].max() <= 1 for k, s in shapes.items()):
                return ImageSplits("binarized-mnist", arrays["train"], arrays["test"], valid=arrays["valid"], binary=True)
        except Exception as e:  # any failure just means: rebuild the cache
            _log(f"ignoring unreadable cache {npz_path} ({type(e).__name__}: {e}); rebuilding it")
    arrays = {}
    for split, (name, sha, rows) in _BINARIZED_MNIST_FILES.items():
        path = download([m + name for m in mirrors], os.path.join(cache_dir, name), sha)
        with open(path, "rb") as f:
            arrays[split] = _parse_amat(f.read(), rows, path)
    # Write the cache atomically so that a crash never leaves a half .npz.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".binarized_mnist.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, npz_path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return ImageSplits("binarized-mnist", arrays["train"], arrays["test"], valid=arrays["valid"], binary=True)


def load_images(
    dataset: str,
    data_dir: str | None = None,
    *,
    labels: bool = True,
    mirrors: Sequence[str] | None = None,
    search_dirs: Sequence[str] | None = None,
) -> ImageSplits:
    """Load an image dataset, downloading and caching it if needed.

    Args:
        dataset: 'mnist', 'fashion-mnist' (both grey, uint8 0..255) or
            'binarized-mnist' (Larochelle & Murray's fixed 0/1 binarization,
            with its own 50000/10000/10000 train/valid/test split, no labels).
        data_dir: cache root; files go in ``<data_dir>/<dataset>/``.
            Default ``default_data_dir()``.
        labels: also load class labels (MNIST and Fashion-MNIST only).
        mirrors: base URLs (ending in '/') to download from instead of the
            built-in ones; file names are appended.
        search_dirs: folders holding ready copies to use before the cache;
            default: Debian's /usr/share/datasets/fashion-mnist for
            Fashion-MNIST, none otherwise.

    Returns:
        ImageSplits with (N, 28, 28) uint8 arrays; see its docstring.
    """
    cache_dir = os.path.join(data_dir or default_data_dir(), dataset)
    if dataset == "binarized-mnist":
        return _load_binarized_mnist(cache_dir, list(mirrors) if mirrors else BINARIZED_MNIST_MIRRORS)
    if dataset not in _DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from 'mnist', 'fashion-mnist', 'binarized-mnist'")
    cfg = _DATASETS[dataset]
    mirrors = list(mirrors) if mirrors else cfg["mirrors"]
    search_dirs = cfg["system_dirs"] if search_dirs is None else list(search_dirs)
    keys = ["train_images", "test_images"] + (["train_labels", "test_labels"] if labels else [])
    loaded = {k: _load_idx_file(cfg["files"][k], search_dirs, cache_dir, mirrors) for k in keys}
    return ImageSplits(
        dataset,
        loaded["train_images"],
        loaded["test_images"],
        train_labels=loaded.get("train_labels"),
        test_labels=loaded.get("test_labels"),
    )


def load_idx_folder(folder: str) -> ImageSplits:
    """Your own MNIST-style data: a folder with train-images-idx3-ubyte and
    t10k-images-idx3-ubyte (each optionally .gz) holding uint8 images (N, H, W).

    No checksums (the files are yours); the format and dtype are checked.
    """
    def find(stem):
        for name in (stem + ".gz", stem):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        raise DataError(f"{folder}: no {stem} or {stem}.gz in this folder")

    arrays = []
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        path = find(stem)
        arr = read_idx(path)
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise DataError(f"{path}: expected uint8 images (N, H, W), got {arr.dtype} {arr.shape}")
        arrays.append(arr)
    if arrays[0].shape[1:] != arrays[1].shape[1:]:
        raise DataError(f"{folder}: train images are {arrays[0].shape[1:]} but test images {arrays[1].shape[1:]}")
    return ImageSplits(os.path.abspath(folder), arrays[0], arrays[1])


# ---------------------------------------------------------------------------
# 4. Binarization and splits
# ---------------------------------------------------------------------------


def _as_nchw_uint8(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) uint8 -> (N, 1, H, W), a view where possible."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 grey levels 0..255, got dtype {images.dtype}")
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4 and images.shape[1] == 1:
        return images
    raise ValueError(f"expected images of shape (N, H, W) or (N, 1, H, W), got {images.shape}")


def binarize_threshold(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Deterministic binarization: pixel = 1 where grey/255 > threshold, else 0.

    Args:
        images: (N, H, W) or (N, 1, H, W) uint8 grey levels 0..255.
        threshold: strictly greater wins: with 0.5, grey 127 -> 0 and
            grey 128 -> 1.

    Returns:
        (N, 1, H, W) float32 of 0.0 / 1.0.
    """
    grey = _as_nchw_uint8(images)
    # A 256-entry lookup table computes grey/255 > threshold in float64 for
    # each grey level once, instead of a float64 copy of the whole dataset.
    table = (np.arange(256) / 255.0 > threshold).astype(np.float32)
    return table[grey]


def binarize_dynamic(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic binarization: each pixel ~ Bernoulli(grey/255), independently.

    Re-sampling this every epoch ("dynamic binarization") is the usual
    protocol for likelihoods on grey MNIST and acts as data augmentation.
    Grey 0 is always 0 and grey 255 always 1.

    Args:
        images: (N, H, W) or (N, 1, H, W) uint8 grey levels 0..255.
        rng: a numpy Generator; the result is a deterministic function of its
            state.

    Returns:
        (N, 1, H, W) float32 of 0.0 / 1.0.
    """
    grey = _as_nchw_uint8(images)
    p = (np.arange(256, dtype=np.float32) / np.float32(255.0))[grey]
    # rng.random is in [0, 1): p = 1 always gives 1 and p = 0 always gives 0.
    return (rng.random(grey.shape, dtype=np.float32) < p).astype(np.float32)


def split_validation(n: int, fraction: float = 0.1) -> tuple[slice, slice]:
    """Split ``n`` training examples into (train, validation) index slices.

    The validation set is the LAST ``round(n * fraction)`` examples of the
    training file, in file order: no randomness, so every run and every
    model holds out the same images (for MNIST and Fashion-MNIST: training
    file items 54000..59999).  The test set is never used for choices such as
    early stopping or hyperparameters -- that is what this split is for.

    Returns:
        (slice(0, n - n_valid), slice(n - n_valid, n)); index arrays with them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n_valid = int(round(n * fraction))
    if not 0 < n_valid < n:
        raise ValueError(f"cannot hold out {fraction:.0%} of {n} examples ({n_valid})")
    return slice(0, n - n_valid), slice(n - n_valid, n)


class BinaryImageData:
    """Binary images for training likelihood models: train batches, valid and test sets.

    Splits:
        * mnist / fashion-mnist: train = first 90% of the training file,
          valid = its last 10% (``split_validation``), test = the test file.
        * binarized-mnist: the official 50000/10000/10000 split.

    Binarization (``binarization=``):
        * 'threshold': grey/255 > threshold, fixed once for every split.
        * 'dynamic': training batches are re-sampled ~ Bernoulli(grey/255) every
          epoch (from the rng given to ``train_batches``); valid and test are
          sampled ONCE, from ``np.random.default_rng(eval_seed)`` for test and
          ``default_rng(eval_seed + 1)`` for valid, so every evaluation (and
          every model compared) sees the same 0/1 images.
        * 'fixed': binarized-mnist's own binarization (the only choice for it).

    Attributes:
        valid, test: (N, 1, 28, 28) float32 0/1.
        valid_labels, test_labels: (N,) uint8 or None.
        n_train: number of training images.
    """

    def __init__(
        self,
        images: ImageSplits,
        binarization: str = "threshold",
        *,
        threshold: float = 0.5,
        valid_fraction: float = 0.1,
        eval_seed: int = 0,
    ):
        self.dataset = images.dataset
        self.binarization = binarization
        self.threshold = threshold
        self.eval_seed = eval_seed
        if images.binary:
            if binarization != "fixed":
                raise ValueError(f"{images.dataset} is already binary; use binarization='fixed'")
        elif binarization not in ("threshold", "dynamic"):
            raise ValueError(f"binarization must be 'threshold' or 'dynamic' for {images.dataset}, got {binarization!r}")

        if images.valid is not None:
            train, valid = images.train, images.valid
            train_labels, valid_labels = images.train_labels, None
        else:
            tr, va = split_validation(len(images.train), valid_fraction)
            train, valid = images.train[tr], images.train[va]
            labels = images.train_labels
            train_labels = None if labels is None else labels[tr]
            valid_labels = None if labels is None else labels[va]
        self.train_labels = train_labels
        self.valid_labels = valid_labels
        self.test_labels = images.test_labels

        if binarization == "dynamic":
            self._train = train  # grey uint8; binarized per batch
            self.test = binarize_dynamic(images.test, np.random.default_rng(eval_seed))
            self.valid = binarize_dynamic(valid, np.random.default_rng(eval_seed + 1))
        elif binarization == "threshold":
            # Keep the training set as uint8 0/1 (a quarter of float32's
            # memory) and convert each batch to float32 when it is served.
            self._train = binarize_threshold(train, threshold).astype(np.uint8)
            self.test = binarize_threshold(images.test, threshold)
            self.valid = binarize_threshold(valid, threshold)
        else:  # fixed
            self._train = _as_nchw_uint8(train)
            self.test = _as_nchw_uint8(images.test).astype(np.float32)
            self.valid = _as_nchw_uint8(valid).astype(np.float32)

    @classmethod
    def load(cls, dataset: str, binarization: str | None = None, data_dir: str | None = None, **kwargs) -> "BinaryImageData":
        """``load_images(dataset, data_dir)`` then the constructor.

        ``binarization`` defaults to 'fixed' for binarized-mnist and
        'threshold' otherwise.
        """
        if binarization is None:
            binarization = "fixed" if dataset == "binarized-mnist" else "threshold"
        return cls(load_images(dataset, data_dir), binarization, **kwargs)

    @property
    def n_train(self) -> int:
        return len(self._train)

    def describe(self) -> str:
        """One line for logs and reports, e.g. 'mnist, dynamic (test binarized once, seed 0)'."""
        if self.binarization == "threshold":
            return f"{self.dataset}, threshold {self.threshold:g}"
        if self.binarization == "dynamic":
            return f"{self.dataset}, dynamic (test binarized once, seed {self.eval_seed})"
        return f"{self.dataset}, fixed binarization (Larochelle & Murray)"

    def train_batches(
        self, batch_size: int, rng: np.random.Generator, *, drop_last: bool = True, with_labels: bool = False
    ) -> Iterator:
        """One epoch of shuffled training batches.

        Args:
            batch_size: images per batch.
            rng: shuffles the order and, for 'dynamic', draws the pixels; so
                each epoch sees fresh binarizations.  Save its state
                (``nanoar.checkpoint.rng_state``) to resume exactly.
            drop_last: skip a final short batch (keeps shapes fixed).
            with_labels: yield (x, labels) instead of x.

        Yields:
            x: (B, 1, 28, 28) float32 0/1, and optionally labels (B,) uint8.
        """
        if with_labels and self.train_labels is None:
            raise ValueError(f"{self.dataset} has no labels")
        order = rng.permutation(self.n_train)
        stop = self.n_train - (self.n_train % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            if self.binarization == "dynamic":
                x = binarize_dynamic(self._train[idx], rng)
            else:
                x = self._train[idx].astype(np.float32)
            yield (x, self.train_labels[idx]) if with_labels else x


# ---------------------------------------------------------------------------
# 5. Text
# ---------------------------------------------------------------------------

# char-rnn's tiny Shakespeare, 1,115,394 bytes of ASCII, 65 distinct characters.
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# Local copies tried (relative to the working directory) before the cache and
# a download; used only if their checksum matches, so a stray input.txt that
# is something else is ignored.
_TEXT_LOCAL_COPIES = ["data/tinyshakespeare/input.txt", "tinyshakespeare.txt", "input.txt"]


def load_text(path: str | None = None, data_dir: str | None = None, *, mirrors: Sequence[str] | None = None) -> str:
    """Load a text corpus as a str.

    Args:
        path: a UTF-8 text file to read as is.  If None, tiny Shakespeare:
            a verified local copy (see ``_TEXT_LOCAL_COPIES``), else the cached
            ``<data_dir>/tinyshakespeare/input.txt``, else a download to it.
        data_dir: cache root, default ``default_data_dir()``.
        mirrors: full URLs to download tiny Shakespeare from, instead of
            ``TINY_SHAKESPEARE_URL``.
    """
    if path is None:
        for candidate in _TEXT_LOCAL_COPIES:
            if os.path.isfile(candidate) and sha256_file(candidate) == TINY_SHAKESPEARE_SHA256:
                path = candidate
                break
        else:
            dest = os.path.join(data_dir or default_data_dir(), "tinyshakespeare", "input.txt")
            path = download(list(mirrors) if mirrors else [TINY_SHAKESPEARE_URL], dest, TINY_SHAKESPEARE_SHA256)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


class CharVocab:
    """Character-level vocabulary: id i <-> the i-th character in sorted order.

    Build it from the TRAINING text only (``CharVocab.from_text(train)``), so
    that nothing about the held-out text leaks into the model; encoding text
    with a character it has not seen is then an error, not a silent new id.
    """

    def __init__(self, chars: Sequence[str] | str):
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharVocab takes single characters")
        if not chars:
            raise ValueError("CharVocab needs at least one character")
        self.chars: list[str] = chars
        # Sorted code points, for vectorised encode (searchsorted) and decode.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharVocab({''.join(self.chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """str of length T -> (T,) int64 ids.

        Raises:
            ValueError: listing every character of ``text`` not in the vocabulary.
        """
        # UTF-32 gives one uint32 code point per character: a vectorised ord().
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids_clipped = np.minimum(ids, len(self._codes) - 1)
        known = self._codes[ids_clipped] == codes
        if not known.all():
            unknown = [chr(c) for c in np.unique(codes[~known])]
            raise ValueError(
                f"{len(unknown)} character(s) not in the vocabulary: "
                + ", ".join(repr(c) for c in unknown)
            )
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """Sequence or array of ids (any integer dtype, 1-D) -> str."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode expects a 1-D integer sequence, got shape {ids.shape} {ids.dtype}")
        if ids.min() < 0 or ids.max() >= len(self.chars):
            raise ValueError(f"ids must be in [0, {len(self.chars)}), got range [{ids.min()}, {ids.max()}]")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_dict(self) -> dict:
        """JSON-able description, for checkpoints' meta."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharVocab":
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a CharVocab dict: {d!r}")
        vocab = cls(d["chars"])
        if "".join(vocab.chars) != d["chars"]:
            raise ValueError("CharVocab dict's chars are not sorted and unique")
        return vocab


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """First ``train_fraction`` of the characters for training, the rest held out.

    A contiguous split (as nanoGPT does): random windows of a shuffled text
    would leak neighbouring context into the held-out part.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


def get_windows(data_ids: np.ndarray, batch_size: int, context: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` random windows of ``context + 1`` consecutive ids.

    Models that score a sequence exactly (log p(w[1:] | w[0]) and so on) want
    the whole window; ``get_batch`` splits it into inputs and targets.

    Args:
        data_ids: (T,) int ids of the text, T >= context + 1.
        rng: draws the start offsets, uniform over the T - context valid ones.

    Returns:
        (B, context + 1) int64.
    """
    data_ids = np.asarray(data_ids)
    if data_ids.ndim != 1:
        raise ValueError(f"data_ids must be 1-D, got shape {data_ids.shape}")
    n_starts = len(data_ids) - context
    if context < 1 or n_starts < 1:
        raise ValueError(f"need at least context + 1 = {context + 1} ids, got {len(data_ids)}")
    starts = rng.integers(0, n_starts, size=batch_size)
    return data_ids[starts[:, None] + np.arange(context + 1)].astype(np.int64)


def get_batch(
    data_ids: np.ndarray, batch_size: int, context: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """nanoGPT-style batch: inputs x and next-token targets y.

    Returns:
        x, y: (B, context) int64 with y[:, t] == x[:, t + 1] for t < context - 1,
        i.e. y is x shifted left by one (the id that follows each input).
    """
    w = get_windows(data_ids, batch_size, context, rng)
    return w[:, :-1], w[:, 1:]


def sequential_windows(data_ids: np.ndarray, context: int, batch_size: int) -> Iterator[np.ndarray]:
    """Deterministic windows for evaluating a held-out text exactly once.

    Window k is ``data_ids[k*context : k*context + context + 1]``: consecutive
    windows overlap by one id, so predicting ids 1..context of every window
    scores each id of the text after the first exactly once.  A trailing
    remainder shorter than ``context`` is dropped.

    Yields:
        (b, context + 1) int64 with b <= batch_size (the last batch may be short).
    """
    data_ids = np.asarray(data_ids)
    n_windows = (len(data_ids) - 1) // context
    if n_windows < 1:
        raise ValueError(f"need at least context + 1 = {context + 1} ids, got {len(data_ids)}")
    offsets = np.arange(context + 1)
    for first in range(0, n_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, n_windows)) * context
        yield data_ids[starts[:, None] + offsets].astype(np.int64)
