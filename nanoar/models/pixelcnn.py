"""PixelCNN and Gated PixelCNN: autoregressive models of binary images in raster order.

An image x of H x W binary pixels is generated one pixel at a time, row by row, left to
right (raster order), so by the chain rule

    log p(x) = sum_{i,j} log p(x_ij | x_<ij),   x_<ij = rows above i, and row i left of j,
    p(x_ij = 1 | x_<ij) = sigmoid(f_ij(x_<ij)).

A convolutional network computes all H W logits f_ij in ONE pass over the whole image
(training and `log_prob` are fully parallel); masks and shifts make f_ij blind to x_ij and
to every pixel after it. Sampling is sequential: pixel (i, j) is drawn from the logit that
the pixels before it determine. `sample(method='naive')` runs the whole network once per
pixel; `sample()` (method 'fast') computes each layer at one new position per pixel from
cached activations (nanoar.kernels.pixelcnn), with the same result.

Shapes: data x (N, 1, H, W) of 0/1; logits (N, 1, H, W); `log_prob_per_variable` (N, 1, H, W);
`log_prob` (N,). `event_shape` is (1, H, W) and the ordering is the plain raster order.

Class-conditional (Conditional PixelCNN, van den Oord et al. 2016): built with n_labels = K
> 0, both models score log p(x | y) for a label y in [0, K). Every layer adds a learned
per-class bias V^T h (h the one-hot y, `nn.LabelBias`) to its pre-activation, the same at
every pixel: the label is visible to every conditional, and since it is not an image pixel
the masks and shifts keep f_ij blind to x_ij and after it, for every y. With K = 0 (the
default) there are no label parameters and the models are the unconditional ones.

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

from ..distributions import Bernoulli
from ..kernels.pixelcnn import masked_conv2d_taps, sample_gated_cached, sample_pixelcnn_cached
from ..nn import Conv2d, LabelBias, MaskedConv2d, gated_activation
from ..tensor import Tensor, relu
from .base import AutoregressiveModel, check_n_labels

__all__ = ["PixelCNN", "GatedPixelCNN"]


def _check_odd(name, k, minimum=1):
    if not isinstance(k, (int, np.integer)) or k < minimum or k % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {k!r}")
    return int(k)


def _check_positive(name, v, minimum=1):
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _label_bias(n_labels, width):
    """A layer's class-dependent bias V^T h (n_labels, width) of a conditional model; None
    (no parameters) for an unconditional one."""
    return LabelBias(n_labels, width) if n_labels else None


def _with_label(a, bias, y):
    """a + V^T h: a pre-activation a (N, width, H, W) plus the row of `bias` that each
    example's label y (N,) picks, (N, width, 1, 1), the same at every pixel; a itself in an
    unconditional model (bias None)."""
    return a if bias is None else a + bias(y, trailing=2)


class _RasterImageModel(AutoregressiveModel):
    """What both models share: binary images (N, 1, H, W) in raster order and a Bernoulli
    head on the logits of `forward`."""

    kind = "binary"
    # the convolutions' window columns (N H W k^2 C floats) grow with the batch
    eval_batch_size = 100

    def _init_shape(self, height, width, n_labels):
        self.height = _check_positive("height", height)
        self.width = _check_positive("width", width)
        self.event_shape = (1, self.height, self.width)
        self.n_labels = check_n_labels(n_labels, f"{type(self).__name__}: ")

    def _check_forward_labels(self, y, n: int) -> None:
        """forward's y: checked labels (n,) of a conditional model, None for an unconditional
        one; a mismatch gets the protocol's error (`check_labels`)."""
        if (y is None) != (self.n_labels == 0):
            self.check_labels(y, n)

    def distribution(self, x: Tensor, y=None) -> Bernoulli:
        """p(x_ij = 1 | x_<ij[, y]) = sigmoid(f_ij) for every pixel at once: x (N, 1, H, W),
        labels y (N,) of a conditional model -> Bernoulli over (N, 1, H, W)."""
        return Bernoulli(self.forward(x, y))


