"""WaveNet's kernels (nanoar.kernels.wavenet) against the textbook path of layers: the first
conv as lookups and `residual_layer` (with and without a per-example gate bias) in value and
every gradient, the whole fused path on random configurations, conditional ones included,
gradchecks of the kernels, and the queue sampler against the naive sampler (prompts,
temperature, top-k, per-sample labels) on random configurations and on every device."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, gradcheck, no_grad
from nanoar.kernels.wavenet import first_layer_lookup, residual_layer
from nanoar.models.wavenet import WaveNet
from nanoar.nn import CausalConv1d, Conv1d, gated_activation
from strategies import fixture_settings, seeds

from conftest import to_xp


@st.composite
def configs(draw):
    """A small WaveNet's configuration (`seed` for its weights), unconditional or with labels."""
    cfg = dict(n_classes=draw(st.integers(2, 5)), residual_channels=draw(st.integers(1, 4)),
               dilation_channels=2 * draw(st.integers(1, 3)), skip_channels=draw(st.integers(1, 4)),
               dilations=draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)),
               n_stacks=draw(st.integers(1, 2)), kernel=draw(st.integers(2, 3)))
    if draw(st.booleans()):
        cfg.update(input="embedding", embed_dim=draw(st.integers(1, 4)))
    if draw(st.booleans()):
        cfg.update(n_labels=draw(st.integers(1, 3)))
    return cfg


def build(cfg, seed, scale=2.0):
    """The model, with weights scaled up so that gates and ReLUs are far from linear, and
    nonzero biases and label tables (zero-initialised ones would hide a bias sent to the
    wrong place)."""
    nanoar.manual_seed(seed)
    model = WaveNet(**cfg, seq_len=4)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        random = p.ndim < 2 or name.startswith("label_bias.")
        p.data[...] = to_xp(rng.standard_normal(p.shape)) if random else p.data * scale
    return model


def labels_for(model, n, rng):
    """Random labels (n,) on the device for a conditional model, None for an unconditional one."""
    return to_xp(rng.integers(0, model.n_labels, size=n)) if model.n_labels else None


def grads_of(tensors):
    return [nanoar.to_numpy(t.grad) for t in tensors]


def assert_all_close(got, want, what):
    for g, w, name in zip(got, want, what):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------- first layer
@fixture_settings
@given(cfg=configs(), n=st.integers(1, 3), t=st.integers(1, 9), seed=seeds)
def test_first_layer_lookup_equals_the_causal_conv_on_input_columns(float64, cfg, n, t, seed):
    model = build(cfg, seed)
    rng = np.random.default_rng(seed)
    a = to_xp(rng.integers(0, model.n_classes, size=(n, t)))
    gy = to_xp(rng.standard_normal((n, t, model.residual_channels)))
    params = [model.causal.weight, model.causal.bias] + ([model.embed.weight] if model.embed is not None else [])
    results = []
    for fused in (True, False):
        model.zero_grad()
        if fused:
            h = first_layer_lookup(a, model.causal.weight, model.causal.bias, params[2] if len(params) > 2 else None)
        else:
            h = model.causal(model.input_columns(model.encode(a))).transpose(0, 2, 1)
        h.backward(gy)
        results.append([nanoar.to_numpy(h.data)] + grads_of(params))
    assert_all_close(results[0], results[1], ["h", "weight", "bias", "embedding"])


def test_first_layer_lookup_gradcheck(float64):
    rng = np.random.default_rng(3)
    a = to_xp(rng.integers(0, 4, size=(2, 5)))
    weight = Tensor(to_xp(rng.standard_normal((3, 2, 3))), requires_grad=True)
    bias = Tensor(to_xp(rng.standard_normal(3)), requires_grad=True)
    embed = Tensor(to_xp(rng.standard_normal((4, 2))), requires_grad=True)
    gradcheck(lambda w, b, e: first_layer_lookup(a, w, b, e), [weight, bias, embed])
    one_hot = Tensor(to_xp(rng.standard_normal((3, 4, 2))), requires_grad=True)
    gradcheck(lambda w, b: first_layer_lookup(a, w, b), [one_hot, bias])


