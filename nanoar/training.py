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

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import traceback

import numpy as np

from . import backend, distributed
from .checkpoint import CheckpointError, load_checkpoint, rng_from_state, rng_state, save_checkpoint
from .datasets import DataError, get_windows, perturb_pixels
from .models import build_model, model_name
from .optim import clip_grad_norm
from .tensor import no_grad


# ----------------------------------------------------------------------------- scripts
class UserError(Exception):
    """A problem the user can fix (bad data, a bad checkpoint, an unusable folder): the
    scripts print its message as one line and exit with status 1."""

    exit_status = 1


class UsageError(UserError):
    """An argument that cannot be used (found after parsing, e.g. once the data are known):
    exit status 2, as for argparse's own errors."""

    exit_status = 2


class Stopped(Exception):
    """Training stopped by a signal after saving; exit with 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = signum


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: argument --epochs: ... (see --help)`, exit 2),
    and `args.given`: the destinations of the flags given on the command line."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        unset = object()  # argparse fills in a default only where the namespace has no value
        probe = super().parse_args(args, argparse.Namespace(**{a.dest: unset for a in self._actions}))
        parsed.given = {k for k, v in vars(probe).items() if v is not unset}
        return parsed


def _number(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type: a finite int or float in a stated range."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what or 'a number'} expected, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
seed_int = _number(int, 0, 2**32 - 1, what="an integer in [0, 2^32)")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, low_open=True, what="a finite number > 0")
nonnegative_float = _number(float, 0.0, what="a finite number >= 0")


def path(text):
    """An argparse type: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a path expected, got an empty string")
    return text


def int_list(text):
    """An argparse type: comma-separated integers >= 1 (may be empty)."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    try:
        values = [int(s) for s in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every size must be >= 1, got {text!r}")
    return values


def add_run_arguments(parser, default_out: str) -> None:
    """The flags both scripts share."""
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: $NANOAR_DEVICE, else cpu")
    parser.add_argument("--out", type=path, default=None,
                        help=f"run folder (default {default_out}; when resuming, the checkpoint's folder)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue a run (default: <out>/last.npz)")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in a folder that holds one, replacing its checkpoints and log")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (or set NANOAR_DEBUG=1)")


@contextlib.contextmanager
def error_boundary(debug: bool = False):
    """Every failure becomes one line, `error: <message>`, on stderr, and an exit status: 2
    for a bad argument, 1 for the rest, 128 + N after a signal N stopped a run (130 for
    Ctrl-C, 143 for SIGTERM). With `debug` (--debug or NANOAR_DEBUG=1) errors propagate
    with their traceback."""
    debug = debug or os.environ.get("NANOAR_DEBUG", "") not in ("", "0")
    try:
        yield
    except Stopped as e:
        raise SystemExit(128 + e.signum) from None
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        _fail("interrupted (checkpoints already saved are kept)", 130)
    except Exception as e:
        if debug and distributed.world_size() == 1:
            raise
        if debug:               # the traceback, and still the whole job stopped
            traceback.print_exc()
        _fail(_describe(e), getattr(e, "exit_status", 1))


def _fail(message: str, status: int):
    """Print the error line and exit with `status`. In a distributed run, rank 0 prints it and
    stops the whole job at once; another rank waits a moment first (the same error usually
    stops rank 0 too), then says which rank it is."""
    if not distributed.is_main():
        time.sleep(2.0)
        message = f"(rank {distributed.rank()}) {message}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    distributed.abort(status)   # nothing when not distributed
    raise SystemExit(status) from None


def _describe(e: Exception) -> str:
    """One line for an exception: its message for the errors a user can meet, and the type
    too for anything else (a bug: the traceback is one --debug away)."""
    if isinstance(e, (UserError, DataError, CheckpointError, backend.DeviceError, NonFiniteLoss,
                      distributed.DistributedError)):
        return " ".join(str(e).split())
    if isinstance(e, MemoryError):
        return f"out of memory ({' '.join(str(e).split()) or 'MemoryError'}); choose smaller sizes or batches"
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror}{where}"
    return f"unexpected {type(e).__name__}: {' '.join(str(e).split())} (a bug in nanoar? --debug shows the traceback)"


def refuse_run_flags(parser, args, run_flags) -> None:
    """With --resume, a flag of `run_flags` (what the checkpoint fixes: model, data, batch
    size, ...) given on the command line is a usage error: the run cannot change them."""
    fixed = sorted(f"--{k.replace('_', '-')}" for k in args.given & set(run_flags))
    if args.resume is not None and fixed:
        parser.error(f"argument {fixed[0]}: a resumed run keeps what its checkpoint fixes (model, data, batch "
                     "size); drop it, or start a new run (--out elsewhere, or --force)")


def open_run(args, default_out: str):
    """The run folder, locked (`RunFolder`), and the checkpoint `--resume` names (None for a
    new run; `<out>/last.npz` by default, checked to exist before anything is made). The
    folder is --out, else the resumed checkpoint's, else `default_out`."""
    resume = None
    if args.resume is not None:
        resume = args.resume or os.path.join(args.out or default_out, "last.npz")
        if not os.path.isfile(resume):
            raise UserError(f"--resume: no checkpoint at {resume}"
                            + ("" if args.resume else " (give its --out, or the checkpoint's path)"))
    out = args.out or ((os.path.dirname(resume) or ".") if resume else default_out)
    same_folder = resume is not None and os.path.abspath(out) == os.path.abspath(os.path.dirname(resume))
    return RunFolder(out, resuming=same_folder, force=args.force), resume


