"""The one module that knows NumPy from CuPy.

Everything else in nanoar asks this module for the array module (`xp()`), the default
float dtype, and the seeded random generator. Arrays never move between host and device
behind the user's back: `to_numpy` and `to_device` are the explicit ways across.

    import nanoar
    nanoar.set_device("cuda")          # or NANOAR_DEVICE=cuda, or --device cuda in scripts
    nanoar.set_default_dtype("float64")  # for gradient checks; float32 is the default
    nanoar.manual_seed(0)              # seeds the generator of the current device

Importing nanoar changes nothing in the process. `configure()` is the one explicit call that
applies the process-wide settings (the device, from an argument or $NANOAR_DEVICE, and the
allocator); the scripts and the benchmark make it first.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

_DEVICES = ("cpu", "cuda")

_state = {
    "device": "cpu",
    "xp": np,
    "dtype": np.dtype(np.float32),
    "rng": np.random.default_rng(0),
    "host_rng": np.random.default_rng(0),
}


class DeviceError(RuntimeError):
    """The requested device cannot be used (CuPy missing, no GPU) or arrays were mixed."""


def _import_cupy():
    try:
        import cupy  # noqa: PLC0415  (only this module may import CuPy)
    except ImportError as e:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed. Install the wheel that matches "
            "your CUDA toolkit, e.g. `pip install cupy-cuda12x` (CUDA 12.x) or "
            "`pip install cupy-cuda13x` (CUDA 13.x); see README.md."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise DeviceError(f"device 'cuda': CuPy is installed but no usable GPU was found ({e}).") from e
    if n < 1:
        raise DeviceError("device 'cuda': CuPy is installed but no GPU was found.")
    return cupy


def set_device(device: str, seed: int | None = None) -> None:
    """Select 'cpu' (NumPy) or 'cuda' (CuPy). Never falls back silently.

    Tensors created before the switch keep their arrays; mixing them with new ones raises.
    """
    if device not in _DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {_DEVICES}")
    xp = np if device == "cpu" else _import_cupy()
    _state["device"] = device
    _state["xp"] = xp
    manual_seed(0 if seed is None else seed)


def get_device() -> str:
    return _state["device"]


def xp():
    """The array module of the current device: `numpy` or `cupy`."""
    return _state["xp"]


def array_module(a):
    """The array module an array belongs to (numpy for anything that is not a CuPy array)."""
    return sys.modules["cupy"] if is_device_array(a) else np


def is_device_array(a) -> bool:
    """True for a CuPy array. Never imports CuPy: if it is not imported, nothing is its array."""
    cupy_ndarray = getattr(sys.modules.get("cupy"), "ndarray", None)
    return cupy_ndarray is not None and isinstance(a, cupy_ndarray)


def check_same_device(a, where: str = "") -> None:
    """Raise if array `a` does not live on the current device (no implicit copies)."""
    on_gpu = is_device_array(a)
    if on_gpu != (_state["device"] == "cuda"):
        have = "a CuPy (GPU) array" if on_gpu else "a NumPy (host) array"
        raise DeviceError(
            f"{where}got {have} but the current device is {_state['device']!r}; "
            "move it explicitly with nanoar.to_device(...) or nanoar.to_numpy(...)"
        )


def to_numpy(a) -> np.ndarray:
    """A copy of an array on the host, as a NumPy array (never a view of it)."""
    if is_device_array(a):
        return a.get()
    return np.array(a, copy=True)


def to_device(a):
    """Explicit copy of a host array to the current device (no copy on 'cpu')."""
    return _state["xp"].asarray(a)


# ----------------------------------------------------------------------------- dtype
def set_default_dtype(dtype) -> None:
    """float32 (default, fast) or float64 (for gradient checks and exact-sum tests)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _state["dtype"] = dtype


def default_dtype() -> np.dtype:
    return _state["dtype"]


class default_dtype_as:
    """Context manager: `with default_dtype_as("float64"): ...`."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __enter__(self):
        self.old = _state["dtype"]
        set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        _state["dtype"] = self.old


# ----------------------------------------------------------------------------- random
def manual_seed(seed: int) -> None:
    """Seed the backend's generators: the device one and the host one used for init."""
    _state["rng"] = _state["xp"].random.default_rng(seed)
    _state["host_rng"] = np.random.default_rng(seed)


def host_rng() -> np.random.Generator:
    """The host generator that initialises parameters, so a seed gives the same weights on
    every device (they are drawn on the host and copied once, explicitly)."""
    return _state["host_rng"]


