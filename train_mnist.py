#!/usr/bin/env python
"""Train an autoregressive model of binarized MNIST-style images; report its exact test
negative log-likelihood and draw samples.

    python train_mnist.py --dataset fashion-mnist --model made --epochs 10
    python train_mnist.py --model pixelcnn --device cuda
    python train_mnist.py --out runs/made --resume            # continue runs/made/last.npz
    python train_mnist.py --eval runs/made/best.npz           # test NLL of a checkpoint
    python train_mnist.py --sample runs/made/best.npz         # a sample grid
    python train_mnist.py --score runs/made/best.npz --against mnist,noise   # anomaly scores
    python train_mnist.py --dataset fashion-mnist --conditional               # p(x | class)
    python train_mnist.py --complete runs/pixelcnn/best.npz --mask top        # fill in the bottom half

`--dataset` is mnist, fashion-mnist, binarized-mnist (Larochelle & Murray's fixed
binarization) or a folder holding IDX files (train-images-idx3-ubyte[.gz] and
t10k-images-idx3-ubyte[.gz]). Every NLL printed names its data and binarization: results
on fixed and dynamic binarizations differ by several nats.

Anomaly detection (`--score`, `nanoar.anomaly`): the checkpoint's test set against each set
of `--against` -- a data set as `--dataset` takes it, or a built-in one: noise, bernoulli,
constant, inverted, vflip, hflip, held-out-classes (for a model trained with `--classes`).
A background model for the likelihood ratio is a second run with `--perturb MU`.

Conditioning (`--conditional`, `nanoar.conditioning`): the model learns p(x | y) from the
data's label files; the run reports -log p(x | y), the marginal -log p(x), and the
generative classifier argmax_y log p(x | y) + log p(y) with its confusion matrix, and draws
one row of samples per class. Completion (`--complete CKPT --mask PATTERN`): the exact
conditional of the hidden pixels given the observed ones, for masks whose observed pixels
come first in the model's ordering (only `top` for raster-order models) or any mask with an
order-agnostic MADE (`--model made --ordering random --resample-masks`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from nanoar import anomaly, backend, conditioning, datasets, distributed, no_grad, training
from nanoar.datasets.download import atomic_write
from nanoar.models import build_model
from nanoar.optim import Adam
from nanoar.training import UsageError, UserError, int_list, nonnegative_int, path, positive_float, positive_int

IMAGE_MODELS = ("fvsbn", "nade", "made", "pixelcnn", "gated-pixelcnn")
DATASETS = ("mnist", "fashion-mnist", "binarized-mnist")
# what a checkpoint fixes (these flags cannot change a resumed run), and the settings a
# resumed run keeps unless they are given again
RUN_FLAGS = ("model", "hidden", "hidden_sizes", "num_masks", "ordering", "resample_masks", "channels", "layers",
             "dataset", "binarization", "threshold", "classes", "perturb", "conditional", "batch_size",
             "max_steps_per_epoch")
HELD_OUT = "held-out-classes"
SCORE_FLAGS = ("against", "background", "fpr")
SETTINGS = ("batch_size", "max_steps_per_epoch", "epochs", "lr", "clip")


def rate(text):
    """An argparse type: a fraction in [0, 1) (a probability, or a threshold on the grey scale)."""
    value = training.nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def class_list(text):
    """An argparse type: comma-separated class labels (integers 0..255), at least one."""
    try:
        values = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated class labels expected, got {text!r}") from None
    if not values or values[0] < 0 or values[-1] > 255:
        raise argparse.ArgumentTypeError(f"one or more class labels in 0..255 expected, got {text!r}")
    return values


def set_list(text):
    """An argparse type: comma-separated names of data sets (or folders)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one data set")
    return names


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=IMAGE_MODELS, default="made")
    p.add_argument("--hidden", type=positive_int, default=500, help="NADE hidden units")
    p.add_argument("--hidden-sizes", type=int_list, default=[500, 500], metavar="H1,H2,...",
                   help="MADE hidden layer sizes, comma separated (default 500,500; empty: none)")
    p.add_argument("--num-masks", type=positive_int, default=1, help="MADE: number of masks (connectivity-agnostic training)")
    p.add_argument("--ordering", choices=("natural", "random"), default="natural", help="MADE input ordering")
    p.add_argument("--resample-masks", action="store_true",
                   help="MADE: draw fresh masks (and, with --ordering random, a fresh ordering) every step: "
                        "order-agnostic training, which lets --complete fill in any mask")
    p.add_argument("--channels", type=positive_int, default=64, help="PixelCNN channels")
    p.add_argument("--layers", type=positive_int, default=5, help="PixelCNN residual blocks / gated layers")
    p.add_argument("--dataset", type=path, default="mnist",
                   help="mnist | fashion-mnist | binarized-mnist | a folder of IDX files (with --eval, --sample or --score: "
                        "other data for the checkpoint's model)")
    p.add_argument("--binarization", choices=("threshold", "dynamic", "fixed"), default=None,
                   help="default: fixed for data that are already binary, else threshold")
    p.add_argument("--threshold", type=rate, default=0.5, help="grey level in [0, 1) above which a pixel is 1")
    p.add_argument("--classes", type=class_list, default=None, metavar="C1,C2,...",
                   help="train on the images of these classes only (the data's label files; score the other "
                        f"classes with --score ... --against {HELD_OUT})")
    p.add_argument("--perturb", type=rate, default=0.0, metavar="MU",
                   help="train a background model: every training pixel is replaced, with probability MU, by a "
                        "random 0 or 1 (Ren et al. 2019; 0.1 to 0.3 is usual)")
    p.add_argument("--conditional", action="store_true",
                   help="learn p(x | class) from the data's label files; report the generative classifier too")
    p.add_argument("--data-dir", type=path, default=None, help="download cache (default ~/.cache/nanoar or $NANOAR_DATA)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--clip", type=positive_float, default=1000.0, help="max gradient L2 norm")
    p.add_argument("--max-steps-per-epoch", type=nonnegative_int, default=0,
                   help="cut epochs short (quick runs, tests; 0: whole epochs)")
    training.add_run_arguments(p, "runs/<model>")
    p.add_argument("--eval", type=path, metavar="CHECKPOINT", help="print the test NLL of a checkpoint and exit")
    p.add_argument("--sample", type=path, metavar="CHECKPOINT", help="write a sample grid of a checkpoint and exit")
    p.add_argument("--score", type=path, metavar="CHECKPOINT",
                   help="anomaly scores: the checkpoint's test set (or --dataset's) against --against; writes "
                        "scores.json and histograms to --out (default: the checkpoint's folder)")
    p.add_argument("--against", type=set_list, default=None, metavar="SET,...",
                   help=f"with --score: data set names or IDX folders (their t10k file is scored), or built-in ones: "
                        f"{', '.join(datasets.OUTLIER_SETS)}, {HELD_OUT} (default: every built-in one)")
    p.add_argument("--background", type=path, metavar="CHECKPOINT",
                   help="with --score: a background model (a run with --perturb) for the likelihood ratio")
    p.add_argument("--fpr", type=rate, default=0.01,
                   help="with --score: the false-positive rate of the p-value's and typicality test's thresholds")
    p.add_argument("--complete", type=path, metavar="CHECKPOINT",
                   help="fill in the hidden pixels of test images (--mask): writes complete-<mask>.png to --out "
                        "(default: the checkpoint's folder) and prints -log p(hidden | observed)")
    p.add_argument("--mask", choices=conditioning.MASKS, default="top",
                   help="with --complete: which pixels are observed (top: the top half, ...; random: each pixel "
                        "with probability 1/2)")
    p.add_argument("--n-samples", type=positive_int, default=64)
    p.add_argument("--eval-batch-size", type=positive_int, default=None,
                   help="images per evaluation batch (default: the model's; memory grows with it)")
    args = p.parse_args(argv)
    if args.dataset not in DATASETS and not os.path.isdir(args.dataset):
        p.error(f"argument --dataset: {args.dataset!r} is neither one of {', '.join(DATASETS)} nor a folder of IDX files")
    uses = [f for f in ("eval", "sample", "score", "complete") if getattr(args, f)]
    if len(uses) > 1:
        p.error(f"argument --{uses[1]}: not with --{uses[0]} (one use of a checkpoint at a time)")
    if uses and args.resume is not None:
        p.error(f"argument --resume: not with --{uses[0]} (it reads a checkpoint and trains nothing)")
    trains = sorted(args.given & {"classes", "perturb", "conditional"})
    if uses and trains:
        p.error(f"argument --{trains[0]}: chooses what a new run trains on; not with --{uses[0]}")
    scoring = sorted(args.given & set(SCORE_FLAGS))
    if scoring and not args.score:
        p.error(f"argument --{scoring[0]}: only with --score CHECKPOINT")
    if args.conditional and args.dataset == "binarized-mnist":
        p.error("argument --conditional: binarized-mnist has no class labels; use mnist or fashion-mnist")
    if "mask" in args.given and not args.complete:
        p.error("argument --mask: only with --complete CHECKPOINT")
    for name in args.against or []:
        if name not in (*datasets.OUTLIER_SETS, HELD_OUT, *DATASETS) and not os.path.isdir(name):
            p.error(f"argument --against: {name!r} is neither a built-in set ({', '.join(datasets.OUTLIER_SETS)}, "
                    f"{HELD_OUT}), nor one of {', '.join(DATASETS)}, nor a folder of IDX files")
    training.refuse_run_flags(p, args, RUN_FLAGS)
    return args