# ============================================================================ PixelCNN
class PixelCNN(_RasterImageModel):
    """PixelCNN with residual blocks of masked convolutions, for binary images.

        h_0 = ReLU(conv_A(x) + B_0[y])                      masked k1 x k1, 1 -> C, type A
        h_l = h_{l-1} + ReLU(conv_B,l(h_{l-1}) + B_l[y])    masked k x k, C -> C, type B, l = 1..L
        f   = conv_1x1(ReLU(conv_1x1(h_L) + B_head[y]))     C -> C_head -> 1: the logits

    x: (N, 1, H, W) -> f: (N, 1, H, W). A type A mask keeps, around pixel (i, j), the rows
    above and the pixels to the left in row i; type B also keeps the centre. So h_0 at (i, j)
    depends on x_<ij only, and each type B layer keeps that property: f_ij depends on x_<ij
    only (the autoregressive property), for every image size ('same' zero padding).

    The defaults are the benchmark model: A 7x7 1 -> 64, five residual B 3x3 64 -> 64 blocks,
    1x1 64 -> 64 + ReLU, 1x1 64 -> 1. Its receptive field reaches p_1 + L p rows up
    (p = k // 2), but not all of it: the stacked masks grow it up-left and straight up faster
    than up-right, leaving a BLIND SPOT of past pixels above and to the right of (i, j) that
    never influence f_ij (GatedPixelCNN removes it).

    n_labels = K > 0: class-conditional, with the per-class biases B_0, B_l (K, C) and
    B_head (K, C_head) (`label_a`, `label_res`, `label_out1`); K = 0: none of them (the
    terms B[y] drop out).
    """

    fused = True  # masked convolutions over their kept taps only (`masked`); False: the layers

    def __init__(self, height: int = 28, width: int = 28, channels: int = 64, n_residual: int = 5,
                 first_kernel: int = 7, kernel: int = 3, head_channels: int = 64, n_labels: int = 0):
        self._init_shape(height, width, n_labels)
        self.channels = _check_positive("channels", channels)
        self.n_residual = _check_positive("n_residual", n_residual, minimum=0)
        self.first_kernel = _check_odd("first_kernel", first_kernel)
        self.kernel = _check_odd("kernel", kernel)
        self.head_channels = _check_positive("head_channels", head_channels)
        self.conv_a = MaskedConv2d(1, channels, first_kernel, "A")
        self.res = [MaskedConv2d(channels, channels, kernel, "B") for _ in range(n_residual)]
        self.out1 = Conv2d(channels, head_channels, 1)
        self.out2 = Conv2d(head_channels, 1, 1)
        k = self.n_labels
        self.label_a = _label_bias(k, channels)
        self.label_res = [_label_bias(k, channels) for _ in range(n_residual)]
        self.label_out1 = _label_bias(k, head_channels)

    def config(self) -> dict:
        return dict(height=self.height, width=self.width, channels=self.channels, n_residual=self.n_residual,
                    first_kernel=self.first_kernel, kernel=self.kernel, head_channels=self.head_channels,
                    n_labels=self.n_labels)

    def masked(self, conv: MaskedConv2d, h: Tensor) -> Tensor:
        """One masked convolution: with `fused`, only the taps its mask keeps
        (`kernels.pixelcnn.masked_conv2d_taps`, the same function); else the textbook layer,
        weight * mask over all k x k taps. (N, C, H, W) -> (N, O, H, W)."""
        if self.fused:
            return masked_conv2d_taps(h, conv.weight, conv.bias, conv.mask_type)
        return conv(h)

    def forward(self, x: Tensor, y=None) -> Tensor:
        """x: Tensor (N, 1, H, W), labels y (N,) of a conditional model -> logits f (N, 1, H, W),
        one parallel pass (no data checks)."""
        self._check_forward_labels(y, x.shape[0])
        h = relu(_with_label(self.masked(self.conv_a, x), self.label_a, y))   # (N, C, H, W): h_0 at (i, j) sees x_<ij, y
        for conv, label in zip(self.res, self.label_res):
            h = h + relu(_with_label(self.masked(conv, h), label, y))         # (N, C, H, W): still x_<ij, y only
        h = relu(_with_label(self.out1(h), self.label_out1, y))        # (N, C_head, H, W)
        return self.out2(h)                                            # (N, 1, H, W): f_ij

    def sample_fast(self, noise, y=None):
        """noise (n, H W), labels y (n,) or None -> x (n, H W), equal to
        `sample_naive(noise, y)`: per-layer caches."""
        return sample_pixelcnn_cached(self, noise, y)


