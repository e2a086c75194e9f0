"""Modules: parameters, composition, state dicts, and the masked and causal layers.

A `Module` finds its parameters by walking its attributes (Parameters, sub-Modules, and
lists of Modules), so `parameters()` and `state_dict()` need no registration. Masks are
buffers: arrays that are saved in `state_dict` (a checkpoint is self-contained) but never
trained.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor, concatenate, conv1d, conv2d, embedding, layer_norm, matmul, sigmoid, split, tanh


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad=True, found by `parameters()`."""

    __slots__ = ()

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


# Initialisers: values are drawn on the host from the backend's seeded host generator and
# copied to the device once, so one seed gives the same weights on every device.
def init_uniform(shape, bound: float) -> Parameter:
    """A Parameter ~ U(-bound, bound) in the default dtype."""
    w = backend.host_rng().uniform(-bound, bound, size=shape).astype(backend.default_dtype())
    return Parameter(backend.to_device(w))


def init_normal(shape, std: float) -> Parameter:
    """A Parameter ~ N(0, std^2) in the default dtype."""
    w = (std * backend.host_rng().standard_normal(shape)).astype(backend.default_dtype())
    return Parameter(backend.to_device(w))


def init_constant(shape, value: float) -> Parameter:
    """A Parameter filled with `value` (biases at 0, LayerNorm gains at 1)."""
    return Parameter(backend.xp().full(shape, value, backend.default_dtype()))


class Module:
    """Base class: subclasses set Parameters / Modules as attributes and define `forward`."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def register_buffer(self, name: str, array) -> None:
        """An array that belongs to the module's state (a mask) but is not trained."""
        names = self.__dict__.setdefault("_buffer_names", [])
        if name not in names:
            names.append(name)
        setattr(self, name, array)

    def _children(self):
        for name, v in vars(self).items():
            if isinstance(v, Module):
                yield name, v
            elif isinstance(v, (list, tuple)):
                for i, m in enumerate(v):
                    if isinstance(m, Module):
                        yield f"{name}.{i}", m

    def named_parameters(self, prefix: str = ""):
        for name, v in vars(self).items():
            if isinstance(v, Parameter):
                yield prefix + name, v
        for name, child in self._children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for name in vars(self).get("_buffer_names", []):
            yield prefix + name, getattr(self, name)
        for name, child in self._children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return int(np.sum([p.size for p in self.parameters()]))

    def state_dict(self) -> dict:
        """Flat {'path.to.weight': array} of parameters and buffers (device arrays)."""
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays (NumPy or of the current device) into the parameters and buffers.

        Keys and shapes must match exactly; host arrays are copied to the device explicitly.
        """
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"load_state_dict: '{name}' has shape {tuple(value.shape)}, expected {own[name].shape}")
        params = dict(self.named_parameters())
        for name, value in state.items():
            value = backend.to_device(value).astype(own[name].dtype, copy=False)
            if name in params:
                params[name].data = value.copy()
            else:
                module, attr = self._owner(name)
                setattr(module, attr, value.copy())

    def _owner(self, path: str):
        """The module holding the attribute at `path`, and the attribute's name."""
        module = self
        *parts, attr = path.split(".")
        for part in parts:
            module = module[int(part)] if isinstance(module, (list, tuple)) else getattr(module, part)
        return module, attr


class Linear(Module):
    """y = x W + b.  x: (..., in) -> y: (..., out); W: (in, out), U(+-1/sqrt(in)) init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        bound = 1.0 / math.sqrt(in_features)
        self.weight = init_uniform((in_features, out_features), bound)
        self.bias = init_uniform((out_features,), bound) if bias else None

    def forward(self, x):
        y = matmul(x, self.weight)
        return y if self.bias is None else y + self.bias


class MaskedLinear(Linear):
    """y = x (W * M) + b with a 0/1 mask M: (in, out); x: (..., in) -> y: (..., out).

    The mask is multiplied in on every forward, so a masked weight has no effect on the
    output and receives exactly zero gradient. A mask given here is the layer's own buffer
    (saved in its state_dict); `mask=None` leaves it to the owner to point `self.mask` at
    one of its own masks (MADE keeps K mask sets from degrees and switches between them).

    `mask_input=True` also feeds the layer its mask, y = x (W * M) + 1 (U * M) + b with a
    second weight U: (in, out), zero at first: each output unit learns a bias for the inputs
    it is connected to. When the mask changes from step to step (order-agnostic training),
    this tells a unit which of its inputs are absent, which x (W * M) alone cannot (an absent
    input and an input equal to 0 look the same); order-agnostic NADE feeds the mask to the
    network for the same reason.
    """

    def __init__(self, in_features: int, out_features: int, mask=None, bias: bool = True, mask_input: bool = False):
        super().__init__(in_features, out_features, bias)
        self.mask = None
        self.mask_weight = init_constant((in_features, out_features), 0.0) if mask_input else None
        if mask is not None:
            mask = np.asarray(backend.to_numpy(mask))
            if mask.shape != self.weight.shape:
                raise ValueError(f"MaskedLinear: mask shape {mask.shape} != weight shape {self.weight.shape} (in, out)")
            self.register_buffer("mask", backend.to_device(mask.astype(backend.default_dtype())))

    def forward(self, x):
        y = matmul(x, self.weight * self.mask)                  # (..., out)
        b = self.effective_bias()
        return y if b is None else y + b

    def effective_bias(self):
        """What the layer adds to x (W * M): b, plus 1 (U * M) with `mask_input` (out,) (a
        Tensor, or None without either)."""
        if self.mask_weight is None:
            return self.bias
        fed = (self.mask_weight * self.mask).sum(axis=0)        # (out,): 1 (U * M)
        return fed if self.bias is None else fed + self.bias


def pixelcnn_mask(out_channels: int, in_channels: int, k: int, mask_type: str) -> np.ndarray:
    """The (O, C, k, k) 0/1 mask of a raster-order masked convolution.

    With the kernel centred on pixel (i, j), it keeps the rows above and, in the centre row,
    the pixels to the left; type 'A' (first layer) excludes the centre pixel itself, type 'B'
    (later layers, whose centre already only saw the past) includes it.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if k % 2 == 0:
        raise ValueError(f"masked convolutions need an odd kernel size, got {k}")
    c = k // 2
    m = np.zeros((k, k))
    m[:c, :] = 1
    m[c, :c] = 1
    if mask_type == "B":
        m[c, c] = 1
    return np.broadcast_to(m, (out_channels, in_channels, k, k)).copy()