def load_images(name, data_dir, labels=False):
    """The stored images (`datasets.ImageSplits`) of a data set name or IDX folder."""
    if name not in DATASETS and not os.path.isdir(name):
        raise UserError(f"the data folder {name} is not there; give the data with --dataset FOLDER")
    return datasets.load_idx_folder(name) if os.path.isdir(name) else datasets.load_images(name, data_dir, labels=labels)


def load_data(spec, data_dir):
    """The images described by spec {dataset, binarization, threshold[, classes, perturb]}
    (from the arguments, or from a checkpoint), binarized; the spec with its default
    binarization filled in; and, for a run on some classes only, the test images of the
    other classes as stored (else None)."""
    name, classes = spec["dataset"], spec.get("classes")
    images, held_out = load_images(name, data_dir, labels=bool(classes or spec.get("conditional"))), None
    if spec.get("conditional") and (images.train_labels is None or images.test_labels is None):
        raise UserError(f"{name} has no class labels (train-labels-idx1-ubyte and t10k-labels-idx1-ubyte), which a "
                        "class-conditional model needs; leave out --conditional, or add the label files")
    if classes:
        images, held_out = datasets.select_classes(images, classes)
    binarization = spec["binarization"] or ("fixed" if images.binary else "threshold")
    if images.binary != (binarization == "fixed"):
        raise UsageError(f"argument --binarization: {name} holds binary images, which take 'fixed' (the default)"
                         if images.binary else f"argument --binarization: 'fixed' is for data that are already binary, "
                         f"and {name} holds grey images: use threshold or dynamic")
    spec = {**spec, "binarization": binarization}
    return datasets.BinaryImageData(images, binarization, threshold=spec["threshold"]), spec, held_out


