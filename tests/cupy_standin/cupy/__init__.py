"""A CPU stand-in for CuPy that keeps CuPy's rules, so nanoar's GPU code path runs (and is
tested) on machines without a GPU, CI included.

It is NOT a GPU and proves nothing about speed or CUDA kernels: NumPy does the arithmetic
underneath. What it does prove is that nanoar's 'cuda' path stays inside what CuPy allows:

- its arrays are their own type (`cupy.ndarray`), so `backend.is_device_array` sees them,
  and `.data` is a memory pointer, not the array, as in CuPy;
- implicit device-to-host conversion raises, exactly as CuPy does (`np.asarray(a)`,
  `np.array(a)`): only `.get()`, `cupy.asnumpy` and the scalar conversions (`float(a)`,
  `bool(a)`, `.item()`, `.tolist()`, formatting) reach the host, and each one counts as a
  synchronisation (`sync_count()`), so tests can keep them out of inner loops;
- ufuncs and operators refuse host operands (NumPy arrays, lists), as CuPy's do; other
  functions refuse NumPy arrays; only `asarray` / `array` copy host data to the device;
- reductions and integer indexing give 0-d arrays, never NumPy scalars;
- calls must fit CuPy's own signatures (`_signatures.py`, generated from CuPy 14.2 by
  `make_signatures.py`): NumPy's `indices(shape, sparse=True)` works, CuPy's does not;
- the namespace holds only names CuPy 14.2 has (NumPy's less `NOT_IN_CUPY`), ndarray
  only CuPy's methods, and `random.default_rng` gives a Generator with only CuPy's
  methods (no `choice`, `normal`, `permutation`, ...): all listed in `_signatures.py`;
- NumPy functions called on these arrays dispatch here through `__array_function__` and
  `__array_ufunc__`, as they do for CuPy arrays.

Like CuPy, integer-array indices outside their axis wrap around instead of raising.

Stricter than CuPy, on purpose: a NumPy array used as an index, or assigned into a device
array, raises (CuPy would copy it to the device behind the caller's back).

Use: put this folder (`tests/cupy_standin`) first on sys.path (or PYTHONPATH); then
`import cupy` gives this module and `nanoar.set_device("cuda")` runs on it.
"""
from __future__ import annotations

import builtins as _builtins  # the module's own `bool`, `any`, `sum`... are CuPy's
import inspect
import sys
import types

import numpy as _np

from ._signatures import FUNCTIONS, GENERATOR_METHODS, METHODS, NOT_IN_CUPY

__version__ = "14.2.0+standin"
STANDIN = True  # lets tests and scripts tell the stand-in from the real CuPy

_counts = {"syncs": 0, "calls": 0}


def sync_count() -> int:
    """How many device-to-host synchronisations have happened so far."""
    return _counts["syncs"]


def call_count() -> int:
    """How many array operations (each at least one kernel launch on a GPU) so far: a
    rough count of the launches a step pays for, not counting views and metadata."""
    return _counts["calls"]


def _sync():
    _counts["syncs"] += 1


# Host data may enter the device only through these (explicit copies).
_CREATION = frozenset({"array", "asarray", "asanyarray"})

_SCALARS = (_builtins.bool, int, float, complex, _np.generic)


class MemoryPointer:
    """What `cupy.ndarray.data` is: a pointer to device memory, not an array."""

    __module__ = "cupy.cuda.memory"

    def __init__(self, ptr):
        self.ptr = ptr


# ----------------------------------------------------------------------------- CuPy's signatures
def _signature_checker(kind, name):
    """A function that raises TypeError, as CuPy would, when a call's arguments do not fit
    CuPy's own signature of `name` (from _signatures.py); None where CuPy has none recorded."""
    params = (FUNCTIONS if kind == "function" else METHODS).get(name)
    if params is None:
        return None
    scope = {}
    exec(f"def {name}({params}): pass", scope)  # noqa: S102  (a stub with CuPy's parameters)
    sig = inspect.signature(scope[name])

    def check(args, kwargs):
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            what = f"cupy.{name}" if kind == "function" else f"cupy.ndarray.{name}"
            raise TypeError(f"{what}() does not take these arguments ({e}); CuPy's signature is ({params})") from None
    return check