# ---------------------------------------------------------------------------- residual layer
def textbook_layer(u, conv, res, skip, gate_bias=None):
    """The layer as the model's textbook path computes it, on the channels-last stream
    u = [h | s] (N, T, R + S), with a gate bias (N, D) added to every time step."""
    r = res.weight.shape[0]
    h, s = u[:, :, :r].transpose(0, 2, 1), u[:, :, r:].transpose(0, 2, 1)     # (N, R, T), (N, S, T)
    g = conv(h) if gate_bias is None else conv(h) + gate_bias.reshape(*gate_bias.shape, 1)
    z = gated_activation(g)
    return nanoar.concatenate([h + res(z), s + skip(z)], axis=1).transpose(0, 2, 1)


layer_sizes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 4), st.integers(1, 3),
                        st.integers(1, 4), st.integers(2, 3), st.integers(1, 5))  # N, T, R, H, S, k, d


def layer_and_stream(size, seed):
    n, t, r, half, s, k, d = size
    nanoar.manual_seed(seed)
    rng = np.random.default_rng(seed)
    conv, res, skip = CausalConv1d(r, 2 * half, k, dilation=d), Conv1d(half, r, 1), Conv1d(half, s, 1)
    for p in conv.parameters() + res.parameters() + skip.parameters():
        p.data[...] = to_xp(rng.standard_normal(p.shape))
    u = Tensor(to_xp(rng.standard_normal((n, t, r + s))), requires_grad=True)
    return u, conv, res, skip, to_xp(rng.standard_normal((n, t, r + s)))


@fixture_settings
@given(size=layer_sizes, seed=seeds, with_gate_bias=st.booleans())
def test_residual_layer_equals_the_textbook_layer_in_value_and_gradient(float64, size, seed, with_gate_bias):
    u, conv, res, skip, gy = layer_and_stream(size, seed)
    gate_bias = None
    params = [u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias]
    names = ["out", "u", "weight", "bias", "res weight", "res bias", "skip weight", "skip bias"]
    if with_gate_bias:  # a conditional model's G_l[y], one row per example
        gate_bias = Tensor(to_xp(np.random.default_rng(seed + 1).standard_normal((u.shape[0], conv.weight.shape[0]))),
                           requires_grad=True)
        params, names = params + [gate_bias], names + ["gate bias"]
    results = []
    for fused in (True, False):
        for p in params:
            p.grad = None
        if fused:
            out = residual_layer(u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias, conv.dilation,
                                 gate_bias)
        else:
            out = textbook_layer(u, conv, res, skip, gate_bias)
        out.backward(gy)
        results.append([nanoar.to_numpy(out.data)] + grads_of(params))
    assert_all_close(results[0], results[1], names)