def new_model(args, shape, n_labels=0):
    """The chosen model for images of shape (1, H, W); class-conditional over n_labels
    classes when n_labels > 0."""
    _, h, w = shape
    config = {
        "fvsbn": {"d": h * w},
        "nade": {"d": h * w, "hidden": args.hidden},
        "made": {"d": h * w, "hidden_sizes": args.hidden_sizes, "num_masks": args.num_masks,
                 "ordering": args.ordering, "seed": args.seed, **({"resample_masks": True} if args.resample_masks else {})},
        "pixelcnn": {"height": h, "width": w, "channels": args.channels, "n_residual": args.layers},
        "gated-pixelcnn": {"height": h, "width": w, "channels": args.channels, "n_layers": args.layers},
    }[args.model]
    return build_model(args.model, {**config, **({"n_labels": n_labels} if n_labels else {})})


def check_fits(model, ds, where) -> None:
    """The images must have the size the model was built for."""
    d, (h, w) = int(np.prod(model.event_shape)), ds.test.shape[2:]
    if d != h * w:
        raise UserError(f"{where}: the model takes images of {d} pixels, the data are {h}x{w} = {h * w}")


# ----------------------------------------------------------------------------- evaluation
def mean_nll(model, x, batch_size=None, y=None) -> float:
    """Average -log p(x) (or -log p(x | y) with labels y) in nats over a host array of images,
    in batches, no graph."""
    return float(training.example_nll(model, x, batch_size, y=y).mean())


