"""WaveNet's kernels (nanoar.kernels.wavenet) against the textbook path of layers: the first
conv as lookups and `residual_layer` in value and every gradient, the whole fused path on
random configurations, gradchecks of the kernels, and the queue sampler against the naive
sampler (prompts, temperature, top-k) on random configurations and on every device."""
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
    """A small WaveNet's configuration (`seed` for its weights)."""
    cfg = dict(n_classes=draw(st.integers(2, 5)), residual_channels=draw(st.integers(1, 4)),
               dilation_channels=2 * draw(st.integers(1, 3)), skip_channels=draw(st.integers(1, 4)),
               dilations=draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)),
               n_stacks=draw(st.integers(1, 2)), kernel=draw(st.integers(2, 3)))
    if draw(st.booleans()):
        cfg.update(input="embedding", embed_dim=draw(st.integers(1, 4)))
    return cfg


def build(cfg, seed, scale=2.0):
    """The model, with weights scaled up so that gates and ReLUs are far from linear, and
    nonzero biases (zero-initialised ones would hide a bias sent to the wrong place)."""
    nanoar.manual_seed(seed)
    model = WaveNet(**cfg, seq_len=4)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = p.data * scale if p.ndim >= 2 else to_xp(rng.standard_normal(p.shape))
    return model


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
def textbook_layer(u, conv, res, skip):
    """The layer as the model's textbook path computes it, on the channels-last stream
    u = [h | s] (N, T, R + S)."""
    r = res.weight.shape[0]
    h, s = u[:, :, :r].transpose(0, 2, 1), u[:, :, r:].transpose(0, 2, 1)     # (N, R, T), (N, S, T)
    z = gated_activation(conv(h))
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
@given(size=layer_sizes, seed=seeds)
def test_residual_layer_equals_the_textbook_layer_in_value_and_gradient(float64, size, seed):
    u, conv, res, skip, gy = layer_and_stream(size, seed)
    params = [u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias]
    results = []
    for fused in (True, False):
        for p in params:
            p.grad = None
        if fused:
            out = residual_layer(u, conv.weight, conv.bias, res.weight, res.bias, skip.weight, skip.bias, conv.dilation)
        else:
            out = textbook_layer(u, conv, res, skip)
        out.backward(gy)
        results.append([nanoar.to_numpy(out.data)] + grads_of(params))
    assert_all_close(results[0], results[1], ["out", "u", "weight", "bias", "res weight", "res bias",
                                              "skip weight", "skip bias"])


@pytest.mark.parametrize("kernel,dilation", [(2, 1), (2, 3), (3, 2), (2, 9)])
def test_residual_layer_gradcheck(float64, kernel, dilation):
    rng = np.random.default_rng(10)
    r, s, d, t = 3, 2, 4, 7
    u = Tensor(to_xp(rng.standard_normal((2, t, r + s))), requires_grad=True)
    params = [Tensor(to_xp(rng.standard_normal(shape)), requires_grad=True)
              for shape in ((d, r, kernel), (d,), (r, d // 2, 1), (r,), (s, d // 2, 1), (s,))]
    gradcheck(lambda *a: residual_layer(*a, dilation=dilation), [u, *params])


# ---------------------------------------------------------------------------- the whole path
@fixture_settings
@given(cfg=configs(), n=st.integers(1, 3), t=st.integers(1, 12), seed=seeds)
def test_fused_path_equals_the_textbook_path_in_value_and_every_gradient(float64, cfg, n, t, seed):
    model = build(cfg, seed)
    rng = np.random.default_rng(seed)
    a = to_xp(rng.integers(0, model.n_classes, size=(n, t)))
    gy = to_xp(rng.standard_normal((n, model.n_classes, t)))
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        logits = model.logits(a)
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


# ---------------------------------------------------------------------------- the queue sampler
def assert_queue_sampler_equals_naive(model, n, length, seed, rng):
    """Fast == naive under one seed: plain, with a shared and a per-sequence prompt, and
    with temperature and top-k."""
    options = [dict(), dict(prompt=rng.integers(0, model.n_classes, size=rng.integers(1, length + 1)), temperature=0.7,
                            top_k=int(rng.integers(1, model.n_classes + 1))),
               dict(prompt=rng.integers(0, model.n_classes, size=(n, int(rng.integers(1, length + 1)))), temperature=1.6)]
    for opts in options:
        opts = {k: to_xp(v) if k == "prompt" else v for k, v in opts.items()}
        fast = nanoar.to_numpy(model.sample(n, seed=seed, length=length, **opts))
        naive = nanoar.to_numpy(model.sample(n, seed=seed, length=length, method="naive", **opts))
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
                                      dilations=(2, 1), n_stacks=2, kernel=3, input="embedding", embed_dim=2)],
                         ids=["onehot-k2", "embedding-k3"])
def test_queue_sampler_equals_the_naive_sampler_on_every_device(device, cfg):
    model = build(cfg, 1)
    with no_grad():
        assert_queue_sampler_equals_naive(model, 3, model.receptive_field + 6, 5, np.random.default_rng(6))