def rng():
    """The backend's generator (numpy.random.Generator or cupy.random.Generator)."""
    return _state["rng"]


def _device_generator_type():
    """cupy.random.Generator where CuPy is imported, else None (never imports CuPy)."""
    return getattr(getattr(sys.modules.get("cupy"), "random", None), "Generator", None)


def check_seed(seed, where: str = ""):
    """A seed as `make_rng` takes it: None (the backend's generator), a non-negative integer
    (numpy integers too) or a generator (numpy.random.Generator, or CuPy's); returned with
    integers as Python ints. Anything else (a bool, a float, a string) is a ValueError that
    names `seed`."""
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    gen = _device_generator_type()
    if gen is not None and isinstance(seed, gen):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)) and seed >= 0:
        return int(seed)
    raise ValueError(f"{where}seed must be None, a non-negative integer or a numpy Generator, got {seed!r}")


def make_rng(seed=None):
    """A generator on the current device for `seed` (`check_seed`): None gives the backend's
    own, an integer a fresh generator seeded with it, a generator of the current device
    itself. A numpy Generator on the 'cuda' device seeds a fresh device generator with one
    integer drawn from it (random numbers are drawn where the arrays live)."""
    seed = check_seed(seed)
    xp = _state["xp"]
    if seed is None:
        return _state["rng"]
    if isinstance(seed, int):
        return xp.random.default_rng(seed)
    if isinstance(seed, np.random.Generator) != (xp is np):
        if xp is np:
            raise DeviceError("a CuPy generator cannot draw samples on the 'cpu' device; pass an int seed "
                              "or a numpy Generator")
        return xp.random.default_rng(int(seed.integers(2**63)))
    return seed


# ----------------------------------------------------------------------------- differing calls
def scatter_add(target, index, values) -> None:
    """target[index] += values, accumulating over repeated indices, in place.

    On the CPU, rows picked by one int array (an embedding's gradient) are summed per
    distinct index with one sort and `np.add.reduceat`; `np.add.at` adds them one at a time."""
    if is_device_array(target):
        array_module(target).add.at(target, index, values)
    elif isinstance(index, np.ndarray) and index.ndim == 1 and index.size and values.ndim == target.ndim:
        index = np.where(index < 0, index + target.shape[0], index)          # -1: the last row, as in add.at
        order = np.argsort(index, kind="stable")
        ids = index[order]
        starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))   # each distinct id's first row
        target[ids[starts]] += np.add.reduceat(values[order], starts, axis=0)
    else:
        np.add.at(target, index, values)


def as_strided(a, shape, strides):
    """A strided view of `a` (read-only use only: windows overlap)."""
    if is_device_array(a):
        return _state["xp"].lib.stride_tricks.as_strided(a, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)


def prefers_few_calls() -> bool:
    """Whether fewer, larger array calls pay even at the cost of an extra pass over memory:
    True on the GPU, where every call is a kernel launch with its own host overhead; False
    on the CPU, where a call is cheap and passes over memory dominate."""
    return _state["device"] == "cuda"


def value_range(a) -> tuple:
    """(min, max) of a non-empty array as Python numbers, with one device-to-host sync on
    the GPU (for range checks: CuPy's indexing does not raise on out-of-range ids)."""
    xp = array_module(a)
    lo, hi = xp.stack((a.min(), a.max())).tolist()
    return lo, hi


# ----------------------------------------------------------------------------- process settings
def keep_freed_host_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large temporaries every step; by default
    glibc maps blocks over a few MiB afresh and unmaps them on free, so every step pays page
    faults to get zeroed pages back. Raising the mmap threshold to glibc's maximum (32 MiB)
    and the trim threshold to 2 GiB keeps them, at the cost of a resident size that stays
    near its peak. Returns whether it applied (only on Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 2 << 30))


def configure(device: str | None = None, seed: int = 0) -> str:
    """Apply the process-wide settings that a program (not a library import) should choose.

    - the device: `device` if given, else $NANOAR_DEVICE, else 'cpu' (`set_device`, seeded
      with `seed`);
    - the host allocator keeps freed memory (`keep_freed_host_memory`) unless
      NANOAR_KEEP_FREED_MEMORY=0.

    Returns the device chosen. Raises DeviceError when CUDA is asked for and unusable.
    """
    if os.environ.get("NANOAR_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_host_memory()
    device = device or os.environ.get("NANOAR_DEVICE") or "cpu"
    set_device(device, seed=seed)
    return device
