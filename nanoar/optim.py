"""Optimisers that update parameters in place, and gradient-norm clipping.

Each optimiser keeps the parameters and its state in flat buffers of the parameters'
device and dtype (see `Optimizer`); `state_dict()` / `load_state_dict()` give the state
to checkpoints as one array per parameter, views of those buffers.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their joint L2 norm is at most `max_norm`; returns the norm
    before clipping (a Python float: one device sync per call)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.array_module(grads[0])
    # one dot product per gradient (BLAS, no temporary), a single sync for the total
    total = math.sqrt(float(xp.stack([xp.dot(g.ravel(), g.ravel()) for g in grads]).sum()))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale  # not in place: a grad may alias an upstream array
    return total


class Optimizer:
    """The parameters' values and the optimiser's state live in flat buffers, so that on a
    GPU a step can be a dozen whole-buffer array calls however many parameters the model
    has (every array call is a kernel launch there).

    At construction every parameter's array becomes a view into the flat buffer `_flat`;
    matrices (ndim >= 2) come first there, so weight decay is one slice. A parameter whose
    array was replaced since (e.g. by `Module.load_state_dict`) is taken back in at the next
    step. Where `backend.prefers_few_calls()` (the GPU), the gradients are gathered with one
    concatenate and the update runs on whole buffers; on the CPU, where that gather would
    be an extra pass over memory, and whenever
    some parameter has no gradient, the update runs parameter by parameter on the same
    buffers (a parameter without a gradient is left alone, state and all).
    """

    def __init__(self, params, lr: float):
        self.params = list({id(p): p for p in params}.values())  # each parameter once
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        dtypes = {p.data.dtype for p in self.params}
        if len(dtypes) > 1:
            raise ValueError(f"optimizer: all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.lr = lr
        self.step_count = 0
        self.xp = backend.array_module(self.params[0].data)
        # matrices first: the weight-decayed part of the buffer is _flat[:_n_decay]
        self._layout = sorted(range(len(self.params)), key=lambda i: self.params[i].data.ndim < 2)
        self._segments = [None] * len(self.params)
        end = 0
        for i in self._layout:
            self._segments[i] = (end, end + self.params[i].size)
            end += self.params[i].size
        self._n_decay = sum(p.size for p in self.params if p.data.ndim >= 2)
        dtype = self.params[0].data.dtype
        self._flat = self.xp.empty(end, dtype)
        self._grad = self.xp.empty(end, dtype)
        self._views = [None] * len(self.params)
        for i in range(len(self.params)):
            self._adopt(i)
        self._packed, self._packed_views = None, []   # `pack_grads`

    def _adopt(self, i: int) -> None:
        """Copy parameter i's array into its segment and make the parameter a view of it."""
        p, (a, b) = self.params[i], self._segments[i]
        if p.size != b - a:
            raise ValueError(f"optimizer: parameter {i} changed size from {b - a} to {p.size}")
        backend.check_same_device(p.data, "optimizer: ")
        self._flat[a:b] = p.data.reshape(-1)
        p.data = self._views[i] = self._flat[a:b].reshape(p.data.shape)

    def _segment(self, buffer, i: int):
        """Parameter i's part of a flat buffer, in the parameter's shape."""
        a, b = self._segments[i]
        return buffer[a:b].reshape(self.params[i].data.shape)

    def _adopt_replaced(self) -> None:
        for i, p in enumerate(self.params):
            if p.data is not self._views[i]:
                self._adopt(i)

    def flat_parameters(self):
        """Every parameter's values as one flat array, of which the parameters are views
        (a data-parallel run broadcasts it from rank 0)."""
        self._adopt_replaced()
        return self._flat

    def pack_grads(self, spare: int = 0):
        """Every gradient copied into one flat array in the update's layout (zeros for a
        parameter without one, which keeps no gradient), each .grad then a view of it, with
        `spare` slots after them for the caller: the (n + spare,) array that a data-parallel
        step all-reduces in one call. The update then reads the gradients from it directly."""
        self._adopt_replaced()
        n = self._flat.size
        if self._packed is None or self._packed.size != n + spare:
            self._packed = self.xp.empty(n + spare, self._flat.dtype)
        self._packed_views = []
        for i in self._layout:
            p, (a, b) = self.params[i], self._segments[i]
            if p.grad is None:
                self._packed[a:b] = 0
            else:
                self._packed[a:b] = p.grad.reshape(-1)
                p.grad = self._packed[a:b].reshape(p.data.shape)
            self._packed_views.append(p.grad)
        return self._packed

    def _flat_grad(self):
        """All gradients as one flat array in the buffer's layout, for a whole-buffer update;
        None for a parameter-by-parameter one (see the class docstring)."""
        self._adopt_replaced()
        grads = [self.params[i].grad for i in self._layout]
        if self._packed_views and all(g is v and g is not None for g, v in zip(grads, self._packed_views)):
            return self._packed[:self._flat.size]    # packed and not replaced since (e.g. by clipping)
        if not backend.prefers_few_calls() or any(g is None for g in grads):
            return None
        return self.xp.concatenate([g.reshape(-1) for g in grads], out=self._grad)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        self._packed_views = []

    def _buffers(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        """{'step': n, 'lr': lr, '<buffer>.<i>': array}: arrays of the current device."""
        state = {"step": self.step_count, "lr": self.lr}
        for name, arrays in self._buffers().items():
            for i, a in enumerate(arrays):
                state[f"{name}.{i}"] = a
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.lr = int(state["step"]), float(state["lr"])
        for name, arrays in self._buffers().items():
            for i, a in enumerate(arrays):
                value = state[f"{name}.{i}"]
                if tuple(value.shape) != a.shape:
                    raise ValueError(f"optimizer state '{name}.{i}' has shape {tuple(value.shape)}, expected {a.shape}")
                a[...] = backend.to_device(np.asarray(value) if not backend.is_device_array(value) else value)


class SGD(Optimizer):
    """p <- p - lr * g (plain stochastic gradient descent)."""

    def step(self) -> None:
        self.step_count += 1
        g = self._flat_grad()
        if g is not None:
            self.xp.multiply(g, self.lr, out=self._grad)
            self._flat -= self._grad
            return
        for p in self.params:
            if p.grad is not None:
                p.data -= self.lr * p.grad


def _adam_update(xp, p, g, m, v, tmp, b1: float, b2: float, eps: float, step_size: float, inv_bc2: float) -> None:
    """One Adam update, in place, of arrays of one shape (whole buffers or one parameter's
    segments): m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - step_size m / (sqrt(v) inv_bc2 + eps), computed as
    p - (step_size / inv_bc2) m / (sqrt(v) + eps / inv_bc2): one pass over memory fewer."""
    m *= b1
    xp.multiply(g, 1.0 - b1, out=tmp)
    m += tmp
    v *= b2
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - b2
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += eps / inv_bc2
    xp.divide(m, tmp, out=tmp)
    tmp *= step_size / inv_bc2
    p -= tmp


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), optionally with decoupled weight decay (AdamW).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd p.
    Weight decay, as in GPT-2 and nanoGPT, applies to matrices (ndim >= 2) only, never to
    biases or LayerNorm gains. All updates are in place on the flat buffers.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self._m = self.xp.zeros_like(self._flat)
        self._v = self.xp.zeros_like(self._flat)
        self._tmp = self.xp.empty_like(self._flat)

    def _buffers(self) -> dict:
        n = len(self.params)
        return {"m": [self._segment(self._m, i) for i in range(n)], "v": [self._segment(self._v, i) for i in range(n)]}

    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        hyper = (self.b1, self.b2, self.eps, self.lr / (1 - self.b1 ** t), 1.0 / math.sqrt(1 - self.b2 ** t))
        keep = 1.0 - self.lr * self.weight_decay
        g = self._flat_grad()
        if g is not None:
            if self.weight_decay:
                self._flat[:self._n_decay] *= keep
            _adam_update(self.xp, self._flat, g, self._m, self._v, self._tmp, *hyper)
            return
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.weight_decay and p.data.ndim >= 2:
                p.data *= keep
            m, v, tmp = (self._segment(buf, i) for buf in (self._m, self._v, self._tmp))
            _adam_update(self.xp, p.data, p.grad, m, v, tmp, *hyper)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), default 0.01."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
