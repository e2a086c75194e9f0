#!/usr/bin/env python
"""Train a character-level autoregressive model of text; report its exact validation loss
and write samples.

    python train_chars.py                                   # WaveNet on tiny Shakespeare
    python train_chars.py --model transformer --max-iters 2000
    python train_chars.py --model lstm --data my_text.txt --device cuda
    python train_chars.py --out runs/chars-transformer --resume
    python train_chars.py --sample runs/chars-transformer/best.npz --prompt "ROMEO:" --length 500

The text is split by characters: the first 90% trains, the last 10% validates; the
vocabulary is the training text's characters and is stored in the checkpoint. Losses are
exact: each window of `--context` characters is scored as a whole sequence,
log p(x) = sum_t log p(x_t | x_<t), and reported in nats and bits per character.
"""
from __future__ import annotations

import argparse
import math
import os

from nanoar import backend, datasets, no_grad, training
from nanoar.models import build_model, model_class
from nanoar.optim import AdamW
from nanoar.training import (UsageError, UserError, int_list, nonnegative_float, nonnegative_int, path,
                             positive_float, positive_int)

CHAR_MODELS = ("wavenet", "lstm", "transformer")
# what a checkpoint fixes (these flags cannot change a resumed run), and the settings a
# resumed run keeps unless they are given again
RUN_FLAGS = ("model", "context", "batch_size", "dim", "layers", "heads", "hidden", "residual_channels", "dilations",
             "stacks")
SETTINGS = ("context", "batch_size", "max_iters", "lr", "min_lr", "warmup", "weight_decay", "clip", "eval_interval",
            "eval_windows")


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=CHAR_MODELS, default="wavenet")
    p.add_argument("--data", type=path, default=None, help="a UTF-8 text file (default: tiny Shakespeare, downloaded once)")
    p.add_argument("--data-dir", type=path, default=None, help="download cache (default ~/.cache/nanoar or $NANOAR_DATA)")
    p.add_argument("--context", type=_context, default=64, help="characters per training window (>= 2)")
    p.add_argument("--batch-size", type=positive_int, default=12)
    p.add_argument("--max-iters", type=positive_int, default=2000)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--min-lr", type=nonnegative_float, default=1e-4, help="end of the cosine decay (<= --lr)")
    p.add_argument("--warmup", type=nonnegative_int, default=100, help="linear warm-up iterations")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.1)
    p.add_argument("--clip", type=positive_float, default=1.0, help="max gradient L2 norm")
    p.add_argument("--eval-interval", type=positive_int, default=250)
    p.add_argument("--eval-windows", type=nonnegative_int, default=0,
                   help="validation windows per evaluation (0: the whole validation text)")
    # model sizes
    p.add_argument("--dim", type=positive_int, default=128, help="embedding / model width")
    p.add_argument("--layers", type=positive_int, default=4, help="transformer blocks / LSTM layers")
    p.add_argument("--heads", type=positive_int, default=4, help="transformer attention heads (dividing --dim)")
    p.add_argument("--hidden", type=positive_int, default=256, help="LSTM hidden units")
    p.add_argument("--residual-channels", type=positive_int, default=64, help="WaveNet residual channels")
    p.add_argument("--dilations", type=int_list, default=[1, 2, 4, 8, 16, 32], metavar="D1,D2,...",
                   help="WaveNet dilations of one stack (default 1,2,4,8,16,32)")
    p.add_argument("--stacks", type=positive_int, default=2, help="WaveNet stacks of the dilations")
    training.add_run_arguments(p, "runs/chars-<model>")
    # sampling
    p.add_argument("--sample", type=path, metavar="CHECKPOINT", help="print a sample from a checkpoint and exit")
    p.add_argument("--prompt", default=None,
                   help="text the sample starts with (default: a newline if the text has one, else nothing)")
    p.add_argument("--length", type=positive_int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="sample among the k most likely characters (0: all)")
    args = p.parse_args(argv)
    if args.min_lr > args.lr:
        p.error(f"argument --min-lr: {args.min_lr} is above --lr {args.lr}")
    if args.model == "transformer" and args.dim % args.heads:
        p.error(f"argument --heads: {args.heads} does not divide --dim {args.dim}")
    if not args.dilations:
        p.error("argument --dilations: give at least one dilation")
    if args.sample and args.resume is not None:
        p.error("argument --resume: not with --sample (it reads a checkpoint and trains nothing)")
    training.refuse_run_flags(p, args, RUN_FLAGS)
    return args


