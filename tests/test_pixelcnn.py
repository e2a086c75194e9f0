"""PixelCNN and GatedPixelCNN: the protocol's identities on small images, the blind spot of
stacked masks (and its absence in the gated stacks), and the exactness of the fast sampler.

Small models (3x3 to 7x7 images, a few channels, 1-3 layers) in float64 wherever a sum or
a comparison must be exact; every model is built after a fixed seed.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.models.pixelcnn import GatedPixelCNN, PixelCNN
from nanoar.optim import Adam

from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match)
from conftest import to_xp


def make(kind, h, w, seed=0, **kw):
    """A small model of either variant, built from a fixed seed."""
    nanoar.manual_seed(seed)
    if kind == "pixelcnn":
        cfg = dict(channels=3, n_residual=2, first_kernel=3, kernel=3, head_channels=4)
        cfg.update(kw)
        return PixelCNN(h, w, **cfg)
    cfg = dict(channels=3, n_layers=2, kernel=3, head_channels=4)
    cfg.update(kw)
    return GatedPixelCNN(h, w, **cfg)


def binary(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) < 0.5).astype(np.float64)


KINDS = ["pixelcnn", "gated"]

# hypothesis: a variant and its sizes (image 1..4 x 1..4, kernels 3 or 5, 1-2 layers)
configs = st.one_of(
    st.fixed_dictionaries(dict(kind=st.just("pixelcnn"), h=st.integers(1, 4), w=st.integers(1, 4),
                               channels=st.integers(1, 3), n_residual=st.integers(0, 2),
                               first_kernel=st.sampled_from([1, 3, 5, 7]), kernel=st.sampled_from([1, 3, 5]),
                               seed=st.integers(0, 2**16))),
    st.fixed_dictionaries(dict(kind=st.just("gated"), h=st.integers(1, 4), w=st.integers(1, 4),
                               channels=st.integers(1, 3), n_layers=st.integers(1, 2),
                               kernel=st.sampled_from([3, 5]), seed=st.integers(0, 2**16))),
)


def build(cfg):
    cfg = dict(cfg)
    return make(cfg.pop("kind"), cfg.pop("h"), cfg.pop("w"), cfg.pop("seed"), **cfg)


# ----------------------------------------------------------------------------- protocol basics
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_config_and_state_dict(kind):
    m = make(kind, 4, 5)
    assert m.event_shape == (1, 4, 5) and m.kind == "binary"
    np.testing.assert_array_equal(m.ordering, np.arange(20))
    x = binary((6, 1, 4, 5))
    assert m.log_prob_per_variable(x).shape == (6, 1, 4, 5)
    assert m.log_prob(x).shape == (6,)
    assert m.logits(x).shape == (6, 1, 4, 5)
    assert m.sample(3, seed=0).shape == (3, 1, 4, 5)
    nanoar.manual_seed(123)  # different initial weights ...
    m2 = type(m)(**m.config())
    m2.load_state_dict(m.state_dict())  # ... replaced by m's
    np.testing.assert_array_equal(m2.log_prob(x).data, m.log_prob(x).data)
    np.testing.assert_array_equal(m2.sample(4, seed=5), m.sample(4, seed=5))


def test_benchmark_defaults():
    """The default PixelCNN is the benchmark model: A 7x7 1->64, 5 x (B 3x3 64->64), 1x1 64->64, 1x1 64->1."""
    nanoar.manual_seed(0)
    m = PixelCNN()
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert shapes["conv_a.weight"] == (64, 1, 7, 7) and m.conv_a.mask_type == "A"
    assert [shapes[f"res.{i}.weight"] for i in range(5)] == [(64, 64, 3, 3)] * 5
    assert all(c.mask_type == "B" for c in m.res)
    assert shapes["out1.weight"] == (64, 64, 1, 1) and shapes["out2.weight"] == (1, 64, 1, 1)
    assert m.num_parameters() == 64 * 49 + 64 + 5 * (64 * 64 * 9 + 64) + 64 * 64 + 64 + 64 + 1


# ----------------------------------------------------------------------------- exact likelihood
@pytest.mark.parametrize("kind,kw", [
    ("pixelcnn", dict(n_residual=1)),
    ("pixelcnn", dict(n_residual=2, first_kernel=5, kernel=3)),
    ("gated", dict(n_layers=1)),
    ("gated", dict(n_layers=2, kernel=5)),
])
def test_normalised_over_all_3x3_images(float64, kind, kw):
    assert_normalised(make(kind, 3, 3, **kw), atol=1e-6)


@given(configs)
def test_jacobian_autoregressive_random_sizes(cfg):
    with nanoar.default_dtype_as("float64"):
        m = build(cfg)
        x = binary((2, *m.event_shape), cfg["seed"])
        d = m.height * m.width
        assert_jacobian_autoregressive(lambda xt: m(xt).reshape(len(x), d), x, m.ordering)


@given(configs)
def test_future_does_not_matter_random_sizes(cfg):
    with nanoar.default_dtype_as("float64"):
        m = build(cfg)
        x = binary((3, *m.event_shape), cfg["seed"])
        assert_future_does_not_matter(m, x, np.random.default_rng(cfg["seed"]))


@pytest.mark.parametrize("kind", KINDS)
def test_one_pass_equals_sequential(float64, kind):
    m = make(kind, 3, 4)
    assert_one_pass_equals_sequential(m, binary((4, 1, 3, 4)), np.random.default_rng(1))


@pytest.mark.parametrize("kind", KINDS)
def test_param_grads_match_finite_differences(float64, kind):
    m = make(kind, 3, 4, channels=2)
    x = to_xp(binary((3, 1, 3, 4), 2))
    assert_param_grads(m, lambda: -m.log_prob(x).mean(), n_checks=4)


# ----------------------------------------------------------------------------- the blind spot
def _centre_influence(model, n=8):
    """sum over a batch of |d f_centre / d x|: (H, W), which input pixels the centre's logit
    depends on (random 0/1 images, so no ReLU pattern can hide a dependence everywhere)."""
    h, w = model.height, model.width
    xt = Tensor(binary((n, 1, h, w), 3), requires_grad=True)
    model(xt)[:, 0, h // 2, w // 2].sum().backward()
    return np.abs(nanoar.to_numpy(xt.grad)).sum(axis=0)[0]


def test_pixelcnn_has_a_blind_spot_gated_does_not(float64):
    """7x7 image, centre (3, 3), a 3x3 type A layer and three 3x3 type B layers: the box of
    reach is 4 rows up and 4 columns either side, i.e. every earlier pixel of the image.

    PixelCNN: the past pixels (1, 6), (2, 5), (2, 6), up and to the right of the centre, have
    EXACTLY zero influence on its logit: each masked layer reaches one column further right
    only by going one row further up, so the wedge right of the anti-diagonal is never seen.
    GatedPixelCNN with the same reach (3 layers, 3x3): every earlier pixel matters."""
    past = np.arange(49).reshape(7, 7) < 3 * 7 + 3
    g = _centre_influence(make("pixelcnn", 7, 7, channels=4, n_residual=3, first_kernel=3, kernel=3))
    assert not g[~past].any(), "PixelCNN's centre logit depends on a future pixel"
    blind = sorted(zip(*np.nonzero(past & (g == 0))))
    assert blind == [(1, 6), (2, 5), (2, 6)], f"blind spot of PixelCNN: {blind}"

    g = _centre_influence(make("gated", 7, 7, channels=4, n_layers=3, kernel=3))
    assert not g[~past].any(), "GatedPixelCNN's centre logit depends on a future pixel"
    assert (g[past] != 0).all(), f"GatedPixelCNN misses past pixels {list(zip(*np.nonzero(past & (g == 0))))}"


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind,h,w,method", [
    ("pixelcnn", 2, 2, "fast"), ("pixelcnn", 3, 2, "fast"), ("pixelcnn", 2, 3, "naive"),
    ("gated", 2, 2, "fast"), ("gated", 3, 2, "fast"), ("gated", 2, 3, "naive"),
])
def test_samples_match_likelihood(float64, kind, h, w, method):
    """Chi-square of 20000 samples against exp(log_prob) over all 2^(h w) images. The
    untrained biases are pushed so the distribution is far from uniform."""
    m = make(kind, h, w, seed=4, channels=4)
    m.out2.bias.data += 1.5
    m.out2.weight.data *= 8.0
    assert_samples_match(m, 20000, seed=7, method=method)


@pytest.mark.parametrize("kind,h,w", [("pixelcnn", 4, 6), ("pixelcnn", 5, 3), ("gated", 4, 6), ("gated", 6, 3)])
def test_fast_sampler_equals_naive(device, float64, kind, h, w):
    """Same seed, same uniforms in the same order: the cached sampler reproduces the
    full-forward reference exactly, on square and non-square images."""
    m = make(kind, h, w, seed=2, channels=4, **({"n_residual": 3} if kind == "pixelcnn" else {"n_layers": 3}))
    m.out2.weight.data *= 4.0  # confident logits, so a wrong logit would flip pixels
    fast, naive = m.sample(5, seed=11, method="fast"), m.sample(5, seed=11, method="naive")
    assert nanoar.backend.is_device_array(fast) == (device == "cuda")
    np.testing.assert_array_equal(nanoar.to_numpy(fast), nanoar.to_numpy(naive))
    assert 0 < float(fast.mean()) < 1


@given(configs, st.integers(1, 4))
def test_fast_sampler_equals_naive_random_configs(cfg, n):
    with nanoar.default_dtype_as("float64"):
        m = build(cfg)
        np.testing.assert_array_equal(m.sample(n, seed=cfg["seed"], method="fast"),
                                      m.sample(n, seed=cfg["seed"], method="naive"))


@pytest.mark.parametrize("kind", KINDS)
def test_fast_equals_naive_float32(kind):
    m = make(kind, 5, 4, seed=3)
    np.testing.assert_array_equal(m.sample(6, seed=1), m.sample(6, seed=1, method="naive"))


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_seeds(device, kind):
    m = make(kind, 3, 4)
    a, b, c = m.sample(8, seed=0), m.sample(8, seed=0), m.sample(8, seed=1)
    np.testing.assert_array_equal(nanoar.to_numpy(a), nanoar.to_numpy(b))
    assert not np.array_equal(nanoar.to_numpy(a), nanoar.to_numpy(c))
    assert set(np.unique(nanoar.to_numpy(a))) <= {0.0, 1.0} and a.dtype == np.float32
    m.log_prob(a)  # samples are valid data


@pytest.mark.parametrize("kind", KINDS)
def test_same_log_prob_on_every_device(device, kind):
    """Weights are drawn on the host, so a seed gives the same model on CPU and GPU."""
    x = binary((5, 1, 3, 4), 1)
    lp = nanoar.to_numpy(make(kind, 3, 4).log_prob(to_xp(x)).data)
    nanoar.set_device("cpu", seed=0)
    ref = make(kind, 3, 4).log_prob(x).data
    np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("kind", KINDS)
def test_fits_a_few_patterns(kind):
    """Four fixed 4x4 patterns (stripes both ways, two checkerboards) in equal numbers: the
    best possible NLL is log 4 = 1.39 nats, an untrained model pays ~16 log 2 = 11.1 nats."""
    stripes = np.tile([0, 1], (4, 2)).reshape(4, 4)
    checker = (np.add.outer(np.arange(4), np.arange(4)) % 2).astype(float)
    pats = np.stack([stripes, stripes.T, checker, 1 - checker])[:, None].astype(np.float32)
    x = np.repeat(pats, 8, axis=0)
    m = make(kind, 4, 4, seed=0, channels=8, head_channels=16)
    opt = Adam(m.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = -m.log_prob(x).mean()
        loss.backward()
        opt.step()
    with no_grad():
        nll = -m.log_prob(pats).mean().item()
    assert nll < 2.0, f"{kind}: NLL {nll:.3f} nats after training (optimum 1.386)"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_gives_clear_errors(kind):
    m = make(kind, 3, 4)
    x = binary((2, 1, 3, 4))
    x[0, 0, 1, 1] = 0.5
    with pytest.raises(ValueError, match="only 0 and 1"):
        m.log_prob(x)
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 1, 3, 4\)"):
        m.log_prob(binary((2, 3, 4)))
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 1, 3, 4\)"):
        m.log_prob(binary((2, 1, 4, 3)))
    with pytest.raises(ValueError, match="method"):
        m.sample(2, method="slow")
    with pytest.raises(ValueError, match="positive integer"):
        m.sample(0)


def test_bad_construction():
    with pytest.raises(ValueError, match="first_kernel"):
        PixelCNN(4, 4, first_kernel=4)
    with pytest.raises(ValueError, match="kernel"):
        GatedPixelCNN(4, 4, kernel=1)
    with pytest.raises(ValueError, match="height"):
        PixelCNN(0, 4)
    with pytest.raises(ValueError, match="n_layers"):
        GatedPixelCNN(4, 4, n_layers=0)
