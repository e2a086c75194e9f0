"""PixelCNN's kernels: the masked convolution over only the taps its mask keeps (the training
pass, `masked_conv2d_taps`, equal to `nn.MaskedConv2d`), and the cached samplers of PixelCNN
and GatedPixelCNN (Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models").

Each sampler returns exactly what the naive ancestral sampler `model.sample_naive(noise, y)` returns
(one full `model.forward` pass per pixel, nanoar.models.base): pixel q = (i, j) in raster
order is x_q = [u_q < sigmoid(f_q)], the rule of `Bernoulli.draw`, with u_q = noise[:, q].
A class-conditional model's labels y (n,) enter as per-sample biases: each layer's bias (O,)
becomes (n, O), the conv's bias plus the label's row of the layer's `LabelBias`.
Instead of a full pass, each layer's output is computed at one new position per pixel (or,
for the vertical stack of the gated model, one new row per image row) from caches of the
layer below, because a convolution's output at q reads only inputs that are already final.

The work is on plain arrays of the current device (NumPy or CuPy), no graph. Caches are
channels-last (n, rows, cols, C), so a k x k window is one slice whose flattening
(row, col, channel) matches `_window_matrix`.
"""
from __future__ import annotations

from .. import backend
from ..tensor import record_op, sigmoid_array

__all__ = ["masked_conv2d_taps", "sample_pixelcnn_cached", "sample_gated_cached"]


# ----------------------------------------------------------------------------- training pass
def _tap_count(k: int, mask_type: str) -> tuple[int, int]:
    """(p, q): a raster mask of a k x k kernel keeps the p = k // 2 rows above the centre
    whole, and the first q taps of the centre row (q = p for type A, p + 1 for type B)."""
    p = k // 2
    return p, p + (mask_type == "B")


def _taps(a, p: int, q: int):
    """The kept taps of (..., rows >= p + 1, k, C) windows as one row each: (..., (p k + q) C),
    the p rows above first, then the centre row's first q taps, each tap's C channels together."""
    *lead, _, k, c = a.shape
    above = a[..., :p, :, :].reshape(*lead, p * k * c)  # (..., p k C)
    centre = a[..., p, :q, :].reshape(*lead, q * c)     # (..., q C)
    return backend.array_module(a).concatenate([above, centre], axis=-1)


def masked_conv2d_taps(x, weight, bias, mask_type: str):
    """`nn.MaskedConv2d` (a k x k 'same' convolution masked to raster order, type 'A' or 'B')
    computing only the taps its mask keeps: x (N, C, H, W), weight (O, C, k, k) (its masked-out
    taps are never read), bias (O,) or None -> y (N, O, H, W).

    The window columns hold the (p k + q) kept taps, the rows above and the centre row's left
    part (`_tap_count`: 24 of 49 taps for a 7x7 type A mask, 5 of 9 for 3x3 type B), so the
    product is (N H W, taps C) x (taps C, O). Rows below the centre are all masked, so the
    input is padded with p rows on top only. Backward: the weight gradient of the kept taps
    (the masked-out taps get zero, as through `weight * mask`), and the input gradient tap by
    tap: (N H W, O) x (O, C), added into the padded input where that tap read it.
    """
    xp = backend.array_module(x.data)
    n, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[2]
    p, q = _tap_count(k, mask_type)
    a = xp.pad(x.data.transpose(0, 2, 3, 1), [(0, 0), (p, 0), (p, p), (0, 0)])   # (N, H + p, W + 2p, C)
    s = a.strides
    windows = backend.as_strided(a, (n, h, w, p + 1, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]))  # rows up to the centre
    cols = _taps(windows, p, q).reshape(n * h * w, (p * k + q) * c)                # (N H W, taps C)
    wk = weight.data.transpose(2, 3, 1, 0)                                         # (k, k, C, O)
    w_taps = _taps(wk.transpose(3, 0, 1, 2), p, q).T                               # (taps C, O)
    y = cols @ w_taps                                                              # (N H W, O)
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(gy):
        gy2 = xp.ascontiguousarray(gy.transpose(0, 2, 3, 1)).reshape(n * h * w, o)   # (N H W, O)
        gx = gw = gb = None
        if weight.requires_grad:
            g_taps = (cols.T @ gy2).T                                              # (O, taps C)
            full = xp.zeros((o, k, k, c), g_taps.dtype)                            # masked-out taps: 0
            full[:, :p] = g_taps[:, :p * k * c].reshape(o, p, k, c)
            full[:, p, :q] = g_taps[:, p * k * c:].reshape(o, q, c)
            gw = full.transpose(0, 3, 1, 2)                                        # (O, C, k, k)
        if bias is not None and bias.requires_grad:
            gb = gy2.sum(axis=0)
        if x.requires_grad:
            g_pad = xp.zeros(a.shape, gy2.dtype)                                   # (N, H + p, W + 2p, C)
            offsets = [(i, j) for i in range(p) for j in range(k)] + [(p, j) for j in range(q)]
            for t, (i, j) in enumerate(offsets):                                   # each tap, in `_taps` order:
                g_tap = gy2 @ w_taps[t * c:(t + 1) * c].T                          # (N H W, C), its input's gradient
                g_pad[:, i:i + h, j:j + w] += g_tap.reshape(n, h, w, c)            # at the positions it read
            gx = g_pad[:, p:, p:p + w].transpose(0, 3, 1, 2)                       # (N, C, H, W)
        return gx, gw, gb
    return record_op(y.reshape(n, h, w, o).transpose(0, 3, 1, 2), parents, backward, "masked_conv2d_taps")