def resume_settings(args, meta: dict, names) -> None:
    """A resumed run keeps the settings its checkpoint recorded (`meta["settings"]`): each
    of `names` not given on the command line takes the recorded value, so that leaving a
    flag out never silently means its default."""
    for name, value in meta.get("settings", {}).items():
        if name in names and name not in args.given:
            setattr(args, name, value)


def refuse_distributed(args, flags) -> None:
    """Under mpiexec with more than one process only training runs: each of `flags`, given,
    is refused in one line."""
    given = [f"--{f}" for f in flags if getattr(args, f, None)]
    if given and distributed.world_size() > 1:
        raise UsageError(f"argument {given[0]}: runs in one process; launch it without mpiexec "
                         "(only training is data-parallel)")


def resume_batch_size(args, meta: dict) -> None:
    """A resumed run keeps its global batch (--batch-size times the processes it ran on)
    whatever the number of processes now: --batch-size becomes this launch's share of it."""
    total = args.batch_size * meta.get("world_size", 1)
    p = distributed.world_size()
    if total % p:
        raise UsageError(f"--resume: the run's global batch of {total} examples does not split over {p} "
                         f"processes; launch a number of processes that divides {total}")
    args.batch_size = total // p


def describe_batch(batch_size: int) -> str:
    """'32', or '2 x 32 = 64' in a distributed run: processes x batch per process = global."""
    p = distributed.world_size()
    return str(batch_size) if p == 1 else f"{p} x {batch_size} = {p * batch_size}"


def configure(device, seed: int) -> None:
    """Join the data-parallel process group when launched by mpiexec (`distributed.init`),
    then apply `--device` (or $NANOAR_DEVICE) and the process settings (`nanoar.configure`)."""
    distributed.init(device)
    try:
        backend.configure(device, seed=seed)
    except ValueError as e:
        raise UsageError(f"$NANOAR_DEVICE: {e}") from None