# ============================================================================ Gated PixelCNN
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
    gate(a) = tanh(a[:C]) * sigmoid(a[C:]) over channels (`nn.gated_activation`);
    head f = 1x1(ReLU(1x1(ReLU(h_L-1)))).

    n_labels = K > 0: class-conditional as in the paper, tanh(W_f * x + V_f^T h) *
    sigmoid(W_g * x + V_g^T h): every u_l and a_l gets a per-class bias (K, 2C) (its halves
    are V_f and V_g; `label_v`, `label_h`), and the head's hidden layer one of (K, C_head)
    (`label_out1`), f = 1x1(ReLU(1x1(ReLU(h_L-1)) + B_head[y])). The link reads u_l with its
    label bias, which only adds link_l(B_v[y]), one more per-class bias, to a_l.

    x: (N, 1, H, W) -> f: (N, 1, H, W). After L layers f_ij sees every past pixel in rows
    i - L p .. i - 1 within columns j +- L p, and row i from column j - L p to j - 1: the
    whole box, no blind spot, because the vertical stack is never cut by a horizontal mask.
    (In the paper the vertical stack includes row i and the link shifts it down one row;
    here the shift is done once at layer 0, which is the same network indexed differently.)
    """

    def __init__(self, height: int = 28, width: int = 28, channels: int = 32, n_layers: int = 5,
                 kernel: int = 3, head_channels: int = 64, n_labels: int = 0):
        self._init_shape(height, width, n_labels)
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
        k = self.n_labels
        self.label_v = [_label_bias(k, 2 * c) for _ in range(n_layers)]
        self.label_h = [_label_bias(k, 2 * c) for _ in range(n_layers)]
        self.label_out1 = _label_bias(k, head_channels)

    def config(self) -> dict:
        return dict(height=self.height, width=self.width, channels=self.channels, n_layers=self.n_layers,
                    kernel=self.kernel, head_channels=self.head_channels, n_labels=self.n_labels)

    def forward(self, x: Tensor, y=None) -> Tensor:
        """x: Tensor (N, 1, H, W), labels y (N,) of a conditional model -> logits f (N, 1, H, W),
        one parallel pass (no data checks)."""
        self._check_forward_labels(y, x.shape[0])
        H, W = x.shape[2], x.shape[3]
        # Layer 0: p-row (p-column) kernels over p zero rows (columns) of padding give H + 1
        # rows (W + 1 columns); dropping the last is the one-row (one-column) shift that makes
        # (i, j) see rows i-p..i-1 (columns j-p..j-1 of row i), never x_ij itself.
        u = _with_label(self.vconv[0](x)[:, :, :H], self.label_v[0], y)  # (N, 2C, H, W): rows above i, y
        a = self.hconv[0](x)[:, :, :, :W] + self.link[0](u)              # (N, 2C, H, W): left of j, and above
        a = _with_label(a, self.label_h[0], y)                           # (N, 2C, H, W): + B_h[y]
        h = self.hout[0](gated_activation(a, axis=1))                    # (N, C, H, W): h_0
        v = gated_activation(u, axis=1)                                  # (N, C, H, W): v_0
        for l in range(1, self.n_layers):
            u = _with_label(self.vconv[l](v), self.label_v[l], y)        # (N, 2C, H, W): rows i-p..i of v_{l-1}, y
            a = self.hconv[l](h) + self.link[l](u)                       # (N, 2C, H, W): cols j-p..j of h_{l-1}, u_l
            a = _with_label(a, self.label_h[l], y)                       # (N, 2C, H, W): + B_h[y]
            h = h + self.hout[l](gated_activation(a, axis=1))            # (N, C, H, W): h_l, residual
            v = gated_activation(u, axis=1)                              # (N, C, H, W): v_l
        h = relu(_with_label(self.out1(relu(h)), self.label_out1, y))   # (N, C_head, H, W)
        return self.out2(h)                                              # (N, 1, H, W): f_ij

    def sample_fast(self, noise, y=None):
        """noise (n, H W), labels y (n,) or None -> x (n, H W), equal to
        `sample_naive(noise, y)`: row and pixel caches."""
        return sample_gated_cached(self, noise, y)
