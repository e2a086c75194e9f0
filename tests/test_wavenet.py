"""WaveNet: exactness (normalised, causal by perturbation and by gradient, samples match the
likelihood), gradients, receptive field, fast (queued) sampling == naive sampling, a tiny fit,
and refusal of bad data. Tiny models in float64 where tolerances demand it."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.gradcheck import gradcheck
from nanoar.models.wavenet import WaveNet, _FastSampler, gated_activation, residual_layer
from nanoar.optim import Adam

from ar_checks import (assert_refuses_bad_sequences, assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match)
from conftest import to_xp

K = 3


def tiny(seq_len=4, **kw):
    cfg = dict(n_classes=K, residual_channels=4, dilation_channels=6, skip_channels=5, dilations=(1, 2))
    cfg.update(kw)
    nanoar.manual_seed(cfg.pop("seed", 0))
    return WaveNet(**cfg, seq_len=seq_len)


VARIANTS = [dict(), dict(input="embedding", embed_dim=3), dict(kernel=3, n_stacks=2)]
IDS = ["onehot-k2", "embedding", "k3-2stacks"]


def lp_array(model, x):
    with no_grad():
        return nanoar.to_numpy(model.log_prob_per_variable(to_xp(x)).data)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_normalised_by_enumeration(float64, kw):
    assert_normalised(tiny(seq_len=4, **kw), n_classes=K, atol=1e-6)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_future_does_not_matter_and_one_pass_equals_sequential(float64, kw):
    model = tiny(seq_len=12, **kw)  # longer than the receptive field (5; 9 for k3-2stacks)
    x = np.random.default_rng(1).integers(0, K, size=(3, 12))
    assert_future_does_not_matter(model, x, np.random.default_rng(2), n_classes=K)
    assert_one_pass_equals_sequential(model, x, np.random.default_rng(3), n_classes=K)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_jacobian_of_logits_wrt_inputs_is_autoregressive(float64, kw):
    """d logits_t / d input_s == 0 for s >= t, through `forward_from_inputs`: the float input
    is one-hot rows (or embeddings) plus x_s times a fixed random direction."""
    model = tiny(seq_len=8, **kw)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, K, size=(2, 8))
    base = np.eye(K)[ids] if model.input == "onehot" else nanoar.to_numpy(model.embed.weight.data)[ids]
    dirs = to_xp(rng.standard_normal(base.shape))
    base = to_xp(base)

    def params_fn(xt):  # (N, T) -> logits (N, T, K)
        return model.forward_from_inputs(Tensor(base) + xt.reshape(2, 8, 1) * Tensor(dirs))

    assert_jacobian_autoregressive(params_fn, rng.standard_normal((2, 8)), np.arange(8))
    # ... and the conditional at t really uses x_{t-R}, ..., x_{t-1}, and nothing earlier
    r = model.receptive_field
    xt = Tensor(np.zeros((2, 8)), requires_grad=True)
    params_fn(xt)[:, 7].sum().backward()
    g = np.abs(nanoar.to_numpy(xt.grad)).sum(axis=0)
    assert np.all(g[max(0, 7 - r):7] > 0) and np.all(g[:max(0, 7 - r)] == 0), (r, g)


def test_forward_from_inputs_equals_log_prob_path(float64):
    model = tiny(seq_len=6)
    ids = np.random.default_rng(5).integers(0, K, size=(2, 6))
    with no_grad():
        a = model.forward_from_inputs(np.eye(K)[ids]).data
        b = model.logits(ids).data.transpose(0, 2, 1)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_samples_match_likelihood(float64, method):
    model = tiny(seq_len=3, dilations=(1,))
    assert_samples_match(model, 20000, n_classes=K, seed=0, method=method)


@pytest.mark.parametrize("kw", VARIANTS[:2], ids=IDS[:2])
def test_parameter_gradients_match_finite_differences(float64, kw):
    model = tiny(seq_len=6, **kw)
    x = to_xp(np.random.default_rng(6).integers(0, K, size=(2, 6)))
    assert_param_grads(model, lambda: -model.log_prob(x).mean(), n_checks=3)


def test_gated_activation_gradcheck(float64):
    rng = np.random.default_rng(7)
    y = Tensor(rng.standard_normal((2, 6, 5)) * 2, requires_grad=True)
    gradcheck(gated_activation, [y])
    with no_grad():
        z = gated_activation(y).data
    a, b = y.data[:, :3], y.data[:, 3:]
    np.testing.assert_allclose(z, np.tanh(a) / (1 + np.exp(-b)), rtol=1e-12)


@pytest.mark.parametrize("kernel,dilation", [(2, 1), (2, 3), (3, 2), (2, 9)])
def test_residual_layer_gradcheck(float64, kernel, dilation):
    rng = np.random.default_rng(10)
    r, s, d, t = 3, 2, 4, 7
    u = Tensor(rng.standard_normal((2, t, r + s)), requires_grad=True)
    params = [Tensor(rng.standard_normal(shape), requires_grad=True)
              for shape in ((d, r, kernel), (d,), (r, d // 2, 1), (r,), (s, d // 2, 1), (s,))]
    gradcheck(lambda *a: residual_layer(*a, dilation=dilation, split=r), [u, *params])


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_fused_layers_equal_the_composition_of_primitive_ops(float64, kw):
    """`residual_layer` == conv1d + gated_activation + 1x1 convs + adds: values and every
    parameter gradient (the fused path is what log_prob uses)."""
    model = tiny(seq_len=11, **kw)
    x = to_xp(np.random.default_rng(11).integers(0, K, size=(3, 11)))
    grads = []
    for fused in (True, False):
        model.zero_grad()
        logits = model.stack(model.first_layer(x), fused=fused)
        logits.backward(to_xp(np.random.default_rng(0).standard_normal(logits.shape)))
        grads.append({name: nanoar.to_numpy(p.grad) for name, p in model.named_parameters() if p.grad is not None})
        if fused:
            want = nanoar.to_numpy(logits.data)
        else:
            np.testing.assert_allclose(nanoar.to_numpy(logits.data), want, rtol=1e-12, atol=1e-12)
    last_res = {f"res.{len(model.dilated) - 1}.weight", f"res.{len(model.dilated) - 1}.bias"}
    assert set(grads[1]) == set(grads[0]) - last_res  # the unused last residual conv
    for name in last_res:
        assert not grads[0][name].any()
    for name, g in grads[1].items():
        np.testing.assert_allclose(grads[0][name], g, rtol=1e-10, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------- receptive field
def test_default_model_is_the_benchmark_model():
    model = WaveNet()
    assert model.receptive_field == 1025
    assert model.layer_dilations == tuple(2 ** i for i in range(10))
    assert model.causal.weight.shape == (64, 256, 2)
    assert model.dilated[0].weight.shape == (128, 64, 2)
    assert model.res[0].weight.shape == (64, 64, 1) and model.skip[0].weight.shape == (64, 64, 1)
    assert model.head2.weight.shape == (256, 64, 1)
    # the parameter count of bench/torch_ref.py's WaveNet
    assert model.num_parameters() == 32832 + 10 * (16512 + 4160 + 4160) + 4160 + 16640


def check_receptive_field(model, t):
    """Changing x_{t-R} changes log p(x_t | x_<t); changing x_{t-R-1} does not."""
    r = model.receptive_field
    assert t - r - 1 >= 0
    x = np.random.default_rng(8).integers(0, K, size=(4, t + 1))
    base = lp_array(model, x)[:, t]
    for s, changes in ((t - r, True), (t - r - 1, False)):
        xf = x.copy()
        xf[:, s] = (xf[:, s] + 1) % K
        moved = np.abs(lp_array(model, xf)[:, t] - base).max()
        assert (moved > 1e-9) == changes, f"R={r}: perturbing x_{s} moved log p(x_{t}|.) by {moved}"


@given(dilations=st.lists(st.integers(1, 4), min_size=1, max_size=3), kernel=st.integers(2, 3),
       n_stacks=st.integers(1, 2))
def test_receptive_field_value_by_perturbation(dilations, kernel, n_stacks):
    with nanoar.default_dtype_as("float64"):
        # wide enough that ReLUs of the head never all switch off for the 4 test rows
        model = tiny(seq_len=8, dilations=dilations, kernel=kernel, n_stacks=n_stacks,
                     residual_channels=8, dilation_channels=8, skip_channels=16)
        assert model.receptive_field == (kernel - 1) * (1 + n_stacks * sum(dilations)) + 1
        check_receptive_field(model, model.receptive_field + 2)


# ---------------------------------------------------------------------------- sampling
FAST_NAIVE = [
    dict(),
    dict(dilations=(1, 2, 4), n_stacks=2),
    dict(kernel=3, dilations=(1, 3)),
    dict(input="embedding", embed_dim=3, dilations=(2, 1)),
]


@pytest.mark.parametrize("kw", FAST_NAIVE, ids=["k2", "2stacks", "k3", "embedding"])
def test_fast_sampling_equals_naive_sampling(float64, kw):
    """Same seed, same draws: the queued sampler reproduces the reference exactly, well past
    the receptive field (the queues wrap around), with a prompt, temperature and top-k."""
    model = tiny(seq_len=40, **kw)
    assert model.receptive_field < 30
    for opts in (dict(), dict(prompt=np.array([2, 0, 1, 1]), temperature=0.7, top_k=2),
                 dict(prompt=np.random.default_rng(9).integers(0, K, size=(3, 5)), temperature=1.5)):
        fast = nanoar.to_numpy(model.sample(3, seed=11, **opts))
        naive = nanoar.to_numpy(model.sample(3, seed=11, method="naive", **opts))
        np.testing.assert_array_equal(fast, naive)
        if "prompt" in opts:
            np.testing.assert_array_equal(fast[:, :opts["prompt"].shape[-1]],
                                          np.broadcast_to(opts["prompt"], (3, opts["prompt"].shape[-1])))


@pytest.mark.parametrize("kw", FAST_NAIVE, ids=["k2", "2stacks", "k3", "embedding"])
def test_fast_step_logits_equal_one_pass_logits(float64, kw):
    """Stronger than equal samples: every cached step's logits equal the parallel pass's."""
    model = tiny(seq_len=30, **kw)
    x = np.random.default_rng(12).integers(0, K, size=(2, 30))
    with no_grad():
        want = nanoar.to_numpy(model.logits(to_xp(x)).data)                  # (N, K, T)
    fast = _FastSampler(model, 2)
    for t in range(30):
        np.testing.assert_allclose(nanoar.to_numpy(fast.step(t)), want[:, :, t], rtol=1e-10, atol=1e-10)
        fast.advance(to_xp(x[:, t]))


def test_sample_shapes_defaults_and_errors():
    model = tiny(seq_len=7)
    s = model.sample(2, seed=0)
    assert s.shape == (2, 7) and s.dtype == np.int64
    assert model.sample(1, seed=0, length=3).shape == (1, 3)
    np.testing.assert_array_equal(model.sample(2, seed=5), model.sample(2, seed=5))
    with pytest.raises(ValueError, match="method"):
        model.sample(1, method="slow")
    with pytest.raises(ValueError, match="longer"):
        model.sample(1, length=2, prompt=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="prompt"):
        model.sample(2, prompt=np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="class ids"):
        model.sample(1, prompt=np.array([0, K]))


# ---------------------------------------------------------------------------- fit, data, config
def test_fits_a_repeating_sequence():
    """x_t = t mod 3 for every sequence: deterministic, so the NLL can approach 0 nats."""
    model = tiny(seq_len=24, input="embedding", embed_dim=4, residual_channels=8, dilation_channels=8, skip_channels=8)
    x = np.tile(np.arange(24) % K, (4, 1))
    opt = Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss = -model.log_prob(x).mean()
        loss.backward()
        opt.step()
    nll_per_step = float(-lp_array(model, x).mean())
    assert nll_per_step < 0.05, f"NLL per step {nll_per_step:.4f} nats after 60 steps"
    s = nanoar.to_numpy(model.sample(4, seed=0, length=24, top_k=1))
    np.testing.assert_array_equal(s, x)


def test_any_length_is_accepted_and_bad_data_is_refused():
    model = tiny(seq_len=4)
    for t in (1, 2, 9):
        assert lp_array(model, np.zeros((2, t), int)).shape == (2, t)
    assert_refuses_bad_sequences(model)
    with pytest.raises(ValueError):
        WaveNet(dilation_channels=5)
    with pytest.raises(ValueError):
        WaveNet(input="wav")


def test_config_rebuilds_the_model_and_state_dict_round_trips(float64):
    from nanoar.models import build_model
    model = tiny(seq_len=5, input="embedding", embed_dim=3, kernel=3)
    other = build_model("wavenet", model.config())
    other.load_state_dict(model.state_dict())
    x = np.random.default_rng(13).integers(0, K, size=(2, 9))
    np.testing.assert_allclose(lp_array(other, x), lp_array(model, x), rtol=1e-12)


# ---------------------------------------------------------------------------- devices
def test_log_prob_and_fast_sampler_on_device(device):
    model = tiny(seq_len=12, dilations=(1, 2, 4))
    x = to_xp(np.random.default_rng(14).integers(0, K, size=(3, 12)))
    lp = model.log_prob(x)
    assert lp.shape == (3,) and bool(nanoar.xp().isfinite(lp.data).all())
    (-lp.mean()).backward()
    assert all(p.grad is not None for p in model.dilated[0].parameters())
    fast = model.sample(2, seed=3, length=20)
    naive = model.sample(2, seed=3, length=20, method="naive")
    assert nanoar.backend.is_device_array(fast) == (device == "cuda")
    # float32: equal up to a uniform landing within ~1e-6 of a class boundary (never, here)
    np.testing.assert_array_equal(nanoar.to_numpy(fast), nanoar.to_numpy(naive))


# ---------------------------------------------------------------------------- the benchmark model
def test_same_function_as_the_pytorch_benchmark_wavenet(float64, torch_ref):
    """With the reference's weights, log_prob is the reference's -NLL (a small instance of
    bench/torch_ref.py's WaveNet: one-hot input, k = 2, dilations 1, 2, 4)."""
    import torch

    ref = torch_ref
    torch.manual_seed(0)
    tm = ref.WaveNet(n_classes=5, channels=4, n_layers=3).double()
    model = WaveNet(n_classes=5, residual_channels=4, dilation_channels=8, skip_channels=4, dilations=(1, 2, 4))
    pairs = [(model.causal, tm.causal), (model.head1, tm.head1), (model.head2, tm.head2),
             *zip(model.dilated, tm.dilated), *zip(model.res, tm.res), *zip(model.skip, tm.skip)]
    for mine, theirs in pairs:
        mine.weight.data[...] = theirs.weight.detach().numpy()
        mine.bias.data[...] = theirs.bias.detach().numpy()
    x = np.random.default_rng(15).integers(0, 5, size=(3, 20))
    with torch.no_grad():  # tm(x) and tm.nll(x), in float64 (shifted_inputs makes float32)
        out = tm.trunk(tm.shifted_inputs(torch.from_numpy(x)).double())
        want = -torch.nn.functional.cross_entropy(out, torch.from_numpy(x), reduction="sum").item() / 3
        logits = out.numpy()
    with no_grad():
        np.testing.assert_allclose(model.logits(x).data, logits, rtol=1e-10, atol=1e-12)
        assert abs(model.log_prob(x).data.mean() - want) < 1e-10
