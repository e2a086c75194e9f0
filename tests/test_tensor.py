"""Property tests for every op of nanoar.tensor, and tests of the autograd engine.

For each op, `check_op` asserts three things on hypothesis-drawn shapes and values:
  1. the float64 forward equals a direct NumPy reference formula;
  2. the float32 forward equals the float64 forward of the same (float32-rounded) inputs to
     rtol ~1e-5 relative to the output's scale, and stays float32;
  3. the analytic gradient equals central differences (`nanoar.gradcheck`, float64), with a
     random upstream gradient drawn from a hypothesis seed (never all ones).
The `device` fixture runs each test on 'cpu' and, where CuPy and a GPU are present, 'cuda'.
"""
from __future__ import annotations

import gc
import math
import os
import resource

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nanoar
from nanoar import Tensor
from nanoar import tensor as ops
from strategies import (arrays, away_from_zero, axes, axis_of, binary_arrays, broadcastable_shapes,
                        conv1d_cases, conv2d_cases, distinct_arrays, fixture_settings, index_arrays,
                        nonzero_arrays, positive_arrays, seeds, shapes)


# ============================================================================ helpers
def dev(a):
    """A host array on the current device (a copy: tests never share arrays with tensors)."""
    return nanoar.to_device(np.array(a, copy=True))


def T(a, dtype=None, requires_grad=False):
    return Tensor(dev(a), requires_grad=requires_grad, dtype=dtype)


def host(t):
    return nanoar.to_numpy(t)


def check_op(f, ref, inputs, grad=None, *, seed=0, rtol32=1e-5, ref_rtol=1e-10, ref_atol=1e-12):
    """Forward vs `ref`, float32 vs float64, and gradcheck, for `f(*tensors) -> Tensor`.

    `inputs` are float64 host arrays; `grad[i]` says whether input i requires grad.
    """
    grad = [True] * len(inputs) if grad is None else list(grad)
    # 1. the float64 forward against the NumPy formula
    t64 = [T(a, np.float64, g) for a, g in zip(inputs, grad)]
    y = f(*t64)
    assert isinstance(y, Tensor) and y.dtype == np.float64
    expected = np.asarray(ref(*inputs), dtype=np.float64)
    got = host(y)
    assert got.shape == expected.shape, f"shape {got.shape}, reference {expected.shape}"
    np.testing.assert_allclose(got, expected, rtol=ref_rtol, atol=ref_atol)
    # 2. float32 against float64 on the same float32-rounded inputs: only the arithmetic differs
    a32 = [np.asarray(a, dtype=np.float32) for a in inputs]
    y32 = f(*[T(a, np.float32) for a in a32])
    assert y32.dtype == np.float32, f"float32 inputs gave a {y32.dtype} output"
    y64 = host(f(*[T(a.astype(np.float64), np.float64) for a in a32]))
    if y64.size:
        scale = max(1.0, float(np.abs(y64).max()))
        err = float(np.abs(host(y32).astype(np.float64) - y64).max())
        assert err <= rtol32 * scale, f"float32 differs from float64 by {err:.3g} (scale {scale:.3g})"
    # 3. analytic vs numeric gradient, random upstream gradient
    assert nanoar.gradcheck(f, t64, seed=seed)
    # 4. each leaf's .grad is memory of its own: it shares none with another .grad, an input,
    # the output or the upstream gradient (the engine skips the copy only where that holds)
    if not nanoar.backend.is_device_array(y.data):
        for upstream in (None, np.random.default_rng(seed).standard_normal(y.shape)):
            ts = [T(a, np.float64, g) for a, g in zip(inputs, grad)]
            out = f(*ts)
            if upstream is None:
                out = out.sum()
            up = None if upstream is None else dev(upstream)
            out.backward(up)
            others = [t.data for t in ts] + [out.data] + ([] if up is None else [up])
            gs = [t.grad for t in ts if t.grad is not None]
            for i, g in enumerate(gs):
                assert not any(np.may_share_memory(g, a) for a in others + gs[:i] + gs[i + 1:]), "a .grad aliases"


def sigmoid_ref(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus_ref(x):
    return np.log1p(np.exp(x))


GELU_C = math.sqrt(2.0 / math.pi)


def gelu_ref(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x ** 3)))


