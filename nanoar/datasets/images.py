"""Image datasets: MNIST, Fashion-MNIST and binarized MNIST; binarization and splits.

* ``load_images`` finds a dataset's files (a read-only folder such as Debian's
  /usr/share/datasets/fashion-mnist, then the cache, then a download),
  checks them and returns an ``ImageSplits`` of uint8 arrays.
* ``load_idx_folder`` reads your own MNIST-style IDX files.
* ``binarize_threshold`` / ``binarize_dynamic`` turn grey levels into 0/1,
  ``split_validation`` holds out the end of the training file, and
  ``BinaryImageData`` serves shuffled 0/1 training batches plus fixed
  validation and test sets.

Everything here is host-side NumPy; the training loop moves a batch to the
device itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Iterator, Sequence

import numpy as np

from .download import DataError, atomic_write, default_data_dir, download, log_progress
from .idx import gunzip_if_needed, parse_idx, read_idx

__all__ = [
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SYSTEM_DIRS",
    "BINARIZED_MNIST_MIRRORS",
    "ImageSplits",
    "load_images",
    "load_idx_folder",
    "pixel_levels",
    "parse_amat",
    "binarize_threshold",
    "check_threshold",
    "binarize_dynamic",
    "split_validation",
    "min_examples_for_split",
    "BinaryImageData",
]

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


# MNIST checksums.
# * sha256 (the .gz on the mirrors above): checked against TensorFlow
#   Datasets' url_checksums/mnist.txt and several other independent projects
#   (they all agree).
# * content_sha256 (the gunzipped IDX bytes): as published by several
#   independent projects that verify their MNIST downloads (in Python, Go,
#   CMake and shell), each listing all four and agreeing, several of them
#   beside the .gz hashes above.  The decompressed sizes they give (47040016,
#   60008, 7840016 and 10008 bytes) are those the IDX headers imply.  They
#   make a copy placed by hand, gzipped or not, checkable, and tell a
#   Fashion-MNIST file (same names, same shapes) from an MNIST one.
_MNIST_FILES = {
    "train_images": _IdxFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    "train_labels": _IdxFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    "test_images": _IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    "test_labels": _IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
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
# checksum, parse_amat checks the format strictly (row count, 784 columns,
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
    data = gunzip_if_needed(raw, path)
    arr = parse_idx(data, name=path)
    if hashlib.sha256(raw).hexdigest() == spec.sha256:
        return arr
    if spec.content_sha256 is not None:
        content = hashlib.sha256(data).hexdigest()
        if content != spec.content_sha256:
            other = _known_contents().get(content)
            raise DataError(
                f"{path}: not the expected {spec.name}: neither the file's sha256 ({spec.sha256}) "
                f"nor that of its decompressed data ({spec.content_sha256}) matches"
                + (f"; it holds {other[0]}'s {other[1]}" if other else "")
            )
    elif arr.shape != tuple(spec.shape) or arr.dtype != np.uint8:
        raise DataError(f"{path}: expected {spec.shape} uint8 for {spec.name}, got {arr.shape} {arr.dtype}")
    return arr


def _known_contents() -> dict:
    """content sha256 -> (dataset, file name) for every IDX file of a known dataset."""
    return {
        spec.content_sha256: (dataset, spec.name)
        for dataset, cfg in _DATASETS.items()
        for spec in cfg["files"].values()
        if spec.content_sha256
    }


def _load_idx_file(spec: _IdxFile, search_dirs: Sequence[str], cache_dir: str, mirrors: Sequence[str]) -> np.ndarray:
    """Find ``spec`` locally (gzipped or not) or download it, verify it, read it.

    Order: each folder of ``search_dirs`` (read-only copies such as Debian's),
    trying the .gz name and the name without .gz; then a file without .gz in
    ``cache_dir`` (put there by hand); then the cached .gz, accepted if its
    decompressed data has the known content hash (a repackaged .gz); then
    ``download`` into ``cache_dir``, which uses the cached .gz if its checksum
    matches and otherwise downloads it (a mismatching cached .gz stays until
    a verified copy replaces it, and is then kept as .gz.bad).  Only that
    last step needs the network and pooch.  A local copy that exists but is
    wrong is an error, not skipped: silently using some other copy would hide
    the problem.
    """
    plain = spec.name[:-3] if spec.name.endswith(".gz") else spec.name
    candidates = [os.path.join(d, n) for d in search_dirs for n in (spec.name, plain)]
    candidates.append(os.path.join(cache_dir, plain))
    for path in candidates:
        if os.path.isfile(path):
            try:
                return _verify_local_idx(path, spec)
            except DataError as e:
                raise DataError(f"{e}\nMove it aside or replace it, and try again.") from None
    cached = os.path.join(cache_dir, spec.name)
    if spec.content_sha256 is not None and os.path.isfile(cached):
        try:
            return _verify_local_idx(cached, spec)
        except DataError as e:
            log_progress(str(e))  # (download below replaces it and keeps it as .bad)
    path = download([m + spec.name for m in mirrors], cached, spec.sha256)
    arr = read_idx(path)
    if arr.shape != tuple(spec.shape):
        raise DataError(f"{path}: expected shape {spec.shape}, got {arr.shape}")
    return arr


def parse_amat(raw: bytes, rows: int, name: str) -> np.ndarray:
    """Parse a binarized-MNIST .amat file into (rows, 28, 28) uint8 0/1.

    The files are ``rows`` lines of 784 values "0"/"1" separated by single
    spaces.  That fixed layout is decoded with one NumPy reshape of the raw
    bytes instead of a text parser; a file with other whitespace falls back
    to a general split.

    Raises:
        DataError: wrong row count, a row without 784 values, or values other
            than 0 and 1 (``name`` is used in the message).
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
            log_progress(f"ignoring unreadable cache {npz_path} ({type(e).__name__}: {e}); rebuilding it")
    arrays = {}
    for split, (name, sha, rows) in _BINARIZED_MNIST_FILES.items():
        path = download([m + name for m in mirrors], os.path.join(cache_dir, name), sha)
        with open(path, "rb") as f:
            arrays[split] = parse_amat(f.read(), rows, path)
    # Written atomically, so that a crash never leaves a half .npz.
    with atomic_write(npz_path) as f:
        np.savez(f, **arrays)
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


def load_idx_folder(folder: str, test_only: bool = False) -> ImageSplits:
    """Your own MNIST-style data: a folder with train-images-idx3-ubyte and
    t10k-images-idx3-ubyte (each optionally .gz) holding uint8 images (N, H, W).
    With ``test_only`` (data only to be scored) the t10k file alone is read, and
    ``train`` comes back empty.

    No checksums (the files are yours); the format and dtype are checked, and
    there must be at least 2 training images (some to train on, some to hold
    out) and 1 test image.  Images that are already binary -- every pixel of
    both files 0 or 1, or every pixel 0 or 255 -- come back as 0/1 with
    ``binary=True`` (so that they are used as they are, not thresholded at a
    grey level); otherwise as grey levels 0..255.  A folder with 0/1 images in
    one file and grey levels in the other is refused.
    """
    def find(stem):
        for name in (stem + ".gz", stem):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        raise DataError(f"{folder}: no {stem} or {stem}.gz in this folder")

    arrays, paths = [], []
    stems = (("train-images-idx3-ubyte", 2), ("t10k-images-idx3-ubyte", 1))
    for stem, least in stems[1:] if test_only else stems:
        path = find(stem)
        arr = read_idx(path)
        if arr.dtype != np.uint8 or arr.ndim != 3 or 0 in arr.shape[1:]:
            raise DataError(f"{path}: expected uint8 images (N, H, W) with H, W >= 1, got {arr.dtype} {arr.shape}")
        if len(arr) < least:
            what = "to train on and to hold out for validation" if least > 1 else "to test on"
            raise DataError(
                f"{path}: holds {len(arr)} image(s); at least {least} {'is' if least == 1 else 'are'} needed ({what})"
            )
        arrays.append(arr)
        paths.append(path)
    if test_only:
        test, level = arrays[0], pixel_levels(arrays[0])
        test = (test == 255).astype(np.uint8) if level == "0/255" else test
        return ImageSplits(os.path.abspath(folder), test[:0], test, binary=level != "grey")
    if arrays[0].shape[1:] != arrays[1].shape[1:]:
        raise DataError(f"{folder}: train images are {arrays[0].shape[1:]} but test images {arrays[1].shape[1:]}")
    labels = _idx_folder_labels(folder, arrays, find)
    levels = [pixel_levels(a) for a in arrays]
    if "grey" not in levels:
        # 0/255 images become 0/1 (where the pixel is 255); 0/1 images stay as they are
        train, test = ((a == 255).astype(np.uint8) if lv == "0/255" else a for a, lv in zip(arrays, levels))
        return ImageSplits(os.path.abspath(folder), train, test, None, *labels, binary=True)
    if "0/1" in levels:  # beside grey levels: thresholding would make these all zeros
        i = levels.index("0/1")
        raise DataError(f"{paths[i]}: every pixel is 0 or 1 (binary images) but {paths[1 - i]} has grey levels "
                        "0..255; give both files in one encoding")
    return ImageSplits(os.path.abspath(folder), arrays[0], arrays[1], None, *labels)


def _idx_folder_labels(folder, images, find) -> tuple:
    """The folder's train-labels-idx1-ubyte and t10k-labels-idx1-ubyte (each optionally
    .gz), one uint8 label per image, when both are there; else (None, None)."""
    stems = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
    present = [any(os.path.isfile(os.path.join(folder, s + e)) for e in ("", ".gz")) for s in stems]
    if not all(present):
        return None, None
    out = []
    for stem, imgs in zip(stems, images):
        path = find(stem)
        labels = read_idx(path)
        if labels.dtype != np.uint8 or labels.shape != (len(imgs),):
            raise DataError(f"{path}: expected {len(imgs)} uint8 labels (one per image), got {labels.dtype} "
                            f"{labels.shape}")
        out.append(labels)
    return tuple(out)


def select_classes(images: ImageSplits, classes) -> tuple[ImageSplits, np.ndarray]:
    """The images of some classes only: (ImageSplits of the train and test images whose label
    is in `classes`, the test images of every other class (N, H, W)) -- a model trained on
    the first can be asked about the second ("held-out classes")."""
    if images.train_labels is None or images.test_labels is None:
        raise DataError(f"{images.dataset}: no class labels, so no classes to choose from")
    classes = sorted(set(int(c) for c in classes))
    present = set(np.unique(images.train_labels).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"{images.dataset}: no training image has class {missing[0]}; its classes are "
                        f"{', '.join(map(str, sorted(present)))}")
    keep_train, keep_test = np.isin(images.train_labels, classes), np.isin(images.test_labels, classes)
    if not keep_test.any():
        raise DataError(f"{images.dataset}: no test image has class {', '.join(map(str, classes))}")
    chosen = dataclasses.replace(images, train=images.train[keep_train], test=images.test[keep_test],
                                 train_labels=images.train_labels[keep_train],
                                 test_labels=images.test_labels[keep_test])
    return chosen, images.test[~keep_test]


def pixel_levels(images: np.ndarray) -> str:
    """How uint8 images are encoded: '0/1' (every pixel 0 or 1: already binary), '0/255'
    (every pixel 0 or 255: binary, stored as black and white grey levels) or 'grey'."""
    used = set(np.flatnonzero(np.bincount(np.asarray(images, np.uint8).ravel(), minlength=256)).tolist())
    if used <= {0, 1}:
        return "0/1"
    if used <= {0, 255}:
        return "0/255"
    return "grey"


# ---------------------------------------------------------------------------
# Binarization and splits
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
    threshold = check_threshold(threshold)
    grey = _as_nchw_uint8(images)
    # A 256-entry lookup table computes grey/255 > threshold in float64 for
    # each grey level once, instead of a float64 copy of the whole dataset.
    table = (np.arange(256) / 255.0 > threshold).astype(np.float32)
    return table[grey]


def check_threshold(threshold) -> float:
    """A binarization threshold as a float: a number in [0, 1] (a fraction of grey 255),
    else ValueError naming ``threshold`` (NaN, bools and strings are refused too)."""
    if (
        isinstance(threshold, (bool, np.bool_))
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not 0.0 <= threshold <= 1.0  # (False for NaN)
    ):
        raise ValueError(
            f"threshold must be a number in [0, 1] (a fraction of grey level 255; 0.5 is the usual), got {threshold!r}"
        )
    return float(threshold)


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


def perturb_pixels(x: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Ren et al.'s (2019) inputs for a background model: each 0/1 value of x is replaced,
    with probability `rate`, by a uniformly random 0 or 1 (so about rate/2 of them change).
    A model of such inputs keeps the data's generic statistics but not its semantics."""
    replace = rng.random(x.shape) < rate
    return np.where(replace, rng.integers(0, 2, x.shape), x).astype(x.dtype)


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


def min_examples_for_split(fraction: float = 0.1) -> int:
    """The fewest examples that ``split_validation(n, fraction)`` splits into two non-empty
    parts (6 for 10%: round(0.5) is 0)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = max(2, math.floor(0.5 / min(fraction, 1.0 - fraction)))  # below this, one part rounds to 0
    while not 0 < round(n * fraction) < n:
        n += 1
    return n


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
        self.threshold = check_threshold(threshold)
        self.eval_seed = eval_seed
        if len(images.test) < 1:
            raise DataError(f"{images.dataset}: 0 test images; at least 1 is needed")
        if images.binary:
            if binarization != "fixed":
                raise ValueError(f"{images.dataset} is already binary; use binarization='fixed'")
        elif binarization not in ("threshold", "dynamic"):
            raise ValueError(f"binarization must be 'threshold' or 'dynamic' for {images.dataset}, got {binarization!r}")

        if images.valid is not None:
            train, valid = images.train, images.valid
            train_labels, valid_labels = images.train_labels, None
        else:
            n = len(images.train)
            if not 0.0 < valid_fraction < 1.0:  # (False for NaN)
                raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
            try:
                tr, va = split_validation(n, valid_fraction)
            except ValueError:
                need = min_examples_for_split(valid_fraction)
                raise DataError(
                    f"{images.dataset}: {n} training image(s) are too few to hold out "
                    f"{valid_fraction:.0%} for validation and train on the rest: at least {need} are needed"
                ) from None
            train, valid = images.train[tr], images.train[va]
            labels = images.train_labels
            train_labels = None if labels is None else labels[tr]
            valid_labels = None if labels is None else labels[va]
        self.train_labels = train_labels
        self.valid_labels = valid_labels
        self.test_labels = images.test_labels
        self.levels = 1 if images.binary else 255   # the stored images' top level
        self.test_levels = images.test              # the test images as stored, before binarization

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

    def binarize(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """Other images (N, H, W) uint8, stored like this data set's (grey levels 0..255, or
        0/1 for binary data), binarized the way its test set was: (N, 1, H, W) float32 0/1.
        Dynamic binarization draws from ``default_rng(seed)``."""
        if self.binarization == "threshold":
            return binarize_threshold(images, self.threshold)
        if self.binarization == "dynamic":
            return binarize_dynamic(images, np.random.default_rng(seed))
        if pixel_levels(images) != "0/1":
            raise DataError(f"{self.dataset} holds binary images; images to compare with it must be 0/1 too")
        return _as_nchw_uint8(images).astype(np.float32)

    def train_images(self, seed: int = 0) -> np.ndarray:
        """Every training image as 0/1 float32 (N, 1, H, W); dynamic binarization draws them
        once from ``default_rng(seed)``."""
        if self.binarization == "dynamic":
            return binarize_dynamic(self._train, np.random.default_rng(seed))
        return self._train.astype(np.float32)

    def mean_pixel(self) -> float:
        """The fraction of training pixels that are 1 (for dynamic binarization, its
        expectation)."""
        return float(self._train.mean() / (255.0 if self.binarization == "dynamic" else 1.0))

    def describe(self) -> str:
        """One line for logs and reports, e.g. 'mnist, dynamic (test binarized once, seed 0)'."""
        if self.binarization == "threshold":
            return f"{self.dataset}, threshold {self.threshold:g}"
        if self.binarization == "dynamic":
            return f"{self.dataset}, dynamic (test binarized once, seed {self.eval_seed})"
        if self.dataset == "binarized-mnist":
            return f"{self.dataset}, fixed binarization (Larochelle & Murray)"
        return f"{self.dataset}, binary as given (fixed)"

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
