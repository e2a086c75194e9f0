"""Likelihood-based anomaly detection on any model of the protocol (`models/base.py`).

The lecture's last application of an exact likelihood: flag inputs that the model finds
improbable. Every score here is oriented the same way, higher = more anomalous, so that the
metrics at the end compare any of them (out-of-distribution examples are the positives):

    nll(x)             -log p(x) in nats                           (the raw likelihood)
    1 - p-value        PixelDefend (Song et al. 2018): the rank of log p(x) among the
                       training set's, p = (1 + #{train: log p <= log p(x)}) / (N + 1)
    -LLR               Ren et al. 2019: log p_bg(x) - log p(x), p_bg a background model
                       trained on inputs with a fraction of their values randomised
    complexity         Serra et al. 2020: S(x) = -log2 p(x) - L(x), L(x) the length in bits
                       of x under a lossless compressor (PNG, zlib)
    typicality         Nalisnick et al. 2019, for batches of B inputs: |mean nll - H|, H the
                       model's entropy estimated by held-out training data's mean nll

The raw likelihood is known to fail: simple inputs (flat, low-complexity images) can be
more probable under a model than its own test data. The ratio and the complexity
correction both subtract what a "generic" model of images would say about x.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import zlib

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .datasets.download import atomic_write
from .training import example_nll


# ----------------------------------------------------------------------------- likelihoods
def file_digest(path) -> str:
    """The SHA-256 of a file's bytes: what a cache of its model's likelihoods is keyed by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_nll(model, checkpoint: str, sets: dict, data: str, batch_size=None, quiet=True) -> dict:
    """The per-example nll of each host array in `sets` (name -> (N, ...)), computed once and
    kept next to the checkpoint in `<checkpoint>.nll.npz`. The cache is used only for the
    same checkpoint bytes (its SHA-256), the same `data` description and the same number of
    examples per set; otherwise it is refused, recomputed and rewritten.

    Returns name -> float64 (N,)."""
    cache, digest = checkpoint + ".nll.npz", file_digest(checkpoint)
    kept: dict = {}
    if os.path.exists(cache):
        try:
            arrays, meta = load_checkpoint(cache)
        except CheckpointError:
            arrays, meta = {}, {}
        if meta.get("checkpoint_sha256") == digest and meta.get("data") == data:
            kept = arrays
        else:
            print(f"{cache} holds the likelihoods of another checkpoint or other data; recomputing it")
    out, new = {}, False
    for name, x in sets.items():
        if name in kept and kept[name].shape == (len(x),):
            out[name] = kept[name]
        else:
            out[name], new = example_nll(model, x, batch_size, desc=f"nll of {name}", quiet=quiet), True
    if new:
        try:
            save_checkpoint(cache, {**kept, **out}, {"checkpoint_sha256": digest, "data": data})
        except OSError as e:   # a read-only folder: the scores need no cache, only a rerun does
            print(f"note: could not keep the likelihoods in {cache} ({e.strerror or e}); the next run recomputes them")
    return out


# ----------------------------------------------------------------------------- scores
def p_values(nll, reference_nll) -> np.ndarray:
    """PixelDefend's p-value of each example: (1 + #{reference examples as or less likely})
    / (N + 1), i.e. the rank of its likelihood among the reference set's. Small = unusually
    improbable; for an example drawn like the reference examples (and independent of the
    model) it is uniform on {1, ..., N+1} / (N+1), or with tied likelihoods conservative:
    P(p <= u) <= u."""
    ref = np.sort(np.asarray(reference_nll, np.float64))
    nll = np.asarray(nll, np.float64)
    # reference examples with likelihood <= x's are those with nll >= x's
    at_least = len(ref) - np.searchsorted(ref, nll, side="left")
    return (1.0 + at_least) / (len(ref) + 1.0)


def likelihood_ratio(nll, background_nll) -> np.ndarray:
    """Ren et al.'s log-likelihood ratio log p(x) - log p_bg(x), per example: small (very
    negative) = the background model explains x as well as the data model does."""
    return np.asarray(background_nll, np.float64) - np.asarray(nll, np.float64)


