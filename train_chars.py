#!/usr/bin/env python
"""Train a character-level autoregressive model of text; report its exact validation loss
and write samples.

    python train_chars.py                                   # WaveNet on tiny Shakespeare
    python train_chars.py --model transformer --max-iters 2000
    python train_chars.py --model lstm --data my_text.txt --device cuda
    python train_chars.py --out runs/chars-transformer --resume
    python train_chars.py --sample runs/chars-transformer/best.npz --prompt "ROMEO:" --length 500
    python train_chars.py --score runs/chars-transformer/best.npz --text play.txt --show 20

The text is split by characters: the first 90% trains, the last 10% validates; the
vocabulary is the training text's characters and is stored in the checkpoint. Losses are
exact: each window of `--context` characters is scored as a whole sequence,
log p(x) = sum_t log p(x_t | x_<t), and reported in nats and bits per character.

--score scores a text line by line with a trained model: each non-empty line's bits per
character, log p(line | a preceding newline), and its p-value among the lines of the
checkpoint's validation text; the least likely lines are listed (e.g. lines that are not
Shakespeare in a Shakespeare play) and every line's score goes to scores.json.

--sample with --prompt is completion (the operation of train_mnist.py --complete): the
prompt is the observed prefix, and the rest is drawn from the model's exact conditional
p(x_rest | prompt), one character at a time (exactly so with --temperature 1 --top-k 0;
the default temperature sharpens each conditional). `model.sample(n, prompt=ids)` and
`model.sample(n, given=ids, observed=mask)` with a prefix mask are the same draw.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from nanoar import anomaly, backend, datasets, distributed, no_grad, training
from nanoar.datasets.download import DataError, atomic_write
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
    # scoring a text
    p.add_argument("--score", type=path, metavar="CHECKPOINT",
                   help="score the lines of --text with a checkpoint (bits per character, p-value among the "
                        "validation text's lines), list the least likely ones and exit")
    p.add_argument("--text", type=path, metavar="FILE", help="the UTF-8 text --score scores")
    p.add_argument("--show", type=nonnegative_int, default=10, help="least likely lines --score lists")
    args = p.parse_args(argv)
    if args.min_lr > args.lr:
        p.error(f"argument --min-lr: {args.min_lr} is above --lr {args.lr}")
    if args.model == "transformer" and args.dim % args.heads:
        p.error(f"argument --heads: {args.heads} does not divide --dim {args.dim}")
    if not args.dilations:
        p.error("argument --dilations: give at least one dilation")
    if args.sample and args.resume is not None:
        p.error("argument --resume: not with --sample (it reads a checkpoint and trains nothing)")
    if not args.score:
        for flag in ("text", "show"):
            if flag in args.given:
                p.error(f"argument --{flag}: only with --score CHECKPOINT")
    else:
        if args.text is None:
            p.error("argument --score: give the text to score with --text FILE")
        if args.sample:
            p.error("argument --sample: not with --score (give one of them)")
        if args.resume is not None:
            p.error("argument --resume: not with --score (it scores a text and trains nothing)")
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
    lo, hi = distributed.shard_range(len(windows))   # a distributed run: each rank its part
    total = first = 0.0
    with no_grad():
        for i in range(lo, hi, batch_size):
            lp = model.log_prob_per_variable(backend.to_device(windows[i:min(i + batch_size, hi)])).data
            total -= float(lp.sum())
            first -= float(lp[:, 0].sum())
    total, first = distributed.all_reduce_sum([total, first])
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
        training.refuse_distributed(args, ("sample", "score"))
        if args.sample:
            model, _, meta = training.load_run(args.sample, "train_chars")
            vocab = datasets.CharVocab.from_dict(meta["vocab"])
            print(sample_text(model, vocab, encode_prompt(vocab, args.prompt), args))
            return
        if args.score:
            score(args)
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
        training.resume_batch_size(args, meta)
        data = {"path": args.data} if "data" in args.given else meta["data"]
        vocab, train_ids, valid_ids = load_text(data["path"], args.data_dir, datasets.CharVocab.from_dict(meta["vocab"]),
                                                args.context, args.batch_size * distributed.world_size(), model.stateful)
        loop, best_path = meta["loop"], os.path.join(os.path.dirname(resume), "best.npz")
        print(f"resuming {resume} at iteration {opt.step_count}")
    else:
        data = {"path": args.data}
        stateful = model_class(args.model).stateful
        vocab, train_ids, valid_ids = load_text(args.data, args.data_dir, None, args.context,
                                                args.batch_size * distributed.world_size(), stateful)
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
          f"device {backend.get_device()}, batch {training.describe_batch(args.batch_size)}")

    # ---- the loop: windows of the text (read in order by a stateful model), the
    # validation text scored every --eval-interval iterations
    batch = args.batch_size * distributed.world_size()   # the global batch
    if model.stateful:
        batches = training.TextStreams(train_ids, batch, args.context, model, loop or None)
    else:
        batches = training.RandomWindows(train_ids, batch, args.context, loop or None, seed=args.seed)

    def evaluate(train_loss, seconds):
        valid, valid_ctx = evaluate_text(model, valid_ids, args.context, args.eval_windows)
        line = (f"iter {opt.step_count}: train {train_loss:.4f} | " + fmt("valid", valid)
                + f" | with context {valid_ctx:.4f} | {seconds:.1f} s")
        return valid, dict(iter=opt.step_count, train_loss=train_loss, valid_nats_per_char=valid,
                           valid_bits_per_char=valid / math.log(2), valid_context_nats_per_char=valid_ctx,
                           wall_seconds=seconds, lr=opt.lr), line

    meta = {"script": "train_chars", "data": data, "vocab": vocab.to_dict(),
            "settings": {k: getattr(args, k) for k in SETTINGS}, "world_size": distributed.world_size()}
    best_path = training.train(model, opt, batches, run, max_steps=args.max_iters, eval_every=args.eval_interval,
                               evaluate=evaluate, clip=args.clip, meta=meta, best_valid=loop.get("best_valid"),
                               best_path=best_path, lr_at=lambda it: lr_at(it, args), quiet=args.quiet)

    # ---- report: a sample of the best checkpoint
    model, _, meta = training.load_run(best_path, "train_chars")
    print(f"best {fmt('validation loss', meta['loop']['best_valid'])} ({best_path})")
    print("--- sample (best checkpoint) ---")
    print(sample_text(model, vocab, prompt, args))


# ----------------------------------------------------------------------------- scoring a text
P_FLAG = 0.01          # the summary counts the lines with a p-value at most this
SHOW_WIDTH = 80        # characters of a line the table shows


def read_text_file(path) -> str:
    """The UTF-8 text of --text (a leading byte-order mark dropped); one clear line if it
    is missing, unreadable or not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"--text {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--text {path}: a folder, not a text file") from None
    except OSError as e:
        raise UserError(f"--text {path}: cannot read it ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"--text {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def unscorable_reason(vocab, line):
    """None if the model can score every character of `line`, else why not."""
    known = set(vocab.chars)
    for c in line:
        if c not in known:
            return f"character {c!r} not in the model's vocabulary"
    return None


def score_lines(model, vocab, lines, batch_size=64, max_chars=4096, bar=None):
    """-log p(line | newline) in nats for each non-empty line (its characters, not its newline,
    conditioned on a preceding newline; on nothing when the vocabulary has no newline).
    Lines are sorted by length and scored in batches of up to `batch_size` lines and about
    `max_chars` ids, right-padded with id 0 to the batch's longest: the models are
    autoregressive, so the padding after a line never changes its conditionals, and only
    the line's own positions are summed.

    Returns (nll: float64 (len(lines),), NaN where unscorable; reasons: None or why a line
    cannot be scored, a character outside the vocabulary)."""
    prefix = vocab.encode("\n") if "\n" in vocab.chars else np.zeros(0, np.int64)
    start = len(prefix)
    nll = np.full(len(lines), np.nan)
    reasons, seqs = [None] * len(lines), {}
    for i, line in enumerate(lines):
        if not line:
            raise ValueError(f"line {i}: empty lines are not scored")
        reasons[i] = unscorable_reason(vocab, line)
        if reasons[i] is None:
            seqs[i] = np.concatenate([prefix, vocab.encode(line)])
    order = sorted(seqs, key=lambda i: len(seqs[i]))
    context = getattr(model, "context", None)   # a transformer scores each id past it in its own window

    def cost(rows, length):
        return rows * length * (context if context and length > context else 1)

    with no_grad():
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and j - i < batch_size and cost(j + 1 - i, len(seqs[order[j]])) <= max_chars:
                j += 1
            batch = order[i:j]
            lengths = np.array([len(seqs[k]) for k in batch])
            ids = np.zeros((len(batch), lengths.max()), np.int64)
            for row, k in enumerate(batch):
                ids[row, :lengths[row]] = seqs[k]
            lp = backend.to_numpy(model.log_prob_per_variable(backend.to_device(ids)).data).astype(np.float64)
            positions = np.arange(ids.shape[1])[None, :]
            real = (positions >= start) & (positions < lengths[:, None])
            nll[batch] = -(lp * real).sum(axis=1)
            if bar is not None:
                bar.update(len(batch))
            i = j
    return nll, reasons


def bits_per_char(nll, lines) -> np.ndarray:
    return np.asarray(nll, np.float64) / (np.array([len(line) for line in lines], np.float64) * math.log(2))


def shown(line: str, width: int = SHOW_WIDTH) -> str:
    """A line as the table prints it: non-printable characters (and any the terminal cannot
    encode) escaped, cut to `width` characters."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"

    def safe(c):
        if not c.isprintable():
            return repr(c)[1:-1]
        try:
            c.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            return ascii(c)[1:-1]
        return c
    text = "".join(safe(c) for c in line)
    return text if len(text) <= width else text[:width - 3] + "..."


def reference_lines(meta, args):
    """The non-empty lines of the checkpoint's validation text (the last 10% of its training
    text, or of --data): what the p-values compare with. The validation text starts mid-line
    unless the training text ends with a newline; that first piece is left out."""
    data_path = args.data if "data" in args.given else (meta.get("data") or {}).get("path")
    vocab = datasets.CharVocab.from_dict(meta["vocab"])
    try:
        _, train_ids, valid_ids = load_text(data_path, args.data_dir, vocab)
    except DataError as e:
        raise UserError(f"the checkpoint's training text, for the validation lines the p-values compare with: {e}; "
                        "give it with --data") from None
    lines = vocab.decode(valid_ids).split("\n")
    if len(lines) > 1 and len(train_ids) and vocab.decode(train_ids[-1:]) != "\n":
        lines = lines[1:]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{data_path or 'tiny Shakespeare'}: its validation text (the last 10%) has no non-empty "
                        "line to compare the scores with")
    return lines


def score(args) -> None:
    """--score CHECKPOINT --text FILE: score FILE's lines, list the least likely, write
    scores.json. Everything is checked before the model scores anything."""
    text = read_text_file(args.text)
    all_lines = text.split("\n")
    numbers = [n for n, line in enumerate(all_lines, 1) if line]
    if not numbers:
        raise UserError(f"--text {args.text}: no non-empty line to score")
    lines = [all_lines[n - 1] for n in numbers]
    model, _, meta = training.load_run(args.score, "train_chars")
    try:
        vocab = datasets.CharVocab.from_dict(meta.get("vocab") or {})
    except ValueError as e:
        raise UserError(f"{args.score}: its vocabulary is unusable ({e})") from None
    reference = reference_lines(meta, args)
    folder = training.output_folder(args.out or os.path.dirname(args.score) or ".")

    bar = training.progress(total=len(lines) + len(reference), desc="scoring lines", disable=args.quiet)
    nll, reasons = score_lines(model, vocab, lines, bar=bar)
    ref_nll, _ = score_lines(model, vocab, reference, bar=bar)
    bar.close()
    bpc, ref_bpc = bits_per_char(nll, lines), bits_per_char(ref_nll, reference)
    scored = np.array([r is None for r in reasons])
    p = np.full(len(lines), np.nan)
    p[scored] = anomaly.p_values(bpc[scored], ref_bpc)

    # ---- the summary, then the least likely lines: the unscorable ones first
    n_scored, n_bad = int(scored.sum()), int((~scored).sum())
    n_chars = sum(len(line) for line, ok in zip(lines, scored) if ok)
    ref_mean = float(ref_nll.sum() / (sum(map(len, reference)) * math.log(2)))
    mean = float(nll[scored].sum() / (n_chars * math.log(2))) if n_scored else None
    floor = 1 / (len(reference) + 1)   # the smallest p-value there can be
    print(f"{args.text}: {n_scored} of {len(lines)} non-empty lines scored"
          + (f" ({n_bad} unscorable: characters outside the model's vocabulary)" if n_bad else "")
          + f"; {'-' if mean is None else f'{mean:.4f}'} bits/char vs {ref_mean:.4f} on the {len(reference)} "
          f"validation lines; {int((p[scored] <= P_FLAG).sum())} lines with p <= {P_FLAG:g}"
          + (f" (none can be: the smallest p-value is 1/{len(reference) + 1})" if floor > P_FLAG else ""))
    order = [i for i in range(len(lines)) if not scored[i]]
    order += sorted(np.flatnonzero(scored).tolist(), key=lambda i: (-bpc[i], numbers[i]))
    if args.show and order:
        print(f"the {min(args.show, len(order))} least likely lines:")
        print(f"{'line':>7} {'bits/char':>9} {'p-value':>8}  text")
        for i in order[:args.show]:
            if scored[i]:
                print(f"{numbers[i]:>7} {bpc[i]:>9.3f} {p[i]:>8.4f}  {shown(lines[i])}")
            else:
                print(f"{numbers[i]:>7} {'-':>9} {'-':>8}  {shown(lines[i])}  [unscorable: {shown(reasons[i], 200)}]")

    # ---- every line's score
    entries = []
    for i, n in enumerate(numbers):
        entry = {"number": n, "chars": len(lines[i])}
        if scored[i]:
            entry.update(bits_per_char=float(bpc[i]), p_value=float(p[i]))
        else:
            entry["unscorable"] = reasons[i]
        entries.append(entry)
    report = {"checkpoint": args.score, "text": args.text, "lines_scored": n_scored, "lines_unscorable": n_bad,
              "bits_per_char": mean,
              "reference": {"what": "the non-empty lines of the checkpoint's validation text",
                            "lines": len(reference), "bits_per_char": ref_mean},
              "lines": entries}
    out = os.path.join(folder, "scores.json")
    try:
        with atomic_write(out) as f:
            f.write((json.dumps(report, indent=1) + "\n").encode("utf-8"))
    except OSError as e:
        raise UserError(f"could not write {out}: {e.strerror}") from None
    print(f"scores of every line: {out}")


if __name__ == "__main__":
    main()