def baselines(ds) -> None:
    """The yardsticks: a uniform model, and independent per-pixel Bernoullis fitted on train."""
    d = int(np.prod(ds.test.shape[1:]))
    # Mean of the training pixels (for dynamic binarization, its expectation), smoothed so
    # that a pixel never seen on is not given probability exactly 0.
    total, n = np.zeros(ds.test.shape[1:]), 0
    for x in ds.train_batches(1000, np.random.default_rng(0), drop_last=False):
        total += x.sum(axis=0)
        n += len(x)
    p = (total + 1.0) / (n + 2.0)
    lp = ds.test * np.log(p) + (1 - ds.test) * np.log1p(-p)
    indep = -lp.reshape(len(lp), -1).sum(axis=1).mean()
    print(f"baselines on {ds.describe()} (test):")
    print(f"  uniform over {{0,1}}^{d}: {d * math.log(2):.1f} nats ({1.0:.3f} bits/dim)")
    print(f"  independent per-pixel Bernoulli fitted on train: {indep:.1f} nats "
          f"({indep / (d * math.log(2)):.3f} bits/dim)")


def report(label, nll, ds) -> str:
    d = int(np.prod(ds.test.shape[1:]))
    return f"{label}: {nll:.2f} nats ({nll / (d * math.log(2)):.4f} bits/dim) on {ds.describe()}"


# ----------------------------------------------------------------------------- pictures
def tile(images, cols=8, border=2, value=0.5) -> np.ndarray:
    """(N, H, W) in [0, 1] -> one grid image (rows*(H+b)+b, cols*(W+b)+b)."""
    n, h, w = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + border) + border, cols * (w + border) + border), value)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[border + r * (h + border):border + r * (h + border) + h,
             border + c * (w + border):border + c * (w + border) + w] = images[k]
    return grid


def write_png(path, grid, scale=3) -> None:
    from PIL import Image  # noqa: PLC0415  (only the picture-writing path needs Pillow)

    img = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8), mode="L")
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def write_samples(model, n, seed, out_dir, shape) -> None:
    """Samples (left) and, as in the lecture's figure, each pixel's conditional probability
    p(x_i = 1 | x_<i) under the model given the sampled pixels before it (right). A
    conditional model draws one row per class: about n / C samples of p(x | y) each."""
    cols, y = 8, None
    if model.n_labels:
        cols = max(1, round(n / model.n_labels))
        y = np.repeat(np.arange(model.n_labels), cols)
        n = len(y)
    t = time.perf_counter()
    x = model.sample(n, seed=seed, y=y)
    secs = time.perf_counter() - t
    xs = backend.to_numpy(x).astype(np.float64)
    samples = xs.reshape(-1, *shape[1:])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "samples.png")
    write_png(path, tile(samples, cols))
    print(f"wrote {path} ({n} samples in {secs:.1f} s{'; row c: class c' if y is not None else ''})")
    if not model.factorises:  # a mixture of orderings has no single set of conditionals to draw
        return
    with no_grad():
        lp = backend.to_numpy(model.log_prob_per_variable(x, y).data).astype(np.float64)
    p_on = np.where(xs == 1, np.exp(lp), -np.expm1(lp))
    left, right = tile(samples, cols), tile(p_on.reshape(-1, *shape[1:]), cols)
    gap = np.full((left.shape[0], 8), 1.0)
    path = os.path.join(out_dir, "samples_conditionals.png")
    write_png(path, np.concatenate([left, gap, right], axis=1))
    print(f"wrote {path} (samples | p(x_i = 1 | x_<i))")


def use_checkpoint(args) -> None:
    """--eval / --sample: the test NLL or a sample grid of a checkpoint, on its own data (or
    on --dataset's)."""
    path = args.eval or args.sample
    model, _, meta = training.load_run(path, "train_mnist")
    spec = meta["data"] if "dataset" not in args.given else {**meta["data"], "dataset": args.dataset,
                                                             "binarization": None, "classes": None}
    ds, _, _ = load_data({**spec, "conditional": bool(model.n_labels)}, args.data_dir)
    check_fits(model, ds, path)
    if args.eval and model.n_labels:
        report_conditional(model, ds, args.eval_batch_size, args.quiet, path)
    elif args.eval:
        print(report(f"test NLL of {path}", mean_nll(model, ds.test, args.eval_batch_size), ds))
    if args.sample:
        write_samples(model, args.n_samples, args.seed, os.path.dirname(path) or ".", ds.test.shape[1:])