@pytest.mark.parametrize("kernel,dilation", [(2, 1), (2, 3), (3, 2), (2, 9)])
@pytest.mark.parametrize("with_gate_bias", [False, True])
def test_residual_layer_gradcheck(float64, kernel, dilation, with_gate_bias):
    rng = np.random.default_rng(10)
    r, s, d, t, n = 3, 2, 4, 7, 2
    u = Tensor(to_xp(rng.standard_normal((n, t, r + s))), requires_grad=True)
    shapes = [(d, r, kernel), (d,), (r, d // 2, 1), (r,), (s, d // 2, 1), (s,)] + ([(n, d)] if with_gate_bias else [])
    params = [Tensor(to_xp(rng.standard_normal(shape)), requires_grad=True) for shape in shapes]
    gradcheck(lambda *a: residual_layer(*a[:7], dilation, *a[7:]), [u, *params])


# ---------------------------------------------------------------------------- the whole path
@fixture_settings
@given(cfg=configs(), n=st.integers(1, 3), t=st.integers(1, 12), seed=seeds)
def test_fused_path_equals_the_textbook_path_in_value_and_every_gradient(float64, cfg, n, t, seed):
    model = build(cfg, seed)
    rng = np.random.default_rng(seed)
    a = to_xp(rng.integers(0, model.n_classes, size=(n, t)))
    y = labels_for(model, n, rng)
    gy = to_xp(rng.standard_normal((n, model.n_classes, t)))
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        logits = model.logits(a, y)
        logits.backward(gy)
        results.append((nanoar.to_numpy(logits.data), {k: p.grad for k, p in model.named_parameters()}))
    (fused_logits, fused_grads), (logits, grads) = results
    np.testing.assert_allclose(fused_logits, logits, rtol=1e-10, atol=1e-12)
    # The last layer's residual conv feeds nothing: no gradient on the textbook path, a zero
    # one in the fused layer (which computes both 1x1 convs as one product).
    last = len(model.dilated) - 1
    for k in (f"res.{last}.weight", f"res.{last}.bias"):
        assert grads[k] is None and not nanoar.to_numpy(fused_grads[k]).any()
    for k, g in grads.items():
        if g is not None:
            np.testing.assert_allclose(nanoar.to_numpy(fused_grads[k]), nanoar.to_numpy(g), rtol=1e-10, atol=1e-12,
                                       err_msg=k)
    if model.n_labels:  # the label tables get a gradient (on the rows of the labels present)
        assert all(grads[f"label_bias.{l}.weight"] is not None for l in range(len(model.dilated)))


@pytest.mark.parametrize("input", ["onehot", "embedding"])
@pytest.mark.parametrize("kernel", [2, 3])
def test_fused_path_equals_the_textbook_path_with_labels(float64, input, kernel):
    """K = 3 classes, 3 labels, one per example: logits, the loss's gradient on every
    parameter, the label tables included, and a finite-difference check of the tables."""
    cfg = dict(n_classes=3, residual_channels=3, dilation_channels=4, skip_channels=2, dilations=(1, 2), kernel=kernel,
               input=input, n_labels=3)
    model = build(cfg, 7)
    rng = np.random.default_rng(8)
    a, y = to_xp(rng.integers(0, 3, size=(4, 9))), to_xp(np.array([0, 2, 1, 2]))
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        loss = model.training_loss(a, y=y)[0]
        loss.backward()
        # (the last layer's residual conv feeds nothing: a zero gradient on the fused path)
        results.append([loss.item()] + [np.zeros(p.shape) if p.grad is None else nanoar.to_numpy(p.grad)
                                        for p in model.parameters()])
    assert_all_close(results[0], results[1], ["loss"] + [k for k, _ in model.named_parameters()])
    tables = [label.weight for label in model.label_bias]
    model.fused = True
    gradcheck(lambda *w: model.logits(a, y), tables)


# ---------------------------------------------------------------------------- the queue sampler
def assert_queue_sampler_equals_naive(model, n, length, seed, rng):
    """Fast == naive under one seed: plain, with a shared and a per-sequence prompt, and
    with temperature and top-k; a conditional model with a label per sample."""
    y = labels_for(model, n, rng)
    options = [dict(), dict(prompt=rng.integers(0, model.n_classes, size=rng.integers(1, length + 1)), temperature=0.7,
                            top_k=int(rng.integers(1, model.n_classes + 1))),
               dict(prompt=rng.integers(0, model.n_classes, size=(n, int(rng.integers(1, length + 1)))), temperature=1.6)]
    for opts in options:
        opts = {k: to_xp(v) if k == "prompt" else v for k, v in opts.items()}
        fast = nanoar.to_numpy(model.sample(n, seed=seed, length=length, y=y, **opts))
        naive = nanoar.to_numpy(model.sample(n, seed=seed, length=length, y=y, method="naive", **opts))
        np.testing.assert_array_equal(fast, naive, err_msg=str(opts))


@fixture_settings
@given(cfg=configs(), n=st.integers(1, 3), seed=seeds)
def test_queue_sampler_equals_the_naive_sampler(float64, cfg, n, seed):
    """Past the receptive field (every queue wraps around) on random configurations."""
    model = build(cfg, seed)
    rng = np.random.default_rng(seed)
    assert_queue_sampler_equals_naive(model, n, model.receptive_field + 4, seed, rng)


@pytest.mark.parametrize("cfg", [dict(n_classes=5, residual_channels=4, dilation_channels=6, skip_channels=3,
                                      dilations=(1, 2, 4)),
                                 dict(n_classes=4, residual_channels=3, dilation_channels=4, skip_channels=5,
                                      dilations=(2, 1), n_stacks=2, kernel=3, input="embedding", embed_dim=2),
                                 dict(n_classes=3, residual_channels=3, dilation_channels=4, skip_channels=2,
                                      dilations=(1, 2), kernel=3, n_labels=3)],
                         ids=["onehot-k2", "embedding-k3", "onehot-k3-labels"])
def test_queue_sampler_equals_the_naive_sampler_on_every_device(device, cfg):
    model = build(cfg, 1)
    with no_grad():
        assert_queue_sampler_equals_naive(model, 3, model.receptive_field + 6, 5, np.random.default_rng(6))
