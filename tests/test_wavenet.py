"""WaveNet's own facts: the receptive field, the default model is the benchmark model and
computes the PyTorch benchmark's function, the naive and cached steps give the one-pass
logits, sampling options, a tiny fit, and the data it accepts. (The protocol's identities
are in test_protocol.py, the kernels' in test_kernels_wavenet.py.)"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import nanoar
from nanoar import no_grad
from nanoar.kernels.wavenet import QueueSampler
from nanoar.models.wavenet import WaveNet

from ar_checks import assert_refuses_bad_sequences
from conftest import to_xp

K = 3


def tiny(seq_len=4, **kw):
    cfg = dict(n_classes=K, residual_channels=4, dilation_channels=6, skip_channels=5, dilations=(1, 2))
    cfg.update(kw)
    nanoar.manual_seed(cfg.pop("seed", 0))
    return WaveNet(**cfg, seq_len=seq_len)


def lp_array(model, x):
    with no_grad():
        return nanoar.to_numpy(model.log_prob_per_variable(to_xp(x)).data)


# ---------------------------------------------------------------------------- receptive field
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


# ---------------------------------------------------------------------------- the benchmark model
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


@pytest.mark.parametrize("fused", [True, False])
def test_same_function_as_the_pytorch_benchmark_wavenet(float64, torch_ref, fused):
    """With the reference's weights, the logits are the reference's and log_prob is its -NLL
    (a small instance of bench/torch_ref.py's WaveNet: one-hot input, k = 2, dilations 1, 2, 4)."""
    import torch

    torch.manual_seed(0)
    tm = torch_ref.WaveNet(n_classes=5, channels=4, n_layers=3).double()
    model = WaveNet(n_classes=5, residual_channels=4, dilation_channels=8, skip_channels=4, dilations=(1, 2, 4))
    model.fused = fused
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


# ---------------------------------------------------------------------------- sampling
STEPS = [
    dict(),
    dict(dilations=(1, 2, 4), n_stacks=2),
    dict(kernel=3, dilations=(1, 3)),
    dict(input="embedding", embed_dim=3, dilations=(2, 1)),
]


@pytest.mark.parametrize("kw", STEPS, ids=["k2", "2stacks", "k3", "embedding"])
def test_naive_and_cached_step_logits_equal_one_pass_logits(float64, kw):
    """At every t, well past the receptive field (the naive step's window and the sampler's
    queues wrap around): the naive step (`next_logits`, t = 0 included) and the cached step
    give the logits of the parallel pass."""
    model = tiny(seq_len=30, **kw)
    assert model.receptive_field < 25
    x = to_xp(np.random.default_rng(12).integers(0, K, size=(2, 30)))
    with no_grad():
        want = nanoar.to_numpy(model.logits(x).data)                         # (N, K, T)
        cached = QueueSampler(model, 2)
        for t in range(30):
            np.testing.assert_allclose(nanoar.to_numpy(model.next_logits(x[:, :t])), want[:, :, t],
                                       rtol=1e-10, atol=1e-10, err_msg=f"naive step t={t}")
            np.testing.assert_allclose(nanoar.to_numpy(cached.step(t)), want[:, :, t],
                                       rtol=1e-10, atol=1e-10, err_msg=f"cached step t={t}")
            cached.advance(x[:, t])


def test_sample_shapes_defaults_and_errors():
    model = tiny(seq_len=7)
    s = model.sample(2, seed=0)
    assert s.shape == (2, 7) and s.dtype == np.int64
    assert model.sample(1, seed=0, length=3).shape == (1, 3)
    prompt = np.array([2, 0, 1])
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(2, seed=1, prompt=prompt))[:, :3], [prompt, prompt])
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(2, seed=1, length=3, prompt=prompt)), [prompt, prompt])
    with pytest.raises(ValueError, match="longer"):
        model.sample(1, length=2, prompt=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="prompt"):
        model.sample(2, prompt=np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="class ids"):
        model.sample(1, prompt=np.array([0, K]))
    with pytest.raises(ValueError, match="length"):
        model.sample(1, length=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0.0)


# ---------------------------------------------------------------------------- fit, data
def test_any_length_is_accepted_and_bad_data_is_refused():
    model = tiny(seq_len=4)
    for t in (1, 2, 9):
        assert lp_array(model, np.zeros((2, t), int)).shape == (2, t)
    assert_refuses_bad_sequences(model)
    with pytest.raises(ValueError, match="even"):
        WaveNet(dilation_channels=5)
    with pytest.raises(ValueError, match="input"):
        WaveNet(input="wav")
    with pytest.raises(ValueError, match="kernel"):
        WaveNet(kernel=1)
    with pytest.raises(ValueError, match="dilation"):
        WaveNet(dilations=())
