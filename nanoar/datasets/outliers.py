"""Out-of-distribution image sets that need no download, built from a data set's own test
images: what a likelihood-based anomaly detector (`nanoar.anomaly`) is tried against.

Each set is made in the data's stored encoding (grey levels 0..255, or 0/1 for binary data)
so that it then goes through the same binarization as the data; a model sees it exactly as
it would see real images of that kind.
"""
from __future__ import annotations

import numpy as np

OUTLIER_SETS = {
    "noise": "uniform noise (every pixel an independent uniform level)",
    "bernoulli": "Bernoulli noise (every pixel on with the training data's mean rate)",
    "constant": "constant images (one uniform level per image)",
    "inverted": "the test images inverted",
    "vflip": "the test images flipped upside down",
    "hflip": "the test images mirrored left to right",
}


def outlier_images(name: str, test: np.ndarray, top: int, mean_on: float, rng: np.random.Generator) -> np.ndarray:
    """The built-in set `name` (one of OUTLIER_SETS), as many images as `test`.

    Args:
        test: the data's test images (N, H, W) uint8 as stored, levels 0..top.
        top: the top level: 255 for grey images, 1 for binary ones.
        mean_on: the fraction of the training data's (binarized) pixels that are on.
        rng: draws the noise.
    """
    test = np.asarray(test, np.uint8)
    n, shape = len(test), test.shape
    if name == "noise":
        return rng.integers(0, top + 1, size=shape, dtype=np.uint8)
    if name == "bernoulli":
        return ((rng.random(shape) < mean_on) * top).astype(np.uint8)
    if name == "constant":
        return np.broadcast_to(rng.integers(0, top + 1, size=(n, 1, 1), dtype=np.uint8), shape).copy()
    if name == "inverted":
        return (top - test).astype(np.uint8)
    if name == "vflip":
        return test[:, ::-1, :].copy()
    if name == "hflip":
        return test[:, :, ::-1].copy()
    raise ValueError(f"unknown outlier set {name!r}; choose from {', '.join(OUTLIER_SETS)}")
