"""PixelCNN and GatedPixelCNN: what is particular to them. The blind spot of stacked masks
(and its absence in the gated stacks), the autoregressive property on random image sizes,
kernels and depths, the benchmark model, parameter names, learning, and refused input.

The protocol's identities (normalisation, both samplers, gradients, devices) are checked
once for every model in test_protocol.py; the cached samplers in test_kernels_pixelcnn.py.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.models.pixelcnn import GatedPixelCNN, PixelCNN
from nanoar.optim import Adam

from ar_checks import assert_jacobian_autoregressive


def make(kind, h, w, seed=0, **kw):
    """A small model of either variant, built from a fixed seed."""
    nanoar.manual_seed(seed)
    if kind == "pixelcnn":
        return PixelCNN(h, w, **{**dict(channels=3, n_residual=2, first_kernel=3, kernel=3, head_channels=4), **kw})
    return GatedPixelCNN(h, w, **{**dict(channels=3, n_layers=2, kernel=3, head_channels=4), **kw})


def binary(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) < 0.5).astype(np.float64)


KINDS = ["pixelcnn", "gated"]

# hypothesis: a variant and its sizes (image 1..5 x 1..5, every kernel size, 0-3 layers)
configs = st.one_of(
    st.fixed_dictionaries(dict(kind=st.just("pixelcnn"), h=st.integers(1, 5), w=st.integers(1, 5),
                               channels=st.integers(1, 3), n_residual=st.integers(0, 3),
                               first_kernel=st.sampled_from([1, 3, 5, 7]), kernel=st.sampled_from([1, 3, 5]),
                               seed=st.integers(0, 2**16))),
    st.fixed_dictionaries(dict(kind=st.just("gated"), h=st.integers(1, 5), w=st.integers(1, 5),
                               channels=st.integers(1, 3), n_layers=st.integers(1, 3),
                               kernel=st.sampled_from([3, 5]), seed=st.integers(0, 2**16))),
)


def build(cfg):
    cfg = dict(cfg)
    return make(cfg.pop("kind"), cfg.pop("h"), cfg.pop("w"), cfg.pop("seed"), **cfg)


# ----------------------------------------------------------------------------- shapes and parameters
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_config(kind):
    m = make(kind, 4, 5)
    assert m.event_shape == (1, 4, 5) and m.kind == "binary"
    np.testing.assert_array_equal(m.ordering, np.arange(20))
    x = binary((6, 1, 4, 5))
    assert m(Tensor(x)).shape == (6, 1, 4, 5)
    assert m.log_prob_per_variable(x).shape == (6, 1, 4, 5)
    assert m.log_prob(x).shape == (6,)
    assert m.sample(3, seed=0).shape == (3, 1, 4, 5)
    extra = dict(channels=3, n_residual=2, first_kernel=3, kernel=3) if kind == "pixelcnn" else \
        dict(channels=3, n_layers=2, kernel=3)
    assert m.config() == dict(height=4, width=5, head_channels=4, **extra)


def test_parameter_names_and_shapes():
    """The names and shapes that checkpoints store (C = 3 channels, p = 1, 2 layers)."""
    def shapes(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    assert shapes(make("pixelcnn", 4, 5)) == {
        "conv_a.weight": (3, 1, 3, 3), "conv_a.bias": (3,), "conv_a.mask": (3, 1, 3, 3),
        **{f"res.{l}.{name}": s for l in range(2)
           for name, s in [("weight", (3, 3, 3, 3)), ("bias", (3,)), ("mask", (3, 3, 3, 3))]},
        "out1.weight": (4, 3, 1, 1), "out1.bias": (4,), "out2.weight": (1, 4, 1, 1), "out2.bias": (1,)}
    assert shapes(make("gated", 4, 5)) == {
        "vconv.0.weight": (6, 1, 1, 3), "vconv.0.bias": (6,), "vconv.1.weight": (6, 3, 2, 3), "vconv.1.bias": (6,),
        "hconv.0.weight": (6, 1, 1, 1), "hconv.0.bias": (6,), "hconv.1.weight": (6, 3, 1, 2), "hconv.1.bias": (6,),
        **{f"link.{l}.{name}": s for l in range(2) for name, s in [("weight", (6, 6, 1, 1)), ("bias", (6,))]},
        **{f"hout.{l}.{name}": s for l in range(2) for name, s in [("weight", (3, 3, 1, 1)), ("bias", (3,))]},
        "out1.weight": (4, 3, 1, 1), "out1.bias": (4,), "out2.weight": (1, 4, 1, 1), "out2.bias": (1,)}


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


# ----------------------------------------------------------------------------- autoregressive property
@given(configs)
def test_autoregressive_on_random_sizes_kernels_and_depths(cfg):
    """d f_ij / d x_kl == 0 unless (k, l) comes before (i, j) in raster order, for images
    narrower or shorter than the kernels, type A 1x1 kernels, and no residual blocks."""
    with nanoar.default_dtype_as("float64"):
        m = build(cfg)
        x = np.random.default_rng(cfg["seed"]).standard_normal((2, *m.event_shape))
        d = m.height * m.width
        assert_jacobian_autoregressive(lambda xt: m.distribution(xt).logits.reshape(len(x), d), x, m.ordering)


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
        loss, _ = m.training_loss(x)
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


@pytest.mark.parametrize("build_bad,match", [
    (lambda: PixelCNN(4, 4, first_kernel=4), "first_kernel"),
    (lambda: PixelCNN(4, 4, kernel=2), "kernel"),
    (lambda: PixelCNN(0, 4), "height"),
    (lambda: PixelCNN(4, 4, channels=0), "channels"),
    (lambda: PixelCNN(4, 4, n_residual=-1), "n_residual"),
    (lambda: GatedPixelCNN(4, 4, kernel=1), "kernel"),
    (lambda: GatedPixelCNN(4, 2.5), "width"),
    (lambda: GatedPixelCNN(4, 4, n_layers=0), "n_layers"),
    (lambda: GatedPixelCNN(4, 4, head_channels=0), "head_channels"),
])
def test_bad_construction(build_bad, match):
    with pytest.raises(ValueError, match=match):
        build_bad()