def rss_bytes():
    """The process's resident set size now (not the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_tensors():
    return sum(type(o) is Tensor for o in gc.get_objects())


# ============================================================================ elementwise
BINARY = {
    "add": (nanoar.add, np.add, arrays),
    "sub": (nanoar.sub, np.subtract, arrays),
    "mul": (nanoar.mul, np.multiply, arrays),
    "div": (nanoar.div, np.divide, nonzero_arrays),  # the strategy of the right operand
    "add-operator": (lambda a, b: a + b, np.add, arrays),
    "sub-operator": (lambda a, b: a - b, np.subtract, arrays),
    "mul-operator": (lambda a, b: a * b, np.multiply, arrays),
    "div-operator": (lambda a, b: a / b, np.divide, nonzero_arrays),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@fixture_settings
@given(data=st.data(), seed=seeds)
def test_binary_broadcasting(device, float64, name, data, seed):
    f, ref, right = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes(2), label="shapes")
    a = data.draw(arrays(sa), label="a")
    b = data.draw(right(sb), label="b")
    which = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]), label="grad")
    check_op(f, ref, [a, b], which, seed=seed)


UNARY = {
    "neg": (nanoar.neg, np.negative, arrays),
    "neg-operator": (lambda x: -x, np.negative, arrays),
    "exp": (nanoar.exp, np.exp, arrays),
    "exp-method": (lambda x: x.exp(), np.exp, arrays),
    "log": (nanoar.log, np.log, positive_arrays),
    "sqrt": (nanoar.sqrt, np.sqrt, positive_arrays),
    "tanh": (nanoar.tanh, np.tanh, arrays),
    "sigmoid": (nanoar.sigmoid, sigmoid_ref, lambda s: arrays(s, -8, 8)),
    "relu": (nanoar.relu, lambda x: np.maximum(x, 0.0), away_from_zero),
    "gelu": (nanoar.gelu, gelu_ref, arrays),
    "softplus": (nanoar.softplus, softplus_ref, lambda s: arrays(s, -8, 8)),
    "log_sigmoid": (nanoar.log_sigmoid, lambda x: np.log(sigmoid_ref(x)), lambda s: arrays(s, -8, 8)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@fixture_settings
@given(data=st.data(), seed=seeds)
def test_unary(device, float64, name, data, seed):
    f, ref, values = UNARY[name]
    x = data.draw(values(data.draw(shapes(), label="shape")), label="x")
    check_op(f, ref, [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_pow_scalar_exponent(device, float64, data, seed):
    p = data.draw(st.sampled_from([-2, -1, -0.5, 0.5, 1, 1.5, 2, 3, 2.0, np.float64(2.5)]), label="p")
    shape = data.draw(shapes(), label="shape")
    # integer powers for any nonzero x; real powers on x > 0
    values = nonzero_arrays if float(p).is_integer() else positive_arrays
    x = data.draw(values(shape), label="x")
    check_op(lambda t: t ** p, lambda a: np.power(a, float(p)), [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_pow_tensor_exponent(device, float64, data, seed):
    sx, sp = data.draw(broadcastable_shapes(2), label="shapes")
    x = data.draw(positive_arrays(sx, 0.5, 3.0), label="x")
    p = data.draw(arrays(sp, -2.0, 2.0), label="p")
    which = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]), label="grad")
    check_op(nanoar.pow, np.power, [x, p], which, seed=seed)
    check_op(lambda e: 2.0 ** e, lambda e: np.power(2.0, e), [p], seed=seed)  # __rpow__


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_bernoulli_log_prob(device, float64, data, seed):
    sl, sx = data.draw(broadcastable_shapes(2), label="shapes")
    logits = data.draw(arrays(sl, -8, 8), label="logits")
    target = data.draw(binary_arrays(sx), label="x")

    def ref(l):
        s = sigmoid_ref(l)
        return target * np.log(s) + (1 - target) * np.log1p(-s)
    # the targets are a constant float64 host array: also for float32 logits (must stay float32)
    check_op(lambda l: nanoar.bernoulli_log_prob(l, dev(target)), ref, [logits], seed=seed, ref_rtol=1e-9)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_where(device, float64, data, seed):
    sc, sa, sb = data.draw(broadcastable_shapes(3), label="shapes")
    cond = data.draw(hnp.arrays(np.bool_, sc), label="cond")
    a, b = data.draw(arrays(sa), label="a"), data.draw(arrays(sb), label="b")
    check_op(lambda x, y: nanoar.where(dev(cond), x, y), lambda x, y: np.where(cond, x, y), [a, b], seed=seed)
    check_op(lambda x: nanoar.where(dev(cond), x, 0.5), lambda x: np.where(cond, x, 0.5), [a], seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_python_scalar_operands(device, dtype):
    """x op c and c op x for Python numbers: values, gradients, and the dtype of x kept."""
    xv = np.array([[0.5, -1.25], [2.0, 3.0]])
    g = np.array([[1.0, -2.0], [0.5, 3.0]])
    cases = [
        (lambda x: x + 2.5, xv + 2.5, np.ones_like(xv)),
        (lambda x: 2.5 + x, xv + 2.5, np.ones_like(xv)),
        (lambda x: x - 2.5, xv - 2.5, np.ones_like(xv)),
        (lambda x: 2.5 - x, 2.5 - xv, -np.ones_like(xv)),
        (lambda x: x * 0.5, xv * 0.5, np.full_like(xv, 0.5)),
        (lambda x: 0.5 * x, xv * 0.5, np.full_like(xv, 0.5)),
        (lambda x: x / 4.0, xv / 4.0, np.full_like(xv, 0.25)),
        (lambda x: 3.0 / x, 3.0 / xv, -3.0 / xv ** 2),
        (lambda x: x ** 2, xv ** 2, 2 * xv),
        (lambda x: x ** 3, xv ** 3, 3 * xv ** 2),
        (lambda x: 2.0 ** x, 2.0 ** xv, np.log(2.0) * 2.0 ** xv),
    ]
    for f, y_ref, dydx in cases:
        x = T(xv, dtype, requires_grad=True)
        y = f(x)
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(host(y), y_ref, rtol=1e-6)
        y.backward(dev(g))
        assert x.grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(host(x.grad), g * dydx, rtol=1e-5)


# ============================================================================ matmul
@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["1x1", "1xN", "Nx1", "2x2", "batched", "batch-broadcast"]))
    if kind == "1x1":
        return (k,), (k,)
    if kind == "1xN":
        batch = draw(shapes(0, 2, max_side=3))
        return (k,), batch + (k, m)
    if kind == "Nx1":
        batch = draw(shapes(0, 2, max_side=3))
        return batch + (n, k), (k,)
    if kind == "2x2":
        return (n, k), (k, m)
    if kind == "batched":
        batch = draw(shapes(1, 2, max_side=3))
        return batch + (n, k), batch + (k, m)
    ba, bb = draw(broadcastable_shapes(2, 0, 2))  # (B, 1, N, K) @ (M, K, P), 2-D @ 3-D, ...
    return ba + (n, k), bb + (k, m)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_matmul(device, float64, data, seed):
    sa, sb = data.draw(matmul_shapes(), label="shapes")
    a, b = data.draw(arrays(sa), label="a"), data.draw(arrays(sb), label="b")
    which = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]), label="grad")
    check_op(nanoar.matmul, np.matmul, [a, b], which, seed=seed)
    check_op(lambda x, y: x @ y, np.matmul, [a, b], seed=seed)


MATMUL_LAYOUTS = [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4)), ((3,), (2, 3, 4)),
                  ((2, 2, 3), (3,)), ((2, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)),
                  ((2, 1, 2, 3), (4, 3, 2)), ((1, 2, 3), (4, 1, 3, 2)), ((2, 3, 2, 3), (3, 4))]


@pytest.mark.parametrize("sa,sb", MATMUL_LAYOUTS, ids=[f"{a}@{b}" for a, b in MATMUL_LAYOUTS])
def test_matmul_layouts(device, float64, sa, sb):
    """Every layout once, deterministically: vectors, shared weights, broadcast batches."""
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    for which in [(True, True), (True, False), (False, True)]:
        check_op(nanoar.matmul, np.matmul, [a, b], which, seed=1)


# ============================================================================ reductions
REDUCTIONS = {
    "sum": (nanoar.sum, np.sum, arrays),
    "mean": (nanoar.mean, np.mean, arrays),
    "max": (nanoar.max, np.max, distinct_arrays),  # no ties: the kink is tested separately
    "logsumexp": (nanoar.logsumexp, lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
                  arrays),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@fixture_settings
@given(data=st.data(), seed=seeds)
def test_reduction(device, float64, name, data, seed):
    f, ref, values = REDUCTIONS[name]
    shape = data.draw(shapes(0 if name in ("sum", "mean") else 1, 3), label="shape")
    axis = data.draw(axes(len(shape)), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims")
    x = data.draw(values(shape), label="x")
    check_op(lambda t: f(t, axis, keepdims), lambda a: ref(a, axis=axis, keepdims=keepdims), [x], seed=seed)


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_methods(device, name):
    x = T(np.arange(24.0).reshape(2, 3, 4) % 7 + np.arange(24.0).reshape(2, 3, 4) / 100)
    ref = getattr(np, name)
    for axis, keepdims in [(None, False), (1, True), ((0, -1), False), (-2, False)]:
        np.testing.assert_allclose(host(getattr(x, name)(axis=axis, keepdims=keepdims)),
                                   ref(host(x), axis=axis, keepdims=keepdims), rtol=1e-6)


@pytest.mark.skipif(not hasattr(ops, "cumsum"), reason="nanoar.tensor has no cumsum")
@fixture_settings
@given(data=st.data(), seed=seeds)
def test_cumsum(device, float64, data, seed):
    shape = data.draw(shapes(1, 3), label="shape")
    axis = data.draw(axis_of(len(shape)), label="axis")
    x = data.draw(arrays(shape), label="x")
    check_op(lambda t: ops.cumsum(t, axis=axis), lambda a: np.cumsum(a, axis=axis), [x], seed=seed)


@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
@fixture_settings
@given(data=st.data(), seed=seeds)
def test_softmax_family(device, float64, name, data, seed):
    shape = data.draw(shapes(1, 3), label="shape")
    axis = data.draw(axis_of(len(shape)), label="axis")
    x = data.draw(arrays(shape, -5, 5), label="x")
    if name == "softmax":
        f, ref = nanoar.softmax, lambda a: np.exp(a) / np.exp(a).sum(axis=axis, keepdims=True)
    else:
        f, ref = nanoar.log_softmax, lambda a: a - np.log(np.exp(a).sum(axis=axis, keepdims=True))
    check_op(lambda t: f(t, axis=axis), ref, [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_layer_norm(device, float64, data, seed):
    lead = data.draw(shapes(0, 2, max_side=3), label="lead")
    d = data.draw(st.integers(2, 5), label="D")
    x = data.draw(distinct_arrays(lead + (d,)), label="x")
    with_w, with_b = data.draw(st.booleans(), label="weight"), data.draw(st.booleans(), label="bias")
    w = data.draw(arrays((d,), 0.5, 2.0), label="w")
    b = data.draw(arrays((d,)), label="b")
    inputs = [x] + ([w] if with_w else []) + ([b] if with_b else [])

    def f(t, *wb):
        wb = list(wb)
        return nanoar.layer_norm(t, wb.pop(0) if with_w else None, wb.pop(0) if with_b else None)

    def ref(a, *wb):
        wb = list(wb)
        y = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
        if with_w:
            y = y * wb.pop(0)
        if with_b:
            y = y + wb.pop(0)
        return y
    check_op(f, ref, inputs, seed=seed, rtol32=2e-5)


# ============================================================================ shape ops
@st.composite
def reshape_cases(draw):
    shape = draw(shapes(0, 3))
    size = int(np.prod(shape))
    candidates = [(size,), (-1,), tuple(reversed(shape)), (1,) + shape, shape + (1,), (1, size, 1)]
    if len(shape) >= 2:
        candidates += [(shape[0], -1), (-1, shape[-1]), (shape[0] * shape[1],) + shape[2:]]
    return shape, draw(st.sampled_from(candidates))


@fixture_settings
@given(case=reshape_cases(), data=st.data(), seed=seeds)
def test_reshape(device, float64, case, data, seed):
    shape, new = case
    x = data.draw(arrays(shape), label="x")
    check_op(lambda t: nanoar.reshape(t, new), lambda a: a.reshape(new), [x], seed=seed)
    check_op(lambda t: t.reshape(*new), lambda a: a.reshape(new), [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_transpose_permute(device, float64, data, seed):
    shape = data.draw(shapes(1, 4, max_side=3), label="shape")
    nd = len(shape)
    perm = data.draw(st.permutations(range(nd)), label="perm")
    perm = tuple(a - nd if data.draw(st.booleans()) else a for a in perm)  # negative axes too
    x = data.draw(arrays(shape), label="x")
    check_op(lambda t: nanoar.transpose(t, perm), lambda a: np.transpose(a, perm), [x], seed=seed)
    check_op(lambda t: nanoar.permute(t, perm), lambda a: np.transpose(a, perm), [x], seed=seed)
    check_op(lambda t: t.T, lambda a: a.T, [x], seed=seed)
    check_op(lambda t: t.transpose(*perm), lambda a: np.transpose(a, perm), [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_getitem_basic(device, float64, data, seed):
    shape = data.draw(shapes(1, 3), label="shape")
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True), label="index")
    x = data.draw(arrays(shape), label="x")
    check_op(lambda t: t[index], lambda a: np.asarray(a[index]), [x], seed=seed)


@st.composite
def advanced_indices(draw, shape):
    """Integer-array indices (repeats and negatives likely) in several arrangements."""
    kind = draw(st.sampled_from(["array", "list", "slice+array", "two-arrays"] if len(shape) >= 2
                                else ["array", "list"]))
    r = draw(st.integers(1, 6))
    if kind == "array":
        return draw(index_arrays(shape[0], (r,), allow_negative=True))
    if kind == "list":
        return [int(i) for i in draw(index_arrays(shape[0], (r,), allow_negative=True))]
    if kind == "slice+array":
        return slice(None), draw(index_arrays(shape[1], (r,), allow_negative=True))
    s = draw(st.integers(1, 3))  # broadcasting (r, 1) with (1, s)
    return (draw(index_arrays(shape[0], (r, 1), allow_negative=True)),
            draw(index_arrays(shape[1], (1, s), allow_negative=True)))


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_getitem_integer_arrays(device, float64, data, seed):
    """Repeated indices: the backward must scatter-add, not assign."""
    shape = data.draw(shapes(1, 3), label="shape")
    index = data.draw(advanced_indices(shape), label="index")
    x = data.draw(arrays(shape), label="x")
    on_device = tuple(dev(i) if isinstance(i, np.ndarray) else i for i in index) if isinstance(index, tuple) \
        else (dev(index) if isinstance(index, np.ndarray) else index)
    check_op(lambda t: t[on_device], lambda a: a[index], [x], seed=seed)


def test_getitem_repeated_indices_accumulate(device):
    x = T(np.arange(4.0), requires_grad=True)
    x[dev(np.array([1, 1, 1, 3, -1]))].backward(dev([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(host(x.grad), [0.0, 6.0, 0.0, 9.0])


@st.composite
def gather_cases(draw):
    """x shape, index shape (broadcasting against x off the axis, both ways), axis."""
    xs = draw(shapes(1, 3))
    nd = len(xs)
    axis = draw(axis_of(nd))
    ax = axis % nd
    ish = []
    for i, n in enumerate(xs):
        if i == ax:
            ish.append(draw(st.integers(1, 4)))
        elif n == 1:
            ish.append(draw(st.integers(1, 3)))  # x broadcast against the index
        else:
            ish.append(draw(st.sampled_from([n, 1])))  # the index broadcast against x
    return xs, tuple(ish), axis


@fixture_settings
@given(case=gather_cases(), data=st.data(), seed=seeds)
def test_gather(device, float64, case, data, seed):
    xs, ish, axis = case
    index = data.draw(index_arrays(xs[axis], ish), label="index")
    x = data.draw(arrays(xs), label="x")
    check_op(lambda t: nanoar.gather(t, dev(index), axis=axis),
             lambda a: np.take_along_axis(a, index, axis=axis), [x], seed=seed)


def test_gather_repeated_picks_accumulate(device):
    x = T(np.zeros((2, 3)), requires_grad=True)
    y = nanoar.gather(x, dev(np.array([[2, 2, 0], [1, 1, 1]])), axis=1)
    y.backward(dev(np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 3.0]])))
    np.testing.assert_array_equal(host(x.grad), [[4.0, 0.0, 3.0], [0.0, 6.0, 0.0]])


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_concatenate(device, float64, data, seed):
    base = data.draw(shapes(1, 3, max_side=3), label="base")
    axis = data.draw(axis_of(len(base)), label="axis")
    n = data.draw(st.integers(1, 3), label="n")
    xs = []
    for i in range(n):
        s = list(base)
        s[axis] = data.draw(st.integers(1, 3))
        xs.append(data.draw(arrays(tuple(s)), label=f"x{i}"))
    check_op(lambda *ts: nanoar.concatenate(list(ts), axis=axis), lambda *a: np.concatenate(a, axis=axis), xs, seed=seed)
    check_op(lambda *ts: nanoar.cat(ts, axis), lambda *a: np.concatenate(a, axis=axis), xs, seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_stack(device, float64, data, seed):
    shape = data.draw(shapes(0, 3, max_side=3), label="shape")
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    n = data.draw(st.integers(1, 3), label="n")
    xs = [data.draw(arrays(shape), label=f"x{i}") for i in range(n)]
    check_op(lambda *ts: nanoar.stack(list(ts), axis=axis), lambda *a: np.stack(a, axis=axis), xs, seed=seed)


@st.composite
def split_cases(draw):
    shape = draw(shapes(1, 3, max_side=4))
    axis = draw(axis_of(len(shape)))
    n = shape[axis]
    if draw(st.booleans()):
        sections = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    else:
        sections = sorted(draw(st.lists(st.integers(0, n), min_size=1, max_size=3)))
    return shape, axis, sections


@fixture_settings
@given(case=split_cases(), data=st.data(), seed=seeds)
def test_split(device, float64, case, data, seed):
    shape, axis, sections = case
    x = data.draw(arrays(shape), label="x")
    parts = nanoar.split(T(x), sections, axis)
    ref_parts = np.split(x, sections, axis=axis)
    assert [p.shape for p in parts] == [p.shape for p in ref_parts]
    # weight each part differently so a part's gradient landing in the wrong place shows
    check_op(lambda t: nanoar.concatenate([p * float(i + 1) for i, p in enumerate(nanoar.split(t, sections, axis))], axis),
             lambda a: np.concatenate([p * float(i + 1) for i, p in enumerate(np.split(a, sections, axis=axis))], axis),
             [x], seed=seed)


@fixture_settings
@given(data=st.data(), seed=seeds)
def test_embedding(device, float64, data, seed):
    v, d = data.draw(st.integers(1, 5), label="V"), data.draw(st.integers(1, 4), label="D")
    ids = data.draw(index_arrays(v, data.draw(shapes(1, 2, max_side=5), label="ids shape")), label="ids")
    w = data.draw(arrays((v, d)), label="weight")
    check_op(lambda t: nanoar.embedding(t, dev(ids)), lambda a: a[ids], [w], seed=seed)


def test_embedding_repeated_ids_accumulate(device):
    w = T(np.zeros((3, 2)), requires_grad=True)
    nanoar.embedding(w, dev(np.array([[2, 2], [2, 0]]))).backward(dev(np.arange(8.0).reshape(2, 2, 2)))
    np.testing.assert_array_equal(host(w.grad), [[6.0, 7.0], [0.0, 0.0], [0.0 + 2 + 4, 1.0 + 3 + 5]])


# ============================================================================ convolution
def conv2d_ref(x, w, b, padding):
    if isinstance(padding, int):
        padding = (padding, padding)
    (pt, pb), (pl, pr) = [(p, p) if isinstance(p, int) else p for p in padding]
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = w.shape[2:]
    ho, wo = xpad.shape[2] - kh + 1, xpad.shape[3] - kw + 1
    y = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = np.einsum("ncuv,ocuv->no", xpad[:, :, i:i + kh, j:j + kw], w)
    return y if b is None else y + b[None, :, None, None]


def conv1d_ref(x, w, b, padding, dilation):
    left, right = (padding, padding) if isinstance(padding, int) else padding
    xpad = np.pad(x, ((0, 0), (0, 0), (left, right)))
    k = w.shape[2]
    span = dilation * (k - 1) + 1
    to = xpad.shape[2] - span + 1
    y = np.zeros((x.shape[0], w.shape[0], to))
    for t in range(to):
        y[:, :, t] = np.einsum("ncj,ocj->no", xpad[:, :, t:t + span:dilation], w)
    return y if b is None else y + b[None, :, None]


@fixture_settings
@given(case=conv2d_cases(), data=st.data(), seed=seeds)
def test_conv2d(device, float64, case, data, seed):
    xs, ws, with_bias, padding = case
    x, w = data.draw(arrays(xs), label="x"), data.draw(arrays(ws), label="w")
    if with_bias:
        b = data.draw(arrays((ws[0],)), label="b")
        check_op(lambda t, u, c: nanoar.conv2d(t, u, c, padding=padding),
                 lambda t, u, c: conv2d_ref(t, u, c, padding), [x, w, b], seed=seed)
    else:
        check_op(lambda t, u: nanoar.conv2d(t, u, padding=padding),
                 lambda t, u: conv2d_ref(t, u, None, padding), [x, w], seed=seed)


@fixture_settings
@given(case=conv1d_cases(), data=st.data(), seed=seeds)
def test_conv1d(device, float64, case, data, seed):
    xs, ws, with_bias, padding, dilation = case
    x, w = data.draw(arrays(xs), label="x"), data.draw(arrays(ws), label="w")
    if with_bias:
        b = data.draw(arrays((ws[0],)), label="b")
        check_op(lambda t, u, c: nanoar.conv1d(t, u, c, padding=padding, dilation=dilation),
                 lambda t, u, c: conv1d_ref(t, u, c, padding, dilation), [x, w, b], seed=seed)
    else:
        check_op(lambda t, u: nanoar.conv1d(t, u, padding=padding, dilation=dilation),
                 lambda t, u: conv1d_ref(t, u, None, padding, dilation), [x, w], seed=seed)


def test_conv1d_causal_padding_is_causal(device):
    """With padding (d (k - 1), 0), output t depends on inputs <= t only, and T' == T."""
    k, d, t_len = 3, 2, 9
    x = T(np.random.default_rng(0).standard_normal((1, 2, t_len)), requires_grad=True)
    w = T(np.random.default_rng(1).standard_normal((1, 2, k)))
    y = nanoar.conv1d(x, w, padding=(d * (k - 1), 0), dilation=d)
    assert y.shape == (1, 1, t_len)
    g = np.zeros((1, 1, t_len))
    g[0, 0, 4] = 1.0
    y.backward(dev(g))
    assert not np.any(host(x.grad)[:, :, 5:]), "a causal output saw the future"
    assert np.all(host(x.grad)[0, :, [0, 2, 4]] != 0)  # taps at t - 4, t - 2, t


