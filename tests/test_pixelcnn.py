"""PixelCNN and GatedPixelCNN: what is particular to them. The blind spot of stacked masks
(and its absence in the gated stacks), the autoregressive property on random image sizes,
kernels and depths, the benchmark model, parameter names, learning, and refused input; and
the class-conditional models (n_labels > 0): the identities of the protocol for each label,
the label reaching every pixel's conditional, gradients of the label weights, configs.

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

from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match)


def make(kind, h, w, seed=0, **kw):
    """A small model of either variant, built from a fixed seed. A conditional one
    (n_labels=K) gets random label weights: they start at zero, which would hide a label
    bias that never reaches the logits."""
    nanoar.manual_seed(seed)
    if kind == "pixelcnn":
        m = PixelCNN(h, w, **{**dict(channels=3, n_residual=2, first_kernel=3, kernel=3, head_channels=4), **kw})
    else:
        m = GatedPixelCNN(h, w, **{**dict(channels=3, n_layers=2, kernel=3, head_channels=4), **kw})
    return randomise_labels(m, seed)


def randomise_labels(m, seed, scale=1.0):
    """Every label weight (those of `nn.LabelBias`, named label_*) ~ N(0, scale^2)."""
    rng = np.random.default_rng(seed + 1)
    for name, p in m.named_parameters():
        if name.startswith("label_"):
            p.data = nanoar.to_device((scale * rng.standard_normal(p.shape)).astype(p.dtype))
    return m


class AtLabel:
    """A conditional model at one label y, p(x | y), as the checks of ar_checks take a model."""

    def __init__(self, model, y):
        self.model, self.y = model, y
        self.event_shape, self.ordering = model.event_shape, model.ordering

    def log_prob(self, x):
        return self.model.log_prob(x, y=self.y)

    def log_prob_per_variable(self, x):
        return self.model.log_prob_per_variable(x, y=self.y)

    def sample(self, n, seed=None, **options):
        return self.model.sample(n, seed=seed, y=self.y, **options)


def binary(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) < 0.5).astype(np.float64)


KINDS = ["pixelcnn", "gated"]

# hypothesis: a variant and its sizes (image 1..5 x 1..5, every kernel size, 0-3 layers),
# unconditional or with 1-3 labels
configs = st.one_of(
    st.fixed_dictionaries(dict(kind=st.just("pixelcnn"), h=st.integers(1, 5), w=st.integers(1, 5),
                               channels=st.integers(1, 3), n_residual=st.integers(0, 3),
                               first_kernel=st.sampled_from([1, 3, 5, 7]), kernel=st.sampled_from([1, 3, 5]),
                               n_labels=st.integers(0, 3), seed=st.integers(0, 2**16))),
    st.fixed_dictionaries(dict(kind=st.just("gated"), h=st.integers(1, 5), w=st.integers(1, 5),
                               channels=st.integers(1, 3), n_layers=st.integers(1, 3),
                               kernel=st.sampled_from([3, 5]), n_labels=st.integers(0, 3),
                               seed=st.integers(0, 2**16))),
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
    assert m.config() == dict(height=4, width=5, head_channels=4, n_labels=0, **extra)


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
    narrower or shorter than the kernels, type A 1x1 kernels, and no residual blocks; and
    with labels (a different one per example)."""
    with nanoar.default_dtype_as("float64"):
        m = build(cfg)
        rng = np.random.default_rng(cfg["seed"])
        x = rng.standard_normal((2, *m.event_shape))
        y = m.check_labels(rng.integers(0, m.n_labels, 2), 2) if m.n_labels else None
        d = m.height * m.width
        assert_jacobian_autoregressive(lambda xt: m.distribution(xt, y).logits.reshape(len(x), d), x, m.ordering)


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
    (lambda: PixelCNN(4, 4, n_labels=-1), "n_labels"),
    (lambda: PixelCNN(4, 4, n_labels=2.0), "n_labels"),
    (lambda: GatedPixelCNN(4, 4, n_labels=True), "n_labels"),
    (lambda: GatedPixelCNN(4, 4, n_labels="10"), "n_labels"),
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


# ============================================================================ class-conditional
L = 3  # labels of the conditional test models
IMAGE = (2, 3)  # small enough to enumerate: 64 images


