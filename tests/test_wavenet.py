"""WaveNet's own facts: the receptive field, the default model is the benchmark model and
computes the PyTorch benchmark's function, the naive and cached steps give the one-pass
logits, sampling options, the data it accepts, and global conditioning (n_labels > 0:
normalised and causal for every label, both samplers, gradients, config, a tiny fit). (The
protocol's identities are in test_protocol.py, the kernels' in test_kernels_wavenet.py.)"""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.kernels.wavenet import QueueSampler
from nanoar.models.wavenet import WaveNet
from nanoar.optim import AdamW

from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_param_grads, assert_refuses_bad_sequences, assert_samples_match)
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


# ---------------------------------------------------------------------------- global conditioning
LABELS = 3
CONDITIONAL = {"onehot-k2": dict(), "onehot-k3": dict(kernel=3),
               "embedding-k2": dict(input="embedding", embed_dim=3),
               "embedding-k3": dict(input="embedding", embed_dim=2, kernel=3, dilations=(2, 1))}


def conditional(seq_len=4, scale=2.0, **kw):
    """A tiny conditional WaveNet (n_labels = 3) with weights scaled up and random label
    tables G_l (zero at initialisation, which would hide a label sent to the wrong place)."""
    model = tiny(seq_len=seq_len, n_labels=LABELS, **kw)
    rng = np.random.default_rng(kw.get("seed", 0) + 100)
    for p in model.parameters():
        if p.ndim >= 2:
            p.data *= scale
    for label in model.label_bias:
        label.weight.data[...] = to_xp(rng.standard_normal(label.weight.shape))
    return model


class WithLabel:
    """A conditional model with its labels fixed, p(x | y), seen as an unconditional one by
    the shared checks of ar_checks (y: one label, or one per example of their batches)."""

    def __init__(self, model, y):
        self.model, self.y, self.event_shape, self.ordering = model, y, model.event_shape, model.ordering

    def log_prob(self, x):
        return self.model.log_prob(x, y=self.y)

    def log_prob_per_variable(self, x):
        return self.model.log_prob_per_variable(x, y=self.y)

    def sample(self, n, **options):
        return self.model.sample(n, y=self.y, **options)


def lp_given(model, x, y):
    with no_grad():
        return nanoar.to_numpy(model.log_prob_per_variable(to_xp(x), y=y).data)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_conditional_model_is_normalised_for_every_label(float64, kw, fused):
    """sum_x p(x | y) = 1 over all K^T sequences, for each y and T = 1, 5."""
    for t in (1, 5):
        model = conditional(seq_len=t, **kw)
        model.fused = fused
        for y in range(LABELS):
            assert_normalised(WithLabel(model, y), n_classes=K, atol=1e-9)


@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_causal_for_every_label(float64, kw):
    """For each y (one for all, or one per sequence), past the receptive field: changing x_s
    and later leaves log p(x_t | x_<t, y) of every t < s unchanged (perturbation, both
    paths), and the logits of step t have zero gradient with respect to the input features
    of x_t and later (the Jacobian through `forward_from_inputs`)."""
    t = 12
    model = conditional(seq_len=t, **kw)
    assert model.receptive_field < t
    rng = np.random.default_rng(3)
    x = rng.integers(0, K, size=(3, t))
    for y in [*range(LABELS), np.array([2, 0, 1])]:
        for fused in (True, False):
            model.fused = fused
            assert_future_does_not_matter(WithLabel(model, y), x, rng, n_classes=K)
        features = model.input_features(to_xp(x[:2]))
        dirs = Tensor(to_xp(rng.standard_normal(features.shape)))
        labels = y if np.ndim(y) == 0 else y[:2]

        def params_fn(xt):  # (N, T) -> logits (N, T, K)
            return model.forward_from_inputs(features + xt.reshape(2, t, 1) * dirs, labels)

        assert_jacobian_autoregressive(params_fn, rng.standard_normal((2, t)), np.arange(t))