def report_conditional(model, ds, batch_size, quiet, label, out_dir=None) -> dict:
    """A conditional model's test figures, printed and returned: -log p(x | y) with the true
    classes, the marginal -log p(x) (comparable with an unconditional model's NLL), and the
    generative classifier's accuracy; its confusion matrix goes to out_dir/confusion.png."""
    ll = conditioning.class_log_likelihoods(model, ds.test, batch_size, quiet)     # (N, C): log p(x | c)
    prior = conditioning.log_prior(ds.train_labels, model.n_labels)               # (C,): log p(c)
    y = ds.test_labels.astype(np.int64)
    given = float(-ll[np.arange(len(y)), y].mean())
    marginal = float(-conditioning.log_marginal(ll, prior).mean())
    predicted = np.argmax(ll + prior, axis=1)
    accuracy = float((predicted == y).mean())
    print(report(f"test NLL of {label}, -log p(x | y) with the true class", given, ds))
    print(report("  marginal -log p(x) = -log sum_y p(x | y) p(y), no class given", marginal, ds))
    print(f"  generative classifier argmax_y log p(x | y) + log p(y): test accuracy {accuracy:.2%} on {len(y)} "
          f"images (the most frequent class alone: {np.bincount(y).max() / len(y):.2%})")
    if out_dir is not None and distributed.is_main():
        path = os.path.join(out_dir, "confusion.png")
        cm = conditioning.confusion_matrix(y, predicted, model.n_labels)
        conditioning.write_confusion(path, cm, f"{type(model).__name__}, test accuracy {accuracy:.2%}")
        print(f"wrote {path}")
    return {"test_nll": given, "marginal_nll": marginal, "accuracy": accuracy}


# ----------------------------------------------------------------------------- completion
def complete_checkpoint(args) -> None:
    """--complete: test images with the --mask's hidden pixels filled in by the model's exact
    conditional (a PNG grid), and -log p(hidden | observed) over the test set."""
    model, _, meta = training.load_run(args.complete, "train_mnist")
    spec = meta["data"] if "dataset" not in args.given else {**meta["data"], "dataset": args.dataset,
                                                             "binarization": None, "classes": None}
    ds, _, _ = load_data({**spec, "conditional": bool(model.n_labels)}, args.data_dir)
    check_fits(model, ds, args.complete)
    out_dir = training.output_folder(args.out or os.path.dirname(args.complete) or ".")
    n, (h, w) = len(ds.test), ds.test.shape[2:]
    masks = conditioning.completion_masks(args.mask, n, h, w, np.random.default_rng(args.seed))   # (N, 1, H, W)
    observed = masks.reshape(n, *model.event_shape)
    try:
        model.check_observed(observed, n)
    except ValueError as e:
        raise UserError(f"--complete {args.complete} --mask {args.mask}: {e}") from None
    y = ds.test_labels.astype(np.int64) if model.n_labels else None

    # the grid: per row an image, what is observed of it (hidden pixels grey), completions
    rows, per = 8, 5
    pick = np.linspace(0, n - 1, rows).astype(np.int64)
    t = time.perf_counter()
    filled = backend.to_numpy(model.sample(rows * per, seed=args.seed, given=np.repeat(ds.test[pick], per, axis=0)
                                           .reshape(rows * per, *model.event_shape),
                                           observed=np.repeat(observed[pick], per, axis=0),
                                           y=None if y is None else np.repeat(y[pick], per))).reshape(rows, per, h, w)
    secs = time.perf_counter() - t
    shown = np.where(masks[pick, 0], ds.test[pick, 0], 0.5)
    grid = np.concatenate([ds.test[pick, 0][:, None], shown[:, None], filled], axis=1).reshape(-1, h, w)
    path = os.path.join(out_dir, f"complete-{args.mask}.png")
    write_png(path, tile(grid, cols=per + 2))
    print(f"wrote {path}: rows of a test image, its observed part (hidden pixels grey), {per} completions "
          f"({rows * per} completions in {secs:.1f} s)")

    nll = training.example_nll(model, ds.test, args.eval_batch_size, "-log p(hidden | observed)", args.quiet, y=y,
                               observed=observed)
    hidden = (~masks).reshape(n, -1).sum(axis=1)
    print(f"-log p(hidden | observed), mask {args.mask}: {nll.mean():.2f} nats per image, "
          f"{nll.sum() / max(hidden.sum(), 1) / math.log(2):.4f} bits per hidden pixel ({hidden.mean():.0f} of "
          f"{h * w} pixels hidden), {n} test images of {ds.describe()}" + (", the true class given" if y is not None else ""))


