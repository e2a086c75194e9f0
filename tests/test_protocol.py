"""The protocol's identities, once, for every model of the registry (nanoar.models.MODELS):

normalisation by enumeration, the autoregressive property by perturbation and by gradients,
one parallel pass equal to the conditionals taken one at a time, samples against the
likelihood (both samplers), the naive and fast samplers equal under one seed, parameter
gradients against finite differences, fused kernels equal to the textbook path, the
config rebuilding the model, the training loss, and the samplers on every device.

Facts particular to one model (the blind spot, the mixture of masks, the receptive field,
...) are in that model's own test file.
"""
import math

import numpy as np
import pytest

import nanoar
from nanoar import Tensor, no_grad
from nanoar.models import MODELS, build_model, model_name
from nanoar.models.base import SequenceModel
from nanoar.models.lstm import CharLSTM
from nanoar.models.made import GaussianMADE
from nanoar.models.transformer import CharTransformer
from nanoar.models.wavenet import WaveNet
from nanoar.optim import AdamW

from ar_checks import (assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match)
from conftest import to_xp
from model_zoo import DISCRETE, FACTORISED, FUSED, K, NAMES, ZOO, classes, data, make, sample_options

def test_the_zoo_covers_the_registry():
    assert {registry for _, registry in ZOO.values()} == set(MODELS)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", DISCRETE)
def test_normalised_by_enumeration(float64, name):
    model = make(name)
    assert_normalised(model, n_classes=classes(model), atol=1e-6)


def test_gaussian_normalised_by_quadrature(float64):
    """The density integrates to 1: a 2-D Gaussian MADE on a fine grid (the tails beyond
    +-12 of a density whose scales are about 1 hold nothing at this tolerance)."""
    nanoar.manual_seed(0)
    model = GaussianMADE(2, [4], ordering="random", seed=1)
    for p in model.log_std_head.parameters():  # scales near 1, so that the grid holds the mass
        p.data *= 0.25
    g = np.linspace(-12, 12, 801)
    x = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with no_grad():
        p = np.exp(nanoar.to_numpy(model.log_prob(to_xp(x)).data))
    assert abs(p.sum() * (g[1] - g[0]) ** 2 - 1) < 1e-6


@pytest.mark.parametrize("name", [n for n in FACTORISED if n != "gaussian-made"])
def test_autoregressive_by_perturbation_and_one_pass_equals_sequential(float64, name):
    """Changing the variables after position k of the ordering leaves every conditional up to
    k unchanged; and the conditionals taken one prefix at a time sum to log_prob. Sequence
    models are checked past their receptive field or context too."""
    model = make(name)
    length = 9 if isinstance(model, SequenceModel) else None
    if length:
        model.seq_len = length
    x = data(model, 3, seed=1, length=length)
    assert_future_does_not_matter(model, x, np.random.default_rng(2), n_classes=classes(model))
    assert_one_pass_equals_sequential(model, x, np.random.default_rng(3), n_classes=classes(model))


@pytest.mark.parametrize("name", FACTORISED)
def test_autoregressive_by_gradients(float64, name):
    """d params_i / d input_j == 0 unless j comes before i in the ordering: through the data
    itself for binary and real models, through `forward_from_inputs` (the input features
    of the ids, moved along a random direction per position) for sequence models."""
    model = make(name)
    rng = np.random.default_rng(4)
    if isinstance(model, SequenceModel):
        t = 6
        ids = to_xp(rng.integers(0, K, size=(2, t)))
        base = model.input_features(ids)
        dirs = Tensor(to_xp(rng.standard_normal(base.shape)))

        def params_fn(xt):  # (N, T) -> logits (N, T, K)
            return model.forward_from_inputs(base + xt.reshape(2, t, 1) * dirs)

        assert_jacobian_autoregressive(params_fn, rng.standard_normal((2, t)), np.arange(t))
        with no_grad():  # ... and it is the function that log_prob scores
            lp = nanoar.log_softmax(params_fn(Tensor(to_xp(np.zeros((2, t)))))).data
            want = model.log_prob_per_variable(ids).data
        np.testing.assert_allclose(nanoar.to_numpy(np.take_along_axis(lp, ids[..., None], -1)[..., 0]),
                                   nanoar.to_numpy(want), rtol=1e-10, atol=1e-10)
        return
    d = int(np.prod(model.event_shape))

    def params_fn(xt):  # (N, *event) -> (N, D, n_params)
        dist = model.distribution(xt)
        heads = [dist.logits] if model.kind == "binary" else [dist.mean, dist.log_std]
        return nanoar.stack([h.reshape(len(xt), d) for h in heads], axis=2)

    x = data(model, 2, seed=5) + (rng.standard_normal((2, *model.event_shape)) if model.kind == "binary" else 0)
    assert_jacobian_autoregressive(params_fn, x, model.ordering)


@pytest.mark.parametrize("name", DISCRETE)
@pytest.mark.parametrize("method", ["fast", "naive"])
def test_samples_match_likelihood(float64, name, method):
    """Chi-square of samples against exp(log_prob) over every input."""
    model = make(name)
    model.seq_len = min(getattr(model, "seq_len", 3), 3)
    assert_samples_match(model, 6000 if method == "fast" else 1500, n_classes=classes(model), seed=1,
                         method=method, **sample_options(model))


