"""What both training scripts share: checkpoints of a whole run, Ctrl-C, logs, progress.

A run checkpoint is one .npz (see `checkpoint.py`: atomic, no pickle) holding
`model.<name>` arrays (weights and masks), `optim.<name>` arrays (Adam's moments), and JSON
meta: the model's registry name and config, the optimiser's step and learning rate, the
data generator's state and wherever the loop stood, so `--resume` continues exactly.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import backend
from .checkpoint import load_checkpoint, save_checkpoint
from .models import build_model, model_name


def add_run_arguments(parser, default_out: str) -> None:
    """The flags both scripts share: --seed, --device, --out, --resume."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=None, help=f"run folder (default {default_out})")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue a run (default: <out>/last.npz)")


def save_run(path, model, optimizer=None, **meta) -> None:
    """Write model (+ optimiser) state and `meta` to `path`, atomically."""
    arrays = {f"model.{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    info = {"model": model_name(model), "config": model.config(), **meta}
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
    optimizer = None
    if optimizer_factory is not None:
        optimizer = optimizer_factory(model.parameters())
        if "optim" in meta:
            state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
            optimizer.load_state_dict({**meta["optim"], **state})
    return model, optimizer, meta


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
    """Append one JSON object per line (an epoch or an evaluation) to a file."""

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

    def close(self):
        pass


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"the loss became {value} at step {step}: training stopped; the last good checkpoint "
            "is kept. Try a lower --lr or a smaller --clip.")


def select_device(name: str, seed: int) -> None:
    """Apply `--device`: a clear error (what to install) when CUDA is unavailable."""
    try:
        backend.configure(name, seed=seed)
    except backend.DeviceError as e:
        sys.exit(f"error: {e}")


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
