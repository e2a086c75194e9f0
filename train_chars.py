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
from nanoar.models import build_model
from nanoar.optim import AdamW

CHAR_MODELS = ("wavenet", "lstm", "transformer")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=CHAR_MODELS, default="wavenet")
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: tiny Shakespeare, downloaded once)")
    p.add_argument("--data-dir", default=None, help="download cache (default ~/.cache/nanoar or $NANOAR_DATA)")
    p.add_argument("--context", type=int, default=64, help="characters per training window")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4, help="end of the cosine decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up iterations")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="max gradient L2 norm")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-windows", type=int, default=0,
                   help="validation windows per evaluation (0: the whole validation text)")
    # model sizes
    p.add_argument("--dim", type=int, default=128, help="embedding / model width")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks / LSTM layers")
    p.add_argument("--heads", type=int, default=4, help="transformer attention heads")
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden units")
    p.add_argument("--residual-channels", type=int, default=64, help="WaveNet residual channels")
    p.add_argument("--dilations", default="1,2,4,8,16,32", help="WaveNet dilations of one stack")
    p.add_argument("--stacks", type=int, default=2, help="WaveNet stacks of the dilations")
    training.add_run_arguments(p, "runs/chars-<model>")
    # sampling
    p.add_argument("--sample", metavar="CHECKPOINT", help="print a sample from a checkpoint and exit")
    p.add_argument("--prompt", default="\n", help="text the sample starts with")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely characters (0: all)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"chars-{args.model}")
    return args


def new_model(args, n_classes):
    config = {
        "transformer": {"n_classes": n_classes, "context": args.context, "n_layers": args.layers,
                        "n_heads": args.heads, "dim": args.dim},
        "lstm": {"n_classes": n_classes, "embed_dim": args.dim, "hidden_size": args.hidden, "n_layers": args.layers},
        "wavenet": {"n_classes": n_classes, "input": "embedding", "embed_dim": args.dim,
                    "residual_channels": args.residual_channels, "dilation_channels": 2 * args.residual_channels,
                    "skip_channels": args.residual_channels, "n_stacks": args.stacks,
                    "dilations": [int(s) for s in args.dilations.split(",") if s]},
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


def sample_text(model, vocab, args) -> str:
    try:
        prompt = vocab.encode(args.prompt)
    except ValueError as e:
        raise training.UserError(f"--prompt: {e}") from None
    ids = model.sample(1, seed=args.seed, length=len(prompt) + args.length, temperature=args.temperature,
                       top_k=args.top_k, prompt=backend.to_device(prompt))
    return vocab.decode(backend.to_numpy(ids)[0])


def main(argv=None) -> None:
    args = parse_args(argv)
    with training.error_boundary():
        training.configure(args.device, args.seed)
        if args.sample:
            model, _, meta = training.load_run(args.sample)
            print(sample_text(model, datasets.CharVocab.from_dict(meta["vocab"]), args))
            return

        # ---- data, model and optimiser: a new run, or the one being resumed
        make_opt = lambda params: AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)  # noqa: E731
        last_path, best_path = training.run_paths(args.out)
        if args.resume is not None:
            path = args.resume or last_path
            model, opt, meta = training.load_run(path, make_opt)
            text, vocab = datasets.load_text(meta["data"]["path"], args.data_dir), datasets.CharVocab.from_dict(meta["vocab"])
            print(f"resuming {path} at iteration {opt.step_count}")
        else:
            text = datasets.load_text(args.data, args.data_dir)
            vocab = datasets.CharVocab.from_text(datasets.split_text(text)[0])
            model, meta = new_model(args, len(vocab)), {"data": {"path": args.data}, "loop": {}}
            opt = make_opt(model.parameters())
        train_text, valid_text = datasets.split_text(text)
        train_ids = vocab.encode(train_text)
        try:
            valid_ids = vocab.encode(valid_text)
        except ValueError as e:
            raise training.UserError(f"the validation text has characters the training text lacks: {e}") from None
        print(f"text: {len(text):,} characters ({len(train_ids):,} train, {len(valid_ids):,} validation), "
              f"vocabulary {len(vocab)}")
        print(f"model {type(model).__name__} {model.config()}: {model.num_parameters():,} parameters, "
              f"device {backend.get_device()}")

        # ---- the loop: windows of the text (read in order by a stateful model), the
        # validation text scored every --eval-interval iterations
        saved = meta["loop"] or None
        if model.stateful:
            batches = training.TextStreams(train_ids, args.batch_size, args.context, model, saved)
        else:
            batches = training.RandomWindows(train_ids, args.batch_size, args.context, saved, seed=args.seed)

        def evaluate(train_loss, seconds):
            valid, valid_ctx = evaluate_text(model, valid_ids, args.context, args.eval_windows)
            line = (f"iter {opt.step_count}: train {train_loss:.4f} | " + fmt("valid", valid)
                    + f" | with context {valid_ctx:.4f} | {seconds:.1f} s")
            return valid, dict(iter=opt.step_count, train_loss=train_loss, valid_nats_per_char=valid,
                               valid_bits_per_char=valid / math.log(2), valid_context_nats_per_char=valid_ctx,
                               wall_seconds=seconds, lr=opt.lr), line

        finished = training.train(model, opt, batches, max_steps=args.max_iters, eval_every=args.eval_interval,
                                  evaluate=evaluate, out=args.out, clip=args.clip, lr_at=lambda it: lr_at(it, args),
                                  meta={"data": meta["data"], "vocab": vocab.to_dict()},
                                  best_valid=meta["loop"].get("best_valid"), quiet=args.quiet)
        if not finished:
            return

        # ---- report: a sample of the best checkpoint
        model, _, meta = training.load_run(best_path)
        print("best " + fmt("validation loss", meta["loop"]["best_valid"]))
        print("--- sample (best checkpoint) ---")
        print(sample_text(model, vocab, args))


if __name__ == "__main__":
    main()
