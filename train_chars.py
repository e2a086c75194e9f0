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
import sys
import time

import numpy as np

from nanoar import backend, datasets, no_grad
from nanoar.checkpoint import rng_from_state, rng_state
from nanoar.models import build_model
from nanoar.models.lstm import LSTMState
from nanoar.optim import AdamW, clip_grad_norm
from nanoar.training import (JsonLog, add_run_arguments, NonFiniteLoss, StopRequested, check_finite, load_run, progress,
                             save_run, select_device)

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
    add_run_arguments(p, "runs/chars-<model>")
    # sampling
    p.add_argument("--sample", metavar="CHECKPOINT", help="print a sample from a checkpoint and exit")
    p.add_argument("--prompt", default="\n", help="text the sample starts with")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely characters (0: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"chars-{args.model}")
    return args


def new_model(args, n_classes):
    if args.model == "transformer":
        return build_model("transformer", {"n_classes": n_classes, "context": args.context, "n_layers": args.layers,
                                           "n_heads": args.heads, "dim": args.dim})
    if args.model == "lstm":
        return build_model("lstm", {"n_classes": n_classes, "embed_dim": args.dim, "hidden_size": args.hidden,
                                    "n_layers": args.layers})
    dilations = [int(s) for s in args.dilations.split(",") if s]
    return build_model("wavenet", {"n_classes": n_classes, "input": "embedding", "embed_dim": args.dim,
                                   "residual_channels": args.residual_channels,
                                   "dilation_channels": 2 * args.residual_channels,
                                   "skip_channels": args.residual_channels, "dilations": dilations,
                                   "n_stacks": args.stacks})


def lr_at(it, args) -> float:
    """Linear warm-up, then cosine decay from --lr to --min-lr at --max-iters."""
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    frac = min(1.0, (it - args.warmup) / max(1, args.max_iters - args.warmup))
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (args.lr - args.min_lr)


def evaluate(model, ids, context, max_windows=0, batch_size=64):
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


class Streams:
    """Truncated backpropagation through time for the LSTM: `batch` read heads spread evenly
    over the training text, each moving on by `context` characters per iteration, with the
    recurrent state carried from one chunk to the next (gradients stop at chunk edges).
    When a head would run off its share of the text, every head restarts with a fresh state."""

    def __init__(self, n_ids, batch, context, saved=None):
        self.span, self.batch, self.context = n_ids // batch, batch, context
        self.starts = np.arange(batch) * self.span
        self.pos, self.state = self.starts.copy(), None
        if saved:
            self.pos = np.array(saved["pos"])
            if saved["state"]:
                st = saved["state"]
                as_dev = lambda a, dt: backend.to_device(np.array(a, dtype=dt))  # noqa: E731
                self.state = LSTMState(tuple(as_dev(h, backend.default_dtype()) for h in st["h"]),
                                       tuple(as_dev(c, backend.default_dtype()) for c in st["c"]), as_dev(st["last"], np.int64))

    def next_chunk(self, ids):
        if self.pos[0] + self.context > self.starts[0] + self.span:
            self.pos, self.state = self.starts.copy(), None
        x = np.stack([ids[p:p + self.context] for p in self.pos])
        self.pos = self.pos + self.context
        return x

    def to_json(self) -> dict:
        state = None
        if self.state is not None:
            host = lambda arrays: [backend.to_numpy(a).tolist() for a in arrays]  # noqa: E731
            state = {"h": host(self.state.h), "c": host(self.state.c), "last": backend.to_numpy(self.state.last).tolist()}
        return {"pos": self.pos.tolist(), "state": state}


def sample_text(model, vocab, args) -> str:
    try:
        prompt = vocab.encode(args.prompt)
    except ValueError as e:
        sys.exit(f"error: --prompt: {e}")
    ids = model.sample(1, seed=args.seed, length=len(prompt) + args.length, temperature=args.temperature,
                       top_k=args.top_k, prompt=backend.to_device(prompt))
    return vocab.decode(backend.to_numpy(ids)[0])


