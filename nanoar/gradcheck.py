"""Numerical gradient checking: central differences in float64.

    gradcheck(lambda a, b: (a * b).sum(axis=0), [a, b])

Every input that requires grad is perturbed one entry at a time by +-eps, the function's
output is contracted with a fixed random upstream gradient `gy` (never all ones, which hides
transposition and broadcasting mistakes), and (f(x + eps) - f(x - eps)) / (2 eps) is
compared with the analytic gradient from `backward(gy)`. With float64 inputs and
eps = 1e-6 the truncation error is O(eps^2 f''') and the rounding error O(1e-16 |f| / eps),
so atol = 1e-6, rtol = 1e-4 passes for smooth functions with inputs away from kinks.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .tensor import no_grad


def numeric_grad(f, inputs, gy, eps=1e-6):
    """Central-difference gradient of sum(f(*inputs) * gy) for each input with requires_grad."""
    grads = []
    for t in inputs:
        if not t.requires_grad:
            grads.append(None)
            continue
        g = np.zeros(t.shape, np.float64)
        for i in np.ndindex(*t.shape):  # perturb in place by index (any memory layout), restore after
            old = t.data[i].item()
            t.data[i] = old + eps
            with no_grad():
                fp = float((backend.to_numpy(f(*inputs).data) * gy).sum())
            t.data[i] = old - eps
            with no_grad():
                fm = float((backend.to_numpy(f(*inputs).data) * gy).sum())
            t.data[i] = old
            g[i] = (fp - fm) / (2 * eps)
        grads.append(g)
    return grads


def gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Assert that backward() of `f` matches central differences for every input.

    `inputs` are float64 Tensors (a float32 input raises: finite differences in float32 are
    too coarse to check anything). Returns True, or raises AssertionError naming the input,
    the worst entry, and both values.
    """
    for t in inputs:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs, got {t.dtype}; use nanoar.set_default_dtype('float64')")
    for t in inputs:
        t.grad = None
    y = f(*inputs)
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(backend.to_device(gy))
    numeric = numeric_grad(f, inputs, gy, eps)
    for k, (t, num) in enumerate(zip(inputs, numeric)):
        if num is None:
            continue
        ana = np.zeros(t.shape) if t.grad is None else backend.to_numpy(t.grad)
        if ana.shape != num.shape:
            raise AssertionError(f"input {k}: analytic gradient shape {ana.shape} != input shape {num.shape}")
        err = np.abs(ana - num) - (atol + rtol * np.abs(num))
        if (err > 0).any():
            i = np.unravel_index(np.argmax(err), err.shape)
            raise AssertionError(
                f"input {k} (shape {t.shape}): gradient mismatch at {tuple(int(j) for j in i)}: "
                f"analytic {ana[i]:.8g}, numeric {num[i]:.8g} (atol {atol}, rtol {rtol})")
    return True
