"""The kernels of nanoar.kernels.pixelcnn equal their textbook paths. The masked convolution
over its kept taps equals `nn.MaskedConv2d` (weight * mask over all k x k taps) in value and
in every gradient. The cached samplers equal the naive ancestral sampler
(`model.sample_naive`, one full forward pass per pixel) given the same noise: on random
image sizes, channels, kernels and depths in float32 and float64, and on every device.

The samplers have no gradient, so value equality is the whole contract. Weights are scaled
up so that the conditionals are far from 1/2: a wrong logit then flips pixels. Conditional
models (n_labels > 0) get random label weights (zero at initialisation, which would hide a
label bias added in the wrong place) and a label per sample.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, backend, no_grad
from nanoar.kernels.pixelcnn import masked_conv2d_taps, sample_gated_cached, sample_pixelcnn_cached
from nanoar.nn import MaskedConv2d
from nanoar.models.pixelcnn import GatedPixelCNN, PixelCNN

from strategies import fixture_settings


def make(kind, h, w, seed=0, scale=3.0, **kw):
    """A small model of either variant from a fixed seed, its weights scaled by `scale`; a
    conditional one's label weights ~ N(0, 1/4)."""
    nanoar.manual_seed(seed)
    if kind == "pixelcnn":
        m = PixelCNN(h, w, **{**dict(channels=3, n_residual=2, first_kernel=3, kernel=3, head_channels=4), **kw})
    else:
        m = GatedPixelCNN(h, w, **{**dict(channels=3, n_layers=2, kernel=3, head_channels=4), **kw})
    rng = np.random.default_rng(seed)
    for name, p in m.named_parameters():
        if name.startswith("label_"):
            p.data = nanoar.to_device((0.5 * rng.standard_normal(p.shape)).astype(p.dtype))
        elif p.ndim >= 2:
            p.data *= scale
    return m


CACHED = {PixelCNN: sample_pixelcnn_cached, GatedPixelCNN: sample_gated_cached}


# ---------------------------------------------------------------------------- the taps-only convolution
def _pass(conv_fn, conv, x, gy):
    """y and the gradients of x, weight and bias for the upstream gradient gy."""
    xt = Tensor(nanoar.to_device(x), requires_grad=True)
    conv.zero_grad()
    y = conv_fn(xt)
    y.backward(nanoar.to_device(gy))
    return [nanoar.to_numpy(a) for a in (y.data, xt.grad, conv.weight.grad, conv.bias.grad)]


