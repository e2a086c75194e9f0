"""Checkpoints: named NumPy arrays plus JSON metadata in one .npz file.

Format: a standard ``.npz`` (a zip of ``.npy`` files, readable by
``np.load``) holding each array under its name, plus the reserved key
``META_KEY`` whose value is a uint8 array of UTF-8 JSON::

    {"nanoar_checkpoint": 1, "meta": <the caller's meta dict>}

Why this shape:

* No pickle anywhere: ``load_checkpoint`` uses ``np.load(allow_pickle=False)``,
  so opening a checkpoint from someone else cannot run code.
* Metadata (config, step, vocabulary, RNG state...) is JSON, readable with
  nothing but the standard library.
* Saving is atomic (``nanoar.datasets.download.atomic_write``): the file is
  written under a temporary name in the same folder, flushed and fsynced,
  then renamed over the target with ``os.replace``.  A crash or a full disk
  mid-save leaves the previous checkpoint untouched (plus, at worst, a stray
  ``.tmp`` file).

Arrays must already be NumPy arrays; converting from CuPy (``.get()`` or
``cupy.asnumpy``) is the caller's explicit choice, so a device-to-host copy
never happens by accident.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from .datasets.download import atomic_write

__all__ = [
    "META_KEY",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "rng_from_state",
]

META_KEY = "__nanoar_meta__"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupt or is not a nanoar checkpoint; the message names the file."""


def _encode_meta(meta: Mapping[str, Any]) -> np.ndarray:
    try:
        text = json.dumps({"nanoar_checkpoint": FORMAT_VERSION, "meta": dict(meta)})
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def save_checkpoint(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
    """Atomically write ``arrays`` and ``meta`` to the .npz file ``path``.

    Args:
        path: destination; written exactly there (no '.npz' is appended).
        arrays: name -> numpy.ndarray (any shape; numeric or bool dtype).
            Names are non-empty strings other than ``META_KEY``.
        meta: JSON-serialisable dict (tuples come back as lists).

    Raises:
        TypeError: an array is not a numpy.ndarray (e.g. a CuPy array) or has
            dtype object, or meta is not JSON-serialisable.
        ValueError: a bad array name.
    """
    path = os.fspath(path)
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name or name == META_KEY:
            raise ValueError(f"bad checkpoint array name {name!r}")
        if not isinstance(arr, np.ndarray):
            t = type(arr)
            raise TypeError(
                f"checkpoint array {name!r} is {t.__module__}.{t.__qualname__}, not numpy.ndarray; "
                "convert it on the host first (for CuPy: arr.get() or cupy.asnumpy(arr))"
            )
        if arr.dtype.hasobject:
            raise TypeError(f"checkpoint array {name!r} has dtype {arr.dtype}; object arrays need pickle")
    entries = dict(arrays)
    entries[META_KEY] = _encode_meta(meta or {})

    with atomic_write(path) as f:
        # This is what np.savez does, written out: np.savez's own keyword
        # arguments ('file', 'allow_pickle') would collide with arrays of
        # those names, and here pickling is refused outright.
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in entries.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by ``save_checkpoint``.

    Returns:
        (arrays, meta): name -> numpy.ndarray, and the meta dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, truncated, corrupt, or not a nanoar checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: a single .npy array, not a checkpoint .npz")
    try:
        with loaded:
            # Read everything now: zipfile checks each member's CRC as it is
            # read, so corruption surfaces here with the file's name, not
            # later in the middle of training.
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a nanoar checkpoint (no {META_KEY!r} entry)")
    raw = arrays.pop(META_KEY)
    try:
        wrapper = json.loads(raw.tobytes().decode("utf-8"))
        version = wrapper["nanoar_checkpoint"]
        meta = wrapper["meta"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this nanoar reads {FORMAT_VERSION}")
    return arrays, meta


# ---------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------
#
# rng.bit_generator.state is a dict.  For PCG64 (np.random.default_rng) it is
# already JSON-able: its 128-bit integers are Python ints, which json writes
# and reads back exactly.  Other bit generators keep NumPy arrays in it; those
# are stored as {"__ndarray__": [...], "dtype": "..."}.

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _to_json(x):
    if isinstance(x, dict):
        return {k: _to_json(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": x.dtype.str}
    if isinstance(x, np.integer):
        return int(x)
    return x


def _from_json(x):
    if isinstance(x, dict):
        if "__ndarray__" in x:
            return np.array(x["__ndarray__"], dtype=np.dtype(x["dtype"]))
        return {k: _from_json(v) for k, v in x.items()}
    return x


def rng_state(rng: np.random.Generator) -> dict:
    """A JSON-able snapshot of a numpy Generator's state (store it in meta)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") not in _BIT_GENERATORS:
        raise TypeError(f"unsupported bit generator {state.get('bit_generator')!r}")
    return _to_json(state)


def rng_from_state(state: Mapping) -> np.random.Generator:
    """A new Generator continuing exactly where the one given to ``rng_state`` was."""
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unsupported or missing bit generator {name!r} in RNG state")
    bit_gen = getattr(np.random, name)()
    bit_gen.state = _from_json(dict(state))
    return np.random.Generator(bit_gen)