@pytest.mark.parametrize("name", NAMES)
def test_naive_and_fast_samplers_give_the_same_samples(float64, name):
    model = make(name)
    fast = nanoar.to_numpy(model.sample(7, seed=3, **sample_options(model)))
    naive = nanoar.to_numpy(model.sample(7, seed=3, method="naive", **sample_options(model)))
    assert fast.shape == (7, *model.event_shape)
    if model.kind == "real":
        np.testing.assert_allclose(fast, naive, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_array_equal(fast, naive)
    again = nanoar.to_numpy(model.sample(7, seed=3, **sample_options(model)))
    np.testing.assert_array_equal(fast, again)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_match_finite_differences(float64, name):
    model = make(name)
    x = to_xp(data(model, 3, seed=6))
    assert_param_grads(model, lambda: -model.log_prob(x).mean(), n_checks=3)


@pytest.mark.parametrize("name", FUSED)
def test_fused_kernels_equal_the_textbook_path(float64, name):
    """Where a model has fused kernels, the textbook composition of layers gives the same
    log-likelihood and the same gradient for every parameter."""
    model = make(name)
    x = to_xp(data(model, 3, seed=7))
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        lp = model.log_prob(x)
        (-lp.sum()).backward()
        # (a parameter that feeds nothing has no gradient on one path and a zero one on the other)
        grads = {n: np.zeros(p.shape) if p.grad is None else nanoar.to_numpy(p.grad) for n, p in model.named_parameters()}
        results.append((nanoar.to_numpy(lp.data), grads))
    (lp_f, g_f), (lp_t, g_t) = results
    np.testing.assert_allclose(lp_f, lp_t, rtol=1e-10, atol=1e-10)
    for n in g_t:
        np.testing.assert_allclose(g_f[n], g_t[n], rtol=1e-8, atol=1e-10, err_msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_config_rebuilds_the_model(float64, name):
    model = make(name)
    assert model_name(model) == ZOO[name][1]
    clone = build_model(model_name(model), model.config())
    clone.load_state_dict({k: nanoar.to_numpy(v) for k, v in model.state_dict().items()})
    x = to_xp(data(model, 2, seed=8))
    with no_grad():
        np.testing.assert_array_equal(nanoar.to_numpy(clone.log_prob(x).data), nanoar.to_numpy(model.log_prob(x).data))


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_is_the_mean_nll_of_the_batch(float64, name):
    """Per example for images, per id for sequences (a MADE mixture trains one mask set per
    step, so its loss is one mask set's)."""
    model = make(name)
    x = to_xp(data(model, 4, seed=9))
    loss, state = model.training_loss(x, None)
    loss.backward()
    assert loss.shape == () and math.isfinite(loss.item())
    assert any(p.grad is not None and np.abs(nanoar.to_numpy(p.grad)).sum() > 0 for p in model.parameters())
    if model.factorises:
        with no_grad():
            lp = nanoar.to_numpy(model.log_prob(x).data)
        per = model.seq_len if isinstance(model, SequenceModel) else 1
        assert loss.item() == pytest.approx(-lp.mean() / per, rel=1e-12)


SEQUENCE_FITS = {
    "wavenet": lambda: WaveNet(K, residual_channels=8, dilation_channels=8, skip_channels=8, dilations=(1, 2),
                               input="embedding", embed_dim=4, seq_len=12),
    "lstm": lambda: CharLSTM(K, embed_dim=8, hidden_size=16, n_layers=1, seq_len=12),
    "transformer": lambda: CharTransformer(K, context=12, n_layers=1, n_heads=2, dim=16),
}


@pytest.mark.parametrize("name", sorted(SEQUENCE_FITS))
def test_sequence_models_learn_a_repeating_sequence(name):
    """x_t = t mod 3 in every sequence is deterministic: training_loss (nats per id) must
    approach 0, and greedy sampling must reproduce the sequence."""
    nanoar.manual_seed(0)
    model = SEQUENCE_FITS[name]()
    x = np.tile(np.arange(12) % K, (4, 1))
    opt = AdamW(model.parameters(), lr=0.03)
    for _ in range(80):
        opt.zero_grad()
        model.training_loss(x, None)[0].backward()
        opt.step()
    with no_grad():
        nll = -float(nanoar.to_numpy(model.log_prob_per_variable(x).data).mean())
    assert nll < 0.05, f"NLL {nll:.4f} nats per id after 80 steps"
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(3, seed=0, length=12, top_k=1)), x[:3])


@pytest.mark.parametrize("name", NAMES)
def test_samplers_on_every_device(device, name):
    """On each device: samples of the right shape and type, in the support, equal for the
    two samplers, reproducible under a seed."""
    model = make(name)
    fast = model.sample(5, seed=2, **sample_options(model))
    naive = model.sample(5, seed=2, method="naive", **sample_options(model))
    assert type(fast) is type(nanoar.xp().zeros(1))
    fast, naive = nanoar.to_numpy(fast), nanoar.to_numpy(naive)
    assert fast.shape == (5, *model.event_shape)
    if model.kind == "real":
        np.testing.assert_allclose(fast, naive, rtol=1e-4, atol=1e-4)
        return
    np.testing.assert_array_equal(fast, naive)
    assert fast.min() >= 0 and fast.max() < classes(model)


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_are_refused(name):
    model = make(name)
    with pytest.raises(ValueError, match="method"):
        model.sample(2, method="quick")
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            model.sample(n)
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(np.zeros((2, 2, 2, 2, 2)))
