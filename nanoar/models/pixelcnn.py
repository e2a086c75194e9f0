"""PixelCNN and Gated PixelCNN: autoregressive models of binary images in raster order.

An image x of H x W binary pixels is generated one pixel at a time, row by row, left to
right (raster order), so by the chain rule

    log p(x) = sum_{i,j} log p(x_ij | x_<ij),   x_<ij = rows above i, and row i left of j,
    p(x_ij = 1 | x_<ij) = sigmoid(f_ij(x_<ij)).

A convolutional network computes all H W logits f_ij in ONE pass over the whole image
(training and `log_prob` are fully parallel); masks and shifts make f_ij blind to x_ij and
to every pixel after it. Sampling is sequential (pixel (i, j) is drawn from the logit that
the pixels before it determine), and `sample(method='fast')` caches per-layer activations so
each new pixel costs one pixel's worth of work per layer instead of a full forward.

Shapes: data x (N, 1, H, W) of 0/1; logits (N, 1, H, W); `log_prob_per_variable` (N, 1, H, W);
`log_prob` (N,). `event_shape` is (1, H, W) and the ordering is the plain raster order.

- `PixelCNN` (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): a masked 7x7
  convolution of type A, residual blocks of masked 3x3 convolutions of type B, two 1x1
  convolutions, a Bernoulli head. Its stacked masks leave a BLIND SPOT: pixels up and to the
  right of (i, j) that are in the past and within the kernel's reach, yet never influence f_ij.
- `GatedPixelCNN` (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
  Decoders"): a vertical stack (everything in the rows above) and a horizontal stack (the
  current row, to the left) with gated units tanh(a) * sigmoid(b); no blind spot.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..distributions import Bernoulli
from ..nn import Conv2d, MaskedConv2d
from ..tensor import Tensor, no_grad, relu, sigmoid, sigmoid_array, tanh
from .base import AutoregressiveModel, check_count

__all__ = ["PixelCNN", "GatedPixelCNN"]


# ----------------------------------------------------------------------------- array helpers
# The samplers work on plain arrays of the current device (NumPy or CuPy): no graph, no
# Tensor per pixel. Channels-last buffers (n, rows, cols, C) make a k x k window one slice
# whose flattening (row, col, channel) matches `_window_matrix`.
def _gate(xp, a):
    """Gated unit on the last axis: (..., 2C) -> (..., C), tanh(first half) * sigmoid(second)."""
    c = a.shape[-1] // 2
    return xp.tanh(a[..., :c]) * sigmoid_array(a[..., c:])


def _window_matrix(weight, rows=None):
    """A conv weight (O, C, kh, kw) as the (kh' kw C, O) matrix that multiplies a flattened
    channels-last window (kh', kw, C); `rows` keeps only the first kernel rows (the rows of a
    raster mask below the centre are all zero, so they need not be read at all)."""
    w = weight if rows is None else weight[:, :, :rows, :]
    o = w.shape[0]
    xp = backend.array_module(w)
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, o))


def _matrix_1x1(conv):
    """A 1x1 Conv2d as (C, O) matrix and (O,) bias for channels-last rows (..., C)."""
    return _window_matrix(conv.weight.data), conv.bias.data


def _draw(xp, logit, u):
    """Bernoulli draw from logits with given uniforms: x = 1 iff u < sigmoid(logit).
    Both samplers call this with the same u, so equal logits give equal pixels."""
    return (u < sigmoid_array(logit)).astype(logit.dtype)


def _check_odd(name, k, minimum=1):
    if not isinstance(k, (int, np.integer)) or k < minimum or k % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {k!r}")
    return int(k)


def _check_positive(name, v, minimum=1):
    if not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


class _RasterImageModel(AutoregressiveModel):
    """Shared protocol code: binary images (N, 1, H, W) in raster order, a Bernoulli head on
    the logits of `forward`, and the two samplers ('naive' here, 'fast' in the subclass)."""

    kind = "binary"

    def _init_shape(self, height, width):
        self.height = _check_positive("height", height)
        self.width = _check_positive("width", width)
        self.event_shape = (1, self.height, self.width)

    @property
    def dtype(self):
        """The dtype of the parameters (float32, or float64 when built under that default)."""
        return self.out2.weight.dtype

    def _as_input(self, x) -> Tensor:
        """Validated data as a Tensor of the parameters' dtype; a Tensor of that dtype passes
        through unchanged (so gradients with respect to the input still reach it)."""
        a = self.check_data(x)
        if isinstance(x, Tensor) and x.dtype == self.dtype:
            return x
        return Tensor(a, dtype=self.dtype)

    def logits(self, x) -> Tensor:
        """Validated data (N, 1, H, W) -> logits f (N, 1, H, W); f_ij sees only x_<ij."""
        return self.forward(self._as_input(x))

    def log_prob_per_variable(self, x) -> Tensor:
        """log p(x_ij | x_<ij) = x_ij f_ij - softplus(f_ij): (N, 1, H, W) -> Tensor (N, 1, H, W)."""
        xt = self._as_input(x)
        return Bernoulli(self.forward(xt)).log_prob(xt.data)

    def sample(self, n: int, seed=None, method: str = "fast"):
        """Exact ancestral samples in raster order: array (n, 1, H, W) of 0/1 on the device.

        For every pixel in raster order one uniform vector u (n,) is drawn from the generator
        (`backend.make_rng(seed)`; seed=None uses the backend's), and x_ij = [u < p(x_ij = 1 |
        x_<ij)]. method='naive' runs the full network on the whole image for every pixel (the
        reference, H W full forwards); method='fast' computes each layer's output at one new
        position per pixel from cached activations (see `_sample_fast`). Both consume the
        same uniforms in the same order, so with the same seed they return the same images
        (their logits differ only by float rounding; a pixel could differ only if its u fell
        within that rounding of p, which the tests and the 28x28 benchmark never see).
        """
        n = check_count(n)
        if method not in ("fast", "naive"):
            raise ValueError(f"sample: method must be 'fast' or 'naive', got {method!r}")
        rng = backend.make_rng(seed)
        with no_grad():
            return self._sample_fast(n, rng) if method == "fast" else self._sample_naive(n, rng)

    def _sample_naive(self, n, rng):
        """H W full forward passes; pixel (i, j) is read off the logits of the partly filled
        image (the pixels after it are still zero, and f_ij cannot see them anyway)."""
        xp, dt = backend.xp(), self.dtype
        x = xp.zeros((n, 1, self.height, self.width), dt)
        for i in range(self.height):
            for j in range(self.width):
                logit = self.forward(Tensor(x, dtype=dt)).data[:, 0, i, j]
                u = rng.random((n,), dtype=dt)
                x[:, 0, i, j] = _draw(xp, logit, u)
        return x


# ============================================================================ PixelCNN
class PixelCNN(_RasterImageModel):
    """PixelCNN with residual blocks of masked convolutions, for binary images.

        h_0 = ReLU(conv_A(x))                      masked k1 x k1, 1 -> C, type A
        h_l = h_{l-1} + ReLU(conv_B,l(h_{l-1}))    masked k x k, C -> C, type B, l = 1..L
        f   = conv_1x1(ReLU(conv_1x1(h_L)))        C -> C_head -> 1: the logits

    x: (N, 1, H, W) -> f: (N, 1, H, W). A type A mask keeps, around pixel (i, j), the rows
    above and the pixels to the left in row i; type B also keeps the centre. So h_0 at (i, j)
    depends on x_<ij only, and each type B layer keeps that property: f_ij depends on x_<ij
    only (the autoregressive property), for every image size ('same' zero padding).

    The defaults are the benchmark model: A 7x7 1 -> 64, five residual B 3x3 64 -> 64 blocks,
    1x1 64 -> 64 + ReLU, 1x1 64 -> 1. Its receptive field reaches p_1 + L p rows up
    (p = k // 2), but not all of it: the stacked masks grow it up-left and straight up faster
    than up-right, leaving a BLIND SPOT of past pixels above and to the right of (i, j) that
    never influence f_ij (GatedPixelCNN removes it).
    """

    def __init__(self, height: int = 28, width: int = 28, channels: int = 64, n_residual: int = 5,
                 first_kernel: int = 7, kernel: int = 3, head_channels: int = 64):
        self._init_shape(height, width)
        self.channels = _check_positive("channels", channels)
        self.n_residual = _check_positive("n_residual", n_residual, minimum=0)
        self.first_kernel = _check_odd("first_kernel", first_kernel)
        self.kernel = _check_odd("kernel", kernel)
        self.head_channels = _check_positive("head_channels", head_channels)
        self.conv_a = MaskedConv2d(1, channels, first_kernel, "A")
        self.res = [MaskedConv2d(channels, channels, kernel, "B") for _ in range(n_residual)]
        self.out1 = Conv2d(channels, head_channels, 1)
        self.out2 = Conv2d(head_channels, 1, 1)

    def config(self) -> dict:
        return dict(height=self.height, width=self.width, channels=self.channels, n_residual=self.n_residual,
                    first_kernel=self.first_kernel, kernel=self.kernel, head_channels=self.head_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor (N, 1, H, W) -> logits (N, 1, H, W), one parallel pass (no data checks)."""
        h = relu(self.conv_a(x))
        for conv in self.res:
            h = h + relu(conv(h))
        return self.out2(relu(self.out1(h)))

    def _sample_fast(self, n, rng):
        """Per-layer caching (Ramachandran et al. 2017, "Fast Generation for Convolutional
        Autoregressive Models"), exact.

        Every layer's output at position q = (i, j) depends only on its input at positions
        <= q (type B) or < q (type A) in raster order. So once the pixels before q are drawn,
        each layer's output at q is final and can be computed from the cached outputs of the
        layer below; it never changes afterwards. Per pixel, each layer therefore computes ONE
        position: its masked window (the kernel rows down to the centre row) times the weight
        matrix, from a zero-padded channels-last cache (n, H + p, W + 2p, C) of its input.
        Cost per pixel: one small matmul per layer instead of a forward over all H W pixels.
        Positions right of q in the cache are still zero; the mask multiplies them by zero.
        """
        xp, dt = backend.xp(), self.dtype
        H, W = self.height, self.width
        pa, k = self.first_kernel // 2, self.first_kernel
        wa = _window_matrix(self.conv_a.weight.data * self.conv_a.mask, rows=pa + 1)
        ba = self.conv_a.bias.data
        p, kr = self.kernel // 2, self.kernel
        res = [(_window_matrix(c.weight.data * c.mask, rows=p + 1), c.bias.data) for c in self.res]
        w1, b1 = _matrix_1x1(self.out1)
        w2, b2 = _matrix_1x1(self.out2)
        # x and the input of every residual block, zero-padded: p rows on top, p columns each side
        xbuf = xp.zeros((n, H + pa, W + 2 * pa, 1), dt)
        hbuf = [xp.zeros((n, H + p, W + 2 * p, self.channels), dt) for _ in res]
        for i in range(H):
            for j in range(W):
                h = xbuf[:, i:i + pa + 1, j:j + k].reshape(n, -1) @ wa + ba
                h = xp.maximum(h, 0)
                for buf, (w, b) in zip(hbuf, res):
                    buf[:, i + p, j + p] = h  # the block's input at q, before its window reads it
                    a = buf[:, i:i + p + 1, j:j + kr].reshape(n, -1) @ w + b
                    h = h + xp.maximum(a, 0)
                logit = (xp.maximum(h @ w1 + b1, 0) @ w2 + b2)[:, 0]
                u = rng.random((n,), dtype=dt)
                xbuf[:, i + pa, j + pa, 0] = _draw(xp, logit, u)
        return xp.ascontiguousarray(xbuf[:, pa:, pa:pa + W, 0][:, None])


# ============================================================================ Gated PixelCNN
def _gate_t(a: Tensor) -> Tensor:
    """Gated unit on channels: (N, 2C, H, W) -> (N, C, H, W), tanh(a_1) * sigmoid(a_2)."""
    c = a.shape[1] // 2
    return tanh(a[:, :c]) * sigmoid(a[:, c:])


class GatedPixelCNN(_RasterImageModel):
    """Gated PixelCNN (van den Oord et al. 2016) without the blind spot, for binary images.

    Two stacks of feature maps run side by side, with p = k // 2:

    vertical stack v_l (N, C, H, W): v_l at (i, j) sees the input only in rows ABOVE i, all
        columns within reach. Layer 0 convolves x with a p x k kernel over rows i-p..i-1
        (the k x k kernel cropped to the rows above, then shifted down by one row, done as
        zero padding of p rows on top and dropping the last output row); layer l > 0
        convolves v_{l-1} with a (p+1) x k kernel over rows i-p..i (row i of v_{l-1} is
        itself only made of rows above i). Pre-activation u_l (2C channels), v_l = gate(u_l).
    horizontal stack h_l (N, C, H, W): h_l at (i, j) sees row i left of j, plus the vertical
        stack through a 1x1 link. Layer 0 (type A) convolves x with a 1 x p kernel over
        columns j-p..j-1 (excludes the current pixel); layer l > 0 (type B) convolves
        h_{l-1} with a 1 x (p+1) kernel over columns j-p..j. Then
            a_l = hconv_l(.) + link_l(u_l),   h_l = hout_l(gate(a_l)) + h_{l-1} (l > 0),
        a residual connection in the horizontal stack only.
    gate(a) = tanh(a[:C]) * sigmoid(a[C:]) over channels; head f = 1x1(ReLU(1x1(ReLU(h_L-1)))).

    x: (N, 1, H, W) -> f: (N, 1, H, W). After L layers f_ij sees every past pixel in rows
    i - L p .. i - 1 within columns j +- L p, and row i from column j - L p to j - 1: the
    whole box, no blind spot, because the vertical stack is never cut by a horizontal mask.
    (In the paper the vertical stack includes row i and the link shifts it down one row;
    here the shift is done once at layer 0, which is the same network indexed differently.)
    """

    def __init__(self, height: int = 28, width: int = 28, channels: int = 32, n_layers: int = 5,
                 kernel: int = 3, head_channels: int = 64):
        self._init_shape(height, width)
        self.channels = _check_positive("channels", channels)
        self.n_layers = _check_positive("n_layers", n_layers)
        self.kernel = _check_odd("kernel", kernel, minimum=3)
        self.head_channels = _check_positive("head_channels", head_channels)
        p, k, c = kernel // 2, kernel, channels
        # zero padding: p rows on top (the rows above), p columns each side; horizontal: p left
        self.vconv = [Conv2d(1 if l == 0 else c, 2 * c, (p if l == 0 else p + 1, k), padding=((p, 0), (p, p)))
                      for l in range(n_layers)]
        self.hconv = [Conv2d(1 if l == 0 else c, 2 * c, (1, p if l == 0 else p + 1), padding=((0, 0), (p, 0)))
                      for l in range(n_layers)]
        self.link = [Conv2d(2 * c, 2 * c, 1) for _ in range(n_layers)]
        self.hout = [Conv2d(c, c, 1) for _ in range(n_layers)]
        self.out1 = Conv2d(c, head_channels, 1)
        self.out2 = Conv2d(head_channels, 1, 1)

    def config(self) -> dict:
        return dict(height=self.height, width=self.width, channels=self.channels, n_layers=self.n_layers,
                    kernel=self.kernel, head_channels=self.head_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor (N, 1, H, W) -> logits (N, 1, H, W), one parallel pass (no data checks)."""
        H, W = x.shape[2], x.shape[3]
        v = h = x
        for l in range(self.n_layers):
            u, a = self.vconv[l](v), self.hconv[l](h)
            if l == 0:
                # p-row (p-column) kernels over p zero rows (columns) of padding give H + 1
                # rows (W + 1 columns); dropping the last makes row i see rows i-p..i-1 only
                # (column j columns j-p..j-1): the one-step shift that keeps x_ij out.
                u, a = u[:, :, :H], a[:, :, :, :W]
            a = a + self.link[l](u)
            g = self.hout[l](_gate_t(a))
            h = g if l == 0 else h + g
            v = _gate_t(u)
        return self.out2(relu(self.out1(relu(h))))

    def _sample_fast(self, n, rng):
        """Row-and-pixel caching, exact (Ramachandran et al. 2017 applied to the two stacks).

        The vertical stack at row i depends only on rows above i, so when a row begins, every
        layer's vertical pre-activation u_l for the WHOLE row (and its link term) is computed
        at once from the cached vertical maps of the rows above (one matmul per layer). Inside
        the row, each pixel needs per layer only the horizontal window (1 x (p+1)) of the row's
        cached h_{l-1}, plus the precomputed link term at that column: L small matmuls.
        """
        xp, dt = backend.xp(), self.dtype
        H, W, C, L = self.height, self.width, self.channels, self.n_layers
        p, k = self.kernel // 2, self.kernel
        vw = [(_window_matrix(c.weight.data), c.bias.data) for c in self.vconv]
        hw = [(_window_matrix(c.weight.data), c.bias.data) for c in self.hconv]
        lw = [_matrix_1x1(c) for c in self.link]
        ow = [_matrix_1x1(c) for c in self.hout]
        w1, b1 = _matrix_1x1(self.out1)
        w2, b2 = _matrix_1x1(self.out2)
        xbuf = xp.zeros((n, H + p, W + 2 * p, 1), dt)                       # x, padded
        vbuf = [xp.zeros((n, H + p, W + 2 * p, C), dt) for _ in range(L - 1)]  # v_l, padded
        hrow = [xp.zeros((n, W + p, C), dt) for _ in range(L - 1)]          # h_l in row i
        for i in range(H):
            links = []
            for l in range(L):
                src, kv = (xbuf, p) if l == 0 else (vbuf[l - 1], p + 1)
                slab = src[:, i:i + kv]                  # rows i-p .. i-1 (l = 0) or i (l > 0)
                cols = xp.concatenate([slab[:, a, d:d + W] for a in range(kv) for d in range(k)], axis=-1)
                u = cols @ vw[l][0] + vw[l][1]           # (n, W, 2C): u_l on row i
                links.append(u @ lw[l][0] + lw[l][1])
                if l < L - 1:
                    vbuf[l][:, i + p, p:p + W] = _gate(xp, u)
            for j in range(W):
                a = xbuf[:, i + p, j:j + p].reshape(n, -1) @ hw[0][0] + hw[0][1] + links[0][:, j]
                h = _gate(xp, a) @ ow[0][0] + ow[0][1]
                for l in range(1, L):
                    row = hrow[l - 1]
                    row[:, j + p] = h                    # h_{l-1} at (i, j), then its window
                    a = row[:, j:j + p + 1].reshape(n, -1) @ hw[l][0] + hw[l][1] + links[l][:, j]
                    h = h + _gate(xp, a) @ ow[l][0] + ow[l][1]
                logit = (xp.maximum(xp.maximum(h, 0) @ w1 + b1, 0) @ w2 + b2)[:, 0]
                u = rng.random((n,), dtype=dt)
                xbuf[:, i + p, j + p, 0] = _draw(xp, logit, u)
        return xp.ascontiguousarray(xbuf[:, p:, p:p + W, 0][:, None])