def _window_matrix(weight, rows=None):
    """A conv weight (O, C, kh, kw) as the (kh' kw C, O) matrix that multiplies a flattened
    channels-last window (kh', kw, C); `rows` keeps only the first kernel rows (the rows of a
    raster mask below the centre are all zero, so they need not be read)."""
    w = weight if rows is None else weight[:, :, :rows, :]
    xp = backend.array_module(w)
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def _linear(conv):
    """A 1x1 Conv2d as a (C, O) matrix and an (O,) bias acting on channels-last rows (..., C)."""
    return _window_matrix(conv.weight.data), conv.bias.data


def _bias(b, label, y, row=False):
    """A layer's bias (O,), plus its label bias V^T h when there are labels y (n,): then per
    sample, b + label.weight[y] (n, O), or (n, 1, O) with `row`, to broadcast over a row."""
    if y is None:
        return b
    b = b + label.weight.data[y]
    return b[:, None] if row else b


def _gate(a):
    """`nn.gated_activation` on arrays, channels last: (..., 2C) -> (..., C),
    tanh(first half) * sigmoid(second half)."""
    c = a.shape[-1] // 2
    return backend.array_module(a).tanh(a[..., :c]) * sigmoid_array(a[..., c:])


def sample_pixelcnn_cached(model, noise, y=None):
    """`model.sample_naive(noise, y)` of a PixelCNN, with per-layer caches: noise (n, H W)
    uniforms in raster order, y: labels (n,) of a conditional model (`check_labels`), None
    for an unconditional one -> x (n, H W) of 0/1.

    Exact: every layer's output at q = (i, j) depends only on its input at positions <= q
    (type B) or < q (type A) in raster order, so once the pixels before q are drawn each
    layer's output at q is final. Per pixel, each layer computes ONE position: its masked
    window (the kernel rows down to the centre row) times the weight matrix, read from a
    zero-padded channels-last cache (n, H + p, W + 2p, C) of its input; positions at and
    after q that the window covers are still zero, and the mask multiplies them by zero.
    """
    xp, dt = backend.array_module(noise), model.dtype
    n = noise.shape[0]
    y = model.check_labels(y, n)
    H, W, C = model.height, model.width, model.channels
    pa, ka = model.first_kernel // 2, model.first_kernel
    p, k = model.kernel // 2, model.kernel
    wa = _window_matrix(model.conv_a.weight.data * model.conv_a.mask, rows=pa + 1)
    ba = _bias(model.conv_a.bias.data, model.label_a, y)                       # (C,) or (n, C)
    res = [(_window_matrix(c.weight.data * c.mask, rows=p + 1), _bias(c.bias.data, label, y))
           for c, label in zip(model.res, model.label_res)]
    w1, b1 = _linear(model.out1)
    b1 = _bias(b1, model.label_out1, y)                                        # (C_head,) or (n, C_head)
    w2, b2 = _linear(model.out2)
    # x and the input of every residual block, zero-padded: p rows on top, p columns each side
    xbuf = xp.zeros((n, H + pa, W + 2 * pa, 1), dt)
    hbuf = [xp.zeros((n, H + p, W + 2 * p, C), dt) for _ in res]
    for i in range(H):
        for j in range(W):
            h = xp.maximum(xbuf[:, i:i + pa + 1, j:j + ka].reshape(n, -1) @ wa + ba, 0)  # (n, C): h_0 at q
            for buf, (w, b) in zip(hbuf, res):
                buf[:, i + p, j + p] = h  # the block's input at q, before its window reads it
                h = h + xp.maximum(buf[:, i:i + p + 1, j:j + k].reshape(n, -1) @ w + b, 0)  # (n, C)
            logit = (xp.maximum(h @ w1 + b1, 0) @ w2 + b2)[:, 0]  # (n,): f_q
            xbuf[:, i + pa, j + pa, 0] = noise[:, i * W + j] < sigmoid_array(logit)
    return xp.ascontiguousarray(xbuf[:, pa:, pa:pa + W, 0]).reshape(n, H * W)