# ============================================================================ kinks
def test_relu_subgradient_at_zero_is_zero(device):
    x = T([-1.0, 0.0, -0.0, 2.0], requires_grad=True)
    nanoar.relu(x).backward(dev([3.0, 3.0, 3.0, 3.0]))
    np.testing.assert_array_equal(host(x.grad), [0.0, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(host(x.relu()), [0.0, 0.0, 0.0, 2.0])


@pytest.mark.parametrize("axis,keepdims", [(1, False), (1, True), (-1, False), (None, False), (None, True), ((0, 1), False)])
def test_max_ties_share_gradient_equally(device, axis, keepdims):
    xv = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x = T(xv, requires_grad=True)
    y = nanoar.max(x, axis, keepdims)
    np.testing.assert_array_equal(host(y), np.max(xv, axis=axis, keepdims=keepdims))
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(dev(g))
    ax = (0, 1) if axis is None else axis
    gk = g if keepdims else np.expand_dims(g, ax)
    hit = xv == xv.max(axis=ax, keepdims=True)
    expected = hit * gk / hit.sum(axis=ax, keepdims=True)
    np.testing.assert_allclose(host(x.grad), expected, rtol=1e-6)
    if axis == 1:
        np.testing.assert_allclose(host(x.grad)[1], np.full(3, gk[1].item() / 3), rtol=1e-6)
        assert host(x.grad)[0, 0] == 0 and host(x.grad)[0, 1] == host(x.grad)[0, 2]
    assert abs(host(x.grad).sum() - g.sum()) < 1e-5  # shared, not duplicated


# ============================================================================ stability
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stable_at_logits_of_magnitude_1e4(device, dtype):
    big = [-1e4, 1e4, 0.0]
    cases = [  # (op, value, gradient for an upstream gradient of ones)
        (nanoar.log_sigmoid, [-1e4, 0.0, -math.log(2)], [1.0, 0.0, 0.5]),
        (nanoar.softplus, [0.0, 1e4, math.log(2)], [0.0, 1.0, 0.5]),
        (nanoar.sigmoid, [0.0, 1.0, 0.5], [0.0, 0.0, 0.25]),
    ]
    for f, value, grad in cases:
        x = T(big, dtype, requires_grad=True)
        y = f(x)
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(host(y), value, rtol=1e-7, atol=0)
        y.backward(dev(np.ones(3)))
        assert np.all(np.isfinite(host(x.grad)))
        np.testing.assert_allclose(host(x.grad), grad, rtol=1e-7, atol=0)
    assert host(nanoar.log_sigmoid(T([-1e4], dtype)))[0] == -1e4
    assert host(nanoar.log_sigmoid(T([1e4], dtype)))[0] == 0.0

    logits = T([1e4, -1e4, 1e4, -1e4], dtype, requires_grad=True)
    y = nanoar.bernoulli_log_prob(logits, dev([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(host(y), [0.0, 0.0, -1e4, -1e4])
    y.backward(dev(np.ones(4)))
    np.testing.assert_array_equal(host(logits.grad), [0.0, 0.0, -1.0, 1.0])

    x = T([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]], dtype, requires_grad=True)
    ls = nanoar.log_softmax(x, axis=-1)
    lse = nanoar.logsumexp(x, axis=-1)
    sm = nanoar.softmax(x, axis=-1)
    np.testing.assert_array_equal(host(ls)[0], [0.0, -2e4, -1e4])
    np.testing.assert_allclose(host(ls)[1:], -math.log(3), rtol=1e-6)
    np.testing.assert_allclose(host(lse), [1e4, -1e4 + math.log(3), 1e4 + math.log(3)], rtol=1e-7)
    np.testing.assert_array_equal(host(sm)[0], [1.0, 0.0, 0.0])
    for y in (ls, lse, sm):
        assert np.all(np.isfinite(host(y)))
        g = np.random.default_rng(1).standard_normal(y.shape)
        x.grad = None
        y.backward(dev(g))
        assert np.all(np.isfinite(host(x.grad)))
        assert x.grad.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_family_accurate_in_the_tails(device, dtype):
    """Relative accuracy where the value is tiny (a cancelling formula would give 0)."""
    xv = np.array([-30.0, -20.0, -10.0, 10.0, 30.0])
    np.testing.assert_allclose(host(nanoar.sigmoid(T(xv, dtype))), sigmoid_ref(xv), rtol=1e-5)
    np.testing.assert_allclose(host(nanoar.softplus(T(xv, dtype))), softplus_ref(xv), rtol=1e-5)
    np.testing.assert_allclose(host(nanoar.log_sigmoid(T(xv, dtype))), -softplus_ref(-xv), rtol=1e-5)
    x = T(xv, dtype, requires_grad=True)
    nanoar.softplus(x).backward(dev(np.ones(5)))
    np.testing.assert_allclose(host(x.grad), sigmoid_ref(xv), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_of_all_minus_inf_row(device, dtype):
    x = T([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]], dtype, requires_grad=True)
    y = nanoar.logsumexp(x, axis=1)
    v = host(y)
    assert not np.isnan(v).any()
    assert v[0] == -np.inf
    np.testing.assert_allclose(v[1], np.log(1 + np.e), rtol=1e-6)
    yk = nanoar.logsumexp(x, axis=-1, keepdims=True)
    assert yk.shape == (2, 1) and host(yk)[0, 0] == -np.inf
    # a row with some -inf entries (masked logits): finite gradient, zero at the -inf entries
    x2 = T([[0.0, -np.inf, 1.0]], dtype, requires_grad=True)
    nanoar.logsumexp(x2, axis=1).backward(dev([2.0]))
    np.testing.assert_allclose(host(x2.grad), [[2 / (1 + np.e), 0.0, 2 * np.e / (1 + np.e)]], rtol=1e-6)


# ============================================================================ the engine
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_broadcast_gradient_has_operand_shape_and_dtype(device, dtype):
    rng = np.random.default_rng(0)
    av, bv, cv, sv = rng.standard_normal((3, 1)), rng.standard_normal((4,)), rng.standard_normal((2, 3, 4)), rng.standard_normal(())
    a, b, c, s = (T(v, dtype, requires_grad=True) for v in (av, bv, cv, sv))
    y = a * b + c * s
    assert y.shape == (2, 3, 4) and y.dtype == np.dtype(dtype)
    g = rng.standard_normal(y.shape)
    y.backward(dev(g))
    for t, expected in [(a, (g * bv).sum(axis=(0, 2))[:, None]), (b, (g * av).sum(axis=(0, 1))),
                        (c, g * sv), (s, (g * cv).sum())]:
        assert t.grad.shape == t.shape and t.grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(host(t.grad), expected, rtol=1e-5, atol=1e-5)


FLOAT32_CASES = {
    "x*0.5": lambda x: x * 0.5, "0.5*x": lambda x: 0.5 * x, "x/3.0": lambda x: x / 3.0, "3.0/x": lambda x: 3.0 / x,
    "x+1.5": lambda x: x + 1.5, "2.0-x": lambda x: 2.0 - x, "x**2": lambda x: x ** 2, "x**0.5": lambda x: x ** 0.5,
    "x**np.float64": lambda x: x ** np.float64(2.0), "x*np.float64": lambda x: x * np.float64(0.5),
    "x*np.float32": lambda x: x * np.float32(0.5), "2.0**x": lambda x: 2.0 ** x,
    "mean": lambda x: x.mean(), "mean-axis": lambda x: x.mean(axis=0), "sum": lambda x: x.sum(axis=1),
    "max": lambda x: x.max(axis=1), "exp": nanoar.exp, "log": nanoar.log, "sqrt": nanoar.sqrt, "tanh": nanoar.tanh,
    "sigmoid": nanoar.sigmoid, "relu": nanoar.relu, "gelu": nanoar.gelu, "softplus": nanoar.softplus,
    "log_sigmoid": nanoar.log_sigmoid, "logsumexp": nanoar.logsumexp, "log_softmax": nanoar.log_softmax,
    "softmax": nanoar.softmax,
    "layer_norm": lambda x: nanoar.layer_norm(x, T(np.full(4, 1.5), "float32"), T(np.full(4, 0.1), "float32")),
    "bernoulli-float64-targets": lambda x: nanoar.bernoulli_log_prob(x, dev(np.ones((3, 4)))),
    "bernoulli-bool-targets": lambda x: nanoar.bernoulli_log_prob(x, dev(np.ones((3, 4), bool))),
    "where-scalar": lambda x: nanoar.where(dev(np.eye(3, 4, dtype=bool)), x, 0.25),
    "conv2d": lambda x: nanoar.conv2d(x.reshape(1, 1, 3, 4), T(np.ones((2, 1, 2, 2)), "float32"),
                                      T(np.ones(2), "float32"), padding=1),
    "conv1d": lambda x: nanoar.conv1d(x.reshape(1, 3, 4), T(np.ones((2, 3, 2)), "float32"),
                                      T(np.ones(2), "float32"), padding=(2, 0), dilation=2),
    "matmul": lambda x: x @ T(np.ones((4, 2)), "float32"),
    "getitem": lambda x: x[dev(np.array([0, 0, 2]))], "gather": lambda x: nanoar.gather(x, dev(np.array([[1], [1], [3]]))),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_stays_float32(device, name):
    """No silent float64: Python and NumPy float constants take the tensor's dtype."""
    x = T(np.linspace(0.1, 2.0, 12).reshape(3, 4), "float32", requires_grad=True)
    y = FLOAT32_CASES[name](x)
    assert y.dtype == np.float32, f"{name}: forward made {y.dtype}"
    y.backward(dev(np.random.default_rng(0).standard_normal(y.shape)))
    assert x.grad.dtype == np.float32 and x.grad.shape == x.shape


def test_gradients_accumulate_when_a_tensor_is_used_twice(device):
    a = T([1.0, -2.0, 3.0], requires_grad=True)
    b = a + a
    c = b + b
    c.sum().backward()
    np.testing.assert_array_equal(host(a.grad), [4.0, 4.0, 4.0])
    g = np.array([0.5, -1.0, 2.0])
    d = a * a  # and across backward() calls
    d.backward(dev(g))
    np.testing.assert_allclose(host(a.grad), 4.0 + g * 2 * np.array([1.0, -2.0, 3.0]), rtol=1e-6)


def test_tensor_used_in_two_branches(device):
    av = np.array([0.3, -1.2, 2.0])
    a = T(av, requires_grad=True)
    h = a * 2.0  # a diamond: h feeds two branches that meet again
    y = h * h + nanoar.exp(h) + a.tanh()
    g = np.array([1.0, -0.5, 0.25])
    y.backward(dev(g))
    expected = g * (8 * av + 2 * np.exp(2 * av) + 1 - np.tanh(av) ** 2)
    np.testing.assert_allclose(host(a.grad), expected, rtol=1e-5)


def _mutation_cases():
    r = np.random.default_rng(0)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    pos = lambda *s: (r.random(s) + 0.5).astype(np.float32)  # noqa: E731
    return {
        "add": ([f32(3, 1), f32(4)], lambda a, b: a + b),
        "mul": ([f32(3, 4), f32(4)], lambda a, b: a * b),
        "div": ([f32(3, 4), pos(3, 4)], lambda a, b: a / b),
        "pow": ([pos(3), f32(3)], lambda a, b: a ** b),
        "matmul": ([f32(2, 3, 4), f32(4, 2)], lambda a, b: a @ b),
        "sum-max-mean": ([f32(3, 4)], lambda a: a.sum(axis=0) + a.max(axis=0) + a.mean(axis=0)),
        "unary": ([pos(5)], lambda a: a.exp() + a.log() + a.sqrt() + a.tanh() + a.relu() + nanoar.gelu(a)
                  + nanoar.sigmoid(a) + nanoar.softplus(a) + nanoar.log_sigmoid(a)),
        "softmax-family": ([f32(3, 4)], lambda a: nanoar.log_softmax(a) + nanoar.softmax(a) + nanoar.logsumexp(a, keepdims=True)),
        "layer_norm": ([f32(3, 4), f32(4), f32(4)], nanoar.layer_norm),
        "shape": ([f32(2, 3, 4)], lambda a: a.reshape(6, 4).T.transpose(1, 0)[1:, ::2]),
        "getitem": ([f32(5, 2)], lambda a: a[dev(np.array([0, 0, 4]))]),
        "gather": ([f32(3, 4)], lambda a: nanoar.gather(a, dev(np.array([[1, 1], [0, 3], [2, 2]])))),
        "concat-stack-split": ([f32(2, 3), f32(2, 3)],
                               lambda a, b: nanoar.concatenate(nanoar.split(nanoar.stack([a, b], 1), 2, 1), 0)),
        "where": ([f32(3, 4), f32(4)], lambda a, b: nanoar.where(dev(np.eye(3, 4, dtype=bool)), a, b)),
        "embedding": ([f32(4, 3)], lambda w: nanoar.embedding(w, dev(np.array([[1, 1], [3, 0]])))),
        "conv2d": ([f32(2, 2, 4, 4), f32(3, 2, 2, 2), f32(3)], lambda x, w, b: nanoar.conv2d(x, w, b, padding=((1, 0), (0, 1)))),
        "conv1d": ([f32(2, 2, 6), f32(3, 2, 3), f32(3)], lambda x, w, b: nanoar.conv1d(x, w, b, padding=(4, 0), dilation=2)),
        "bernoulli": ([f32(3, 4)], lambda a: nanoar.bernoulli_log_prob(a, dev(np.ones((3, 4), np.float32)))),
    }


@pytest.mark.parametrize("name", sorted(_mutation_cases()))
def test_inputs_and_upstream_gradient_not_mutated(device, name):
    arrays_in, f = _mutation_cases()[name]
    on_dev = [nanoar.to_device(a) for a in arrays_in]  # on 'cpu' the tensors share these arrays
    before = [a.copy() for a in arrays_in]
    ts = [Tensor(a, requires_grad=True) for a in on_dev]
    y = f(*ts)
    g = nanoar.to_device(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    g_before = host(g).copy()
    y.backward(g)
    for t, a, b in zip(ts, on_dev, before):
        np.testing.assert_array_equal(host(a), b)
        np.testing.assert_array_equal(host(t), b)
    np.testing.assert_array_equal(host(g), g_before)
    # the leaves own their gradients: updating one in place touches nothing else
    for t in ts:
        t.grad *= 0.0
    np.testing.assert_array_equal(host(g), g_before)


def test_leaf_gradients_do_not_alias():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    g = np.arange(3.0, dtype=np.float32)
    (a + b).backward(g)
    assert a.grad is not g and b.grad is not g and a.grad is not b.grad
    a.grad += 1.0
    np.testing.assert_array_equal(b.grad, [0.0, 1.0, 2.0])
    c = Tensor(np.ones(1), requires_grad=True)
    c.sum().backward()
    c.grad *= 2.0  # writeable, not a read-only broadcast view
    assert c.grad[0] == 2.0


def test_10000_deep_chain_backpropagates(device, float64):
    x = T([1.0, 2.0], requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward(dev([1.0, -1.0]))
    np.testing.assert_allclose(host(x.grad), [1.0001 ** 10_000, -(1.0001 ** 10_000)], rtol=1e-9)
    y = x
    for _ in range(10_000):
        y = y + 1.0
    del y  # dropping a deep graph that was never backpropagated is fine too


def test_backward_errors(device):
    x = T(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match="non-scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError) as e:
        (x * 2.0).backward(dev(np.ones((3, 2))))
    assert "(3, 2)" in str(e.value) and "(2, 3)" in str(e.value)
    with pytest.raises(RuntimeError, match="does not require grad"):
        T(np.ones(3)).sum().backward()

    y = (x * 3.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    h = x * 3.0  # an intermediate whose graph was freed cannot be backpropagated through again
    z = h.sum()
    z.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2.0).sum().backward()

    x.grad = None
    y = (x * 3.0).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(host(x.grad), np.full((2, 3), 9.0))


def test_no_grad_builds_no_graph(device):
    x = T([1.0, 2.0], requires_grad=True)
    assert nanoar.is_grad_enabled()
    with nanoar.no_grad():
        assert not nanoar.is_grad_enabled()
        y = (x * 2.0).exp().sum()
        with nanoar.no_grad():
            pass
        assert not nanoar.is_grad_enabled()  # nesting restores the outer state
    assert nanoar.is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._backward is None
    assert x.requires_grad
    with pytest.raises(RuntimeError):
        y.backward()
    with pytest.raises(KeyError):
        with nanoar.no_grad():
            raise KeyError
    assert nanoar.is_grad_enabled()
    assert (x * 2.0).requires_grad
    d = x.detach()
    assert not d.requires_grad and d.data is x.data


def test_graph_is_freed_after_backward(device):
    import weakref

    x = T(np.ones(4), requires_grad=True)
    h = x * 3.0
    saved = weakref.ref(h.data)  # an array only the graph keeps alive once h is gone
    y = h.exp().sum()
    del h
    assert saved() is not None
    y.backward()
    assert saved() is None, "backward() left the graph's saved arrays alive"
    assert y._parents == ()

    h = x * 3.0
    saved = weakref.ref(h.data)
    y = h.exp().sum()
    del h
    y.backward(retain_graph=True)
    assert saved() is not None and len(y._parents) == 1


def test_training_loop_does_not_grow_memory(device):
    """200 SGD steps of a 2-layer MLP (matmul, relu, log_softmax, gather): flat RSS and
    Tensor count between step 50 and step 200, with the cycle collector off (so the graph
    must be freed by reference counting alone)."""
    rng = np.random.default_rng(0)
    xb = nanoar.to_device(rng.standard_normal((64, 20)).astype(np.float32))
    labels = nanoar.to_device(rng.integers(0, 10, size=(64, 1)))
    params = [T(rng.standard_normal((20, 32)) * 0.3, "float32", True), T(np.zeros(32), "float32", True),
              T(rng.standard_normal((32, 10)) * 0.3, "float32", True), T(np.zeros(10), "float32", True)]
    w1, b1, w2, b2 = params

    def step():
        h = nanoar.relu(Tensor(xb) @ w1 + b1)
        logp = nanoar.log_softmax(h @ w2 + b2, axis=-1)
        loss = -nanoar.gather(logp, labels, axis=1).mean()
        loss.backward()
        for p in params:
            p.data -= 0.1 * p.grad
            p.grad = None
        return loss.item()

    gc.collect()
    gc.disable()
    try:
        losses = [step() for _ in range(50)]
        rss50, n50 = rss_bytes(), live_tensors()
        losses += [step() for _ in range(150)]
        rss200, n200 = rss_bytes(), live_tensors()
    finally:
        gc.enable()
    assert losses[-1] < losses[0]
    assert n200 <= n50, f"live Tensors grew from {n50} to {n200}"
    assert rss200 - rss50 < 4 * 2**20, f"RSS grew by {(rss200 - rss50) / 2**20:.1f} MiB"
    for p in params:
        assert p.dtype == np.float32


# ============================================================================ bad input
MISMATCHES = {
    "add": (lambda: T(np.ones((2, 3))) + T(np.ones(4)), ["(2, 3)", "(4,)"]),
    "sub": (lambda: T(np.ones((2, 3))) - T(np.ones((3, 2))), ["(2, 3)", "(3, 2)"]),
    "mul": (lambda: T(np.ones((2, 3))) * T(np.ones((3, 2))), ["(2, 3)", "(3, 2)"]),
    "div": (lambda: T(np.ones((5,))) / T(np.ones((2,))), ["(5,)", "(2,)"]),
    "matmul": (lambda: T(np.ones((2, 3))) @ T(np.ones((4, 5))), ["(2, 3)", "(4, 5)"]),
    "matmul-1d": (lambda: T(np.ones(3)) @ T(np.ones(4)), ["(3,)", "(4,)"]),
    "matmul-batch": (lambda: T(np.ones((2, 2, 3))) @ T(np.ones((3, 3, 1))), ["(2, 2, 3)", "(3, 3, 1)"]),
    "concatenate": (lambda: nanoar.concatenate([T(np.ones((2, 3))), T(np.ones((2, 4)))], axis=0), ["(2, 3)", "(2, 4)"]),
    "stack": (lambda: nanoar.stack([T(np.ones((2, 3))), T(np.ones((3, 2)))]), ["(2, 3)", "(3, 2)"]),
    "conv2d": (lambda: nanoar.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((3, 4, 3, 3)))), ["(1, 2, 5, 5)", "(3, 4, 3, 3)"]),
    "conv1d": (lambda: nanoar.conv1d(T(np.ones((1, 2, 5))), T(np.ones((3, 4, 3)))), ["(1, 2, 5)", "(3, 4, 3)"]),
    "reshape": (lambda: T(np.ones((2, 3))).reshape(4, 2), ["(2, 3)", "(4, 2)"]),
    "where": (lambda: nanoar.where(dev(np.ones(2, bool)), T(np.ones(3)), T(np.ones(4))), ["(3,)", "(4,)"]),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_shape_mismatch_names_both_shapes(device, name):
    call, named = MISMATCHES[name]
    with pytest.raises(ValueError) as e:
        call()
    for s in named:
        assert s in str(e.value), f"{name}: {s} not in {e.value!s}"


def test_integer_and_boolean_data_become_float(device):
    for data in ([1, 2, 3], dev(np.array([1, 2, 3])), dev(np.array([1, 0, 1], np.uint8)),
                 dev(np.array([True, False, True])), [True, False, True], 7, np.int64(7), np.float64(0.5)):
        t = Tensor(data)
        assert t.dtype == np.float32, f"{data!r} gave {t.dtype}"
        assert isinstance(t.data, type(nanoar.xp().zeros(1)))  # an array, never a NumPy scalar
    np.testing.assert_array_equal(host(Tensor([True, False])), [1.0, 0.0])
    assert Tensor([1, 2], dtype="float64").dtype == np.float64


def test_float32_default_and_float64_on_request(device):
    assert nanoar.default_dtype() == np.float32
    assert Tensor([1.0]).dtype == np.float32 and Tensor(dev(np.ones(2))).dtype == np.float32
    nanoar.set_default_dtype("float64")
    try:
        assert Tensor([1.0]).dtype == np.float64 and Tensor([1]).dtype == np.float64
        assert Tensor(dev(np.ones(2, np.float32))).dtype == np.float64
    finally:
        nanoar.set_default_dtype("float32")
    with nanoar.default_dtype_as("float64"):
        assert Tensor([1.0]).dtype == np.float64
    assert Tensor([1.0]).dtype == np.float32
    for bad in ("int32", "float16", "complex64"):
        with pytest.raises(ValueError):
            nanoar.set_default_dtype(bad)


@pytest.mark.parametrize("data", [np.array([1 + 2j]), [1 + 2j], 1j, np.array([object()], dtype=object),
                                  "abc", ["a", "b"], [[1, 2], [3]], None, {"a": 1}],
                         ids=["complex-array", "complex-list", "complex", "object-array", "str", "str-list",
                              "ragged", "None", "dict"])
def test_refuses_complex_object_and_str_data(data):
    with pytest.raises(TypeError, match="Tensor"):
        Tensor(data)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_detect_anomaly_names_the_first_nan_op(device):
    x = T([1.0, -1.0])
    with nanoar.detect_anomaly():
        with pytest.raises(FloatingPointError, match="'log'"):
            (x.log() * 2.0).exp()
        with pytest.raises(FloatingPointError, match="'sqrt'"):
            (x - 0.5).sqrt().sum()
        y = x * 2.0  # no NaN, no error
    assert np.isnan(host(x.log())).any()  # off outside the context
    with pytest.raises(FloatingPointError):
        with nanoar.detect_anomaly():
            nanoar.sqrt(T([-1.0]))
    nanoar.sqrt(T([-1.0]))  # the flag was restored after the exception
    assert y.shape == (2,)


def test_ids_out_of_range_raise_index_error_with_the_range(device):
    w = T(np.ones((5, 2)))
    for ids in ([0, 5], [-1, 2]):
        with pytest.raises(IndexError, match=r"\[0, 5\)"):
            nanoar.embedding(w, dev(np.array(ids)))
    with pytest.raises(TypeError, match="integers"):
        nanoar.embedding(w, dev(np.array([0.0, 1.0])))
    x = T(np.ones((2, 4)))
    for idx in ([[4], [0]], [[-1], [0]]):
        with pytest.raises(IndexError, match=r"\[0, 4\)"):
            nanoar.gather(x, dev(np.array(idx)), axis=1)
    with pytest.raises(IndexError, match=r"\(2, 4\)"):
        x[dev(np.array([2]))]
    for index in ((slice(None), dev(np.array([4]))), (Ellipsis, dev(np.array([-5]))),
                  (dev(np.array([0])), dev(np.array([9])))):
        with pytest.raises(IndexError, match=r"axis 1 with size 4"):
            x[index]
    assert host(x[Ellipsis, dev(np.array([-4, 3]))].data).shape == (2, 2)