def _context(text):
    """An argparse type: the window length, at least 2 characters."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {text}")
    return value


def new_model(args, n_classes):
    config = {
        "transformer": {"n_classes": n_classes, "context": args.context, "n_layers": args.layers,
                        "n_heads": args.heads, "dim": args.dim},
        "lstm": {"n_classes": n_classes, "embed_dim": args.dim, "hidden_size": args.hidden, "n_layers": args.layers},
        "wavenet": {"n_classes": n_classes, "input": "embedding", "embed_dim": args.dim,
                    "residual_channels": args.residual_channels, "dilation_channels": 2 * args.residual_channels,
                    "skip_channels": args.residual_channels, "n_stacks": args.stacks,
                    "dilations": args.dilations},
    }[args.model]
    return build_model(args.model, config)


def lr_at(it, args) -> float:
    """Linear warm-up, then cosine decay from --lr to --min-lr at --max-iters."""
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    frac = min(1.0, (it - args.warmup) / max(1, args.max_iters - args.warmup))
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (args.lr - args.min_lr)


def evaluate_text(model, ids, context, max_windows=0, batch_size=64):
    """Exact validation loss: consecutive windows of `context` characters, each scored as
    a whole sequence. Returns (nats per character over all characters, nats per character
    over all but each window's first, i.e. the characters that have a context)."""
    n = (len(ids) // context) * context
    windows = ids[:n].reshape(-1, context)
    if max_windows:
        windows = windows[:max_windows]
    total = first = 0.0
    with no_grad():
        for i in range(0, len(windows), batch_size):
            lp = model.log_prob_per_variable(backend.to_device(windows[i:i + batch_size])).data
            total -= float(lp.sum())
            first -= float(lp[:, 0].sum())
    count = windows.size
    return total / count, (total - first) / (count - len(windows))


def fmt(label, nats) -> str:
    return f"{label} {nats:.4f} nats/char ({nats / math.log(2):.4f} bits/char)"


def encode_prompt(vocab, prompt):
    """The prompt's ids: --prompt must use the text's characters; by default a newline where
    the text has one (samples then start at a line), else nothing."""
    if prompt is None:
        prompt = "\n" if "\n" in vocab.chars else ""
    try:
        return vocab.encode(prompt)
    except ValueError as e:
        raise UsageError(f"argument --prompt: {e} of this model's text") from None


def sample_text(model, vocab, prompt, args) -> str:
    ids = model.sample(1, seed=args.seed, length=len(prompt) + args.length, temperature=args.temperature,
                       top_k=args.top_k, prompt=backend.to_device(prompt))
    return vocab.decode(backend.to_numpy(ids)[0])


def load_text(path, data_dir, vocab=None, context=2, batch_size=1, stateful=False):
    """The text, split 90/10, as (vocabulary, train ids, valid ids); checked before any work:
    enough distinct characters, a full window in each split, and (for a stateful model) a
    stream of at least one window per batch row."""
    text = datasets.load_text(path, data_dir)
    name = path or "tiny Shakespeare"
    train_text, valid_text = datasets.split_text(text) if len(text) >= 2 else (text, "")
    if vocab is None:
        if len(set(train_text)) < 2:
            raise UserError(f"{name}: the training text (its first 90%) needs at least 2 distinct characters, "
                            f"has {len(set(train_text))}")
        vocab = datasets.CharVocab.from_text(train_text)
    if len(valid_text) < context or len(train_text) < context:
        raise UserError(f"{name}: {len(text)} characters are too few for windows of --context {context}: each "
                        f"split needs a full window (the last 10% has {len(valid_text)}); use a longer text or a "
                        "smaller --context")
    if stateful and len(train_text) // batch_size < context:
        raise UsageError(f"argument --batch-size: {batch_size} streams of at least --context {context} characters do "
                         f"not fit in the {len(train_text)} training characters")
    try:
        train_ids, valid_ids = vocab.encode(train_text), vocab.encode(valid_text)
    except ValueError as e:
        raise UserError(f"{name}: the text has characters the model's vocabulary lacks: {e}") from None
    return vocab, train_ids, valid_ids


def main(argv=None) -> None:
    args = parse_args(argv)
    with training.error_boundary(args.debug):
        training.configure(args.device, args.seed)
        if args.sample:
            model, _, meta = training.load_run(args.sample, "train_chars")
            vocab = datasets.CharVocab.from_dict(meta["vocab"])
            print(sample_text(model, vocab, encode_prompt(vocab, args.prompt), args))
            return
        run, resume = training.open_run(args, f"runs/chars-{args.model}")
        with run:
            train(args, run, resume)


def train(args, run, resume) -> None:
    # ---- data, model and optimiser: a new run, or the one being resumed
    make_opt = lambda params: AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)  # noqa: E731
    if resume:
        model, opt, meta = training.load_run(resume, "train_chars", make_opt)
        training.resume_settings(args, meta, SETTINGS)
        data = {"path": args.data} if "data" in args.given else meta["data"]
        vocab, train_ids, valid_ids = load_text(data["path"], args.data_dir, datasets.CharVocab.from_dict(meta["vocab"]),
                                                args.context, args.batch_size, model.stateful)
        loop, best_path = meta["loop"], os.path.join(os.path.dirname(resume), "best.npz")
        print(f"resuming {resume} at iteration {opt.step_count}")
    else:
        data = {"path": args.data}
        stateful = model_class(args.model).stateful
        vocab, train_ids, valid_ids = load_text(args.data, args.data_dir, None, args.context, args.batch_size, stateful)
        model = new_model(args, len(vocab))
        opt = make_opt(model.parameters())
        loop, best_path = {}, None
    prompt = encode_prompt(vocab, args.prompt)
    if opt.step_count >= args.max_iters:
        raise UsageError(f"argument --max-iters: the run in {resume} is at iteration {opt.step_count} already; give "
                         "a larger --max-iters, or sample it with --sample")
    run.begin()
    if resume:
        run.log.write(event="resume", checkpoint=resume, iter=opt.step_count)
    print(f"text: {len(train_ids) + len(valid_ids):,} characters ({len(train_ids):,} train, {len(valid_ids):,} "
          f"validation), vocabulary {len(vocab)}")
    print(f"model {type(model).__name__} {model.config()}: {model.num_parameters():,} parameters, "
          f"device {backend.get_device()}")

    # ---- the loop: windows of the text (read in order by a stateful model), the
    # validation text scored every --eval-interval iterations
    if model.stateful:
        batches = training.TextStreams(train_ids, args.batch_size, args.context, model, loop or None)
    else:
        batches = training.RandomWindows(train_ids, args.batch_size, args.context, loop or None, seed=args.seed)

    def evaluate(train_loss, seconds):
        valid, valid_ctx = evaluate_text(model, valid_ids, args.context, args.eval_windows)
        line = (f"iter {opt.step_count}: train {train_loss:.4f} | " + fmt("valid", valid)
                + f" | with context {valid_ctx:.4f} | {seconds:.1f} s")
        return valid, dict(iter=opt.step_count, train_loss=train_loss, valid_nats_per_char=valid,
                           valid_bits_per_char=valid / math.log(2), valid_context_nats_per_char=valid_ctx,
                           wall_seconds=seconds, lr=opt.lr), line

    meta = {"script": "train_chars", "data": data, "vocab": vocab.to_dict(),
            "settings": {k: getattr(args, k) for k in SETTINGS}}
    best_path = training.train(model, opt, batches, run, max_steps=args.max_iters, eval_every=args.eval_interval,
                               evaluate=evaluate, clip=args.clip, meta=meta, best_valid=loop.get("best_valid"),
                               best_path=best_path, lr_at=lambda it: lr_at(it, args), quiet=args.quiet)

    # ---- report: a sample of the best checkpoint
    model, _, meta = training.load_run(best_path, "train_chars")
    print(f"best {fmt('validation loss', meta['loop']['best_valid'])} ({best_path})")
    print("--- sample (best checkpoint) ---")
    print(sample_text(model, vocab, prompt, args))


if __name__ == "__main__":
    main()
