"""Tiny labelled image data for the scripts' tests: three classes any model tells apart, and
the fixture `labelled`, an IDX folder of them."""
import numpy as np
import pytest

from nanoar import datasets


def labelled_images(n, rng, side=8):
    """Grey images of three classes: a bright row (0), a bright column (1), a diagonal (2)."""
    labels = rng.integers(0, 3, size=n).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, side, side))
    pos = rng.integers(0, side, size=n)
    x[(labels == 0), pos[labels == 0], :] = 220
    x[(labels == 1), :, pos[labels == 1]] = 220
    x[labels == 2] += (np.eye(side, dtype=int) * 200)
    return x.astype(np.uint8), labels


def write_labelled_folder(folder, seed=0, n_train=900, n_test=300):
    """An IDX folder of `labelled_images`: train and t10k images and labels."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = labelled_images(n, rng)
        datasets.write_idx(folder / f"{split}-images-idx3-ubyte", x)
        datasets.write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A module's labelled IDX folder (import this fixture by name)."""
    return write_labelled_folder(tmp_path_factory.mktemp("labelled"))
