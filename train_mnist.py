#!/usr/bin/env python
"""Train an autoregressive model of binarized MNIST-style images; report its exact test
negative log-likelihood and draw samples.

    python train_mnist.py --dataset fashion-mnist --model made --epochs 10
    python train_mnist.py --model pixelcnn --device cuda
    python train_mnist.py --out runs/made --resume            # continue runs/made/last.npz
    python train_mnist.py --eval runs/made/best.npz           # test NLL of a checkpoint
    python train_mnist.py --sample runs/made/best.npz         # a sample grid

`--dataset` is mnist, fashion-mnist, binarized-mnist (Larochelle & Murray's fixed
binarization) or a folder holding IDX files (train-images-idx3-ubyte[.gz] and
t10k-images-idx3-ubyte[.gz]). Every NLL printed names its data and binarization: results
on fixed and dynamic binarizations differ by several nats.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from nanoar import backend, datasets, no_grad
from nanoar.checkpoint import rng_from_state, rng_state
from nanoar.models import build_model
from nanoar.optim import Adam, clip_grad_norm
from nanoar.training import (JsonLog, add_run_arguments, NonFiniteLoss, StopRequested, check_finite, load_run, progress,
                             save_run, select_device)

IMAGE_MODELS = ("fvsbn", "nade", "made", "pixelcnn", "gated-pixelcnn")
DATASETS = ("mnist", "fashion-mnist", "binarized-mnist")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=IMAGE_MODELS, default="made")
    p.add_argument("--hidden", type=int, default=500, help="NADE hidden units")
    p.add_argument("--hidden-sizes", default="500,500", help="MADE hidden layer sizes, comma separated")
    p.add_argument("--num-masks", type=int, default=1, help="MADE: number of masks (connectivity-agnostic training)")
    p.add_argument("--ordering", choices=("natural", "random"), default="natural", help="MADE input ordering")
    p.add_argument("--channels", type=int, default=64, help="PixelCNN channels")
    p.add_argument("--layers", type=int, default=5, help="PixelCNN residual blocks / gated layers")
    p.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | binarized-mnist | a folder of IDX files")
    p.add_argument("--binarization", choices=("threshold", "dynamic", "fixed"), default=None,
                   help="default: threshold for grey images, fixed for binarized-mnist")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--data-dir", default=None, help="download cache (default ~/.cache/nanoar or $NANOAR_DATA)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (a resumed run: its own)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1000.0, help="max gradient L2 norm")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cut epochs short (quick runs, tests)")
    add_run_arguments(p, "runs/<model>")
    p.add_argument("--eval", metavar="CHECKPOINT", help="print the test NLL of a checkpoint and exit")
    p.add_argument("--sample", metavar="CHECKPOINT", help="write a sample grid of a checkpoint and exit")
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="default 1000 for FVSBN, NADE and MADE, 100 for the PixelCNNs (memory grows with it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.dataset not in DATASETS and not os.path.isdir(args.dataset):
        p.error(f"--dataset {args.dataset!r} is neither one of {', '.join(DATASETS)} nor a folder of IDX files")
    if args.out is None:
        args.out = os.path.join("runs", args.model)
    return args


# ----------------------------------------------------------------------------- data
def load_data(args, meta=None):
    """The dataset named by the arguments (or by a checkpoint's meta, for --eval/--sample),
    and its description {dataset, binarization, threshold} to store in checkpoints."""
    spec = meta["data"] if meta else {"dataset": args.dataset, "binarization": args.binarization,
                                      "threshold": args.threshold}
    name = spec["dataset"]
    if os.path.isdir(name):
        images = datasets.load_idx_folder(name)
    else:
        images = datasets.load_images(name, args.data_dir, labels=False)
    spec = {**spec, "binarization": spec["binarization"] or ("fixed" if images.binary else "threshold")}
    return datasets.BinaryImageData(images, spec["binarization"], threshold=spec["threshold"]), spec


def new_model(args, shape):
    """Build the chosen model for images of shape (1, H, W)."""
    _, h, w = shape
    d = h * w
    if args.model == "fvsbn":
        return build_model("fvsbn", {"d": d})
    if args.model == "nade":
        return build_model("nade", {"d": d, "hidden": args.hidden})
    if args.model == "made":
        sizes = [int(s) for s in args.hidden_sizes.split(",") if s]
        return build_model("made", {"d": d, "hidden_sizes": sizes, "num_masks": args.num_masks,
                                    "ordering": args.ordering, "seed": args.seed})
    return build_model(args.model, {"height": h, "width": w, "channels": args.channels,
                                    **({"n_residual": args.layers} if args.model == "pixelcnn" else {"n_layers": args.layers})})


def as_model_input(model, x):
    """Host batch (B, 1, H, W) float32 0/1 -> device array shaped like the model's data."""
    return backend.to_device(x.reshape(len(x), *model.event_shape))


# ----------------------------------------------------------------------------- evaluation
def mean_nll(model, x, batch_size=None) -> float:
    """Average -log p(x) in nats over a host array of images, in batches, no graph."""
    # the PixelCNNs' window columns (N*H*W*9*C floats) grow with the batch: smaller batches
    # keep memory in hand and run no slower
    batch_size = batch_size or (1000 if type(model).__name__ in ("FVSBN", "MADE", "NADE") else 100)
    total = 0.0
    with no_grad():
        for i in range(0, len(x), batch_size):
            total += float(-model.log_prob(as_model_input(model, x[i:i + batch_size])).sum().item())
    return total / len(x)


def baselines(ds: datasets.BinaryImageData) -> None:
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


def report(label, nll, d, ds) -> str:
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


def write_samples(model, args, out_dir, ds_shape) -> str:
    """Samples (left) and, as in the lecture's figure, each pixel's conditional probability
    p(x_i = 1 | x_<i) under the model given the sampled pixels before it (right)."""
    t = time.perf_counter()
    x = model.sample(args.n_samples, seed=args.seed)
    secs = time.perf_counter() - t
    _, h, w = ds_shape
    xs = backend.to_numpy(x).astype(np.float64)
    samples = xs.reshape(-1, h, w)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "samples.png")
    write_png(path, tile(samples))
    print(f"wrote {path} ({args.n_samples} samples in {secs:.1f} s)")
    if getattr(model, "num_masks", 1) > 1:
        return path  # a mixture of K orderings has no single set of conditionals to draw
    with no_grad():
        lp = backend.to_numpy(model.log_prob_per_variable(x).data).astype(np.float64)
    p_on = np.where(xs == 1, np.exp(lp), -np.expm1(lp))
    left, right = tile(samples), tile(p_on.reshape(-1, h, w))
    gap = np.full((left.shape[0], 8), 1.0)
    write_png(os.path.join(out_dir, "samples_conditionals.png"), np.concatenate([left, gap, right], axis=1))
    print("wrote samples_conditionals.png (samples | p(x_i = 1 | x_<i))")
    return path


