"""Tensor, the autograd graph, and the primitive operations.

A `Tensor` wraps an array (NumPy or CuPy, see `backend`) and remembers the op that made it.
Each op below is one function: the forward computes the output array, and a nested
`backward(gy)` maps the output gradient `gy` to one gradient per input (or None). The engine
(`Tensor.backward`) does the shared work once for every op: it walks the graph in reverse
topological order without recursion, sums broadcast gradients back to each input's shape
(`_sum_to`), casts them to the input's dtype, accumulates into leaf `.grad`, and frees the
graph (saved arrays included) as it goes, so a training loop does not grow in memory.

Writing a new op: compute the output array, define `backward(gy)` returning one gradient
array per parent (None where there is none), and hand both to `record_op`:

    def square(x: Tensor) -> Tensor:  # y = x^2, dy/dx = 2x
        return record_op(x.data * x.data, (x,), lambda gy: (2.0 * x.data * gy,), "square")

`record_op` records the node only when grad mode is on and a parent requires grad, and the
engine handles broadcasting, dtypes and accumulation, so a backward is the math alone. Every
op below and every fused kernel in `nanoar.kernels` is written this way; `gradcheck` tests
one against central differences.

Conventions: `x`, `y` are input/output arrays, `gy`, `gx` their gradients; shapes in
docstrings as `x: (N, C, H, W) -> y: (N, O, H, W)`.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from . import backend

_grad_enabled = True
_detect_anomaly = False


class no_grad:
    """Context manager: ops build no graph inside it (evaluation, sampling)."""

    def __enter__(self):
        global _grad_enabled
        self.prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self.prev


class detect_anomaly:
    """Context manager: raise FloatingPointError at the first op whose forward makes a NaN.

    Off by default because the check costs one pass over every output.
    """

    def __enter__(self):
        global _detect_anomaly
        self.prev, _detect_anomaly = _detect_anomaly, True

    def __exit__(self, *exc):
        global _detect_anomaly
        _detect_anomaly = self.prev


def is_grad_enabled() -> bool:
    return _grad_enabled


def _to_float_array(data, dtype=None):
    """Turn user data into a float array on the current device, or say why not."""
    xp = backend.xp()
    dtype = backend.default_dtype() if dtype is None else np.dtype(dtype)
    if hasattr(data, "shape") and hasattr(data, "dtype") and not isinstance(data, np.generic):  # an ndarray of either kind
        backend.check_same_device(data, "Tensor(): ")
        kind = data.dtype.kind
        if kind not in "biuf":
            raise TypeError(f"Tensor(): cannot make a float tensor from an array of dtype {data.dtype}")
        # Integer/boolean data (pixels, one-hots) is converted, floats cast to the chosen dtype.
        return data if data.dtype == dtype else data.astype(dtype)
    try:
        arr = np.asarray(data)
    except Exception as e:
        raise TypeError(f"Tensor(): cannot convert {type(data).__name__} to an array: {e}") from e
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"Tensor(): cannot make a float tensor from {type(data).__name__} of dtype {arr.dtype}")
    return xp.asarray(arr, dtype=dtype)


def to_numpy(x) -> np.ndarray:
    """A host copy of an array or Tensor, as a NumPy array (never a view of it)."""
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x)


def to_device(x):
    """An explicit copy of a host array (or a Tensor's array) to the current device."""
    return backend.to_device(x.data if isinstance(x, Tensor) else x)


class Tensor:
    """An array with an optional gradient.

    `Tensor(data, requires_grad=False, dtype=None)`: `data` is an array of the current
    device, a nested list or a number; it becomes the default float dtype (float32 unless
    `backend.set_default_dtype('float64')`) unless `dtype` is given. Integer and boolean data
    are converted; complex, strings and objects are refused.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__, never NumPy

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _to_float_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = "leaf"

    # -------------------------------------------------------------- plain attributes
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, op={self._op}{grad})"

    def numpy(self) -> np.ndarray:
        """An explicit host copy of the data (a device-to-host copy on 'cuda')."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """The single value as a Python float (synchronises the GPU: keep out of inner loops)."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return float(self.data.reshape(()))

    def detach(self) -> "Tensor":
        t = Tensor.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._parents, t._backward, t._op = self.data, None, False, (), None, "leaf"
        return t

    def zero_grad(self):
        self.grad = None

    # -------------------------------------------------------------- the engine
    def backward(self, grad=None, retain_graph: bool = False):
        """Backpropagate from this tensor; leaves with requires_grad accumulate `.grad`.

        `grad` is the upstream gradient (same shape as this tensor); it may be omitted only
        for a tensor of one element. The graph is freed afterwards unless `retain_graph`.
        """
        xp = backend.array_module(self.data)
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no input had requires_grad=True)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs an explicit "
                    "gradient of the same shape (or reduce it to a scalar first, e.g. .sum())"
                )
            grad = xp.ones_like(self.data)
            user_grad = False
        else:
            user_grad = True
            grad = grad.data if isinstance(grad, Tensor) else grad
            backend.check_same_device(grad, "backward(): ")
            grad = xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): gradient of shape {grad.shape} for a tensor of shape {self.shape}")

        grads = {id(self): grad}
        owned = set()  # ids of nodes whose gradient array we allocated, so += is safe
        held = {id(grad): 2 if user_grad else 1}  # array id -> entries of `grads` holding it
        for node in reversed(_topological_order(self)):
            gy = grads.pop(id(node), None)
            if gy is None:
                continue
            held[id(gy)] -= 1
            if node._backward is None:  # a leaf
                # .grad must be an array nothing else can reach (the caller's gradient, another
                # leaf's .grad, a view of an activation, a read-only broadcast), so in-place
                # updates of it are safe. A fresh, contiguous array that no other entry holds
                # is already that; anything else is copied (a pass over it we avoid when we can).
                private = id(node) in owned or (gy.base is None and held[id(gy)] == 0)
                if not private or not gy.flags.c_contiguous:
                    gy = xp.array(gy, order="C")
                node.grad = gy if node.grad is None else node.grad + gy
                continue
            if node._backward is _freed:
                raise RuntimeError(f"backward through the graph of '{node._op}' a second time; "
                                   "pass retain_graph=True to the first backward()")
            gxs = node._backward(gy)
            for parent, gx in zip(node._parents, gxs):
                if gx is None or not parent.requires_grad:
                    continue
                if gx.shape != parent.data.shape:
                    gx = _sum_to(gx, parent.data.shape, node._op)
                if gx.dtype != parent.data.dtype:
                    gx = gx.astype(parent.data.dtype)
                key = id(parent)
                if key not in grads:
                    grads[key] = gx
                    held[id(gx)] = held.get(id(gx), 0) + 1
                elif key in owned:
                    grads[key] += gx
                else:
                    held[id(grads[key])] -= 1
                    grads[key] = grads[key] + gx
                    held[id(grads[key])] = 1
                    owned.add(key)
            if not retain_graph:
                node._parents, node._backward = (), _freed

    # -------------------------------------------------------------- operators
    def __add__(self, other): return add(self, other)
    def __radd__(self, other): return add(other, self)
    def __sub__(self, other): return sub(self, other)
    def __rsub__(self, other): return sub(other, self)
    def __mul__(self, other): return mul(self, other)
    def __rmul__(self, other): return mul(other, self)
    def __truediv__(self, other): return div(self, other)
    def __rtruediv__(self, other): return div(other, self)
    def __neg__(self): return neg(self)
    def __pow__(self, p): return pow(self, p)
    def __rpow__(self, base): return pow(base, self)
    def __matmul__(self, other): return matmul(self, other)
    def __rmatmul__(self, other): return matmul(other, self)
    def __getitem__(self, index): return getitem(self, index)

    def exp(self): return exp(self)
    def log(self): return log(self)
    def sqrt(self): return sqrt(self)
    def tanh(self): return tanh(self)
    def sigmoid(self): return sigmoid(self)
    def relu(self): return relu(self)
    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, *axes): return transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))
    permute = transpose

    @property
    def T(self): return transpose(self, None)


