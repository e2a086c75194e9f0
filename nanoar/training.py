"""The training loop both scripts share, the batch sources it draws from, run checkpoints,
and the error boundary of the scripts.

    batches = EpochBatches(images, batch_size=100, steps_per_epoch=540, epochs=10, seed=0)
    finished = train(model, Adam(model.parameters()), batches, max_steps=5400, eval_every=540,
                     evaluate=..., out="runs/made", clip=1000.0, meta={...})

A step is: the model's `training_loss` on the next batch (mean NLL in nats, per example or,
for sequences, per id; a stateful model also returns the state it carries to the next batch), backward, a check that the loss is
finite, gradient-norm clipping, one optimiser update. Every `eval_every` steps the script's
`evaluate` runs; the run folder then gets `last.npz` and, when validation improved,
`best.npz`. Ctrl-C finishes the step, saves `last.npz` and returns.

A run checkpoint is one .npz (see `checkpoint.py`: atomic, no pickle) holding
`model.<name>` arrays (weights and masks), `optim.<name>` arrays (Adam's moments), and JSON
meta: the model's registry name and config, the optimiser's step and learning rate, the
batch source's position and random state, and the best validation loss, so `--resume`
continues exactly.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import backend
from .checkpoint import CheckpointError, load_checkpoint, rng_from_state, rng_state, save_checkpoint
from .datasets import DataError, get_windows
from .models import build_model, model_name
from .optim import clip_grad_norm


# ----------------------------------------------------------------------------- scripts
def add_run_arguments(parser, default_out: str) -> None:
    """The flags both scripts share."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: $NANOAR_DEVICE, else cpu")
    parser.add_argument("--out", default=None, help=f"run folder (default {default_out})")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue a run (default: <out>/last.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class UserError(Exception):
    """A problem the user can fix (bad data, a bad checkpoint, an unusable device): the
    scripts print its message as one line and exit."""


@contextlib.contextmanager
def error_boundary():
    """Turn every expected failure into `error: <message>` on stderr and exit status 1."""
    try:
        yield
    except (UserError, DataError, CheckpointError, backend.DeviceError, NonFiniteLoss) as e:
        sys.exit(f"error: {e}")


def configure(device, seed: int) -> None:
    """Apply `--device` (or $NANOAR_DEVICE) and the process settings (`nanoar.configure`)."""
    backend.configure(device, seed=seed)


def run_paths(out: str) -> tuple:
    """(last.npz, best.npz) of a run folder."""
    return os.path.join(out, "last.npz"), os.path.join(out, "best.npz")


# ----------------------------------------------------------------------------- checkpoints
def save_run(path, model, optimizer=None, **meta) -> None:
    """Write model (+ optimiser) state and `meta` to `path`, atomically."""
    arrays = {f"model.{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    info = {"model": model_name(model), "config": model.config(), "model_state": model.training_state(), **meta}
    if optimizer is not None:
        state = optimizer.state_dict()
        info["optim"] = {"step": state.pop("step"), "lr": state.pop("lr")}
        arrays.update({f"optim.{k}": backend.to_numpy(v) for k, v in state.items()})
    save_checkpoint(path, arrays, info)


def load_run(path, optimizer_factory=None):
    """Rebuild the model of a run checkpoint on the current device.

    Returns (model, optimizer or None, meta); the optimiser is made by
    `optimizer_factory(model.parameters())` and given its saved state.
    """
    arrays, meta = load_checkpoint(path)
    model = build_model(meta["model"], meta["config"])
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    model.load_training_state(meta.get("model_state") or {})
    optimizer = None
    if optimizer_factory is not None:
        optimizer = optimizer_factory(model.parameters())
        if "optim" in meta:
            state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
            optimizer.load_state_dict({**meta["optim"], **state})
    return model, optimizer, meta


# ----------------------------------------------------------------------------- batch sources
# A batch source gives host arrays, one batch per `next()`, and `state()`: JSON from which
# the same source continues exactly (position and random state), stored in checkpoints.
# `carry` is the state a stateful model passes from one batch to the next (None otherwise);
# `unit` names what the progress bar counts: examples, or ids for text.
class EpochBatches:
    """Shuffled batches of a data set, epoch after epoch: `data.train_batches(size, rng)` is
    one epoch's iterator; `steps_per_epoch` may cut epochs short; each batch is reshaped to
    (B, *shape) (the model's event shape)."""

    carry, unit = None, "examples"

    def __init__(self, data, batch_size: int, steps_per_epoch: int, shape: tuple, saved: dict | None = None,
                 seed: int = 0):
        self.data, self.batch_size, self.steps_per_epoch, self.shape = data, batch_size, steps_per_epoch, shape
        saved = saved or {"epoch": 0, "batch": 0, "rng": rng_state(np.random.default_rng(seed))}
        self.epoch = saved["epoch"]
        self._start_epoch(rng_from_state(saved["rng"]))
        for _ in range(saved["batch"]):  # replay the generator to where the run stood
            self.next()

    def _start_epoch(self, rng) -> None:
        self.rng, self.rng_at_start, self.batch = rng, rng_state(rng), 0
        self._batches = self.data.train_batches(self.batch_size, rng)

    def next(self):
        if self.batch == self.steps_per_epoch:
            self.epoch += 1
            self._start_epoch(self.rng)
        self.batch += 1
        x = next(self._batches)
        return x.reshape(len(x), *self.shape)

    def state(self) -> dict:
        if self.batch == self.steps_per_epoch:  # at an epoch's end: the next one starts here
            return {"epoch": self.epoch + 1, "batch": 0, "rng": rng_state(self.rng)}
        return {"epoch": self.epoch, "batch": self.batch, "rng": self.rng_at_start}


class RandomWindows:
    """Windows of `length` consecutive ids at uniformly random places in a text."""

    carry, unit = None, "ids"

    def __init__(self, ids, batch_size: int, length: int, saved: dict | None = None, seed: int = 0):
        self.ids, self.batch_size, self.length = ids, batch_size, length
        self.rng = rng_from_state(saved["rng"]) if saved else np.random.default_rng(seed)

    def next(self):
        return get_windows(self.ids, self.batch_size, self.length - 1, self.rng)  # (B, length)

    def state(self) -> dict:
        return {"rng": rng_state(self.rng)}


class TextStreams:
    """Truncated backpropagation through time: `batch_size` read heads spread evenly over
    the text, each moving on by `length` ids per batch, while the model carries its state
    (`carry`) from one chunk to the next. When a head would run off its share of the text,
    every head restarts, with a fresh state."""

    unit = "ids"

    def __init__(self, ids, batch_size: int, length: int, model, saved: dict | None = None):
        self.ids, self.length, self.model = ids, length, model
        self.span = len(ids) // batch_size
        self.starts = np.arange(batch_size) * self.span
        self.pos, self.carry = self.starts.copy(), None
        if saved:
            self.pos = np.array(saved["streams"]["pos"])
            if saved["streams"]["state"] is not None:
                template = model.initial_state(batch_size)
                self.carry = _from_lists(template, saved["streams"]["state"])

    def next(self):
        if self.pos[0] + self.length > self.starts[0] + self.span:
            self.pos, self.carry = self.starts.copy(), None
        x = np.stack([self.ids[p:p + self.length] for p in self.pos])
        self.pos = self.pos + self.length
        return x

    def state(self) -> dict:
        return {"streams": {"pos": self.pos.tolist(), "state": None if self.carry is None else _to_lists(self.carry)}}


def _to_lists(state):
    """A nested tuple of device arrays as nested lists (JSON)."""
    if isinstance(state, tuple):
        return [_to_lists(s) for s in state]
    return backend.to_numpy(state).tolist()


def _from_lists(template, lists):
    """The inverse of `_to_lists`, shaped and typed like `template` (a nested tuple)."""
    if isinstance(template, tuple):
        parts = [_from_lists(t, l) for t, l in zip(template, lists)]
        return type(template)(*parts) if hasattr(template, "_fields") else tuple(parts)
    return backend.to_device(np.array(lists, dtype=template.dtype).reshape(template.shape))


# ----------------------------------------------------------------------------- the loop
def train(model, optimizer, batches, *, max_steps: int, eval_every: int, evaluate, out: str, clip: float,
          meta: dict, best_valid=None, lr_at=None, quiet: bool = False) -> bool:
    """Train until the optimiser has taken `max_steps` steps; returns False if stopped early
    (Ctrl-C), True when finished.

    evaluate(train_loss, seconds) -> (validation loss, record to log, line to print): called
    every `eval_every` steps and after the last one, with the mean training loss since the
    previous call; the line gets a " *" when validation improved. `meta` goes into every
    checkpoint (with the loop's state under "loop"); lr_at(step) -> the learning rate of
    that step, if given.
    """
    os.makedirs(out, exist_ok=True)
    last_path, best_path = run_paths(out)
    log = JsonLog(os.path.join(out, "log.jsonl"))

    def save(path):
        save_run(path, model, optimizer, **meta, loop={"best_valid": best_valid, **batches.state()})

    t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
    bar = progress(total=max_steps, desc=type(model).__name__, disable=quiet)
    bar.update(optimizer.step_count)
    with StopRequested() as stop:
        while optimizer.step_count < max_steps:
            if lr_at is not None:
                optimizer.lr = lr_at(optimizer.step_count)
            x = batches.next()
            loss, batches.carry = model.training_loss(backend.to_device(x), batches.carry)
            optimizer.zero_grad()
            loss.backward()
            value = loss.item()
            check_finite(value, optimizer.step_count + 1)
            clip_grad_norm(optimizer.params, clip)
            optimizer.step()
            step = optimizer.step_count
            loss_sum, n_loss, seen = loss_sum + value, n_loss + 1, seen + (len(x) if batches.unit == "examples" else x.size)
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_sum / n_loss:.3f} | {seen / (time.perf_counter() - t0):,.0f} {batches.unit}/s")
            if step % eval_every == 0 or step == max_steps:
                bar.clear()
                valid, record, line = evaluate(loss_sum / n_loss, time.perf_counter() - t0)
                improved = best_valid is None or valid < best_valid
                best_valid = valid if improved else best_valid
                print(line + (" *" if improved else ""), flush=True)
                log.write(**record)
                loss_sum, n_loss = 0.0, 0
                save(last_path)
                if improved:
                    save(best_path)
            if stop.requested:
                bar.close()
                save(last_path)
                print(f"saved {last_path} at step {step}; continue with --resume")
                return False
    bar.close()
    return True


class StopRequested:
    """Ctrl-C sets a flag instead of killing the process mid-step; the loop then saves and
    exits cleanly. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step, saving a checkpoint, then stopping "
              "(press again to abort at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


class JsonLog:
    """Append one JSON object per line (an evaluation, a test result) to a file."""

    def __init__(self, path):
        self.path = path

    def write(self, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def progress(iterable=None, total=None, desc="", disable=False):
    """A tqdm progress bar (to stderr); plain iteration when tqdm is missing."""
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return _Plain(iterable, total)
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


class _Plain:
    def __init__(self, iterable, total):
        self.iterable, self.total = iterable, total

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix_str(self, s):
        pass

    def update(self, n=1):
        pass

    def clear(self):
        pass

    def close(self):
        pass


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"the loss became {value} at step {step}: training stopped; the last good checkpoint "
            "is kept. Try a lower --lr or a smaller --clip.")