def conditional(kind, seed=0, **kw):
    """A 2x3 conditional model with L labels, random label weights, and its other weights
    scaled up so that the conditionals are far from 1/2."""
    m = make(kind, *IMAGE, seed=seed, n_labels=L, **kw)
    for name, p in m.named_parameters():
        if p.ndim >= 2 and not name.startswith("label_"):
            p.data *= 2.0
    return m


def test_conditional_parameter_names_and_shapes():
    """The label weights a checkpoint stores: one (K, width) table per biased layer, next to
    the unconditional model's parameters, which are unchanged."""
    for kind, labels in [
        ("pixelcnn", {"label_a.weight": (L, 3), "label_res.0.weight": (L, 3), "label_res.1.weight": (L, 3),
                      "label_out1.weight": (L, 4)}),
        ("gated", {"label_v.0.weight": (L, 6), "label_v.1.weight": (L, 6), "label_h.0.weight": (L, 6),
                   "label_h.1.weight": (L, 6), "label_out1.weight": (L, 4)}),
    ]:
        plain = {k: tuple(v.shape) for k, v in make(kind, 4, 5).state_dict().items()}
        cond = {k: tuple(v.shape) for k, v in make(kind, 4, 5, n_labels=L).state_dict().items()}
        assert cond == {**plain, **labels}
        assert not any(k.startswith("label_") for k in plain)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_model_starts_as_the_unconditional_one(kind):
    """Label weights are zero at initialisation, and they are created after every other
    parameter: the same seed gives the same other weights and the same likelihood, for
    every label."""
    nanoar.manual_seed(4)
    plain = PixelCNN(*IMAGE, channels=3, n_residual=1) if kind == "pixelcnn" else GatedPixelCNN(*IMAGE, channels=3)
    nanoar.manual_seed(4)
    cond = type(plain)(**{**plain.config(), "n_labels": L})
    assert all(not np.any(nanoar.to_numpy(p.data)) for k, p in cond.named_parameters() if k.startswith("label_"))
    x = binary((5, 1, *IMAGE), 1)
    with no_grad():
        want = nanoar.to_numpy(plain.log_prob(x).data)
        for y in range(L):
            np.testing.assert_array_equal(nanoar.to_numpy(cond.log_prob(x, y=y).data), want)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_normalised_for_every_label(float64, kind):
    """sum over all 64 images of p(x | y) == 1 for each label y."""
    m = conditional(kind)
    for y in range(L):
        assert_normalised(AtLabel(m, y), atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_autoregressive_for_every_label(float64, kind):
    """For each label: changing the pixels after position k leaves every conditional up to k
    unchanged, the one-pass conditionals equal the ones taken prefix by prefix, and
    d f_ij / d x_kl == 0 unless (k, l) comes before (i, j)."""
    m = conditional(kind)
    x = binary((4, 1, *IMAGE), 2)
    d = int(np.prod(IMAGE))
    for y in range(L):
        assert_future_does_not_matter(AtLabel(m, y), x, np.random.default_rng(y))
        assert_one_pass_equals_sequential(AtLabel(m, y), x, np.random.default_rng(10 + y))
        labels = m.check_labels(y, len(x))
        assert_jacobian_autoregressive(lambda xt: m.distribution(xt, labels).logits.reshape(len(x), d),
                                       np.random.default_rng(y).standard_normal(x.shape), m.ordering)


@pytest.mark.parametrize("kind", KINDS)
def test_the_label_reaches_every_pixel(float64, kind):
    """Every pixel's conditional, the first one's (which sees no pixel at all) included,
    changes with the label; and one label per example scores each example as that label
    alone would."""
    m = conditional(kind)
    x = binary((6, 1, *IMAGE), 3)
    with no_grad():
        per_label = [nanoar.to_numpy(m.log_prob_per_variable(x, y=y).data) for y in range(L)]
        for a in range(L):
            for b in range(a):
                assert (per_label[a] != per_label[b]).all(), f"labels {a} and {b} give the same conditional"
        mixed = np.array([0, 1, 2, 2, 1, 0])
        got = nanoar.to_numpy(m.log_prob(x, y=mixed).data)
    want = np.array([per_label[y][i].sum() for i, y in enumerate(mixed)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["fast", "naive"])
def test_conditional_samples_match_the_likelihood(kind, method):
    """Samples of p(x | y) for each label against the enumerated likelihood (chi-square)."""
    with nanoar.default_dtype_as("float64"):
        m = conditional(kind)
        for y in range(L):
            assert_samples_match(AtLabel(m, y), 4000, seed=y, method=method)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_parameter_gradients(float64, kind):
    """Every parameter's gradient against central differences, every entry of the label
    weights (at most 12) included, with each label in the batch."""
    m = conditional(kind, seed=5)
    x = binary((6, 1, *IMAGE), 4)
    y = np.array([0, 1, 2, 0, 1, 2])
    assert_param_grads(m, lambda: m.training_loss(x, y=y)[0], n_checks=12)
    for name, p in m.named_parameters():
        if name.startswith("label_"):
            assert np.abs(nanoar.to_numpy(p.grad)).sum() > 0, f"{name}: no gradient reaches the label weights"


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_float32_stays_float32(kind):
    m = conditional(kind)
    x = binary((3, 1, *IMAGE), 5).astype(np.float32)
    loss, _ = m.training_loss(x, y=np.array([2, 0, 1]))
    loss.backward()
    assert m.log_prob(x, y=1).dtype == np.float32 and loss.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in m.parameters())
    assert m.sample(2, seed=0, y=[0, 2]).dtype == np.float32


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_config_rebuilds_the_model(float64, kind):
    """config() carries n_labels; the rebuilt model, given the state, scores alike. A config
    without n_labels (a checkpoint from before conditioning) builds the unconditional model
    and loads that model's state."""
    m = conditional(kind)
    assert m.config()["n_labels"] == L
    clone = type(m)(**m.config())
    clone.load_state_dict({k: nanoar.to_numpy(v) for k, v in m.state_dict().items()})
    x = binary((3, 1, *IMAGE), 6)
    with no_grad():
        np.testing.assert_array_equal(nanoar.to_numpy(clone.log_prob(x, y=[1, 2, 0]).data),
                                      nanoar.to_numpy(m.log_prob(x, y=[1, 2, 0]).data))
    plain = make(kind, *IMAGE)
    old = {k: v for k, v in plain.config().items() if k != "n_labels"}
    rebuilt = type(plain)(**old)
    assert rebuilt.n_labels == 0
    rebuilt.load_state_dict({k: nanoar.to_numpy(v) for k, v in plain.state_dict().items()})
    with no_grad():
        np.testing.assert_array_equal(nanoar.to_numpy(rebuilt.log_prob(x).data),
                                      nanoar.to_numpy(plain.log_prob(x).data))


@pytest.mark.parametrize("kind", KINDS)
def test_labels_required_or_refused(kind):
    """A conditional model needs y, everywhere (forward too); an unconditional one refuses it."""
    cond, plain = conditional(kind), make(kind, *IMAGE)
    x = binary((2, 1, *IMAGE))
    for call in (lambda: cond.log_prob(x), lambda: cond.sample(2, seed=0), lambda: cond(Tensor(x))):
        with pytest.raises(ValueError, match="class-conditional.*pass y"):
            call()
    for call in (lambda: plain.log_prob(x, y=0), lambda: plain.sample(2, y=0),
                 lambda: plain(Tensor(x), np.zeros(2, np.int64))):
        with pytest.raises(ValueError, match="not class-conditional"):
            call()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        cond.log_prob(x, y=[0, 3])


@pytest.mark.parametrize("kind", KINDS)
def test_learns_a_pattern_per_label(kind):
    """Four 4x4 patterns, one per label: unconditionally the best NLL is log 4 = 1.39 nats,
    given the label it is 0; the labels must carry the difference."""
    stripes = np.tile([0, 1], (4, 2)).reshape(4, 4)
    checker = (np.add.outer(np.arange(4), np.arange(4)) % 2).astype(float)
    pats = np.stack([stripes, stripes.T, checker, 1 - checker])[:, None].astype(np.float32)
    x, y = np.repeat(pats, 8, axis=0), np.repeat(np.arange(4), 8)
    m = make(kind, 4, 4, seed=0, channels=8, head_channels=16, n_labels=4)
    opt = Adam(m.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        m.training_loss(x, y=y)[0].backward()
        opt.step()
    with no_grad():
        nll = -m.log_prob(pats, y=np.arange(4)).mean().item()
    assert nll < 0.5, f"{kind}: NLL {nll:.3f} nats given the label (unconditional optimum 1.386)"
    np.testing.assert_array_equal(nanoar.to_numpy(m.sample(4, seed=0, y=np.arange(4))), pats)