class Conv2d(Module):
    """x: (N, C, H, W) -> y: (N, O, H', W'); stride 1, `padding` as in `conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0, bias: bool = True):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = init_uniform((out_channels, in_channels, kh, kw), bound)
        self.bias = init_uniform((out_channels,), bound) if bias else None
        self.padding = padding

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.padding)


class MaskedConv2d(Conv2d):
    """A k x k convolution masked to raster order (type 'A' or 'B'), 'same' padding.

    x: (N, C, H, W) -> y: (N, O, H, W); output (i, j) sees only inputs before (i, j) in raster
    order (type A) or up to and including it (type B).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        mask = pixelcnn_mask(out_channels, in_channels, kernel_size, mask_type)
        self.register_buffer("mask", backend.to_device(mask.astype(backend.default_dtype())))

    def forward(self, x):
        return conv2d(x, self.weight * self.mask, self.bias, self.padding)


class Conv1d(Module):
    """x: (N, C, T) -> y: (N, O, T'); `padding` and `dilation` as in `conv1d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding=0,
                 dilation: int = 1, bias: bool = True):
        bound = 1.0 / math.sqrt(in_channels * kernel_size)
        self.weight = init_uniform((out_channels, in_channels, kernel_size), bound)
        self.bias = init_uniform((out_channels,), bound) if bias else None
        self.padding, self.dilation = padding, dilation

    def forward(self, x):
        return conv1d(x, self.weight, self.bias, self.padding, self.dilation)


class CausalConv1d(Conv1d):
    """A dilated convolution padded on the left only: y[t] sees x[t - d(k-1)], ..., x[t].

    x: (N, C, T) -> y: (N, O, T). Its receptive field is d (k - 1) + 1 steps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, (dilation * (kernel_size - 1), 0), dilation, bias)


def gated_activation(y, axis: int = 1) -> Tensor:
    """The gated unit of WaveNet and the gated PixelCNN: [a | b] = y split in halves along
    `axis`, z = tanh(a) * sigmoid(b).  y: (N, 2C, ...) -> z: (N, C, ...).

    tanh(a) carries the signal, sigmoid(b) in (0, 1) decides how much of it passes.
    """
    a, b = split(y, 2, axis=axis)
    return tanh(a) * sigmoid(b)


class Embedding(Module):
    """ids: int (...) -> y: (..., D), a table of V rows, N(0, std^2) init."""

    def __init__(self, num_embeddings: int, dim: int, std: float = 1.0):
        self.weight = init_normal((num_embeddings, dim), std)

    def forward(self, ids, check: bool = True):
        return embedding(self.weight, ids, check)


class LabelBias(Module):
    """A class-dependent bias: a learned row per class, added to a layer's pre-activation so
    that every conditional of a model also sees the label y (Conditional PixelCNN's V^T h with
    h the one-hot y). y: int (N,) in [0, n_labels) -> (N, width, 1, ..., 1), `trailing`
    singleton axes so that it broadcasts over the layer's spatial axes.

    Zero at initialisation: a conditional model starts as its unconditional one.
    """

    def __init__(self, n_labels: int, width: int):
        self.weight = init_constant((n_labels, width), 0.0)

    def forward(self, y, trailing: int = 0):
        rows = embedding(self.weight, y, check=False)     # (N, width): the labels were checked
        return rows.reshape(*rows.shape, *(1,) * trailing) if trailing else rows


class LayerNorm(Module):
    """Normalise the last axis to zero mean, unit variance, then scale and shift: (..., D)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        self.weight = init_constant((dim,), 1.0)
        self.bias = init_constant((dim,), 0.0) if bias else None
        self.eps = eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class LSTMCell(Module):
    """One LSTM step: (x: (N, I), h: (N, H), c: (N, H)) -> (h', c').

    [i, f, g, o] = [x, h] W + b;  c' = sigmoid(f) c + sigmoid(i) tanh(g);  h' = sigmoid(o) tanh(c').
    The forget-gate bias starts at 1 so early training keeps its memory.
    """

    def __init__(self, input_size: int, hidden_size: int):
        self.hidden_size = hidden_size
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight = init_uniform((input_size + hidden_size, 4 * hidden_size), bound)
        b = np.zeros(4 * hidden_size)
        b[hidden_size:2 * hidden_size] = 1.0
        self.bias = Parameter(backend.to_device(b.astype(backend.default_dtype())))

    def forward(self, x, state):
        h, c = state
        gates = matmul(concatenate([x, h], axis=-1), self.weight) + self.bias
        i, f, g, o = split(gates, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)
        return h, c