def train(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    last_path, best_path = os.path.join(args.out, "last.npz"), os.path.join(args.out, "best.npz")
    resume_path = (args.resume or last_path) if args.resume is not None else None
    make_opt = lambda params: AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)  # noqa: E731

    if resume_path:
        model, opt, meta = load_run(resume_path, make_opt)
        text = datasets.load_text(meta["data"]["path"], args.data_dir)
        vocab = datasets.CharVocab.from_dict(meta["vocab"])
        loop = meta["loop"]
        print(f"resuming {resume_path} at iteration {loop['iter']}")
    else:
        text = datasets.load_text(args.data, args.data_dir)
        train_text, _ = datasets.split_text(text)
        vocab = datasets.CharVocab.from_text(train_text)
        model, meta = new_model(args, len(vocab)), None
        opt = make_opt(model.parameters())
        loop = {"iter": 0, "rng": rng_state(np.random.default_rng(args.seed)), "best_valid": None}
    train_text, valid_text = datasets.split_text(text)
    train_ids = vocab.encode(train_text)
    try:
        valid_ids = vocab.encode(valid_text)
    except ValueError as e:
        sys.exit(f"error: the validation text has characters the training text lacks: {e}")
    print(f"text: {len(text):,} characters ({len(train_ids):,} train, {len(valid_ids):,} validation), "
          f"vocabulary {len(vocab)}")
    print(f"model {type(model).__name__} {model.config()}: {model.num_parameters():,} parameters, "
          f"device {backend.get_device()}")
    run_meta = {"data": {"path": args.data if meta is None else meta["data"]["path"]}, "vocab": vocab.to_dict()}
    log = JsonLog(os.path.join(args.out, "log.jsonl"))
    rng = rng_from_state(loop["rng"])
    it, best_valid = loop["iter"], loop["best_valid"]

    streams = Streams(len(train_ids), args.batch_size, args.context, loop.get("streams")) if args.model == "lstm" else None

    def save(path):
        save_run(path, model, opt, **run_meta, loop={"iter": it, "rng": rng_state(rng), "best_valid": best_valid,
                                                     "streams": streams.to_json() if streams else None})

    t0, chars, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
    bar = progress(total=args.max_iters, desc=f"{args.model}", disable=args.quiet)
    bar.update(it)
    with StopRequested() as stop:
        while it < args.max_iters:
            opt.lr = lr_at(it, args)
            if streams:  # the LSTM reads the text in order, carrying its state (truncated BPTT)
                x = streams.next_chunk(train_ids)
                lp, streams.state = model.log_prob_chunk(backend.to_device(x), streams.state)
            else:  # random windows, each scored as a whole sequence
                x = datasets.get_windows(train_ids, args.batch_size, args.context - 1, rng)  # (B, context)
                lp = model.log_prob_per_variable(backend.to_device(x))
            loss = -lp.mean()
            opt.zero_grad()
            loss.backward()
            value = loss.item()
            try:
                check_finite(value, it + 1)
            except NonFiniteLoss as e:
                bar.close()
                sys.exit(f"error: {e}")
            clip_grad_norm(opt.params, args.clip)
            opt.step()
            it += 1
            loss_sum, n_loss, chars = loss_sum + value, n_loss + 1, chars + x.size
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_sum / n_loss:.3f} | {chars / (time.perf_counter() - t0):,.0f} chars/s")
            if it % args.eval_interval == 0 or it == args.max_iters:
                valid, valid_ctx = evaluate(model, valid_ids, args.context, args.eval_windows)
                improved = best_valid is None or valid < best_valid
                best_valid = valid if improved else best_valid
                bar.write(f"iter {it}: train {loss_sum / n_loss:.4f} | " + fmt("valid", valid)
                          + f" | with context {valid_ctx:.4f} | {time.perf_counter() - t0:.1f} s" + (" *" if improved else ""))
                log.write(iter=it, train_loss=loss_sum / n_loss, valid_nats_per_char=valid,
                          valid_bits_per_char=valid / math.log(2), valid_context_nats_per_char=valid_ctx,
                          wall_seconds=time.perf_counter() - t0, lr=opt.lr)
                loss_sum, n_loss = 0.0, 0
                save(last_path)
                if improved:
                    save(best_path)
            if stop.requested:
                bar.close()
                save(last_path)
                print(f"saved {last_path} at iteration {it}; continue with --resume")
                return
    bar.close()
    print(f"training took {time.perf_counter() - t0:.1f} s; best " + fmt("validation loss", best_valid))
    model, _, _ = load_run(best_path)
    print("--- sample (best checkpoint) ---")
    print(sample_text(model, vocab, args))


def main(argv=None) -> None:
    args = parse_args(argv)
    select_device(args.device, args.seed)
    if args.sample:
        model, _, meta = load_run(args.sample)
        print(sample_text(model, datasets.CharVocab.from_dict(meta["vocab"]), args))
        return
    try:
        train(args)
    except datasets.DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