# ----------------------------------------------------------------------------- wrapping
def _wrap(x):
    if isinstance(x, _np.ndarray):
        return ndarray._of(x)
    if isinstance(x, _np.generic):  # CuPy never hands back a NumPy scalar
        return ndarray._of(_np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _refuse_host(x, where):
    """Raise on any NumPy array inside x (CuPy functions do not take host arrays)."""
    if isinstance(x, _np.ndarray):
        raise TypeError(f"{where}: Unsupported type {type(x)} (a host array; copy it with cupy.asarray first)")
    if isinstance(x, (tuple, list)):
        for v in x:
            _refuse_host(v, where)
    elif isinstance(x, dict):
        for v in x.values():
            _refuse_host(v, where)


def _operand(x, where):
    """A ufunc operand: a device array or a scalar, as CuPy's ufuncs accept."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _SCALARS):
        return x
    raise TypeError(f"{where}: Unsupported type {type(x)}")


def _index(key):
    """An index for a device array: ints, slices, None, Ellipsis, lists, device arrays."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, _np.ndarray):
        raise TypeError("cupy stand-in: indexing a device array with a host (NumPy) array; "
                        "copy the index to the device first")
    return key  # ints, slices, None, Ellipsis, and lists of ints (CuPy takes those too)


def _wrapped(key, shape):
    """CuPy wraps out-of-range integer-array indices around instead of raising (its indexing
    docs); done here for keys of integer arrays, ints and slices, the ones nanoar uses."""
    items = key if isinstance(key, tuple) else (key,)
    if not _builtins.any(isinstance(k, _np.ndarray) and k.dtype.kind in "iu" for k in items) or \
            _builtins.any(k is None or k is Ellipsis or getattr(k, "dtype", None) == bool for k in items):
        return key
    items = tuple(k % shape[axis] if isinstance(k, _np.ndarray) and k.dtype.kind in "iu" and axis < len(shape)
                  else k for axis, k in enumerate(items))
    return items if isinstance(key, tuple) else items[0]


# ----------------------------------------------------------------------------- the array
class ndarray:
    """A device array: NumPy storage, CuPy rules."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    @classmethod
    def _of(cls, a):
        self = object.__new__(cls)
        self._a = a
        return self

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = _np.empty(shape, dtype=dtype, order=order)

    # --- the only ways to the host
    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync()
        if out is not None:
            out[...] = self._a
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"set: expected a numpy.ndarray, got {type(arr)}")
        self._a[...] = arr

    def item(self, *args):
        _sync()
        return self._a.item(*args)

    def tolist(self):
        _sync()
        return self._a.tolist()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __bool__(self):
        _sync()
        return _builtins.bool(self._a)

    def __float__(self):
        _sync()
        return float(self._a)

    def __int__(self):
        _sync()
        return int(self._a)

    def __complex__(self):
        _sync()
        return complex(self._a)

    def __format__(self, spec):
        _sync()
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        _sync()
        return repr(self._a)

    def __str__(self):
        _sync()
        return str(self._a)

    # --- attributes
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._of(self._a.T))
    mT = property(lambda self: ndarray._of(_np.swapaxes(self._a, -1, -2)))
    real = property(lambda self: ndarray._of(self._a.real))
    imag = property(lambda self: ndarray._of(self._a.imag))
    base = property(lambda self: None if self._a.base is None else _wrap(self._a.base))
    data = property(lambda self: MemoryPointer(self._a.ctypes.data))
    device = property(lambda self: cuda.Device(0))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray._of(self._a[i]) for i in range(len(self._a)))

    def __getitem__(self, key):
        if _builtins.any(isinstance(k, (ndarray, list)) for k in (key if isinstance(key, tuple) else (key,))):
            _counts["calls"] += 1  # a gather; basic slicing is a view, no kernel
        return _wrap(self._a[_wrapped(_index(key), self._a.shape)])

    def __setitem__(self, key, value):
        _counts["calls"] += 1
        if isinstance(value, _np.ndarray):
            raise TypeError("cupy stand-in: assigning a host (NumPy) array into a device array; "
                            "copy it with cupy.asarray first")
        self._a[_index(key)] = _operand(value, "__setitem__") if not isinstance(value, (list, tuple)) else value

    def __copy__(self):
        return ndarray._of(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._of(self._a.copy())

    # --- NumPy's protocols: np.f(device array) runs the CuPy function, as with CuPy
    def __array_ufunc__(self, uf, method, *inputs, **kwargs):
        mine = _module_attr(uf.__name__)
        if not isinstance(mine, _Ufunc):
            return NotImplemented
        return getattr(mine, method)(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        if func.__module__ != "numpy" or func.__name__ in NOT_IN_CUPY:
            return NotImplemented
        return _module_attr(func.__name__)(*args, **kwargs)


# Methods that give views (no kernel; `reshape` and `ravel` copy only non-contiguous arrays)
_VIEWS = frozenset({"reshape", "ravel", "transpose", "swapaxes", "squeeze", "view"})


def _method(name, syncs=False):
    check = _signature_checker("method", name)
    views = name in _VIEWS

    def m(self, *args, **kwargs):
        _counts["calls"] += not views
        _refuse_host((args, kwargs), f"ndarray.{name}")
        if check:
            check(args, kwargs)
        if syncs:
            _sync()
            return getattr(self._a, name)(*_unwrap(args), **_unwrap(kwargs))
        return _wrap(getattr(self._a, name)(*_unwrap(args), **_unwrap(kwargs)))
    m.__name__ = name
    return m


# The rest of cupy.ndarray's methods, forwarded to NumPy's; those that copy to the host sync.
for _name in METHODS:
    if hasattr(_np.ndarray, _name) and not hasattr(ndarray, _name):
        setattr(ndarray, _name, _method(_name, syncs=_name in ("tobytes", "tofile", "dump", "dumps")))


def _binary(name):
    def op(self, other):
        _counts["calls"] += 1
        return _wrap(getattr(self._a, name)(_operand(other, name)))
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        _counts["calls"] += 1
        getattr(self._a, name)(_operand(other, name))
        return self
    op.__name__ = name
    return op


for _name in ("add sub mul truediv floordiv mod pow matmul and or xor lshift rshift divmod").split():
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__"))
    if _name != "divmod":
        setattr(ndarray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
def _unary(name):
    def op(self):
        _counts["calls"] += 1
        return ndarray._of(getattr(self._a, name)())
    op.__name__ = name
    return op


for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _unary(f"__{_name}__"))


# ----------------------------------------------------------------------------- functions
class _Ufunc:
    """A CuPy ufunc: operands are device arrays or scalars, never host arrays or lists."""

    def __init__(self, np_ufunc):
        self._u = np_ufunc
        self.name = self.__name__ = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def _call(self, method, args, kwargs):
        where = f"cupy.{self.name}.{method}" if method != "__call__" else f"cupy.{self.name}"
        _counts["calls"] += 1
        ops = [_operand(a, where) for a in args]
        _refuse_host(kwargs, where)
        if method == "__call__" and set(kwargs) - {"out", "dtype", "casting"}:
            raise TypeError(f"{where}: Wrong arguments {sorted(set(kwargs) - {'out', 'dtype', 'casting'})} "
                            "(CuPy's ufuncs take out, dtype and casting)")
        f = self._u if method == "__call__" else getattr(self._u, method)
        return _wrap(f(*ops, **_unwrap(kwargs)))

    def __call__(self, *args, **kwargs):
        return self._call("__call__", args, kwargs)

    def reduce(self, *args, **kwargs):
        return self._call("reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return self._call("accumulate", args, kwargs)

    def outer(self, *args, **kwargs):
        return self._call("outer", args, kwargs)

    def at(self, a, indices, b=None):
        _counts["calls"] += 1
        if not isinstance(a, ndarray):
            raise TypeError(f"cupy.{self.name}.at: Unsupported type {type(a)}")
        args = (_index(indices),) if b is None else (_index(indices), _operand(b, f"cupy.{self.name}.at"))
        self._u.at(a._a, *args)


def _function(name, f):
    check = _signature_checker("function", name)

    def wrapper(*args, **kwargs):
        _counts["calls"] += 1
        if check:
            check(args, kwargs)
        if name not in _CREATION:
            _refuse_host((args, kwargs), f"cupy.{name}")
            return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))
        # host data is copied to the device; device data is used as it is, as CuPy does
        (obj, *rest) = args
        copy = not isinstance(obj, ndarray) or name == "array"
        a = _np.array(_unwrap(obj), *rest, copy=True, **kwargs) if copy else _np.asarray(obj._a, *rest, **kwargs)
        return ndarray._of(a)
    wrapper.__name__ = name
    return wrapper


def _module_attr(name):
    return getattr(sys.modules[__name__], name)


def _export():
    mod = sys.modules[__name__]
    for name in dir(_np):
        if name.startswith("_") or name in NOT_IN_CUPY or name in ("ndarray", "random", "lib", "linalg",
                                                                       "fft", "testing", "typing", "polynomial",
                                                                       "exceptions", "version", "ufunc"):
            continue
        obj = getattr(_np, name)
        if isinstance(obj, _np.ufunc):
            setattr(mod, name, _Ufunc(obj))
        elif isinstance(obj, type) or isinstance(obj, types.ModuleType) or not callable(obj):
            setattr(mod, name, obj)  # dtypes, constants (inf, newaxis, pi, ...)
        else:
            setattr(mod, name, _function(name, obj))


_export()
ufunc = _Ufunc


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """The explicit device-to-host copy (host arrays are returned as they are)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if _builtins.any(isinstance(a, ndarray) for a in args) else _np


# ----------------------------------------------------------------------------- submodules
def _submodule(name, **attrs):
    m = types.ModuleType(f"{__name__}.{name}")
    m.__dict__.update(attrs)
    sys.modules[m.__name__] = m
    return m


class Generator:
    """cupy.random.Generator: only the methods CuPy 14.2 has (no choice/normal/permutation)."""

    def __init__(self, seed=None):
        self._g = _np.random.default_rng(seed)


def _draw(name):
    def m(self, *args, **kwargs):
        _refuse_host((args, kwargs), f"Generator.{name}")
        return _wrap(getattr(self._g, name)(*_unwrap(args), **_unwrap(kwargs)))
    m.__name__ = name
    return m


for _name in GENERATOR_METHODS:
    setattr(Generator, _name, _draw(_name))

random = _submodule("random", Generator=Generator, default_rng=lambda seed=None: Generator(seed))


def _as_strided(x, shape=None, strides=None):
    if not isinstance(x, ndarray):
        raise TypeError(f"as_strided: Unsupported type {type(x)}")
    return ndarray._of(_np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides))


lib = _submodule("lib")
lib.stride_tricks = _submodule("lib.stride_tricks", as_strided=_as_strided)


class _Device:
    def __init__(self, device=0):
        self.id = device

    def synchronize(self):
        _sync()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


cuda = _submodule(
    "cuda",
    Device=_Device,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 12000,
                                  getDeviceProperties=lambda i: {"name": b"CuPy stand-in (NumPy on the CPU)"}),
)


class _MemoryPool:
    def total_bytes(self):
        return 0  # the stand-in has no device memory

    def used_bytes(self):
        return 0


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool
cuda.memory = _submodule("cuda.memory", MemoryPointer=MemoryPointer)