# ----------------------------------------------------------------------------- anomaly scores
def outlier_set(name, ds, held_out, data_dir, seed) -> tuple[str, np.ndarray]:
    """(a description, the images (N, 1, H, W) 0/1 as the model sees them) of one --against
    set: built in, the held-out classes, or the test set of another data set."""
    if name in datasets.OUTLIER_SETS:
        rng = np.random.default_rng([seed, list(datasets.OUTLIER_SETS).index(name)])
        levels = datasets.outlier_images(name, ds.test_levels, ds.levels, ds.mean_pixel(), rng)
        return datasets.OUTLIER_SETS[name], ds.binarize(levels, seed)
    if name == HELD_OUT:
        if held_out is None:
            raise UsageError(f"argument --against: {HELD_OUT} is for a model trained on some classes (--classes); "
                             "this one was trained on every class")
        if not len(held_out):
            raise UserError(f"{HELD_OUT}: the data have no test images outside the training classes")
        return "the test images of the classes the model was not trained on", ds.binarize(held_out, seed)
    other = datasets.load_idx_folder(name, test_only=True) if os.path.isdir(name) else load_images(name, data_dir)
    if other.test.shape[1:] != ds.test.shape[2:]:
        raise UserError(f"--against {name}: its images are {'x'.join(map(str, other.test.shape[1:]))}, the model's "
                        f"{'x'.join(map(str, ds.test.shape[2:]))}")
    if other.binary:
        return f"the test images of {name}, binary as given", other.test[:, None].astype(np.float32)
    if ds.binarization == "fixed":   # a model of binary data: grey images need a binarization of their own
        return f"the test images of {name}, threshold 0.5", datasets.binarize_threshold(other.test, 0.5)
    return f"the test images of {name}, binarized like the data", ds.binarize(other.test, seed)


def load_background(path, model):
    """A background model for the likelihood ratio: a train_mnist checkpoint of the same
    image size (trained with --perturb, or else said so)."""
    background, _, meta = training.load_run(path, "train_mnist")
    if background.event_shape != model.event_shape:
        raise UserError(f"--background {path}: a model of {background.event_shape} images, the scored model's are "
                        f"{model.event_shape}")
    if not meta["data"].get("perturb"):
        print(f"note: {path} was trained without --perturb; the likelihood ratio then compares two models of "
              "the same inputs")
    return background


