"""Class-conditional models and completion, on any model of the protocol (`models/base.py`).

A conditional model gives log p(x | y) exactly for every class y, so Bayes' rule turns it
into a classifier with no extra training (a *generative* classifier):

    log p(y | x) = log p(x | y) + log p(y) - log p(x),
    log p(x)     = logsumexp_y [log p(x | y) + log p(y)]       (the marginal likelihood)

with p(y) the classes' frequencies in the training set. The marginal -log p(x) is the
number to compare with an unconditional model's NLL: -log p(x | y) is lower by up to
log C nats simply because y is given.

Completion: a mask says which variables are observed; the model's exact conditional of
the rest is `log_prob(x, observed=mask)` and `sample(n, given=x, observed=mask)`.
`completion_masks` builds the usual patterns for images.
"""
from __future__ import annotations

import numpy as np

from .datasets.download import atomic_write
from .training import example_nll

MASKS = ("top", "bottom", "left", "right", "center", "random")


# ----------------------------------------------------------------------------- classification
def log_prior(labels, n_labels: int) -> np.ndarray:
    """log p(y) from the training labels' frequencies: (C,) float64 (-inf for a class with
    no training example, which the classifier then never predicts)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_labels).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())


def class_log_likelihoods(model, x, batch_size: int | None = None, quiet: bool = True) -> np.ndarray:
    """log p(x | y = c) for every example and class: host x (N, ...) -> (N, C) float64, one
    pass over x per class."""
    return np.stack([-example_nll(model, x, batch_size, desc=f"log p(x | y={c})", quiet=quiet, y=c)
                     for c in range(model.n_labels)], axis=1)


def log_posterior(ll, prior) -> np.ndarray:
    """log p(y | x) from log p(x | y) (N, C) and log p(y) (C,): (N, C), each row normalised."""
    joint = ll + prior
    return joint - log_marginal(ll, prior)[:, None]


def log_marginal(ll, prior) -> np.ndarray:
    """log p(x) = logsumexp_y [log p(x | y) + log p(y)]: (N, C), (C,) -> (N,)."""
    joint = ll + prior
    top = joint.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]


def confusion_matrix(true, predicted, n_labels: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class."""
    cm = np.zeros((n_labels, n_labels), np.int64)
    np.add.at(cm, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return cm


def write_confusion(path: str, cm, title: str) -> None:
    """The confusion matrix as a PNG: each row normalised to the true class's count, the
    counts written in the cells."""
    import matplotlib  # noqa: PLC0415  (only the report needs matplotlib)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    c = len(cm)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * c, 0.8 + 0.55 * c))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- completion
def completion_masks(pattern: str, n: int, height: int, width: int, rng=None) -> np.ndarray:
    """Observed-pixel masks of n images: bool (n, 1, H, W), True where a pixel is observed.

    top / bottom / left / right: that half is observed (the middle row or column goes to
    the hidden half when the size is odd); center: all but a centred square of about half the
    height and width; random: each pixel observed with probability 1/2, independently per
    image, from `rng` (a numpy Generator).
    """
    if pattern not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {pattern!r}")
    if pattern == "random":
        return rng.random((n, 1, height, width)) < 0.5
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")   # (H, W) each
    one = {
        "top": rows < height // 2,
        "bottom": rows >= height - height // 2,
        "left": cols < width // 2,
        "right": cols >= width - width // 2,
        "center": ~((abs(2 * rows - (height - 1)) < height // 2) & (abs(2 * cols - (width - 1)) < width // 2)),
    }[pattern]
    return np.broadcast_to(one, (n, 1, height, width)).copy()