# ----------------------------------------------------------------------------- training
def train(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    last_path, best_path = os.path.join(args.out, "last.npz"), os.path.join(args.out, "best.npz")
    resume_path = (args.resume or last_path) if args.resume is not None else None
    make_opt = lambda params: Adam(params, lr=args.lr)  # noqa: E731

    if resume_path:
        model, opt, meta = load_run(resume_path, make_opt)
        ds, run_data = load_data(args, meta)
        loop = meta["loop"]
        print(f"resuming {resume_path}: epoch {loop['epoch'] + 1}, batch {loop['batch']}, step {opt.step_count}")
    else:
        ds, run_data = load_data(args)
        model, meta = new_model(args, ds.test.shape[1:]), None
        opt = make_opt(model.parameters())
        loop = {"epoch": 0, "batch": 0, "rng": rng_state(np.random.default_rng(args.seed)),
                "best_valid": None, "epochs": args.epochs or 10}
    d = int(np.prod(ds.test.shape[1:]))
    epochs = args.epochs or loop["epochs"]  # a resumed run keeps its length unless told
    log = JsonLog(os.path.join(args.out, "log.jsonl"))
    print(f"model {type(model).__name__} {model.config()}: {model.num_parameters():,} parameters, "
          f"device {backend.get_device()}")
    if meta is None:
        baselines(ds)

    def save(path, epoch, batch, rng_at_epoch_start, best_valid):
        save_run(path, model, opt, data=run_data,
                 loop={"epoch": epoch, "batch": batch, "rng": rng_at_epoch_start,
                       "best_valid": best_valid, "epochs": epochs},
                 model_state=getattr(model, "training_state", lambda: {})())

    if meta is not None and meta.get("model_state") and hasattr(model, "load_training_state"):
        model.load_training_state(meta["model_state"])
    best_valid = loop["best_valid"]
    epoch, skip = loop["epoch"], loop["batch"]
    rng = rng_from_state(loop["rng"])
    steps_per_epoch = ds.n_train // args.batch_size
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    wall = time.perf_counter()
    with StopRequested() as stop:
        while epoch < epochs:
            epoch_rng = rng_state(rng)  # the state that replays this epoch's order and pixels
            t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
            bar = progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=args.quiet)
            bar.update(skip)
            for b, x in enumerate(ds.train_batches(args.batch_size, rng)):
                if b >= steps_per_epoch:
                    break
                if b < skip:  # resuming mid-epoch: replay the generator, skip the work
                    continue
                if hasattr(model, "next_mask"):
                    model.next_mask()
                # MADE with K masks trains one mask per step (log p_k), as in Germain et al.
                log_prob = getattr(model, "log_prob_mask", model.log_prob)
                loss = -log_prob(as_model_input(model, x)).mean()
                opt.zero_grad()
                loss.backward()
                value = loss.item()
                try:
                    check_finite(value, opt.step_count + 1)
                except NonFiniteLoss as e:
                    bar.close()
                    sys.exit(f"error: {e}")
                clip_grad_norm(opt.params, args.clip)
                opt.step()
                loss_sum, n_loss, seen = loss_sum + value, n_loss + 1, seen + len(x)
                bar.update(1)
                bar.set_postfix_str(f"nll {loss_sum / n_loss:.2f} | {seen / (time.perf_counter() - t0):.0f} img/s")
                if stop.requested:
                    bar.close()
                    save(last_path, epoch, b + 1, epoch_rng, best_valid)
                    print(f"saved {last_path} (epoch {epoch + 1}, batch {b + 1}); continue with --resume")
                    return
            bar.close()
            skip = 0
            epoch += 1
            valid = mean_nll(model, ds.valid, args.eval_batch_size)
            secs = time.perf_counter() - t0
            improved = best_valid is None or valid < best_valid
            best_valid = valid if improved else best_valid
            train_nll = loss_sum / max(n_loss, 1)
            print(f"epoch {epoch}/{epochs}: train {train_nll:.2f} | "
                  + report("valid", valid, d, ds) + f" | {secs:.1f} s" + (" *" if improved else ""))
            log.write(epoch=epoch, step=opt.step_count, train_nll=train_nll, valid_nll=valid,
                      epoch_seconds=secs, data=ds.describe())
            save(last_path, epoch, 0, rng_state(rng), best_valid)
            if improved:
                save(best_path, epoch, 0, rng_state(rng), best_valid)
    print(f"training took {time.perf_counter() - wall:.1f} s")
    model, _, _ = load_run(best_path)
    test = mean_nll(model, ds.test, args.eval_batch_size)
    print(report("test NLL (best validation checkpoint)", test, d, ds))
    log.write(event="test", test_nll=test, bits_per_dim=test / (d * math.log(2)), data=ds.describe(),
              checkpoint=best_path)
    write_samples(model, args, args.out, ds.test.shape[1:])


def main(argv=None) -> None:
    args = parse_args(argv)
    select_device(args.device, args.seed)
    if args.eval or args.sample:
        path = args.eval or args.sample
        model, _, meta = load_run(path)
        ds, _ = load_data(args, meta)
        d = int(np.prod(ds.test.shape[1:]))
        if args.eval:
            print(report(f"test NLL of {path}", mean_nll(model, ds.test, args.eval_batch_size), d, ds))
        if args.sample:
            write_samples(model, args, os.path.dirname(path) or ".", ds.test.shape[1:])
        return
    try:
        train(args)
    except datasets.DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