def score_checkpoint(args) -> None:
    """--score: every anomaly score of the checkpoint's test set against each --against set;
    a table per set, scores.json and a histogram PNG per set in --out."""
    for module, what in (("PIL", "the PNG lengths need Pillow"), ("matplotlib", "the histograms need matplotlib")):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--score: {what}; pip install 'nanoar[scripts]'") from None
    model, _, meta = training.load_run(args.score, "train_mnist")
    if model.n_labels:
        raise UserError(f"--score {args.score}: a class-conditional model gives p(x | class), and anomaly scores need "
                        "p(x); score an unconditional model")
    spec = meta["data"] if "dataset" not in args.given else {**meta["data"], "dataset": args.dataset,
                                                             "binarization": None}
    ds, spec, held_out = load_data(spec, args.data_dir)
    check_fits(model, ds, args.score)
    background = load_background(args.background, model) if args.background else None
    names = args.against or [*datasets.OUTLIER_SETS, *([HELD_OUT] if held_out is not None else [])]
    sets = {name: outlier_set(name, ds, held_out, args.data_dir, args.seed) for name in names}
    out_dir = training.output_folder(args.out or os.path.dirname(args.score) or ".")

    t = time.perf_counter()
    key = json.dumps({k: v for k, v in spec.items() if k != "perturb"}, sort_keys=True)
    known = anomaly.cached_nll(model, args.score, {"train": ds.train_images(), "valid": ds.valid, "test": ds.test},
                               key, args.eval_batch_size, args.quiet)
    bg_test = (anomaly.cached_nll(background, args.background, {"test": ds.test}, key, args.eval_batch_size,
                                  args.quiet)["test"] if background else None)

    def per_example(x, nll=None, bg_nll=None, what=""):
        nll = anomaly.example_nll(model, x, args.eval_batch_size, f"nll of {what}", args.quiet) if nll is None else nll
        found = {"nll": nll, "png_bits": anomaly.png_bits(x[:, 0]), "zlib_bits": anomaly.zlib_bits(x[:, 0])}
        if background:
            found["background_nll"] = (bg_nll if bg_nll is not None else
                                       anomaly.example_nll(background, x, args.eval_batch_size,
                                                           f"background nll of {what}", args.quiet))
        return found

    d = int(np.prod(model.event_shape))
    bits = lambda nats: nats / (d * math.log(2))  # noqa: E731
    inliers = per_example(ds.test, known["test"], bg_test)
    in_nll = float(inliers["nll"].mean())
    p_test = anomaly.p_values(inliers["nll"], known["train"])
    print(f"in distribution: the test set of {ds.describe()}, {len(ds.test)} images, NLL {in_nll:.2f} nats "
          f"({bits(in_nll):.4f} bits/dim); training set {known['train'].mean():.2f}, validation "
          f"{known['valid'].mean():.2f} nats; {np.mean(p_test <= args.fpr):.3f} of the test images have "
          f"p <= {args.fpr:g}")
    report = {"checkpoint": args.score, "background": args.background, "data": ds.describe(), "fpr": args.fpr,
              "in_distribution": {"n": len(ds.test), "nll": in_nll, "bits_per_dim": bits(in_nll),
                                  "train_nll": float(known["train"].mean()),
                                  "valid_nll": float(known["valid"].mean()),
                                  "flagged_by_p_value": float(np.mean(p_test <= args.fpr))},
              "sets": {}}
    pictures, used = {}, set()
    for i, name in enumerate(sets):   # one file per set, also for folders of the same name
        base = safe_name(name) if safe_name(name) not in used else f"{safe_name(name)}-{i}"
        used.add(base)
        pictures[name] = os.path.join(out_dir, f"scores-{base}.png")
    for name, (what, x) in sets.items():
        outliers = per_example(x, what=name)
        scores, rows = anomaly.compare(inliers, outliers, known["train"], known["valid"], args.fpr, seed=args.seed)
        out_nll = float(outliers["nll"].mean())
        verdict = ": more probable on average than the test set" if out_nll < in_nll else ""
        print(f"\nagainst {name}: {what}, {len(x)} images, NLL {out_nll:.2f} nats ({bits(out_nll):.4f} bits/dim)"
              f"{verdict}")
        print(anomaly.score_table(rows, args.fpr))
        picture = pictures[name]
        anomaly.write_histograms(picture, f"{ds.describe()} (in) against {name} (out)",
                                 {k: v[0] for k, v in scores.items()}, {k: v[1] for k, v in scores.items()})
        report["sets"][name] = {"description": what, "n": len(x), "nll": out_nll, "bits_per_dim": bits(out_nll),
                                "scores": rows, "histograms": picture}
    path = os.path.join(out_dir, "scores.json")
    with atomic_write(path) as f:
        f.write(json.dumps(report, indent=1).encode())
    print(f"\nwrote {path} and {len(sets)} histogram PNG(s) in {out_dir} ({time.perf_counter() - t:.1f} s)")


def safe_name(name) -> str:
    """A data set name or folder as a file name part."""
    base = os.path.basename(os.path.normpath(name)) or "data"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)


def main(argv=None) -> None:
    args = parse_args(argv)
    with training.error_boundary(args.debug):
        training.configure(args.device, args.seed)
        training.refuse_distributed(args, ("score", "eval", "sample", "complete"))
        if args.score:
            return score_checkpoint(args)
        if args.eval or args.sample:
            return use_checkpoint(args)
        if args.complete:
            return complete_checkpoint(args)
        run, resume = training.open_run(args, f"runs/{args.model}")
        with run:
            train(args, run, resume)