def _freed(gy):  # marker for a node whose graph backward() already freed
    raise AssertionError("unreachable")


def _topological_order(root: Tensor) -> list:
    """Nodes that need gradients, each after all of its parents (iterative DFS, no recursion)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    return order


def _sum_to(g, shape, op=""):
    """Sum a broadcast gradient `g` back down to `shape` (the inverse of broadcasting)."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if lead:
        g = g.reshape(g.shape[lead:])
    if g.shape != shape:
        raise AssertionError(f"{op}: gradient of shape {g.shape} cannot be summed to {shape}")
    return g


def record_op(y, parents, backward, op: str) -> Tensor:
    """The Tensor holding `y`, the output array of op `op` applied to the Tensors `parents`.

    backward(gy) -> one gradient array (or None) per parent, each of its parent's shape or
    broadcastable to it. The node is recorded only when grad mode is on and some parent
    requires grad; otherwise the result is a constant. The engine frees `backward` (and the
    arrays it holds) once it has run.
    """
    if _detect_anomaly and backend.array_module(y).isnan(y).any():
        raise FloatingPointError(f"detect_anomaly: '{op}' produced NaN in its forward pass")
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out._op = y, None, op
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad, out._parents, out._backward = True, parents, backward
    else:
        out.requires_grad, out._parents, out._backward = False, (), None
    return out


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """`x` as a Tensor: Tensors pass through; numbers and arrays take `like`'s dtype."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)) and like is not None:
        t = Tensor.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._parents, t._backward, t._op = (
            backend.array_module(like.data).asarray(x, dtype=like.dtype), None, False, (), None, "const")
        return t
    return Tensor(x, dtype=None if like is None else like.dtype)


def _pair(a, b):
    if isinstance(a, Tensor):
        return a, as_tensor(b, a)
    b = as_tensor(b)
    return as_tensor(a, b), b


def _broadcast_error(op, a, b):
    return ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together")


# ============================================================================ elementwise
def add(a, b) -> Tensor:
    """y = a + b (broadcasting)."""
    a, b = _pair(a, b)
    try:
        y = a.data + b.data
    except ValueError:
        raise _broadcast_error("add", a, b) from None
    return record_op(y, (a, b), lambda gy: (gy, gy), "add")


def sub(a, b) -> Tensor:
    """y = a - b (broadcasting)."""
    a, b = _pair(a, b)
    try:
        y = a.data - b.data
    except ValueError:
        raise _broadcast_error("sub", a, b) from None
    return record_op(y, (a, b), lambda gy: (gy, -gy if b.requires_grad else None), "sub")


def mul(a, b) -> Tensor:
    """y = a * b (broadcasting)."""
    a, b = _pair(a, b)
    try:
        y = a.data * b.data
    except ValueError:
        raise _broadcast_error("mul", a, b) from None

    def backward(gy):
        return (gy * b.data if a.requires_grad else None,
                gy * a.data if b.requires_grad else None)
    return record_op(y, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    """y = a / b (broadcasting).  d/da = 1/b, d/db = -a/b^2 = -y/b."""
    a, b = _pair(a, b)
    try:
        y = a.data / b.data
    except ValueError:
        raise _broadcast_error("div", a, b) from None

    def backward(gy):
        ga = gy / b.data
        return ga if a.requires_grad else None, (-ga * y if b.requires_grad else None)
    return record_op(y, (a, b), backward, "div")


def neg(x) -> Tensor:
    """y = -x."""
    return record_op(-x.data, (x,), lambda gy: (-gy,), "neg")


def pow(x, p) -> Tensor:
    """y = x ** p for a constant p (any x), or a Tensor p (x > 0).  d/dx = p x^(p-1)."""
    if isinstance(p, (np.integer, np.floating)):
        p = p.item()  # a NumPy scalar exponent would promote float32 to float64
    if isinstance(p, (int, float)) and isinstance(x, Tensor):
        y = x.data ** p
        return record_op(y, (x,), lambda gy: (gy * (p * x.data ** (p - 1)),), "pow")
    x, p = _pair(x, p)
    y = x.data ** p.data

    def backward(gy):
        xp = backend.array_module(y)
        gx = gy * p.data * x.data ** (p.data - 1) if x.requires_grad else None
        gp = gy * y * xp.log(x.data) if p.requires_grad else None
        return gx, gp
    return record_op(y, (x, p), backward, "pow")


def exp(x) -> Tensor:
    """y = e^x.  dy/dx = y."""
    y = backend.array_module(x.data).exp(x.data)
    return record_op(y, (x,), lambda gy: (gy * y,), "exp")


def log(x) -> Tensor:
    """y = ln x (x > 0).  dy/dx = 1/x."""
    y = backend.array_module(x.data).log(x.data)
    return record_op(y, (x,), lambda gy: (gy / x.data,), "log")


def sqrt(x) -> Tensor:
    """y = sqrt(x) (x > 0).  dy/dx = 1 / (2 y)."""
    y = backend.array_module(x.data).sqrt(x.data)
    return record_op(y, (x,), lambda gy: (gy / (2.0 * y),), "sqrt")


def tanh(x) -> Tensor:
    """y = tanh x.  dy/dx = 1 - y^2."""
    y = backend.array_module(x.data).tanh(x.data)
    return record_op(y, (x,), lambda gy: (gy * (1.0 - y * y),), "tanh")


def sigmoid_array(x, out=None):
    """The logistic function on an array: 1 / (1 + e^-x), into `out` (which may be x).

    The one array-level sigmoid of the library (ops, kernels and samplers use it). For x
    below about -88 (float32) e^-x overflows to inf and 1 / (1 + inf) = 0, which is the
    correctly rounded answer; only NumPy's overflow warning is silenced. Relative precision
    holds in both tails (the form 0.5 tanh(x/2) + 0.5 cancels to 0 already at x = -17 in
    float32), and it takes one exp and three passes, with no branch selection.
    """
    xp = backend.array_module(x)
    y = xp.negative(x, out=out) if out is not None else xp.asarray(xp.negative(x))  # (NumPy: 0-d -> scalar)
    with np.errstate(over="ignore"):  # (CuPy never warns; this touches NumPy only)
        xp.exp(y, out=y)
    y += 1.0
    return xp.divide(1.0, y, out=y)


def sigmoid(x) -> Tensor:
    """y = 1 / (1 + e^-x), stable for any x.  dy/dx = y (1 - y)."""
    y = sigmoid_array(x.data)

    def backward(gy):
        g = 1.0 - y
        g *= y
        g *= gy
        return (g,)
    return record_op(y, (x,), backward, "sigmoid")


def relu(x) -> Tensor:
    """y = max(x, 0).  The subgradient at 0 is 0."""
    y = backend.array_module(x.data).maximum(x.data, 0)
    return record_op(y, (x,), lambda gy: (gy * (x.data > 0),), "relu")


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x) -> Tensor:
    """GELU, tanh approximation: y = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi).

    dy/dx = (1 + t)/2 + x (1 - t^2) c (1 + 3 * 0.044715 x^2) / 2, t = tanh(...).
    In place on two buffers: on a transformer's widest activation, temporaries cost more
    than the arithmetic (and x * x, not x ** 3: an int power is a slow per-element pow()).
    """
    xp = backend.array_module(x.data)
    xd = x.data
    t = xp.multiply(xd, xd, out=xp.empty_like(xd))  # out=: a 0-d array stays an array
    t *= 0.044715
    t += 1.0
    t *= xd
    t *= _GELU_C
    xp.tanh(t, out=t)
    y = xp.add(t, 1.0, out=xp.empty_like(xd))
    y *= xd
    y *= 0.5

    def backward(gy):
        g = xp.multiply(xd, xd, out=xp.empty_like(xd))
        g *= 3 * 0.044715
        g += 1.0
        g *= _GELU_C
        g *= xd
        g *= 1.0 - t * t
        g += t
        g += 1.0
        g *= 0.5
        g *= gy
        return (g,)
    return record_op(y, (x,), backward, "gelu")


def softplus_array(x):
    """log(1 + e^x) on an array, as max(x, 0) + log1p(e^-|x|): no overflow at |x| = 1e4,
    no lost precision."""
    xp = backend.array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus(x) -> Tensor:
    """y = log(1 + e^x), stable.  dy/dx = sigmoid(x)."""
    y = softplus_array(x.data)
    return record_op(y, (x,), lambda gy: (gy * sigmoid_array(x.data),), "softplus")


def log_sigmoid(x) -> Tensor:
    """y = log sigmoid(x) = -softplus(-x), stable.  dy/dx = sigmoid(-x)."""
    y = -softplus_array(-x.data)
    return record_op(y, (x,), lambda gy: (gy * sigmoid_array(-x.data),), "log_sigmoid")


def bernoulli_log_prob(logits, x) -> Tensor:
    """Fused log Ber(x; sigmoid(l)) = x l - softplus(l), elementwise (= -BCE-with-logits).

    `x` is a constant array of 0/1 (no gradient). d/dl = x - sigmoid(l).
    """
    xd = as_tensor(x, logits).data  # 0/1 targets of any dtype; NumPy arrays on 'cuda' raise
    if xd.dtype != logits.dtype:
        xd = xd.astype(logits.dtype)  # float64 targets must not make a float32 loss float64
    try:
        y = xd * logits.data - softplus_array(logits.data)
    except ValueError:
        raise _broadcast_error("bernoulli_log_prob", logits, xd) from None
    return record_op(y, (logits,), lambda gy: (gy * (xd - sigmoid_array(logits.data)),), "bernoulli_log_prob")


def where(cond, a, b) -> Tensor:
    """y = a where cond else b (cond: a boolean array, no gradient)."""
    a, b = _pair(a, b)
    cond = cond.data if isinstance(cond, Tensor) else cond
    backend.check_same_device(cond, "where(): ")
    xp = backend.array_module(a.data)
    cond = cond.astype(bool) if cond.dtype != bool else cond
    try:
        y = xp.where(cond, a.data, b.data)
    except ValueError:
        raise ValueError(f"where: shapes {cond.shape}, {a.shape} and {b.shape} cannot be broadcast together") from None

    def backward(gy):
        zero = xp.zeros((), gy.dtype)
        return (xp.where(cond, gy, zero) if a.requires_grad else None,
                xp.where(cond, zero, gy) if b.requires_grad else None)
    return record_op(y, (a, b), backward, "where")


# ============================================================================ reductions
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
    return tuple(a % ndim for a in axes)


def _expand(gy, x_shape, axes, keepdims):
    """Reshape a reduced gradient so it broadcasts against the input again."""
    if not keepdims:
        shape = list(x_shape)
        for a in axes:
            shape[a] = 1
        gy = gy.reshape(shape)
    return gy


def sum(x, axis=None, keepdims=False) -> Tensor:
    """y = sum of x over `axis` (int, tuple or None = all)."""
    axes = _axes(axis, x.ndim)
    xp = backend.array_module(x.data)
    y = x.data.sum(axis=axes, keepdims=keepdims)
    return record_op(y, (x,), lambda gy: (xp.broadcast_to(_expand(gy, x.shape, axes, keepdims), x.shape),), "sum")


def mean(x, axis=None, keepdims=False) -> Tensor:
    """y = mean of x over `axis`."""
    axes = _axes(axis, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    return sum(x, axes, keepdims) * (1.0 / n)


def max(x, axis=None, keepdims=False) -> Tensor:
    """y = max of x over `axis`. At ties the gradient is shared equally among the maxima."""
    axes = _axes(axis, x.ndim)
    yk = x.data.max(axis=axes, keepdims=True)
    y = yk if keepdims else yk.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def backward(gy):
        hit = x.data == yk
        return (hit * (_expand(gy, x.shape, axes, keepdims) / hit.sum(axis=axes, keepdims=True)),)
    return record_op(y, (x,), backward, "max")


def cumsum(x, axis=-1) -> Tensor:
    """y_i = sum_{j <= i} x_j along `axis` (a running sum, e.g. NADE's hidden pre-activations).

    Each x_j feeds every y_i with i >= j, so gx_j = sum_{i >= j} gy_i: a cumsum of gy taken
    from the far end (flip, cumsum, flip back).
    """
    xp = backend.array_module(x.data)
    axis = _axes(axis, x.ndim)[0]
    y = xp.cumsum(x.data, axis=axis)
    return record_op(y, (x,), lambda gy: (xp.flip(xp.cumsum(xp.flip(gy, axis), axis=axis), axis),), "cumsum")


def logsumexp(x, axis=-1, keepdims=False) -> Tensor:
    """y = log sum_i exp(x_i) over `axis`, stable (shifted by the max; -inf rows give -inf)."""
    xp = backend.array_module(x.data)
    axes = _axes(axis, x.ndim)
    m = x.data.max(axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf) along the axis: no shift
    yk = m + xp.log(xp.exp(x.data - m).sum(axis=axes, keepdims=True))
    y = yk if keepdims else yk.reshape([n for i, n in enumerate(x.shape) if i not in axes])
    return record_op(y, (x,), lambda gy: (_expand(gy, x.shape, axes, keepdims) * xp.exp(x.data - yk),), "logsumexp")


def log_softmax(x, axis=-1) -> Tensor:
    """y = x - logsumexp(x, axis), stable.  gx = gy - softmax(x) * sum(gy, axis)."""
    xp = backend.array_module(x.data)
    m = x.data.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    shifted = x.data - m
    y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return record_op(y, (x,), lambda gy: (gy - xp.exp(y) * gy.sum(axis=axis, keepdims=True),), "log_softmax")


def softmax(x, axis=-1) -> Tensor:
    """y = exp(x) / sum exp(x) over `axis`, stable.  gx = y * (gy - sum(gy * y, axis))."""
    xp = backend.array_module(x.data)
    m = x.data.max(axis=axis, keepdims=True)
    e = xp.exp(x.data - xp.where(xp.isfinite(m), m, 0))
    y = e / e.sum(axis=axis, keepdims=True)
    return record_op(y, (x,), lambda gy: (y * (gy - (gy * y).sum(axis=axis, keepdims=True)),), "softmax")


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., D), weight, bias: (D,). Fused: one node instead of a dozen.
    """
    xp = backend.array_module(x.data)
    mu = x.data.mean(axis=-1, keepdims=True)
    xc = x.data - mu
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat if weight is None else xhat * weight.data
    if bias is not None:
        y = y + bias.data
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(gy):
        lead = tuple(range(gy.ndim - 1))
        g = gy if weight is None else gy * weight.data
        gx = None
        if x.requires_grad:
            gx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        out = [gx]
        if weight is not None:
            out.append((gy * xhat).sum(axis=lead) if weight.requires_grad else None)
        if bias is not None:
            out.append(gy.sum(axis=lead) if bias.requires_grad else None)
        return out
    return record_op(y, parents, backward, "layer_norm")


# ============================================================================ linear algebra
def matmul(a, b) -> Tensor:
    """y = a @ b with NumPy semantics: batched and broadcasting over leading axes.

    a: (..., N, K), b: (..., K, M) -> y: (..., N, M); a 1-D operand is a vector.
    """
    a, b = _pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape}: operands must have at least one dimension")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                         f"(inner sizes {a.shape[-1]} and {b.shape[-2 if b.ndim > 1 else 0]})")
    if a.ndim == 1:
        return reshape(matmul(reshape(a, (1, -1)), b), b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else ())
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (-1, 1))), a.shape[:-1])
    # A stack of rows times one matrix (a Linear layer on (N, T, D) inputs) is one product
    # of (N T, D) rows: NumPy would make one small BLAS call per leading index instead.
    flat = b.ndim == 2 and a.ndim > 2
    try:
        y = (a.data.reshape(-1, a.shape[-1]) @ b.data).reshape(a.shape[:-1] + b.shape[-1:]) if flat else a.data @ b.data
    except ValueError:
        raise _broadcast_error("matmul", a, b) from None

    def backward(gy):
        ga = gb = None
        if a.requires_grad:
            if flat:
                ga = (gy.reshape(-1, gy.shape[-1]) @ b.data.T).reshape(a.shape)
            else:
                ga = gy @ b.data.swapaxes(-1, -2)
        if b.requires_grad:
            if b.ndim == 2 and a.ndim > 2:
                # Weights shared over a batch: one big product instead of a stack to sum.
                gb = a.data.reshape(-1, a.shape[-1]).T @ gy.reshape(-1, gy.shape[-1])
            else:
                gb = a.data.swapaxes(-1, -2) @ gy
        return ga, gb
    return record_op(y, (a, b), backward, "matmul")