@fixture_settings
@given(k=st.sampled_from([1, 3, 5, 7]), mask_type=st.sampled_from("AB"), c=st.integers(1, 4), o=st.integers(1, 5),
       n=st.integers(0, 3), h=st.integers(1, 6), w=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_masked_conv_over_its_taps_equals_the_masked_layer(float64, k, mask_type, c, o, n, h, w, seed):
    """Value, input, weight and bias gradients equal to `nn.MaskedConv2d` (float64), on
    random shapes, kernel sizes 1 to 7 and both mask types; the masked-out taps get a zero
    weight gradient, as through weight * mask."""
    nanoar.manual_seed(seed)
    conv = MaskedConv2d(c, o, k, mask_type)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    gy = rng.standard_normal((n, o, h, w))
    want = _pass(conv, conv, x, gy)
    got = _pass(lambda t: masked_conv2d_taps(t, conv.weight, conv.bias, mask_type), conv, x, gy)
    for name, a, b in zip(("y", "x grad", "weight grad", "bias grad"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    assert not got[2][nanoar.to_numpy(conv.mask) == 0].any()


def test_masked_conv_over_its_taps_reads_no_masked_weight(float64):
    """Whatever the masked-out weights hold, the output is the same: they are never read."""
    conv = MaskedConv2d(2, 3, 5, "B")
    x = nanoar.to_device(np.random.default_rng(0).standard_normal((2, 2, 4, 4)))
    with no_grad():
        before = nanoar.to_numpy(masked_conv2d_taps(Tensor(x), conv.weight, conv.bias, "B").data)
        conv.weight.data[nanoar.to_device(nanoar.to_numpy(conv.mask) == 0)] = 1e6
        after = nanoar.to_numpy(masked_conv2d_taps(Tensor(x), conv.weight, conv.bias, "B").data)
    np.testing.assert_array_equal(before, after)


def test_masked_conv_over_its_taps_keeps_float32():
    conv = MaskedConv2d(2, 3, 3, "A")
    x = Tensor(nanoar.to_device(np.ones((1, 2, 3, 3), np.float32)), requires_grad=True)
    y = masked_conv2d_taps(x, conv.weight, conv.bias, "A")
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32 and conv.weight.grad.dtype == np.float32


def labels(m, n, seed):
    """Checked labels (n,), a random one per sample, for a conditional model; None otherwise."""
    return m.check_labels(np.random.default_rng(seed).integers(0, m.n_labels, n), n) if m.n_labels else None


def both_samplers(m, n, seed, y=None):
    """(cached, naive) samples as host arrays (n, H W) from the same uniforms (and labels)."""
    noise = m.sample_noise(backend.make_rng(seed), n)
    with no_grad():
        cached, naive = CACHED[type(m)](m, noise, y), m.sample_naive(noise, y)
    assert type(cached) is type(noise) and cached.shape == (n, m.height * m.width) and cached.dtype == m.dtype
    return nanoar.to_numpy(cached), nanoar.to_numpy(naive)


# a variant and its sizes: images 1..6 x 1..6 (smaller than the kernels too), every kernel
# size, 0-3 layers, batches of 1-4, unconditional or with 1-3 labels
configs = st.one_of(
    st.fixed_dictionaries(dict(kind=st.just("pixelcnn"), h=st.integers(1, 6), w=st.integers(1, 6),
                               channels=st.integers(1, 4), n_residual=st.integers(0, 3),
                               first_kernel=st.sampled_from([1, 3, 5, 7]), kernel=st.sampled_from([1, 3, 5]),
                               head_channels=st.integers(1, 4), n_labels=st.integers(0, 3),
                               seed=st.integers(0, 2**16))),
    st.fixed_dictionaries(dict(kind=st.just("gated"), h=st.integers(1, 6), w=st.integers(1, 6),
                               channels=st.integers(1, 4), n_layers=st.integers(1, 3),
                               kernel=st.sampled_from([3, 5, 7]), head_channels=st.integers(1, 4),
                               n_labels=st.integers(0, 3), seed=st.integers(0, 2**16))),
)


@given(cfg=configs, n=st.integers(1, 4), dtype=st.sampled_from(["float32", "float64"]))
def test_cached_samplers_equal_the_naive_sampler_on_random_configs(cfg, n, dtype):
    cfg = dict(cfg)
    with nanoar.default_dtype_as(dtype):
        m = make(cfg.pop("kind"), cfg.pop("h"), cfg.pop("w"), **cfg)
        cached, naive = both_samplers(m, n, cfg["seed"], labels(m, n, cfg["seed"]))
    np.testing.assert_array_equal(cached, naive)


@fixture_settings
@given(seed=st.integers(0, 2**16))
@pytest.mark.parametrize("n_labels", [0, 3])
@pytest.mark.parametrize("kind,h,w", [("pixelcnn", 4, 6), ("pixelcnn", 5, 3), ("gated", 4, 6), ("gated", 6, 3)])
def test_cached_samplers_equal_the_naive_sampler_on_every_device(device, kind, h, w, n_labels, seed):
    """Square and non-square images, three layers, on the device's arrays; unconditional,
    and with a label per sample."""
    m = make(kind, h, w, seed=2, channels=4, n_labels=n_labels,
             **({"n_residual": 3} if kind == "pixelcnn" else {"n_layers": 3}))
    cached, naive = both_samplers(m, 5, seed, labels(m, 5, seed))
    np.testing.assert_array_equal(cached, naive)
    assert 0 < cached.mean() < 1


@pytest.mark.parametrize("kind", ["pixelcnn", "gated"])
def test_sample_fast_is_the_cached_sampler(kind):
    """`model.sample()` (method 'fast') runs the kernel on the noise of `sample_noise`, laid
    out in raster order."""
    m = make(kind, 3, 4)
    noise = m.sample_noise(backend.make_rng(7), 6)
    with no_grad():
        want = CACHED[type(m)](m, noise).reshape(6, 1, 3, 4)
    np.testing.assert_array_equal(m.sample(6, seed=7), want)


@pytest.mark.parametrize("kind", ["pixelcnn", "gated"])
def test_cached_samplers_take_each_samples_label(kind):
    """Labels per sample: sample i of a batch with labels y is sample i of a batch that has
    y_i for all (so no label leaks into another sample), both samplers agree, and the labels
    change the samples. `model.sample(y=...)` runs the kernel with the checked labels."""
    m = make(kind, 3, 4, n_labels=3)
    noise = m.sample_noise(backend.make_rng(3), 6)
    y = m.check_labels([0, 1, 2, 2, 1, 0], 6)
    with no_grad():
        mixed = nanoar.to_numpy(CACHED[type(m)](m, noise, y))
        naive = nanoar.to_numpy(m.sample_naive(noise, y))
        alone = [nanoar.to_numpy(CACHED[type(m)](m, noise, m.check_labels(c, 6))) for c in range(3)]
    np.testing.assert_array_equal(mixed, naive)
    want = np.stack([alone[c][i] for i, c in enumerate([0, 1, 2, 2, 1, 0])])
    np.testing.assert_array_equal(mixed, want)
    assert not np.array_equal(alone[0], alone[1]) and not np.array_equal(alone[1], alone[2])
    np.testing.assert_array_equal(nanoar.to_numpy(m.sample(6, seed=3, y=[0, 1, 2, 2, 1, 0])),
                                  mixed.reshape(6, 1, 3, 4))
    np.testing.assert_array_equal(nanoar.to_numpy(m.sample(6, seed=3, y=1)), alone[1].reshape(6, 1, 3, 4))


@pytest.mark.parametrize("kind", ["pixelcnn", "gated"])
def test_cached_samplers_check_the_labels(kind):
    """The kernels take only what `sample_naive` takes: labels for a conditional model, none
    for an unconditional one."""
    cond, plain = make(kind, 3, 4, n_labels=3), make(kind, 3, 4)
    noise = cond.sample_noise(backend.make_rng(0), 2)
    with pytest.raises(ValueError, match="pass y"):
        CACHED[type(cond)](cond, noise)
    with pytest.raises(ValueError, match="not class-conditional"):
        CACHED[type(plain)](plain, noise, np.zeros(2, np.int64))