def train(args, run, resume) -> None:
    # ---- data, model and optimiser: a new run, or the one being resumed
    make_opt = lambda params: Adam(params, lr=args.lr)  # noqa: E731
    if resume:
        model, opt, meta = training.load_run(resume, "train_mnist", make_opt)
        training.resume_settings(args, meta, SETTINGS)
        training.resume_batch_size(args, meta)
        opt.lr = args.lr
        ds, spec, _ = load_data(meta["data"], args.data_dir)
        check_fits(model, ds, resume)
        loop, best_path = meta["loop"], os.path.join(os.path.dirname(resume), "best.npz")
        print(f"resuming {resume}: epoch {loop['epoch'] + 1}, batch {loop['batch']}, step {opt.step_count}")
    else:
        ds, spec, _ = load_data({"dataset": args.dataset, "binarization": args.binarization,
                                 "threshold": args.threshold, "classes": args.classes, "perturb": args.perturb,
                                 "conditional": args.conditional}, args.data_dir)
        n_labels = int(ds.train_labels.max()) + 1 if args.conditional else 0
        model = new_model(args, ds.test.shape[1:], n_labels)
        opt = make_opt(model.parameters())
        loop, best_path = {}, None
    batch_size, epochs = args.batch_size * distributed.world_size(), args.epochs   # the global batch
    if batch_size > ds.n_train:
        raise UsageError(f"argument --batch-size: {training.describe_batch(args.batch_size)} is more than the "
                         f"{ds.n_train} training images")
    steps_per_epoch = ds.n_train // batch_size
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    if opt.step_count >= epochs * steps_per_epoch:
        raise UsageError(f"argument --epochs: the run in {resume} has trained {opt.step_count // steps_per_epoch} "
                         "epochs already; give a larger --epochs, or see its result with --eval")
    run.begin()
    if resume:
        run.log.write(event="resume", checkpoint=resume, step=opt.step_count)
    else:
        baselines(ds)
    print(f"model {type(model).__name__} {model.config()}: {model.num_parameters():,} parameters, "
          f"device {backend.get_device()}, batch {training.describe_batch(args.batch_size)}")

    # ---- the loop: shuffled batches, the validation set scored after every epoch
    perturb = spec.get("perturb", 0.0)
    if perturb:
        print(f"a background model: each training pixel replaced by a random 0 or 1 with probability {perturb:g}")
    if model.n_labels:
        print(f"class-conditional: p(x | y) over {model.n_labels} classes, y from the label files")
    batches = training.EpochBatches(ds, batch_size, steps_per_epoch, model.event_shape, loop or None, args.seed,
                                    perturb=perturb, labels=bool(model.n_labels))
    valid_labels = ds.valid_labels.astype(np.int64) if model.n_labels else None

    def evaluate(train_nll, seconds):
        valid = mean_nll(model, ds.valid, args.eval_batch_size, valid_labels)
        epoch = opt.step_count // steps_per_epoch
        line = f"epoch {epoch}/{epochs}: train {train_nll:.2f} | " + report("valid", valid, ds) + f" | {seconds:.1f} s"
        return valid, dict(epoch=epoch, step=opt.step_count, train_nll=train_nll, valid_nll=valid,
                           seconds=seconds, data=ds.describe()), line

    meta = {"script": "train_mnist", "data": spec, "settings": {k: getattr(args, k) for k in SETTINGS},
            "world_size": distributed.world_size()}
    best_path = training.train(model, opt, batches, run, max_steps=epochs * steps_per_epoch,
                               eval_every=steps_per_epoch, evaluate=evaluate, clip=args.clip, meta=meta,
                               best_valid=loop.get("best_valid"), best_path=best_path, quiet=args.quiet)

    # ---- report: the best validation checkpoint on the test set, and its samples
    model, _, _ = training.load_run(best_path, "train_mnist")
    label = f"{best_path} (best validation)"
    if model.n_labels:
        figures = report_conditional(model, ds, args.eval_batch_size, args.quiet, label, run.path)
    else:
        figures = {"test_nll": mean_nll(model, ds.test, args.eval_batch_size)}
        print(report(f"test NLL of {label}", figures["test_nll"], ds))
    d = int(np.prod(ds.test.shape[1:]))
    run.log.write(event="test", **figures, bits_per_dim=figures["test_nll"] / (d * math.log(2)), data=ds.describe(),
                  checkpoint=best_path)
    if distributed.is_main():
        write_samples(model, args.n_samples, args.seed, run.path, ds.test.shape[1:])


if __name__ == "__main__":
    main()