@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_the_label_changes_every_conditional(float64, kw):
    """Every step's conditional, x_0's included, depends on y; one label for all equals the
    same label given per example; and the textbook path scores what the fused one does."""
    model = conditional(seq_len=9, **kw)
    x = np.random.default_rng(5).integers(0, K, size=(4, 9))
    by_label = [lp_given(model, x, y) for y in range(LABELS)]
    for a in range(LABELS):
        for b in range(a):
            assert (np.abs(by_label[a] - by_label[b]) > 1e-6).all(), f"labels {a} and {b} give equal conditionals"
    mixed = np.array([2, 0, 1, 2])
    np.testing.assert_allclose(lp_given(model, x, mixed), [by_label[y][i] for i, y in enumerate(mixed)],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lp_given(model, x, np.full(4, 1)), by_label[1], rtol=0, atol=0)
    model.fused = False
    np.testing.assert_allclose(lp_given(model, x, mixed), [by_label[y][i] for i, y in enumerate(mixed)],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_conditional_naive_and_cached_steps_equal_one_pass_logits(float64, kw):
    """With a label per sequence, at every t past the receptive field: `next_logits` and the
    queue sampler's step give the one-pass logits of p(x_t | x_<t, y)."""
    model = conditional(seq_len=20, **kw)
    x = to_xp(np.random.default_rng(12).integers(0, K, size=(3, 20)))
    y = to_xp(np.array([1, 2, 0]))
    with no_grad():
        want = nanoar.to_numpy(model.logits(x, y).data)                      # (N, K, T)
        cached = QueueSampler(model, 3, y)
        for t in range(20):
            np.testing.assert_allclose(nanoar.to_numpy(model.next_logits(x[:, :t], y)), want[:, :, t],
                                       rtol=1e-10, atol=1e-10, err_msg=f"naive step t={t}")
            np.testing.assert_allclose(nanoar.to_numpy(cached.step(t)), want[:, :, t],
                                       rtol=1e-10, atol=1e-10, err_msg=f"cached step t={t}")
            cached.advance(x[:, t])


@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_conditional_samplers_agree_and_follow_the_label(float64, kw):
    """Fast == naive under one seed with per-sample labels (with prompts, temperature and
    top-k too); samples of one label match exp(log p(x | y)) by a chi-square over all K^3
    sequences."""
    model = conditional(seq_len=12, **kw)
    y = np.array([0, 1, 2, 2, 1])
    for opts in (dict(), dict(prompt=to_xp(np.array([2, 0])), temperature=0.8),
                 dict(prompt=to_xp(np.random.default_rng(1).integers(0, K, size=(5, 3))), top_k=2)):
        fast = nanoar.to_numpy(model.sample(5, seed=4, y=y, **opts))
        naive = nanoar.to_numpy(model.sample(5, seed=4, y=y, method="naive", **opts))
        np.testing.assert_array_equal(fast, naive, err_msg=str(opts))
    model.seq_len = 3
    for label in (0, 2):
        assert_samples_match(WithLabel(model, label), 4000, n_classes=K, seed=label)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["onehot-k2", "embedding-k3"])
def test_conditional_parameter_gradients_match_finite_differences(float64, name, fused):
    """Every parameter, the label tables G_l included, on both paths."""
    model = conditional(seq_len=7, **CONDITIONAL[name])
    model.fused = fused
    x = to_xp(np.random.default_rng(7).integers(0, K, size=(3, 7)))
    y = to_xp(np.array([2, 0, 2]))
    assert_param_grads(model, lambda: model.training_loss(x, y=y)[0], n_checks=4)
    for label in model.label_bias:  # the rows of labels in the batch learn, the others do not
        g = nanoar.to_numpy(label.weight.grad)
        assert np.abs(g[[0, 2]]).min() > 0 and not g[1].any()


@pytest.mark.parametrize("fused", [True, False])
def test_conditional_float32_stays_float32(fused):
    model = conditional(seq_len=6, input="embedding")
    model.fused = fused
    x, y = to_xp(np.random.default_rng(2).integers(0, K, size=(2, 6))), to_xp(np.array([0, 2]))
    loss, _ = model.training_loss(x, y=y)
    loss.backward()
    assert loss.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.grad is None or p.grad.dtype == np.float32, name
    with no_grad():
        assert model.next_logits(x, y).dtype == np.float32
        assert QueueSampler(model, 2, y).step(0).dtype == np.float32