# ============================================================================ shape
def reshape(x, shape) -> Tensor:
    """y = x viewed with a new shape (same number of elements)."""
    try:
        y = x.data.reshape(shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} to {tuple(shape)}") from None
    return record_op(y, (x,), lambda gy: (gy.reshape(x.shape),), "reshape")


def transpose(x, axes=None) -> Tensor:
    """y = x with its axes permuted (reversed when `axes` is None)."""
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(a % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: {axes} is not a permutation of the {x.ndim} axes of a tensor of shape {x.shape}")
    inverse = tuple(np.argsort(axes))
    return record_op(x.data.transpose(axes), (x,), lambda gy: (gy.transpose(inverse),), "transpose")


permute = transpose


def _is_basic_index(index) -> bool:
    """True when indexing makes a view (ints, slices, None, ...): no repeated elements."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


def _check_device_index(shape: tuple, items: tuple) -> None:
    """Raise NumPy's IndexError for integer arrays on the GPU that point outside their axis:
    CuPy wraps them around silently. One sync per such array; host indices are NumPy's to check."""
    if not any(backend.is_device_array(i) for i in items):
        return
    spans = [i.ndim if getattr(i, "dtype", None) == bool else 0 if i is None else 1 for i in items]
    cut = next((k for k, i in enumerate(items) if i is Ellipsis), len(items))
    axis = 0
    for k, i in enumerate(items):
        if k == cut + 1:        # after the Ellipsis: count the remaining axes from the end
            axis = len(shape) - builtins.sum(spans[k:])
        if i is Ellipsis:
            continue
        if backend.is_device_array(i) and i.dtype.kind in "iu" and i.size and 0 <= axis < len(shape):
            lo, hi = backend.value_range(i)
            n = shape[axis]
            if lo < -n or hi >= n:
                raise IndexError(f"index {hi if hi >= n else lo} is out of bounds for axis {axis} with size {n}")
        axis += spans[k]


def getitem(x, index, check: bool = True) -> Tensor:
    """y = x[index]: slicing, or integer-array indexing (backward scatter-adds repeats).
    check=False skips the range check of integer arrays on the GPU (see `_check_ids`)."""
    if isinstance(index, Tensor):
        raise TypeError("index a Tensor with an integer array, not a float Tensor")
    items = index if isinstance(index, tuple) else (index,)
    for i in items:
        if hasattr(i, "dtype"):
            backend.check_same_device(i, "indexing: ")
    try:
        if check:
            _check_device_index(x.shape, items)
        y = x.data[index]
    except IndexError as e:
        raise IndexError(f"index out of range for a tensor of shape {x.shape}: {e}") from None
    basic = _is_basic_index(index)

    def backward(gy):
        xp = backend.array_module(gy)
        gx = xp.zeros(x.shape, gy.dtype)
        if basic:
            gx[index] = gy
        else:
            backend.scatter_add(gx, index, gy)
        return (gx,)
    return record_op(y, (x,), backward, "getitem")


def _check_ids(ids, k: int, what: str) -> None:
    """Refuse ids outside [0, k): CuPy would wrap them silently. Costs one GPU sync, so
    callers whose ids are already checked (a model after check_data, a sampler's own draws)
    pass check=False."""
    if ids.size:
        lo, hi = backend.value_range(ids)
        if lo < 0 or hi >= k:
            raise IndexError(f"{what} must lie in [0, {k}), got range [{lo}, {hi}]")


def gather(x, index, axis=-1, check: bool = True) -> Tensor:
    """y = take_along_axis(x, index, axis): pick entries along `axis` (e.g. a class's logit).

    x: (..., K, ...), index: int array broadcastable with x except along `axis`.
    check=False skips the range check of index (see `_check_ids`).
    """
    xp = backend.array_module(x.data)
    backend.check_same_device(index, "gather(): ")
    k = x.shape[axis]
    if check:
        _check_ids(index, k, "gather: index values")
    y = xp.take_along_axis(x.data, index, axis=axis)

    def backward(gy):
        # Off `axis`, x and index broadcast to gy's shape: scatter into x broadcast that far
        # (the engine sums the broadcast axes back to x's shape).
        ax = axis % x.ndim
        gx = xp.zeros(gy.shape[:ax] + (k,) + gy.shape[ax + 1:], gy.dtype)
        # an open grid of indices with `index` on `axis` (NumPy's indices(sparse=True), which
        # CuPy lacks; so is put_along_axis before CuPy 14)
        grid = [xp.arange(n).reshape((1,) * i + (n,) + (1,) * (gy.ndim - i - 1)) for i, n in enumerate(gy.shape)]
        grid[ax] = xp.broadcast_to(index, gy.shape)
        if index.shape[axis] == 1:  # one pick per row: no repeats, a plain put is exact
            gx[tuple(grid)] = gy
        else:
            backend.scatter_add(gx, tuple(grid), gy)
        return (gx,)
    return record_op(y, (x,), backward, "gather")


def concatenate(tensors, axis=0) -> Tensor:
    """y = the tensors joined along an existing axis."""
    tensors = [as_tensor(t) for t in tensors]
    xp = backend.array_module(tensors[0].data)
    try:
        y = xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concatenate: shapes {[t.shape for t in tensors]} do not match off axis {axis}") from None
    ends = np.cumsum([t.shape[axis] for t in tensors]).tolist()  # a list: CuPy wants host ints

    def backward(gy):
        return xp.split(gy, ends[:-1], axis=axis)
    return record_op(y, tuple(tensors), backward, "concatenate")


cat = concatenate


def stack(tensors, axis=0) -> Tensor:
    """y = the tensors (all of one shape) stacked along a new axis."""
    tensors = [as_tensor(t) for t in tensors]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {[t.shape for t in tensors]}")
    xp = backend.array_module(tensors[0].data)
    y = xp.stack([t.data for t in tensors], axis=axis)

    def backward(gy):
        return [xp.take(gy, i, axis=axis) for i in range(len(tensors))]
    return record_op(y, tuple(tensors), backward, "stack")


def split(x, sections, axis=0) -> list:
    """Split x along `axis` into `sections` equal parts (an int) or at the given indices."""
    n = x.shape[axis]
    if isinstance(sections, int):
        if n % sections:
            raise ValueError(f"split: axis {axis} of size {n} does not divide into {sections} equal parts")
        bounds = list(range(0, n + 1, n // sections))
    else:
        bounds = [0, *sections, n]
    lead = (slice(None),) * (axis % x.ndim)
    return [getitem(x, lead + (slice(lo, hi),)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def embedding(weight, ids, check: bool = True) -> Tensor:
    """y = weight[ids]: look up rows. weight: (V, D), ids: int array (...) -> y: (..., D).
    check=False skips the range check of ids (see `_check_ids`)."""
    xp = backend.array_module(weight.data)
    ids = ids.data if isinstance(ids, Tensor) else ids
    backend.check_same_device(ids, "embedding(): ")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    v = weight.shape[0]
    if check:
        _check_ids(ids, v, "embedding: ids")
    y = weight.data[ids]

    def backward(gy):
        gw = xp.zeros(weight.shape, gy.dtype)
        backend.scatter_add(gw, ids.reshape(-1), gy.reshape(-1, weight.shape[1]))
        return (gw,)
    return record_op(y, (weight,), backward, "embedding")


# ============================================================================ convolution
def _pad_pairs(padding, n):
    """padding as an int, n ints, or n (before, after) pairs -> n pairs."""
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _pad_or_crop(xp, a, pads):
    """Zero-pad the spatial axes 1..r of a channels-last array (crop where an amount is < 0)."""
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        keep = builtins.max  # (this module's `max` is the Tensor op)
        a = a[(slice(None),) + tuple(slice(keep(0, -lo), a.shape[1 + d] - keep(0, -hi)) for d, (lo, hi) in enumerate(pads))]
        pads = [(keep(0, lo), keep(0, hi)) for lo, hi in pads]
    if not any(lo or hi for lo, hi in pads):
        return a
    return xp.pad(a, [(0, 0), *pads, (0, 0)])


def _correlate(x, w, pads, dilation):
    """The core of conv1d and conv2d, on channels-last arrays: windows, then one product.

    x: (N, *S, C), w: (*K, C, O), pads: one (before, after) per spatial axis, dilation: one
    int per axis -> y: (N, *S', O), S' = S + before + after - dilation (K - 1), and the
    columns (N prod(S'), prod(K) C) that were multiplied (the weight gradient needs them).

    The windows are a strided view of the padded input, (N, *S', *K, C); flattening it is
    the only copy (none at all for a 1x1 kernel), and one (N S', K C) x (K C, O) matrix
    product gives every output position at once.
    """
    a = _pad_or_crop(backend.array_module(x), x, pads)
    r = len(pads)
    kernel, out_channels = w.shape[:r], w.shape[-1]
    out = tuple(a.shape[1 + d] - dilation[d] * (kernel[d] - 1) for d in range(r))
    s = a.strides
    windows = backend.as_strided(a, (a.shape[0], *out, *kernel, a.shape[-1]),
                                 (s[0], *s[1:1 + r], *(dilation[d] * s[1 + d] for d in range(r)), s[-1]))
    cols = windows.reshape(-1, w[..., 0].size)
    y = cols @ w.reshape(-1, out_channels)
    return y.reshape(a.shape[0], *out, out_channels), cols


def _conv(x, weight, bias, pads, dilation, op):
    """Convolution of a channels-first Tensor x: (N, C, *S) with weight (O, C, *K).

    The work happens channels-last: convolution outputs are laid out (N, *S, O) in memory
    and returned as a transposed (N, O, *S) view, so the next convolution's channels-last
    view of its input costs no copy, and every product is one large matrix product.
    """
    r = x.ndim - 2
    last, first = (0, *range(2, 2 + r), 1), (0, r + 1, *range(1, r + 1))
    w = weight.data.transpose(*range(2, 2 + r), 1, 0)  # (*K, C, O)
    y, cols = _correlate(x.data.transpose(last), w, pads, dilation)
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(gy):
        gy = gy.transpose(last)
        gy2 = gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        if weight.requires_grad:
            gw = (cols.T @ gy2).reshape(w.shape).transpose(r + 1, r, *range(r))
        if bias is not None and bias.requires_grad:
            gb = gy2.sum(axis=0)
        if x.requires_grad:
            # The input gradient is itself a correlation: of gy, padded by (span - padding),
            # with the kernel flipped and its channel axes swapped.
            flipped = w[(slice(None, None, -1),) * r].swapaxes(-1, -2)
            back = [(dilation[d] * (w.shape[d] - 1) - lo, dilation[d] * (w.shape[d] - 1) - hi)
                    for d, (lo, hi) in enumerate(pads)]
            gx = _correlate(gy, flipped, back, dilation)[0].transpose(first)
        return gx, gw, gb
    return record_op(y.transpose(first), parents, backward, op)


def conv2d(x, weight, bias=None, padding=0) -> Tensor:
    """2-D cross-correlation, stride 1.

    x: (N, C, H, W), weight: (O, C, kh, kw), bias: (O,), padding: int, (ph, pw) or
    ((top, bottom), (left, right)) -> y: (N, O, H', W'), H' = H + top + bottom - kh + 1.
    y[n, o, h, w] = sum_{c, i, j} weight[o, c, i, j] x_pad[n, c, h + i, w + j].
    """
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: expected x (N, C, H, W) and weight (O, C, kh, kw), got {x.shape} and {weight.shape}")
    pads = [tuple(p) for p in _pad_pairs(padding, 2)]
    kh, kw = weight.shape[2:]
    hp, wp = x.shape[2] + pads[0][0] + pads[0][1], x.shape[3] + pads[1][0] + pads[1][1]
    if hp < kh or wp < kw:
        raise ValueError(f"conv2d: kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
    return _conv(x, weight, bias, pads, (1, 1), "conv2d")


def conv1d(x, weight, bias=None, padding=0, dilation: int = 1) -> Tensor:
    """1-D cross-correlation with dilation, stride 1.

    x: (N, C, T), weight: (O, C, k), bias: (O,), padding: int or (left, right)
    -> y: (N, O, T'), T' = T + left + right - dilation (k - 1).
    y[n, o, t] = sum_{c, j} weight[o, c, j] x_pad[n, c, t + dilation j]; a causal
    convolution is padding=(dilation (k - 1), 0).
    """
    if x.ndim != 3 or weight.ndim != 3 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv1d: expected x (N, C, T) and weight (O, C, k), got {x.shape} and {weight.shape}")
    if dilation < 1:
        raise ValueError(f"conv1d: dilation must be >= 1, got {dilation}")
    pads = [(padding, padding)] if isinstance(padding, int) else [tuple(padding)]
    span, tp = dilation * (weight.shape[2] - 1) + 1, x.shape[2] + pads[0][0] + pads[0][1]
    if tp < span:
        raise ValueError(f"conv1d: kernel span {span} is longer than the padded input {tp}")
    return _conv(x, weight, bias, pads, (dilation,), "conv1d")
