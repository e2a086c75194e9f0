"""Shared hypothesis strategies for the property tests of nanoar's ops.

Everything here draws host (NumPy, float64) data; the tests move it to the current device
with `nanoar.to_device`. Values stay away from the places where a finite difference is
meaningless: kinks (relu at 0, ties in max), the edges of a domain (log, sqrt and pow at 0),
and near-constant rows (layer_norm).

    from strategies import fixture_settings, arrays, broadcastable_shapes, ...
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# The `device` and `float64` fixtures are function-scoped but only select the device and the
# default dtype, which no example changes, so one setup per test (not per example) is right.
# Built after conftest loaded the profile ('ci' or 'thorough'), whose other settings it keeps.
fixture_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow, HealthCheck.data_too_large])

# Seeds for the random upstream gradient of `nanoar.gradcheck` (never all ones).
seeds = st.integers(0, 2**16)


# ----------------------------------------------------------------------------- shapes
def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Array shapes, size-1 dims included (they are the ones broadcasting gets wrong)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3):
    """A tuple of `num_shapes` shapes that broadcast together (size-1 and missing dims)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side,
    ).map(lambda b: b.input_shapes)


@st.composite
def axes(draw, ndim, allow_none=True):
    """An `axis` argument for a reduction over a tensor of `ndim` dims: None, an int or a
    tuple of distinct axes, each possibly negative."""
    if ndim == 0:
        return None
    kinds = ["int", "tuple"] + (["none"] if allow_none else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in picked)


@st.composite
def axis_of(draw, ndim):
    """One axis of a tensor of `ndim` >= 1 dims, as a positive or negative int."""
    return draw(st.integers(-ndim, ndim - 1))


# ----------------------------------------------------------------------------- values
def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape, lo=-3.0, hi=3.0):
    """float64 arrays of `shape` with values in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


def positive_arrays(shape, lo=0.1, hi=4.0):
    """Values in [lo, hi], lo > 0: the domain of log, sqrt and a real power."""
    return arrays(shape, lo, hi)


def nonzero_arrays(shape, lo=0.5, hi=3.0):
    """Values with lo <= |x| <= hi: denominators, and relu away from its kink at 0."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi) | floats(-hi, -lo))


def away_from_zero(shape):
    """For relu: no entry within 0.05 of the kink (finite differences use eps = 1e-6)."""
    return nonzero_arrays(shape, lo=0.05, hi=3.0)


def distinct_arrays(shape, lo=-3.0, hi=3.0, spacing=1 / 64):
    """Pairwise distinct values on a grid of `spacing` (exact in float32 and float64).

    For max (no ties, and the argmax cannot flip under a perturbation of 1e-6) and for
    layer_norm (no near-constant row, whose normalisation is ill-conditioned).
    """
    n_lo, n_hi = int(np.ceil(lo / spacing)), int(np.floor(hi / spacing))
    return hnp.arrays(np.int64, shape, elements=st.integers(n_lo, n_hi), unique=True).map(
        lambda a: a.astype(np.float64) * spacing)


def binary_arrays(shape):
    """0/1 targets (as float64) for bernoulli_log_prob."""
    return hnp.arrays(np.bool_, shape).map(lambda a: a.astype(np.float64))


def index_arrays(n, shape, allow_negative=False):
    """Integer indices into an axis of size `n`; repeats are likely (and meant)."""
    lo = -n if allow_negative else 0
    return hnp.arrays(np.int64, shape, elements=st.integers(lo, n - 1))


# ----------------------------------------------------------------------------- convolution cases
@st.composite
def conv2d_cases(draw):
    """(x_shape, w_shape, with_bias, padding) for conv2d: kernels 1..3, padding as an int,
    an (ph, pw) pair or asymmetric ((top, bottom), (left, right)) pairs."""
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["int", "pair", "pairs"]))
    if kind == "int":
        p = draw(st.integers(0, 2))
        padding, (pt, pb), (pl, pr) = p, (p, p), (p, p)
    elif kind == "pair":
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        padding, (pt, pb), (pl, pr) = (ph, pw), (ph, ph), (pw, pw)
    else:
        pt, pb, pl, pr = (draw(st.integers(0, 2)) for _ in range(4))
        padding = ((pt, pb), (pl, pr))
    h = draw(st.integers(max(1, kh - pt - pb), 5))
    w = draw(st.integers(max(1, kw - pl - pr), 5))
    return (n, c, h, w), (o, c, kh, kw), draw(st.booleans()), padding


@st.composite
def conv1d_cases(draw):
    """(x_shape, w_shape, with_bias, padding, dilation) for conv1d: dilation 1..3, padding
    none, causal (d (k - 1), 0), symmetric int, or an arbitrary (left, right) pair."""
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    k, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["none", "causal", "symmetric", "pair"]))
    if kind == "none":
        padding, left, right = 0, 0, 0
    elif kind == "causal":
        padding, left, right = (d * (k - 1), 0), d * (k - 1), 0
    elif kind == "symmetric":
        p = draw(st.integers(0, 3))
        padding, left, right = p, p, p
    else:
        left, right = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        padding = (left, right)
    t = draw(st.integers(max(1, d * (k - 1) + 1 - left - right), 7))
    return (n, c, t), (o, c, k), draw(st.booleans()), padding, d