def sample_gated_cached(model, noise, y=None):
    """`model.sample_naive(noise, y)` of a GatedPixelCNN, with row and pixel caches: noise
    (n, H W) uniforms in raster order, y: labels (n,) of a conditional model (`check_labels`),
    None for an unconditional one -> x (n, H W) of 0/1.

    Exact: the vertical stack at row i depends only on rows above i, so when row i begins
    its pre-activations u_l for the WHOLE row (and their 1x1 links) are final and are
    computed at once from the cached vertical maps of the rows above. The horizontal stack
    at q = (i, j) depends only on row i up to q (< q at layer 0) and on the vertical stack,
    so per pixel each layer computes ONE position: its 1 x (p+1) window of the cached row
    of h_{l-1} plus the precomputed link at column j.
    """
    xp, dt = backend.array_module(noise), model.dtype
    n = noise.shape[0]
    y = model.check_labels(y, n)
    H, W, C, L = model.height, model.width, model.channels, model.n_layers
    p, k = model.kernel // 2, model.kernel
    vw = [(_window_matrix(c.weight.data), _bias(c.bias.data, label, y, row=True))   # bias (2C,) or (n, 1, 2C)
          for c, label in zip(model.vconv, model.label_v)]
    hw = [(_window_matrix(c.weight.data), _bias(c.bias.data, label, y))             # bias (2C,) or (n, 2C)
          for c, label in zip(model.hconv, model.label_h)]
    lw = [_linear(c) for c in model.link]
    ow = [_linear(c) for c in model.hout]
    w1, b1 = _linear(model.out1)
    b1 = _bias(b1, model.label_out1, y)
    w2, b2 = _linear(model.out2)
    xbuf = xp.zeros((n, H + p, W + 2 * p, 1), dt)                          # x, padded
    vbuf = [xp.zeros((n, H + p, W + 2 * p, C), dt) for _ in range(L - 1)]  # v_l, padded
    hrow = [xp.zeros((n, W + p, C), dt) for _ in range(L - 1)]             # h_l on row i
    for i in range(H):
        links = []
        for l in range(L):
            src, kv = (xbuf, p) if l == 0 else (vbuf[l - 1], p + 1)
            slab = src[:, i:i + kv]                  # rows i-p .. i-1 (l = 0) or i (l > 0)
            cols = xp.concatenate([slab[:, a, d:d + W] for a in range(kv) for d in range(k)], axis=-1)
            u = cols @ vw[l][0] + vw[l][1]           # (n, W, 2C): u_l on row i
            links.append(u @ lw[l][0] + lw[l][1])    # (n, W, 2C): link_l(u_l)
            if l < L - 1:
                vbuf[l][:, i + p, p:p + W] = _gate(u)  # v_l on row i
        for j in range(W):
            a = xbuf[:, i + p, j:j + p].reshape(n, -1) @ hw[0][0] + hw[0][1] + links[0][:, j]  # (n, 2C)
            h = _gate(a) @ ow[0][0] + ow[0][1]       # (n, C): h_0 at q
            for l in range(1, L):
                row = hrow[l - 1]
                row[:, j + p] = h                    # h_{l-1} at q, then its window
                a = row[:, j:j + p + 1].reshape(n, -1) @ hw[l][0] + hw[l][1] + links[l][:, j]
                h = h + _gate(a) @ ow[l][0] + ow[l][1]
            logit = (xp.maximum(xp.maximum(h, 0) @ w1 + b1, 0) @ w2 + b2)[:, 0]  # (n,): f_q
            xbuf[:, i + p, j + p, 0] = noise[:, i * W + j] < sigmoid_array(logit)
    return xp.ascontiguousarray(xbuf[:, p:, p:p + W, 0]).reshape(n, H * W)