def output_folder(path: str) -> str:
    """`path` as the folder a command writes to (--out): made if need be, refused in one
    line if it is a file or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"argument --out: {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use --out {path}: {e.strerror}; choose a folder you can write to") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"cannot use --out {path}: permission denied; choose a folder you can write to")
    return path


class RunFolder:
    """The folder of one run (`last.npz`, `best.npz`, `log.jsonl`), held for the run's life:

        with RunFolder(out, resuming=False, force=args.force) as run:
            ...                 # load data, build the model: the folder is already ours
            run.begin()         # a forced new run replaces the old one's files here
            train(..., run, ...)

    - A path that is a file, or a folder that cannot be created or written, is refused.
    - An exclusive lock (`.lock`, flock) means a second run on the same folder fails at once.
    - Temporary files of saves that a killed process left behind are removed.
    - A new run (not resuming) refuses a folder that holds another run's checkpoints or log,
      unless `force`: then `begin` removes them. A resumed run appends to the log.
    - In a distributed run only rank 0 holds the folder; on the other ranks it is inert (no
      lock, no checks, a log that writes nothing), and they save nothing.
    """

    NAMES = ("last.npz", "best.npz", "log.jsonl")

    def __init__(self, path: str, resuming: bool, force: bool):
        self.path = path
        self.last, self.best, self.log_path = (os.path.join(path, n) for n in self.NAMES)
        self.log = JsonLog(self.log_path if distributed.is_main() else None)
        self._lock, self._replace = None, []
        if not distributed.is_main():
            return
        output_folder(path)
        try:
            self._lock = open(os.path.join(path, ".lock"), "a+")
        except OSError as e:
            raise UserError(f"cannot use --out {path}: {e.strerror}; choose a folder you can write to") from None
        try:
            import fcntl  # noqa: PLC0415  (POSIX only; elsewhere the folder is not locked)

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self._lock.close()
            raise UserError(f"another run is using {path} right now; wait for it to end or choose another --out") from None
        for name in os.listdir(path):
            if name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in self.NAMES):
                os.remove(os.path.join(path, name))
        held = [n for n in self.NAMES if os.path.exists(os.path.join(path, n))]
        if held and not resuming and not force:
            self.close()
            raise UsageError(f"argument --out: {path} already holds a run ({', '.join(held)}); continue it with "
                             "--resume, or replace it with --force")
        self._replace = held if not resuming else []

    def begin(self) -> None:
        """Training starts: a forced new run's predecessor goes now, not before everything
        was checked."""
        for name in self._replace:
            os.remove(os.path.join(self.path, name))
        self._replace = []

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def checkpoint_script(meta: dict) -> str:
    """The script that wrote a run checkpoint: 'train_mnist' or 'train_chars'."""
    return meta.get("script") or ("train_chars" if "vocab" in meta else "train_mnist")


def load_run(path, script: str | None = None, optimizer_factory=None):
    """Rebuild the model of a run checkpoint on the current device.

    Returns (model, optimizer or None, meta); the optimiser is made by
    `optimizer_factory(model.parameters())` and given its saved state. The metadata are
    checked before anything is built: a checkpoint of another script (`script`: the one
    asking) or one whose config or arrays do not make its model raises CheckpointError.
    """
    try:
        arrays, meta = load_checkpoint(path)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    name, config = meta.get("model"), meta.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: a nanoar checkpoint, but not one of a training run (no model in its metadata)")
    owner = checkpoint_script(meta)
    if script is not None and owner != script:
        raise CheckpointError(f"{path} is a {owner}.py {name} checkpoint: use it with python {owner}.py")
    try:
        model = build_model(name, config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not build a {name} model ({e})") from None
    try:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        model.load_training_state(meta.get("model_state") or {})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its arrays do not fit its {name} config ({e})") from None
    optimizer = None
    if optimizer_factory is not None:
        optimizer = optimizer_factory(model.parameters())
        if "optim" in meta:
            state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
            try:
                optimizer.load_state_dict({**meta["optim"], **state})
            except (KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: its optimiser state does not fit its model ({e})") from None
    return model, optimizer, meta


# ----------------------------------------------------------------------------- evaluation
def example_nll(model, x, batch_size: int | None = None, desc: str = "", quiet: bool = True, y=None,
                observed=None) -> np.ndarray:
    """-log p(x) in nats for each example of the host array x (N, *event_shape), in batches
    of `batch_size` (default the model's eval batch size), with no graph: float64 (N,).
    y: host labels (N,) or one label, for a conditional model (-log p(x | y)); observed: host
    masks (N, *event_shape) of a completion (-log p(x_U | x_O)). In a distributed run each
    rank scores its `distributed.shard_range` of the examples and all get the whole array."""
    batch_size = batch_size or model.eval_batch_size
    n = len(x)
    lo, hi = distributed.shard_range(n)
    out = np.empty(hi - lo, np.float64)
    bar = progress(total=hi - lo, desc=desc, disable=quiet)
    with no_grad():
        for i in range(lo, hi, batch_size):
            j = min(i + batch_size, hi)
            batch = backend.to_device(np.ascontiguousarray(x[i:j]).reshape(-1, *model.event_shape))
            part = {}
            if y is not None:
                part["y"] = y if np.ndim(y) == 0 else y[i:j]
            if observed is not None:
                part["observed"] = observed[i:j]
            out[i - lo:j - lo] = -backend.to_numpy(model.log_prob(batch, **part).data).astype(np.float64)
            bar.update(len(batch))
    bar.close()
    return distributed.all_gather_rows(out, n)


# ----------------------------------------------------------------------------- batch sources
# A batch source gives host arrays, one batch per `next()`, and `state()`: JSON from which
# the same source continues exactly (position and random state), stored in checkpoints.
# `carry` is the state a stateful model passes from one batch to the next (None otherwise);
# `unit` names what the progress bar counts: examples, or ids for text. `batch_size` is the
# global batch: in a distributed run every rank draws all of it, from the same random state,
# and keeps its own rows (`distributed.shard`), so the batches are those of one process.
class EpochBatches:
    """Shuffled batches of a data set, epoch after epoch: `data.train_batches(size, rng)` is
    one epoch's iterator; `steps_per_epoch` may cut epochs short; each batch is reshaped to
    (B, *shape) (the model's event shape) and, with `perturb`, has that fraction of its
    values randomised. With `labels`, a batch is (x, y): the images and their classes, for
    a class-conditional model."""

    carry, unit = None, "examples"

    def __init__(self, data, batch_size: int, steps_per_epoch: int, shape: tuple, saved: dict | None = None,
                 seed: int = 0, perturb: float = 0.0, labels: bool = False):
        self.data, self.batch_size, self.steps_per_epoch, self.shape = data, batch_size, steps_per_epoch, shape
        self.perturb = perturb   # > 0: a background model's inputs (`datasets.perturb_pixels`)
        self.labels = labels
        saved = saved or {"epoch": 0, "batch": 0, "rng": rng_state(np.random.default_rng(seed))}
        self.epoch = saved["epoch"]
        self._start_epoch(rng_from_state(saved["rng"]))
        for _ in range(saved["batch"]):  # replay the generator to where the run stood
            self.next()

    def _start_epoch(self, rng) -> None:
        self.rng, self.rng_at_start, self.batch = rng, rng_state(rng), 0
        self._batches = self.data.train_batches(self.batch_size, rng, with_labels=self.labels)

    def next(self):
        if self.batch == self.steps_per_epoch:
            self.epoch += 1
            self._start_epoch(self.rng)
        self.batch += 1
        x, y = next(self._batches) if self.labels else (next(self._batches), None)
        if self.perturb:  # drawn from the epoch's generator, so a resumed run replays it
            x = perturb_pixels(x, self.perturb, self.rng)
        x = x.reshape(len(x), *self.shape)
        return distributed.shard(x if y is None else (x, y.astype(np.int64)))

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
        return distributed.shard(get_windows(self.ids, self.batch_size, self.length - 1, self.rng))  # (B, length)

    def state(self) -> dict:
        return {"rng": rng_state(self.rng)}


class TextStreams:
    """Truncated backpropagation through time: `batch_size` read heads spread evenly over
    the text, each moving on by `length` ids per batch, while the model carries its state
    (`carry`) from one chunk to the next. When a head would run off its share of the text,
    every head restarts, with a fresh state. In a distributed run a rank reads and carries
    its own heads' rows; `state()` gathers all of them."""

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
                self.carry = _map_rows(distributed.shard, _from_lists(template, saved["streams"]["state"]))

    def next(self):
        if self.pos[0] + self.length > self.starts[0] + self.span:
            self.pos, self.carry = self.starts.copy(), None
        x = np.stack([self.ids[p:p + self.length] for p in self.pos])
        self.pos = self.pos + self.length
        return distributed.shard(x)

    def state(self) -> dict:
        carry = self.carry
        if carry is not None and distributed.world_size() > 1:   # every rank's heads, in order
            carry = _join_rows(distributed.all_gather_object(_map_rows(backend.to_numpy, carry)))
        return {"streams": {"pos": self.pos.tolist(), "state": None if carry is None else _to_lists(carry)}}


def _map_rows(f, state):
    """f applied to each array of a nested tuple (a carried state)."""
    if isinstance(state, tuple):
        parts = [_map_rows(f, s) for s in state]
        return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
    return f(state)


def _join_rows(states: list):
    """Carried states (nested tuples of host arrays), one per rank, joined row-wise in rank order."""
    first = states[0]
    if isinstance(first, tuple):
        parts = [_join_rows([s[i] for s in states]) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)
    return np.concatenate(states)


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
def train(model, optimizer, batches, run: RunFolder, *, max_steps: int, eval_every: int, evaluate, clip: float,
          meta: dict, best_valid=None, best_path=None, lr_at=None, quiet: bool = False) -> str:
    """Train until the optimiser has taken `max_steps` steps; returns the path of the best
    checkpoint (`run.best` once this run saved one, else `best_path`, a resumed run's).

    evaluate(train_loss, seconds) -> (validation loss, record to log, line to print): called
    every `eval_every` steps and after the last one, with the mean training loss since the
    previous call; the line gets a " *" when validation improved. `meta` goes into every
    checkpoint (with the loop's state under "loop"); lr_at(step) -> the learning rate of
    that step, if given. Ctrl-C or SIGTERM: the step finishes, `last.npz` is saved, and
    `Stopped` is raised (the scripts exit with 130 or 143).

    Distributed (`distributed.world_size()` > 1): the ranks start from rank 0's parameters,
    and each step averages the gradients, the loss and the stop flag over the ranks in one
    all-reduce, so every rank clips, updates and stops alike; rank 0 alone saves and logs.
    """
    def save(path):
        loop = {"best_valid": best_valid, **batches.state()}   # on every rank: it may gather
        if not distributed.is_main():
            return
        try:
            save_run(path, model, optimizer, **meta, loop=loop)
        except OSError as e:
            raise UserError(f"could not save {path}: {e.strerror}; the previous copy, if any, is kept") from None

    distributed.broadcast_parameters(optimizer)
    t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
    bar = progress(total=max_steps, desc=type(model).__name__, disable=quiet)
    bar.update(optimizer.step_count)
    with StopRequested() as stop:
        while optimizer.step_count < max_steps:
            if lr_at is not None:
                optimizer.lr = lr_at(optimizer.step_count)
            batch = batches.next()
            x, y = batch if isinstance(batch, tuple) else (batch, None)   # y: the labels, for a conditional model
            loss, batches.carry = model.training_loss(backend.to_device(x), batches.carry,
                                                      y=None if y is None else backend.to_device(y))
            optimizer.zero_grad()
            loss.backward()
            value, stopping = loss.item(), stop.signum
            if distributed.world_size() > 1:   # the mean gradient, loss and stop flag of all ranks
                value, any_stop = distributed.all_reduce_mean(optimizer, value, float(stopping is not None))
                stopping = stopping or (signal.SIGTERM if any_stop else None)
            check_finite(value, optimizer.step_count + 1)
            clip_grad_norm(optimizer.params, clip)
            optimizer.step()
            step = optimizer.step_count
            done = (len(x) if batches.unit == "examples" else x.size) * distributed.world_size()
            loss_sum, n_loss, seen = loss_sum + value, n_loss + 1, seen + done
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_sum / n_loss:.3f} | {seen / (time.perf_counter() - t0):,.0f} {batches.unit}/s")
            if step % eval_every == 0 or step == max_steps:
                bar.clear()
                valid, record, line = evaluate(loss_sum / n_loss, time.perf_counter() - t0)
                improved = best_valid is None or valid < best_valid
                best_valid = valid if improved else best_valid
                print(line + (" *" if improved else ""), flush=True)
                run.log.write(**record)
                loss_sum, n_loss = 0.0, 0
                save(run.last)
                if improved:
                    save(run.best)
                    best_path = run.best
            if stopping is not None:
                bar.close()
                save(run.last)
                distributed.barrier()
                print(f"saved {run.last} at step {step}; continue with --resume")
                raise Stopped(stopping)
    bar.close()
    distributed.barrier()   # rank 0's last checkpoints are on disk before any rank reads them
    return best_path


class StopRequested:
    """Ctrl-C (SIGINT) or SIGTERM sets `signum` instead of killing the process mid-step; the
    loop then saves and stops. A second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
              "(send it again to abort at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class JsonLog:
    """Append one JSON object per line (an evaluation, a test result) to a file."""

    def __init__(self, path):
        self.path = path   # None: write nothing (a distributed run's ranks other than 0)

    def write(self, **record) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def progress(iterable=None, total=None, desc="", disable=False):
    """A tqdm progress bar (to stderr); plain iteration when tqdm is missing."""
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return _Plain(iterable, total)
    disable = disable or not distributed.is_main()
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