def png_bits(images) -> np.ndarray:
    """The length in bits of each binary image (N, H, W) as a 1-bit PNG at Pillow's highest
    compression: L(x) of Serra et al.'s complexity correction."""
    from PIL import Image  # noqa: PLC0415  (only this score needs Pillow)

    out = np.empty(len(images))
    for i, img in enumerate(np.asarray(images, np.uint8)):
        buf = io.BytesIO()
        Image.fromarray(img * 255).convert("1", dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        out[i] = 8 * buf.tell()
    return out


def zlib_bits(images) -> np.ndarray:
    """The length in bits of each example (N, ...) of byte values under zlib at level 9.
    Binary data (every value 0 or 1) are packed 8 values to a byte along the last axis, as a
    1-bit PNG stores its rows: one byte per binary value would leave DEFLATE's Huffman codes,
    at least a bit per byte, far above the data's own code length."""
    x = np.asarray(images, np.uint8)
    if x.size and x.max() <= 1:
        x = np.packbits(x, axis=-1)
    return np.array([8 * len(zlib.compress(np.ascontiguousarray(e).tobytes(), 9)) for e in x])


def complexity_score(nll, bits) -> np.ndarray:
    """Serra et al.'s S(x) = -log2 p(x) - L(x): the model's code length less a general
    compressor's. Large = the model needs more bits than a generic compressor would."""
    return np.asarray(nll, np.float64) / math.log(2) - np.asarray(bits, np.float64)


def batch_means(nll, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """The mean nll of each of len(nll) // batch_size disjoint random batches."""
    n = len(nll) // batch_size
    if n == 0:
        raise ValueError(f"{len(nll)} examples are too few for one batch of {batch_size}")
    order = rng.permutation(len(nll))[:n * batch_size]
    return np.asarray(nll, np.float64)[order].reshape(n, batch_size).mean(axis=1)


def typicality_threshold(reference_nll, batch_size: int, fpr: float, rng: np.random.Generator,
                         n_bootstrap: int = 10000) -> tuple[float, float]:
    """Nalisnick et al.'s typicality test: the entropy estimate H (the reference set's mean
    nll) and the threshold eps such that a batch of `batch_size` reference examples (drawn
    with replacement) has |mean nll - H| > eps with probability `fpr` (by bootstrap)."""
    ref = np.asarray(reference_nll, np.float64)
    entropy = float(ref.mean())
    boot = ref[rng.integers(0, len(ref), size=(n_bootstrap, batch_size))].mean(axis=1)
    return entropy, float(np.quantile(np.abs(boot - entropy), 1.0 - fpr))


# ----------------------------------------------------------------------------- metrics
# In-distribution examples are the negatives, out-of-distribution ones the positives; a
# detector flags the examples whose score is >= a threshold.
def _check_scores(inliers, outliers):
    a, b = np.asarray(inliers, np.float64).ravel(), np.asarray(outliers, np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("need at least one in-distribution and one out-of-distribution score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores must be finite")
    return a, b


def _curve(inliers, outliers):
    """(true positives, false positives) when flagging scores >= each distinct score, from the
    highest threshold down."""
    a, b = _check_scores(inliers, outliers)
    values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    pos = np.bincount(inverse[len(a):], minlength=len(values))[::-1]
    neg = np.bincount(inverse[:len(a)], minlength=len(values))[::-1]
    return np.cumsum(pos), np.cumsum(neg), len(b), len(a)


def auroc(inliers, outliers) -> float:
    """Area under the ROC curve = P(outlier score > inlier score) + P(equal) / 2 (the
    Mann-Whitney statistic, ties counted half)."""
    a, b = _check_scores(inliers, outliers)
    values, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    midrank = np.cumsum(counts) - (counts - 1) / 2.0   # 1-based mid-ranks of tied groups
    rank_sum = midrank[inverse[len(a):]].sum()
    return float((rank_sum - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


def aupr(inliers, outliers) -> float:
    """Area under the precision-recall curve with the outliers as positives, as average
    precision: sum over thresholds of (recall step) x precision, tied scores one threshold."""
    tp, fp, n_pos, _ = _curve(inliers, outliers)
    recall_step = np.diff(np.concatenate([[0], tp])) / n_pos
    return float((recall_step * tp / np.maximum(tp + fp, 1)).sum())


def fpr_at_tpr(inliers, outliers, tpr: float = 0.95) -> float:
    """The fraction of inliers flagged at the highest threshold that flags at least `tpr` of
    the outliers."""
    tp, fp, n_pos, n_neg = _curve(inliers, outliers)
    first = int(np.argmax(tp >= math.ceil(tpr * n_pos - 1e-9)))
    return float(fp[first] / n_neg)


def metrics(inliers, outliers) -> dict:
    """AUROC, AUPR and FPR at 95% TPR of one score."""
    return {"auroc": auroc(inliers, outliers), "aupr": aupr(inliers, outliers),
            "fpr95": fpr_at_tpr(inliers, outliers, 0.95)}


# ----------------------------------------------------------------------------- side by side
def compare(inliers: dict, outliers: dict, train_nll, valid_nll, fpr: float = 0.01, batch_sizes=(1, 5, 10, 25),
            seed: int = 0) -> tuple[dict, dict]:
    """Every score of in- against out-of-distribution examples.

    Args:
        inliers, outliers: per-example arrays: "nll" (nats), and optionally "background_nll"
            (for the likelihood ratio), "png_bits" / "zlib_bits" (for the complexity scores).
        train_nll: the training set's nll: PixelDefend's reference for p-values.
        valid_nll: held-out training data's nll (a validation split): the typicality test's
            entropy estimate and bootstrap, as Nalisnick et al. do, so that its threshold
            keeps its false-positive rate on unseen data even where the model fits its
            training set more closely than the rest of the distribution.
        fpr: the false-positive rate the p-value's and the typicality test's thresholds are
            set at (p <= fpr; the bootstrap quantile).
        batch_sizes: the typicality test's batch sizes B (a B larger than either set is left out).

    Returns:
        (scores: name -> (inlier scores, outlier scores), higher = more anomalous;
         rows: name -> metrics, plus for thresholded scores the fraction of outliers and of
         inliers flagged).
    """
    rng = np.random.default_rng(seed)
    nin, nout = np.asarray(inliers["nll"], np.float64), np.asarray(outliers["nll"], np.float64)
    scores, flagged = {"NLL": (nin, nout)}, {}
    p_in, p_out = p_values(nin, train_nll), p_values(nout, train_nll)
    scores["1 - p-value"] = (1 - p_in, 1 - p_out)
    flagged["1 - p-value"] = (float(np.mean(p_out <= fpr)), float(np.mean(p_in <= fpr)))
    if "background_nll" in inliers:
        scores["likelihood ratio (-LLR)"] = tuple(-likelihood_ratio(s["nll"], s["background_nll"])
                                                  for s in (inliers, outliers))
    for c in ("png", "zlib"):
        if f"{c}_bits" in inliers:
            scores[f"complexity ({c.upper() if c == 'png' else c})"] = tuple(
                complexity_score(s["nll"], s[f"{c}_bits"]) for s in (inliers, outliers))
    for b in batch_sizes:
        if b > min(len(nin), len(nout)):
            continue
        entropy, eps = typicality_threshold(valid_nll, b, fpr, rng)
        t_in, t_out = (np.abs(batch_means(v, b, rng) - entropy) for v in (nin, nout))
        scores[f"typicality B={b}"] = (t_in, t_out)
        flagged[f"typicality B={b}"] = (float(np.mean(t_out > eps)), float(np.mean(t_in > eps)))
    rows = {}
    for name, (a, b) in scores.items():
        rows[name] = metrics(a, b)
        if name in flagged:
            rows[name]["flagged_out"], rows[name]["flagged_in"] = flagged[name]
    return scores, rows


# ----------------------------------------------------------------------------- reports
def score_table(rows: dict, fpr: float) -> str:
    """A text table: one row per score, name -> {auroc, aupr, fpr95[, flagged_out,
    flagged_in]} (the fractions of outliers and inliers a score's own threshold flags)."""
    head = f"{'score':<24} {'AUROC':>6} {'AUPR':>6} {'FPR@95':>7}   flagged at its {fpr:g} threshold (out / in)"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        flagged = (f"   {m['flagged_out']:.3f} / {m['flagged_in']:.3f}" if "flagged_out" in m else "")
        lines.append(f"{name:<24} {m['auroc']:>6.3f} {m['aupr']:>6.3f} {m['fpr95']:>7.3f}{flagged}")
    return "\n".join(lines)


def write_histograms(path: str, title: str, inliers: dict, outliers: dict, labels=("in", "out")) -> None:
    """A PNG with one panel per score (name -> scores of the inliers / of the outliers): the
    two histograms over shared bins."""
    import matplotlib  # noqa: PLC0415  (only the report needs matplotlib)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(inliers)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        a, b = np.asarray(inliers[name], float), np.asarray(outliers[name], float)
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
        ax.hist(a, bins=bins, alpha=0.6, density=True, label=labels[0])
        ax.hist(b, bins=bins, alpha=0.6, density=True, label=labels[1])
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