def test_conditional_config_round_trip_and_unconditional_state_unchanged():
    """n_labels is in the config (always) and rebuilds the model; label tables exist only for
    n_labels > 0, so an unconditional model's state (an old checkpoint's) is as before, and
    an old config without n_labels builds it."""
    model = conditional(seq_len=5, input="embedding", embed_dim=2)
    config = model.config()
    assert config["n_labels"] == LABELS
    rebuilt = WaveNet(**json.loads(json.dumps(config)))
    assert rebuilt.config() == config
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).integers(0, K, size=(3, 5))
    np.testing.assert_array_equal(lp_given(rebuilt, x, [0, 1, 2]), lp_given(model, x, [0, 1, 2]))
    names = set(model.state_dict())
    assert {f"label_bias.{l}.weight" for l in range(2)} <= names
    assert model.label_bias[0].weight.shape == (LABELS, model.dilation_channels)

    plain = tiny(seq_len=5, input="embedding", embed_dim=2)
    assert plain.config()["n_labels"] == 0 and plain.n_labels == 0 and plain.label_bias is None
    assert set(plain.state_dict()) == {n for n in names if not n.startswith("label_bias.")}
    old = {k: v for k, v in plain.config().items() if k != "n_labels"}
    assert WaveNet(**old).config() == plain.config()
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="n_labels"):
            WaveNet(n_labels=bad)


@pytest.mark.parametrize("kw", CONDITIONAL.values(), ids=CONDITIONAL.keys())
def test_a_new_conditional_model_starts_as_its_unconditional_one(float64, kw):
    """Under one seed, n_labels adds only the zero-initialised label tables: the shared
    weights are equal and every label scores (and samples) what the unconditional model does.
    The unconditional model refuses y, the conditional one requires it."""
    plain, labelled = tiny(seq_len=6, **kw), tiny(seq_len=6, n_labels=LABELS, **kw)
    state = labelled.state_dict()
    for k, v in plain.state_dict().items():
        np.testing.assert_array_equal(nanoar.to_numpy(state[k]), nanoar.to_numpy(v), err_msg=k)
    x = np.random.default_rng(9).integers(0, K, size=(3, 6))
    want = lp_array(plain, x)
    for y in range(LABELS):
        np.testing.assert_allclose(lp_given(labelled, x, y), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(nanoar.to_numpy(labelled.sample(3, seed=1, y=y)),
                                      nanoar.to_numpy(plain.sample(3, seed=1)))
    with pytest.raises(ValueError, match="y given"):
        plain.log_prob(x, y=0)
    with pytest.raises(ValueError, match="pass y"):
        labelled.log_prob(x)
    with pytest.raises(ValueError, match="pass y"):
        labelled.sample(2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        labelled.forward_from_inputs(labelled.input_features(to_xp(x)), 3)


def test_a_conditional_model_learns_one_sequence_per_label():
    """Three labels, three deterministic sequences: the loss goes to 0 and greedy samples of
    each label reproduce its sequence (only the label tells them apart at t = 0)."""
    model = tiny(seq_len=9, n_labels=LABELS, input="embedding", embed_dim=4, residual_channels=8,
                 dilation_channels=8, skip_channels=8)
    x = np.array([np.arange(9) % K, (2 - np.arange(9)) % K, np.ones(9, int)])
    y = np.arange(LABELS)
    opt = AdamW(model.parameters(), lr=0.03)
    for _ in range(100):
        opt.zero_grad()
        model.training_loss(x, y=y)[0].backward()
        opt.step()
    with no_grad():
        nll = -float(nanoar.to_numpy(model.log_prob_per_variable(x, y=y).data).mean())
    assert nll < 0.05, f"NLL {nll:.4f} nats per id after 100 steps"
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(3, seed=0, y=y, top_k=1)), x)
