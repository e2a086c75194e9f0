"""Datasets for nanoar: image datasets (MNIST family) and character-level text.

Everything here is host-side NumPy.  Models run on whatever backend they like;
the training loop converts a batch to the device array type itself.

Modules, in reading order:

* ``download`` -- ``DataError``, the cache folder (``default_data_dir``),
  checksums, atomic writes, and ``download``, which fetches a file from a list
  of mirrors with pooch and verifies its SHA-256 before it is used (a cached
  copy that fails its checksum is kept as ``NAME.bad``, never deleted).
* ``idx`` -- IDX files, the format MNIST and Fashion-MNIST ship in
  (``read_idx``, ``parse_idx``, ``write_idx``).
* ``images`` -- ``load_images`` for 'mnist', 'fashion-mnist' and
  'binarized-mnist', ``load_idx_folder`` for your own IDX files (grey or
  already binary, ``pixel_levels``), ``binarize_threshold`` (``check_threshold``),
  ``binarize_dynamic``, ``split_validation`` (``min_examples_for_split``) and
  ``BinaryImageData``, which yields shuffled training batches of 0/1 images;
  ``select_classes`` (train on some classes, hold out the others) and
  ``perturb_pixels`` (the inputs of a background model).
* ``outliers`` -- out-of-distribution image sets built from a test set
  (``OUTLIER_SETS``, ``outlier_images``): noise, constant, inverted, flipped.
* ``text`` -- tiny Shakespeare (``load_text``), ``CharVocab``, ``split_text``
  and ``get_windows``.

Every error that is the data's fault (missing, corrupt, wrong format, failed
download) is a ``DataError``, a ``ValueError`` whose message names the file and
says what is wrong.  Only downloading needs pooch (``pip install pooch``);
local copies are read with NumPy and the standard library alone.
"""

from .download import DataError, default_data_dir, download, sha256_file
from .idx import parse_idx, read_idx, write_idx
from .images import (
    BINARIZED_MNIST_MIRRORS,
    FASHION_MNIST_MIRRORS,
    FASHION_MNIST_SYSTEM_DIRS,
    MNIST_MIRRORS,
    BinaryImageData,
    ImageSplits,
    binarize_dynamic,
    binarize_threshold,
    check_threshold,
    load_idx_folder,
    load_images,
    min_examples_for_split,
    perturb_pixels,
    pixel_levels,
    select_classes,
    split_validation,
)
from .outliers import OUTLIER_SETS, outlier_images
from .text import TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_URL, CharVocab, get_windows, load_text, split_text
