"""Optimisers that update parameters in place, and gradient-norm clipping.

Each optimiser keeps its per-parameter state as arrays of the parameter's device and
dtype; `state_dict()` / `load_state_dict()` give it to checkpoints.
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
    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr = lr
        self.step_count = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

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
        for p in self.params:
            if p.grad is not None:
                p.data -= self.lr * p.grad


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), optionally with decoupled weight decay (AdamW).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd p.
    Weight decay, as in GPT-2 and nanoGPT, applies to matrices (ndim >= 2) only, never to
    biases or LayerNorm gains. All updates are in place on preallocated buffers.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        xp = backend.array_module(self.params[0].data)
        self.m = [xp.zeros_like(p.data) for p in self.params]
        self.v = [xp.zeros_like(p.data) for p in self.params]
        self._tmp = [xp.empty_like(p.data) for p in self.params]

    def _buffers(self) -> dict:
        return {"m": self.m, "v": self.v}

    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        xp = backend.array_module(self.params[0].data)
        step_size = self.lr / (1 - self.b1 ** t)
        inv_bc2 = 1.0 / math.sqrt(1 - self.b2 ** t)
        for p, m, v, tmp in zip(self.params, self.m, self.v, self._tmp):
            g = p.grad
            if g is None:
                continue
            if self.weight_decay and p.data.ndim >= 2:
                p.data *= 1.0 - self.lr * self.weight_decay
            m *= self.b1
            xp.multiply(g, 1.0 - self.b1, out=tmp)
            m += tmp
            v *= self.b2
            xp.multiply(g, g, out=tmp)
            tmp *= 1.0 - self.b2
            v += tmp
            xp.sqrt(v, out=tmp)
            tmp *= inv_bc2
            tmp += self.eps
            xp.divide(m, tmp, out=tmp)
            tmp *= step_size
            p.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), default 0.01."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
