"""MADE and GaussianMADE: masks from degrees (and the benchmark's), K mask sets and the
mixture over them (normalised, unlike averaged logits), training one mask set per step,
masked weights, self-contained checkpoints, fits to known distributions, the Gaussian
formula, and bad data; then MADE's own side of conditioning (a label bias in every layer and
head), masks resampled every step (deterministic, resumable), and the three kinds of exact
completion (K = 1, the mixture's conditional, an order-agnostic model's ordering), by
enumeration, brute force and chi-square, for binary and Gaussian MADEs. The protocol's
identities are in test_protocol.py, the cross-model ones of labels and completion in
test_conditioning.py; the degree-ordered sampler against the naive one in
test_kernels_made.py."""
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from ar_checks import (assert_completion_normalised, assert_completion_samples_match, assert_future_does_not_matter,
                       assert_jacobian_autoregressive, assert_normalised, assert_param_grads,
                       brute_force_completion_log_prob, chi_square_test, completion_log_prob, completions,
                       enumerate_inputs, prefix_mask)
from nanoar import bernoulli_log_prob, no_grad, stack
from nanoar.models.made import GaussianMADE, MADE, completion_ordering, made_degrees, made_masks
from nanoar.training import load_run, save_run
from nanoar.optim import Adam
from strategies import fixture_settings


def make(cls=MADE, scale=1.0, weight_seed=0, **config):
    nanoar.manual_seed(weight_seed)
    model = cls(**config)
    for p in model.parameters():
        p.data *= scale
    return model


def binary(n, d, seed):
    return np.random.default_rng(seed).integers(0, 2, size=(n, d)).astype(nanoar.default_dtype())


def orderings(model):
    return nanoar.to_numpy(model.orderings)


def logits(model, x, k=None):
    """The logits of mask set k's conditionals: (N, D) -> Tensor (N, D)."""
    return model.distribution(model.as_input(x), k=k).logits


class OneMask:
    """Mask set k of a MADE seen through the protocol (a K > 1 MADE is a mixture)."""

    def __init__(self, model, k):
        self.model, self.k = model, k
        self.event_shape = model.event_shape

    def log_prob(self, x, y=None):
        return self.model.log_prob_mask(x, self.k, y=y)


def with_labels(model, scale=1.5, seed=0):
    """Every label weight (zero at init) set to a random value with |w| in [0.5, 1.5] * scale
    and a random sign, so that each label changes every layer and head."""
    rng = np.random.default_rng(seed)
    for label in [*model.layer_labels, *model.head_labels]:
        w = label.weight
        value = rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1.0, 1.0], w.shape) * scale
        w.data = nanoar.to_device(value).astype(w.dtype)
    return model


@st.composite
def configs(draw, max_d=8, max_masks=3):
    """Random small MADEs: 0-2 hidden layers (some narrower than d), natural, random or
    explicit orderings, 1..max_masks mask sets."""
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(["natural", "random", "explicit"]))
    ordering = [int(i) for i in draw(st.permutations(range(d)))] if kind == "explicit" else kind
    return dict(d=d, hidden_sizes=draw(st.lists(st.integers(1, 12), max_size=2)),
                num_masks=draw(st.integers(1, max_masks)), ordering=ordering, seed=draw(st.integers(0, 2**16)),
                activation=draw(st.sampled_from(["relu", "tanh"])))


# ============================================================================ masks
def test_masks_are_those_of_the_benchmark():
    """Seed 0, natural ordering: the degrees of bench/torch_ref.py (RandomState(0).randint),
    there stored (out, in), here (in, out)."""
    D, hidden = 20, [15, 12]
    rng = np.random.RandomState(0)
    degrees = [np.arange(1, D + 1)]
    for H in hidden:
        degrees.append(rng.randint(degrees[-1].min(), D, size=H))
    bench = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    bench.append(degrees[0][:, None] > degrees[-1][None, :])
    model = MADE(D, hidden)
    for ours, theirs in zip(model.masks(), bench):
        np.testing.assert_array_equal(ours, theirs.T.astype(ours.dtype))


@fixture_settings
@given(config=configs())
def test_masks_follow_the_degree_rules(config):
    model = MADE(**config)
    d = config["d"]
    for k in range(model.num_masks):
        degrees = [nanoar.to_numpy(getattr(model, f"degrees_{l}"))[k] for l in range(len(config["hidden_sizes"]) + 1)]
        order = orderings(model)[k]
        assert sorted(order) == list(range(d))
        np.testing.assert_array_equal(degrees[0][order], np.arange(1, d + 1))  # position in the ordering
        for prev, m in zip(degrees[:-1], degrees[1:]):
            assert m.min() >= min(prev.min(), d - 1) and m.max() <= max(d - 1, 0)
        masks = model.masks(k)
        for l, (m_in, m_out) in enumerate(zip(degrees[:-1], degrees[1:])):
            np.testing.assert_array_equal(masks[l], m_out[None, :] >= m_in[:, None])
        np.testing.assert_array_equal(masks[-1], degrees[0][None, :] > degrees[-1][:, None])


def test_the_layers_use_the_current_mask_set(float64):
    """Each MaskedLinear computes with mask set k's masks: the layers' masks are the model's
    buffers (views, so nothing is copied and a loaded state dict takes effect)."""
    model = make(d=5, hidden_sizes=[7, 6], num_masks=2, ordering="random", seed=3)
    for k in range(2):
        logits(model, binary(2, 5, 0), k)
        for layer, mask in zip([*model.layers, model.head], model.masks(k)):
            np.testing.assert_array_equal(nanoar.to_numpy(layer.mask), mask)


def test_k_masks_give_k_different_connectivities(float64):
    model = make(d=8, hidden_sizes=[16, 16], num_masks=3, seed=5, scale=2.0)
    assert all(np.array_equal(o, np.arange(8)) for o in orderings(model))  # one shared ordering
    x = binary(10, 8, seed=0)
    for a in range(3):
        for b in range(a + 1, 3):
            assert any(not np.array_equal(ma, mb) for ma, mb in zip(model.masks(a), model.masks(b)))
            assert not np.allclose(model.log_prob_mask(x, a).numpy(), model.log_prob_mask(x, b).numpy())


@fixture_settings
@given(config=configs(max_d=6))
def test_every_mask_set_is_normalised_and_autoregressive_in_its_ordering(float64, config):
    """The mixture's components: each p_k sums to 1 and follows ordering k."""
    model = make(scale=2.0, **config)
    x = binary(2, config["d"], config["seed"])
    for k in range(model.num_masks):
        assert_normalised(OneMask(model, k), atol=1e-6)
        assert_jacobian_autoregressive(lambda t: model.distribution(t, k=k).logits, x, orderings(model)[k])


def test_explicit_ordering_is_respected(float64):
    order = [3, 0, 4, 1, 2]
    model = make(d=5, hidden_sizes=[10, 10], ordering=order, seed=2, scale=2.0)
    np.testing.assert_array_equal(model.ordering, order)
    x = binary(16, 5, seed=1)
    lg = logits(model, x).numpy()
    assert np.ptp(lg[:, 3]) == 0  # the first variable has no context: a constant
    assert np.ptp(lg[:, 2]) > 0
    assert np.all(model.masks()[-1][:, 3] == 0)
    with pytest.raises(AssertionError):  # the natural ordering is NOT what it follows
        assert_jacobian_autoregressive(lambda t: model.distribution(t).logits, x[:4], np.arange(5))


# ============================================================================ the mixture and training
def test_training_loss_cycles_the_mask_sets(float64):
    """Each training step moves to the next mask set and returns -log p_k(x) of that set."""
    model = make(d=5, hidden_sizes=[8], num_masks=3, ordering="random", seed=1)
    x = binary(4, 5, seed=0)
    assert model.mask_index == 0
    seen = []
    for _ in range(4):
        loss, state = model.training_loss(x, None)
        seen.append(model.mask_index)
        assert state is None
        with no_grad():
            assert loss.item() == pytest.approx(-model.log_prob_mask(x, model.mask_index).mean().item(), rel=1e-12)
    assert seen == [1, 2, 0, 1]
    assert [model.next_mask() for _ in range(3)] == [2, 0, 1]
    np.testing.assert_array_equal(model.ordering, orderings(model)[1])
    np.testing.assert_array_equal(model.log_prob_mask(x).numpy(), model.log_prob_mask(x, 1).numpy())
    np.testing.assert_array_equal(model.log_prob_per_variable(x, k=1).numpy(),
                                  model.distribution(model.as_input(x), k=1).log_prob(x).numpy())
    assert not model.factorises
    with pytest.raises(ValueError, match="mixture"):
        model.log_prob_per_variable(x)
    with pytest.raises(ValueError, match="mask index"):
        model.log_prob_mask(x, 3)
    other = make(d=5, hidden_sizes=[8], num_masks=3, ordering="random", seed=1)
    other.load_training_state(json.loads(json.dumps(model.training_state())))
    assert other.mask_index == 1


def test_a_mixture_sample_is_a_sample_of_the_mask_set_picked_first(float64):
    """The generator first picks k = floor(K v) per sample, then draws the noise; each sample
    is then mask set k's sample from its noise (both methods)."""
    model = make(d=6, hidden_sizes=[9], num_masks=3, ordering="random", seed=2, scale=2.0)
    rng = np.random.default_rng(4)
    which = np.minimum((rng.random(30) * 3).astype(int), 2)
    noise = rng.random((30, 6))
    for method in ("fast", "naive"):
        x = model.sample(30, seed=4, method=method)
        assert model.mask_index == 0
        for k in range(3):
            model.mask_index = k
            rows = which == k
            with no_grad():
                np.testing.assert_array_equal(x[rows], model.sample_naive(noise[rows]))
        model.mask_index = 0


def test_mixture_is_normalised_but_averaged_logits_are_not(float64):
    """Train K = 4 orderings on strongly dependent data. The mixture log p(x) = logsumexp_k
    log p_k(x) - log K sums to 1 over all inputs; sigmoid of the mean logit over the K
    orderings does not (its conditional i sees variables that come after i in other
    orderings)."""
    model = make(d=6, hidden_sizes=[32, 32], num_masks=4, ordering="random")
    assert len({tuple(o) for o in orderings(model)}) == 4
    xs, _ = train_on_mixture(model, steps=600)
    assert_normalised(model, atol=1e-9)
    with no_grad():
        mean_logits = stack([logits(model, xs, k) for k in range(4)], axis=0).mean(axis=0)
        averaged = np.exp(bernoulli_log_prob(mean_logits, xs).sum(axis=1).numpy()).sum()
        mixture = model.log_prob(xs).numpy()
        per_mask = np.stack([model.log_prob_mask(xs, k).numpy() for k in range(4)])
    assert abs(averaged - 1) > 0.1, f"averaged logits sum to {averaged}"
    np.testing.assert_allclose(mixture, np.log(np.exp(per_mask).mean(axis=0)), rtol=1e-12)
    # Nor is the mixture an average of log-likelihoods: it is larger (Jensen's inequality).
    assert np.all(mixture >= per_mask.mean(axis=0))


def test_averaged_logits_with_one_shared_ordering_are_normalised_but_another_model(float64):
    """With K connectivities of ONE ordering, averaged logits are still autoregressive (so
    normalised), but they are not the mixture the ensemble defines."""
    model = make(d=5, hidden_sizes=[12], num_masks=3, seed=4, scale=2.0)
    xs = enumerate_inputs((5,))
    with no_grad():
        mean_logits = stack([logits(model, xs, k) for k in range(3)], axis=0).mean(axis=0)
        averaged = bernoulli_log_prob(mean_logits, xs).sum(axis=1).numpy()
        mixture = model.log_prob(xs).numpy()
    assert abs(np.exp(averaged).sum() - 1) < 1e-9
    assert np.abs(averaged - mixture).max() > 1e-3


def test_masked_weights_get_zero_gradient(float64):
    model = make(d=6, hidden_sizes=[9, 9], seed=1)
    x = binary(12, 6, seed=0)
    (-model.log_prob(x).mean()).backward()
    for layer, mask in zip([*model.layers, model.head], model.masks()):
        assert np.all(layer.weight.grad[mask == 0] == 0)
        assert np.any(layer.weight.grad[mask == 1] != 0)


# ============================================================================ fitting, checkpoints, bad data
def two_prototype_mixture(d=6, flip=0.1):
    """All inputs and their probabilities under 1/2 prod Ber(q) + 1/2 prod Ber(1 - q)."""
    xs = enumerate_inputs((d,)).astype(int)
    q = np.where(np.arange(d) < d // 2, 1 - flip, flip)
    comp = lambda qq: np.prod(np.where(xs == 1, qq, 1 - qq), axis=1)  # noqa: E731
    return xs, 0.5 * comp(q) + 0.5 * comp(1 - q)


def train_on_mixture(model, steps, lr=0.01, n=3000):
    """Full-batch Adam on n samples of `two_prototype_mixture`, one mask set per step (as
    `training_loss` does). The n samples hold at most 64 distinct rows, so the mean NLL is
    taken over those rows weighted by their frequencies: the same loss, far cheaper.
    Returns (all inputs as float, their true probabilities)."""
    xs, p_true = two_prototype_mixture(model.d)
    counts = np.bincount(np.random.default_rng(0).choice(len(xs), size=n, p=p_true), minlength=len(xs))
    rows = xs.astype(nanoar.default_dtype())
    freq = (counts / n).astype(nanoar.default_dtype())
    opt = Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        model.next_mask()
        loss = -(model.log_prob_mask(rows) * freq).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows, p_true


@pytest.mark.parametrize("num_masks, ordering, steps", [(1, "natural", 400), (4, "random", 600)])
def test_fit_reaches_entropy_of_a_mixture(num_masks, ordering, steps):
    """After `steps` Adam steps (lr 0.01) on 3000 samples, the cross-entropy of the model (the
    mixture, for K = 4) to the true distribution is within 0.05 nats of its entropy
    (independent pixels: 1.53 nats worse), and the mixture is at least as good as its average
    mask set (Jensen)."""
    model = make(d=6, hidden_sizes=[32, 32], num_masks=num_masks, ordering=ordering)
    rows, p_true = train_on_mixture(model, steps)
    entropy = -(p_true * np.log(p_true)).sum()
    with no_grad():
        cross_entropy = -(p_true * model.log_prob(rows).numpy()).sum()
        per_mask = [-(p_true * model.log_prob_mask(rows, k).numpy()).sum() for k in range(num_masks)]
    assert cross_entropy < entropy + 0.05, f"cross-entropy {cross_entropy:.4f} vs entropy {entropy:.4f}"
    assert cross_entropy <= np.mean(per_mask) + 1e-6


def test_checkpoint_is_self_contained():
    """Masks, degrees and orderings are buffers: a model built with another seed (so other
    masks) becomes the saved one by loading the state dict."""
    model = make(d=7, hidden_sizes=[10, 10], num_masks=2, ordering="random", seed=1, scale=2.0)
    state = {k: nanoar.to_numpy(v) for k, v in model.state_dict().items()}
    assert sorted(state) == ["degrees_0", "degrees_1", "degrees_2", "head.bias", "head.weight", "layers.0.bias",
                             "layers.0.weight", "layers.1.bias", "layers.1.weight", "masks_0", "masks_1", "masks_2",
                             "orderings"]
    other = make(d=7, hidden_sizes=[10, 10], num_masks=2, ordering="random", seed=99, weight_seed=5)
    assert not np.array_equal(orderings(other), orderings(model))
    x = binary(9, 7, seed=0)
    other.log_prob(x)  # (the layers have pointed at the old masks)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.log_prob(x).numpy(), model.log_prob(x).numpy())
    np.testing.assert_array_equal(other.sample(20, seed=3), model.sample(20, seed=3))
    np.testing.assert_array_equal(orderings(other), orderings(model))
    rebuilt = MADE(**model.config())  # the seed alone rebuilds the same masks
    for k in range(2):
        for a, b in zip(rebuilt.masks(k), model.masks(k)):
            np.testing.assert_array_equal(a, b)
    gaussian = {k for k in GaussianMADE(3, [4]).state_dict() if "head" in k}
    assert gaussian == {"mean_head.weight", "mean_head.bias", "log_std_head.weight", "log_std_head.bias"}


def test_config_is_json_and_validated():
    model = MADE(4, [5], ordering=np.array([2, 0, 3, 1]))
    assert json.loads(json.dumps(model.config()))["ordering"] == [2, 0, 3, 1]
    for bad in (dict(ordering=[0, 0, 1, 2]), dict(ordering="reverse"), dict(num_masks=0),
                dict(activation="swish"), dict(hidden_sizes=[0]), dict(d=0)):
        with pytest.raises(ValueError):
            MADE(**{"d": 4, "hidden_sizes": [5], **bad})


def test_bad_data_is_refused():
    model = MADE(4, [5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.log_prob(np.array([[0, 1, 0.5, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.log_prob(np.zeros((3, 5)))
    gaussian = GaussianMADE(3, [5])
    with pytest.raises(ValueError, match="NaN"):
        gaussian.log_prob(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        gaussian.log_prob(np.zeros((2, 4)))


# ============================================================================ GaussianMADE
def gaussian_params(model, x, k=None):
    dist = model.distribution(model.as_input(x), k=k)
    return dist.mean.numpy(), dist.log_std.numpy()


def test_gaussian_log_density_is_the_formula(float64):
    model = make(GaussianMADE, d=3, hidden_sizes=[7], ordering=[1, 2, 0], seed=2)
    x = np.random.default_rng(0).standard_normal((5, 3))
    mean, log_std = gaussian_params(model, x)
    expected = (-0.5 * ((x - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(axis=1)
    np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_gaussian_samples_whiten_to_the_noise(float64, method):
    """z_i = (x_i - mu_i(x_<i)) / sigma_i(x_<i) of a sample is exactly the N(0, 1) noise the
    sampler drew: sampling inverts the density's own conditionals."""
    model = make(GaussianMADE, d=5, hidden_sizes=[12, 12], ordering="random", seed=3, scale=2.0)
    x = model.sample(500, seed=11, method=method)
    mean, log_std = gaussian_params(model, x)
    z = (x - mean) / np.exp(log_std)
    np.testing.assert_allclose(z, np.random.default_rng(11).standard_normal((500, 5)), atol=1e-8)


def test_gaussian_fit_reaches_the_entropy_of_a_correlated_gaussian():
    """x ~ N(0, S) with correlations 0.9, 0.8, 0.7 (eigenvalues 2.60, 0.31, 0.08). Its entropy is
    H = 0.5 log det(2 pi e S) = 2.913 nats. After 1000 Adam steps (batch 500, lr 1e-2) on 10000
    samples, the test NLL (20000 fresh samples, standard error ~0.01) must be within 0.05 nats
    of H, and within 0.05 of the true density's NLL on the same test samples."""
    S = np.array([[1.0, 0.9, 0.7], [0.9, 1.0, 0.8], [0.7, 0.8, 1.0]])
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * S))
    rng = np.random.default_rng(0)
    L = np.linalg.cholesky(S)
    train, test = rng.standard_normal((10000, 3)) @ L.T, rng.standard_normal((20000, 3)) @ L.T
    true_nll = (0.5 * np.einsum("ni,ij,nj->n", test, np.linalg.inv(S), test)
                + 0.5 * np.log(np.linalg.det(2 * np.pi * S))).mean()

    model = make(GaussianMADE, d=3, hidden_sizes=[32, 32])
    opt = Adam(model.parameters(), lr=1e-2)
    for _ in range(1000):
        loss, _ = model.training_loss(train[rng.integers(0, len(train), 500)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        nll = -model.log_prob(test).mean().item()
    assert abs(nll - entropy) < 0.05, f"test NLL {nll:.4f} vs entropy {entropy:.4f}"
    assert -0.02 < nll - true_nll < 0.05, f"test NLL {nll:.4f} vs true density's {true_nll:.4f}"


# ============================================================================ conditioning
def by_hand(model, x, c):
    """The conditional MADE as the lecture draws it, in NumPy, mask set 0: every hidden layer
    act(h (W_l * M_l) + b_l + B_l[c]), every head h (W * M) + b + B[c]. -> [head outputs (N, D)]."""
    h = x
    for layer, label, mask in zip(model.layers, model.layer_labels, model.masks(0)):
        h = np.maximum(h @ (layer.weight.numpy() * mask) + layer.bias.numpy() + label.weight.numpy()[c], 0)
    return [h @ (head.weight.numpy() * model.masks(0)[-1]) + head.bias.numpy() + label.weight.numpy()[c]
            for head, label in zip(model._heads(), model.head_labels)]


@pytest.mark.parametrize("cls", [MADE, GaussianMADE])
def test_the_label_bias_enters_every_hidden_layer_and_every_head(float64, cls):
    """One (C, H_l) LabelBias per hidden layer and one (C, d) per head (two for the Gaussian),
    zero at first (then y changes nothing), added unmasked to the pre-activations: the
    formula by hand, and a gradient on exactly the rows of the labels used."""
    model = make(cls, d=5, hidden_sizes=[7, 6], n_labels=3, seed=1, scale=2.0)
    assert [lb.weight.shape for lb in model.layer_labels] == [(3, 7), (3, 6)]
    assert [lb.weight.shape for lb in model.head_labels] == [(3, 5)] * len(model._heads())
    x = np.random.default_rng(0).standard_normal((6, 5)) if cls is GaussianMADE else binary(6, 5, 0)
    with no_grad():
        np.testing.assert_array_equal(model.log_prob(x, y=0).numpy(), model.log_prob(x, y=2).numpy())
    with_labels(model)
    for c in range(3):
        dist = model.distribution(model.as_input(x), model.check_labels(c, 6))
        got = [dist.logits.numpy()] if cls is MADE else [dist.mean.numpy(), dist.log_std.numpy()]
        for a, b in zip(got, by_hand(model, x, c)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    (-model.log_prob(x, y=np.array([0, 1, 0, 1, 1, 0])).sum()).backward()
    for label in [*model.layer_labels, *model.head_labels]:
        g = label.weight.grad
        assert np.all(np.abs(g[:2]).sum(axis=1) > 0) and np.all(g[2] == 0)
    keys = {k for k in model.state_dict() if "label" in k}
    assert keys == {"layer_labels.0.weight", "layer_labels.1.weight",
                    *(f"head_labels.{i}.weight" for i in range(len(model._heads())))}
    assert not any("label" in k for k in make(cls, d=5, hidden_sizes=[7, 6]).state_dict())


@fixture_settings
@given(config=configs(max_d=5), n_labels=st.integers(1, 3))
def test_every_label_gives_normalised_autoregressive_mask_sets(float64, config, n_labels):
    """Random label weights: for every y, each mask set's p_k(x | y) and the mixture sum to
    1 over x, and p_k(x | y) follows ordering k (the label is seen by every conditional, the
    variables only in order)."""
    model = with_labels(make(scale=2.0, n_labels=n_labels, **config), seed=config["seed"])
    x = binary(2, config["d"], config["seed"])
    for c in range(n_labels):
        assert_normalised(model, atol=1e-6, y=c)
        y = model.check_labels(c, 2)
        for k in range(model.num_masks):
            assert_normalised(OneMask(model, k), atol=1e-6, y=c)
            assert_jacobian_autoregressive(lambda t: model.distribution(t, y, k=k).logits, x, orderings(model)[k])


def test_conditional_config_is_validated_and_rebuilds():
    model = MADE(4, [5], n_labels=3, resample_masks=True, ordering="random")
    config = json.loads(json.dumps(model.config()))
    assert config["n_labels"] == 3 and config["resample_masks"] is True
    assert MADE(4, [5]).config()["n_labels"] == 0 and MADE(4, [5]).config()["resample_masks"] is False
    assert MADE(**config).config() == model.config()
    for bad in (dict(n_labels=-1), dict(n_labels=1.5), dict(n_labels=True), dict(resample_masks="yes"),
                dict(resample_masks=1), dict(seed=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MADE(**{"d": 4, "hidden_sizes": [5], **bad})


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_conditional_gaussian_samples_whiten_to_the_noise(float64, method):
    """With labels, z_i = (x_i - mu_i(x_<i, y)) / sigma_i(x_<i, y) of every sample is the
    noise drawn: each sample is drawn from its own label's conditionals."""
    model = with_labels(make(GaussianMADE, d=4, hidden_sizes=[9, 9], ordering="random", seed=3, n_labels=3), 0.5)
    y = np.arange(300) % 3
    x = model.sample(300, seed=5, method=method, y=y)
    dist = model.distribution(model.as_input(x), model.check_labels(y, 300))
    z = (x - dist.mean.numpy()) / np.exp(dist.log_std.numpy())
    np.testing.assert_allclose(z, np.random.default_rng(5).standard_normal((300, 4)), atol=1e-8)


# ============================================================================ masks resampled every step
def assert_consistent_mask_sets(model, ordering):
    """Every stored set: an ordering (the given one, unless 'random'), input degrees its
    positions, hidden degrees in range, and masks made from those degrees."""
    L = len(model.layers)
    for k in range(model.num_masks):
        order = orderings(model)[k]
        assert sorted(order) == list(range(model.d))
        if ordering != "random":
            np.testing.assert_array_equal(order, np.arange(model.d) if ordering == "natural" else ordering)
        degrees = [nanoar.to_numpy(getattr(model, f"degrees_{l}"))[k] for l in range(L + 1)]
        np.testing.assert_array_equal(degrees[0][order], np.arange(1, model.d + 1))
        for m in degrees[1:]:
            assert m.min() >= 1 and m.max() <= model.d - 1
        for ours, want in zip(model.masks(k), made_masks(degrees)):
            np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("ordering", ["random", "natural", [3, 0, 4, 1, 2]])
def test_each_step_redraws_the_next_mask_set(float64, ordering):
    """With resample_masks, each training step moves to the next set and redraws it from
    RandomState([seed, draws so far]): a fresh ordering only with ordering='random', fresh
    hidden degrees always; the other set is untouched; the loss is that set's -log p_k."""
    model = make(d=5, hidden_sizes=[8, 7], num_masks=2, ordering=ordering, seed=3, resample_masks=True)
    x = binary(6, 5, seed=0)
    seen = set()
    for step in range(6):
        before = [model.masks(k) for k in range(2)]
        loss, _ = model.training_loss(x, None)
        k = model.mask_index
        assert k == (step + 1) % 2 and model.mask_draws == step + 1
        rng = np.random.RandomState([3, step])
        if ordering == "random":
            order = rng.permutation(5)
        else:
            order = np.arange(5) if ordering == "natural" else np.array(ordering)
        m = np.empty(5, np.int64)
        m[order] = np.arange(1, 6)
        want = [m]
        for size in (8, 7):
            want.append(rng.randint(min(want[-1].min(), 4), 5, size=size))
        for l, w in enumerate(want):
            np.testing.assert_array_equal(nanoar.to_numpy(getattr(model, f"degrees_{l}"))[k], w)
        assert any(not np.array_equal(a, b) for a, b in zip(model.masks(k), before[k]))
        assert all(np.array_equal(a, b) for a, b in zip(model.masks(1 - k), before[1 - k]))
        with no_grad():
            assert loss.item() == pytest.approx(-model.log_prob_mask(x).mean().item(), rel=1e-12)
        assert_consistent_mask_sets(model, ordering)
        seen.add(tuple(orderings(model)[k]))
    assert len(seen) >= 4 if ordering == "random" else len(seen) == 1
    # log_prob stays the exact mixture over the K sets drawn last
    assert_normalised(model, atol=1e-9)
    per_mask = np.stack([model.log_prob_mask(x, k).numpy() for k in range(2)])
    np.testing.assert_allclose(model.log_prob(x).numpy(), np.log(np.exp(per_mask).mean(axis=0)), rtol=1e-12)


def test_without_resampling_the_masks_never_change(float64):
    model = make(d=5, hidden_sizes=[8], num_masks=2, ordering="random", seed=3)
    before = [model.masks(k) for k in range(2)]
    for _ in range(3):
        model.training_loss(binary(2, 5, 0), None)
    assert model.mask_draws == 0
    assert all(np.array_equal(a, b) for k in range(2) for a, b in zip(model.masks(k), before[k]))


@pytest.mark.parametrize("num_masks", [1, 3])
def test_a_resumed_run_draws_the_masks_of_the_uninterrupted_one(float64, tmp_path, num_masks):
    """Run A takes 7 steps; run B takes 3, is saved (save_run: buffers and training_state),
    loaded into a fresh model (load_run) and takes 4 more: the same K sets, mask index and
    draw count as A, so the same likelihood; a model built from the config alone has other
    sets (its first ones)."""
    config = dict(d=6, hidden_sizes=[9, 8], num_masks=num_masks, ordering="random", seed=11, resample_masks=True,
                  n_labels=2)
    x, y = binary(5, 6, seed=1), np.array([0, 1, 1, 0, 1])
    a = with_labels(make(**config))
    b = with_labels(make(**config))
    for _ in range(7):
        a.training_loss(x, None, y=y)
    for _ in range(3):
        b.training_loss(x, None, y=y)
    save_run(tmp_path / "last.npz", b)
    c, _, meta = load_run(tmp_path / "last.npz")
    assert meta["model_state"] == {"mask_index": 3 % num_masks, "mask_draws": 3}
    for _ in range(4):
        c.training_loss(x, None, y=y)
    assert (c.mask_index, c.mask_draws) == (a.mask_index, a.mask_draws)
    for name in ["orderings", *(f"{kind}_{l}" for kind in ("degrees", "masks") for l in range(3))]:
        np.testing.assert_array_equal(nanoar.to_numpy(getattr(c, name)), nanoar.to_numpy(getattr(a, name)))
    np.testing.assert_array_equal(c.log_prob(x, y=y).numpy(), a.log_prob(x, y=y).numpy())
    fresh = MADE(**config)
    assert not np.array_equal(nanoar.to_numpy(fresh.masks_0), nanoar.to_numpy(a.masks_0))


# ============================================================================ completion
def check_completion_by_enumeration(model, given, observed, y=None):
    """sum over x_U of exp(log_prob(x, observed)) == 1 for every row, and log_prob(x, observed)
    == log p(x) - log sum_{x_U'} p(x_O, x_U') by brute force over every input."""
    shape = model.event_shape
    assert_completion_normalised(model, given, observed, shape, y=y, atol=1e-9)
    np.testing.assert_allclose(completion_log_prob(model, given, observed, shape, y),
                               brute_force_completion_log_prob(model, given, observed, shape, y=y),
                               rtol=1e-9, atol=1e-9)


@fixture_settings
@given(config=configs(max_d=5, max_masks=1), n_labels=st.integers(0, 2),
       lengths=st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_completion_of_one_mask_set_is_its_exact_conditional(float64, config, n_labels, lengths):
    """Case a (K = 1): for observed prefixes of the ordering (several per batch, labels per
    row), log_prob(x, observed) is normalised over x_U and equals the brute-force conditional
    p(x) / sum_{x_U'} p(x_O, x_U')."""
    model = make(scale=2.0, n_labels=n_labels, **config)
    if n_labels:
        with_labels(model, seed=config["seed"])
    d = config["d"]
    observed = prefix_mask(model.ordering, [min(p, d) for p in lengths])
    given = binary(len(lengths), d, config["seed"])
    y = (np.arange(len(lengths)) % n_labels) if n_labels else None
    check_completion_by_enumeration(model, given, observed, y)


def shared_prefix_mixture(ordering="natural", n_labels=2):
    """K = 3 mask sets of one ordering (only the connectivities differ), with labels: a
    mixture whose components disagree, so the posterior over k given x_O matters."""
    return with_labels(make(d=5, hidden_sizes=[10, 10], num_masks=3, ordering=ordering, seed=7, scale=3.0,
                            n_labels=n_labels), scale=1.0)


@pytest.mark.parametrize("ordering", ["natural", [2, 4, 0, 3, 1]])
def test_completion_of_a_mixture_is_the_mixture_conditional(float64, ordering):
    """Case b: observed sets that are prefixes of every set's ordering: normalised, equal to
    the brute-force conditional of the mixture, and NOT the average of the K sets'
    conditionals (the posterior p_k(x_O) / sum_j p_j(x_O) weighs them)."""
    model = shared_prefix_mixture(ordering)
    order = orderings(model)[0]
    observed = prefix_mask(order, [0, 1, 2, 3, 5, 2])
    given = binary(6, 5, seed=3)
    y = np.array([0, 1, 0, 1, 1, 0])
    check_completion_by_enumeration(model, given, observed, y)
    # the K sets' conditionals averaged with equal weights: another (wrong) answer
    with no_grad():
        per_set = np.stack([model.log_prob_per_variable(given, y=y, k=k).numpy() for k in range(3)])  # (K, N, D)
    hidden = np.where(observed, 0.0, per_set).sum(axis=2)
    uniform = np.log(np.exp(hidden).mean(axis=0))
    assert np.abs(uniform - completion_log_prob(model, given, observed, (5,), y))[1:4].max() > 1e-3


def test_completion_of_a_random_ordering_mixture_where_every_ordering_starts_alike(float64):
    """Case b with K random orderings: the sets observed first in all of them (here the empty
    set, the common first variable, and all variables) complete exactly; a prefix of one
    set's ordering that is not one of another's is refused, naming that set."""
    model = with_labels(make(d=4, hidden_sizes=[8], num_masks=3, ordering="random", seed=2, scale=3.0, n_labels=2))
    np.testing.assert_array_equal(orderings(model), [[2, 3, 1, 0], [2, 1, 3, 0], [2, 0, 1, 3]])
    observed = np.array([[0, 0, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1]], bool)
    check_completion_by_enumeration(model, binary(3, 4, seed=0), observed, y=np.array([1, 0, 1]))
    for call in (lambda: model.log_prob(binary(1, 4, 0), y=0, observed=[0, 0, 1, 1]),
                 lambda: model.sample(1, y=0, given=binary(1, 4, 0), observed=[0, 0, 1, 1])):
        with pytest.raises(ValueError, match=r"variable 3 is observed but comes after the hidden variable 1 in "
                                             r"mask set 1's ordering"):
            call()


@pytest.mark.parametrize("method", ["fast", "naive"])
@pytest.mark.parametrize("case", ["one set", "mixture"])
def test_completion_samples_match_the_conditional(float64, method, case):
    """Chi-square of 20000 completions against the brute-force conditional (the mixture's
    for case b), observed values unchanged, for two observed prefixes and labels."""
    if case == "one set":
        model = with_labels(make(d=5, hidden_sizes=[10, 10], ordering="random", seed=4, scale=2.0, n_labels=2))
    else:
        model = shared_prefix_mixture([2, 4, 0, 3, 1])
    order = orderings(model)[0]
    given = binary(1, 5, seed=6)[0]
    for p, y in ((1, 0), (3, 1)):
        observed = prefix_mask(order, [p])[0]
        assert_completion_samples_match(model, 20000, given, observed, (5,), seed=p, y=y, method=method)


def test_a_mixture_completion_picks_k_from_the_posterior(float64):
    """The generator draws v (n,) then the noise (n, D); sample r is mask set k's completion
    from its noise, k the first set whose cumulative posterior weight exceeds v_r."""
    model = shared_prefix_mixture()
    n = 40
    given = binary(n, 5, seed=2)
    observed = prefix_mask(np.arange(5), [2] * n)
    x = model.sample(n, seed=9, given=given, observed=observed, y=1)
    rng = np.random.default_rng(9)
    v, noise = rng.random(n), rng.random((n, 5))
    with no_grad():
        per_set = np.stack([model.log_prob_per_variable(given, y=1, k=k).numpy()[:, :2].sum(axis=1)
                            for k in range(3)])                                         # (K, n): log p_k(x_O)
    w = np.exp(per_set - per_set.max(axis=0))
    cdf = np.cumsum(w / w.sum(axis=0), axis=0)
    which = (v[None] >= cdf[:-1]).sum(axis=0)
    assert len(set(which)) > 1
    y = model.check_labels(1, n)
    for k in range(3):
        rows = which == k
        with no_grad():
            want = model.sample_naive(noise[rows], y[rows], given[rows], observed[rows], k=k)
        np.testing.assert_array_equal(x[rows], want)


def order_agnostic(cls=MADE, d=5, n_labels=2, steps=3, **config):
    """A MADE trained order-agnostically (resample_masks with random orderings), labelled,
    after a few steps (its stored sets are no longer the first ones)."""
    model = make(cls, d=d, hidden_sizes=config.pop("hidden_sizes", [10, 10]), num_masks=2, ordering="random",
                 seed=config.pop("seed", 5), resample_masks=True, n_labels=n_labels, scale=config.pop("scale", 2.0))
    with_labels(model, scale=config.pop("label_scale", 1.0))
    for _ in range(steps):
        model.next_mask()
    return model


@fixture_settings
@given(masks=st.lists(st.lists(st.booleans(), min_size=5, max_size=5), min_size=1, max_size=5),
       seed=st.integers(0, 2**16))
def test_an_order_agnostic_made_completes_any_set_exactly(float64, masks, seed):
    """Case c: ANY observed sets (several in one batch, labels per row): normalised over
    x_U; equal to the sum of the hidden variables' conditionals of ONE ordering o (observed
    first, then hidden, each in a random order: `completion_mask_set`); independent of the stored sets
    (more training steps redraw them, the completion stays)."""
    model = order_agnostic()
    observed = np.array(masks, bool)
    given = binary(len(masks), 5, seed)
    y = np.arange(len(masks)) % 2
    assert_completion_normalised(model, given, observed, (5,), y=y, atol=1e-9)
    got = completion_log_prob(model, given, observed, (5,), y)
    for r in range(len(masks)):
        mask_set = model.completion_mask_set(observed[r])
        order = mask_set.ordering
        np.testing.assert_array_equal(order, completion_ordering(observed[r], model.seed))
        assert set(order[:observed[r].sum()]) == set(np.flatnonzero(observed[r]))
        with no_grad():
            lp = model.distribution(model.as_input(given[r:r + 1]), model.check_labels(y[r], 1), mask_set).log_prob(
                given[r:r + 1]).numpy()[0]
        assert got[r] == pytest.approx(lp[~observed[r]].sum(), rel=1e-12, abs=1e-12)
    model.next_mask()
    np.testing.assert_array_equal(completion_log_prob(model, given, observed, (5,), y), got)


def test_the_completion_mask_set_is_an_autoregressive_model_in_its_ordering(float64):
    """Its degrees are made_degrees(d, hidden_sizes, 1, o, seed), its masks made from them, and
    its conditionals follow o: it is one exact autoregressive model (normalised)."""
    model = order_agnostic()
    observed = np.array([False, True, False, True, True])
    mask_set = model.completion_mask_set(observed)
    order = completion_ordering(observed, model.seed)
    assert sorted(order[:3]) == [1, 3, 4] and sorted(order[3:]) == [0, 2]
    np.testing.assert_array_equal(mask_set.ordering, order)
    _, degrees = made_degrees(5, [10, 10], 1, order, seed=model.seed)
    for ours, want in zip(mask_set.degrees, degrees):
        np.testing.assert_array_equal(ours, want[0])
    for ours, want in zip(mask_set.masks, made_masks(degrees)):
        np.testing.assert_array_equal(nanoar.to_numpy(ours), want[0])
    y = model.check_labels(1, 3)
    assert_jacobian_autoregressive(lambda t: model.distribution(t, y, mask_set).logits, binary(3, 5, 0),
                                   mask_set.ordering)
    xs = enumerate_inputs((5,))
    with no_grad():
        lp = model.distribution(model.as_input(xs), model.check_labels(1, 32), mask_set).log_prob(xs).numpy()
    assert abs(np.exp(lp.sum(axis=1)).sum() - 1) < 1e-9


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_order_agnostic_completion_samples_match_its_conditional(float64, method):
    """Chi-square of completions of non-prefix sets against exp(log_prob(x, observed)), the
    observed values unchanged; that conditional is the ordering o's, not the mixture's
    (brute force over the stored sets gives another one)."""
    model = order_agnostic()
    given = binary(1, 5, seed=8)[0]
    for i, (mask, y) in enumerate((([0, 1, 0, 1, 0], 0), ([1, 0, 0, 0, 1], 1), ([0, 0, 1, 0, 0], 1))):
        observed = np.array(mask, bool)
        assert_completion_samples_match(model, 20000, given, observed, (5,), seed=i, y=y, reference="observed",
                                        method=method)
    cands = completions(given, observed)
    masks = np.repeat(observed[None], len(cands), 0)
    mixture = brute_force_completion_log_prob(model, cands, masks, (5,), y=1)
    assert np.abs(mixture - completion_log_prob(model, cands, masks, (5,), np.ones(len(cands), int))).max() > 1e-3


def test_completion_refusals_name_what_can_complete_the_set():
    """A MADE that was not trained order-agnostically refuses (one line, ValueError) a set
    that does not come first in its orderings, naming the remedy; so do its mask sets'
    orderings for a mixture; an order-agnostic one takes it."""
    x = binary(2, 4, 0)
    cases = [(MADE(4, [6], ordering=[2, 0, 3, 1]), [1, 0, 0, 0], "the model's ordering"),
             (MADE(4, [6], num_masks=3, ordering="natural"), [0, 1, 0, 0], "mask set 0's ordering"),
             (MADE(4, [6], ordering="natural", resample_masks=True), [0, 0, 0, 1], "the model's ordering"),
             (GaussianMADE(4, [6], ordering="random", seed=1), None, "the model's ordering")]
    for model, mask, where in cases:
        if mask is None:  # the last variable of the ordering alone
            mask = np.zeros(4)
            mask[model.ordering[-1]] = 1
        data = x if model.kind == "binary" else x - 0.5
        for call in (lambda: model.log_prob(data, observed=mask), lambda: model.sample(2, given=data, observed=mask),
                     lambda: model.sample(2, given=data, observed=mask, method="naive")):
            with pytest.raises(ValueError) as e:
                call()
            message = str(e.value)
            assert where in message and "resample_masks=True with ordering='random'" in message
            assert "--resample-masks" in message and "\n" not in message
    model = MADE(4, [6], ordering="random", resample_masks=True)
    assert model.order_agnostic
    model.log_prob(x, observed=[1, 0, 1, 0])
    model.sample(2, given=x, observed=[0, 0, 0, 1])


def test_observed_everything_or_nothing(float64):
    """All variables observed: log p(x_U | x_O) = 0 and the sample is given back; none
    observed: log_prob(x) of the model (the mixture for case b; one random ordering o for
    an order-agnostic model)."""
    x = binary(3, 5, 1)
    for model in (shared_prefix_mixture(), order_agnostic(), make(d=5, hidden_sizes=[6], ordering="random")):
        y = np.array([0, 1, 1]) if model.n_labels else None
        labels = {"y": y} if model.n_labels else {}
        with no_grad():
            np.testing.assert_array_equal(model.log_prob(x, observed=np.ones(5), **labels).numpy(), 0)
            none = model.log_prob(x, observed=np.zeros(5), **labels).numpy()
        for method in ("fast", "naive"):
            np.testing.assert_array_equal(model.sample(3, given=x, observed=np.ones(5), method=method, **labels), x)
        if not model.order_agnostic:
            np.testing.assert_allclose(none, model.log_prob(x, **labels).numpy(), rtol=1e-12)
        else:
            mask_set = model.completion_mask_set(np.zeros(5, bool))
            np.testing.assert_array_equal(mask_set.ordering, completion_ordering(np.zeros(5, bool), model.seed))
            with no_grad():
                want = model.distribution(model.as_input(x), model.check_labels(y, 3), mask_set).log_prob(x).numpy()
            np.testing.assert_allclose(none, want.sum(axis=1), rtol=1e-12)


# ============================================================================ completion, Gaussian
GRID = np.linspace(-14, 14, 2801)  # (a step of 0.01; conditionals of std ~1 hold their mass inside)


def gaussian_model(case):
    """Small conditional GaussianMADEs with scales near 1, for each completion case."""
    if case == "a":
        model = with_labels(make(GaussianMADE, d=3, hidden_sizes=[8], ordering="random", seed=3, n_labels=2), 0.5)
    elif case == "b":
        model = with_labels(make(GaussianMADE, d=3, hidden_sizes=[8], num_masks=3, ordering=[2, 0, 1], seed=4,
                                 scale=1.5, n_labels=2), 0.5)
    else:
        model = order_agnostic(GaussianMADE, d=3, hidden_sizes=[8], scale=1.0, label_scale=0.5)
    for p in model.log_std_head.parameters():
        p.data *= 0.3
    return model


def first_in_every_ordering(model, count):
    """A mask (D,) observing the first `count` variables of the ordering (shared by every set
    for cases a and b); for an order-agnostic model, a set that is not a prefix of the
    natural order."""
    observed = np.zeros(model.d, bool)
    observed[orderings(model)[0][:count] if not model.order_agnostic else [2, 0][:count]] = True
    return observed


def conditional_on_grid(model, row, observed, y):
    """log p(x_U | x_O) along GRID for the one hidden variable: the model's completion
    log_prob, and by brute force log p(x) - log of the integral of p(x_O, u) du (the joint
    being log_prob(x), the mixture for case b). -> (GRID,) twice, host float64."""
    (u,) = np.flatnonzero(~observed)
    x = np.repeat(row[None], len(GRID), axis=0)
    x[:, u] = GRID
    with no_grad():
        ours = model.log_prob(x, y=y, observed=observed).numpy()
        joint = model.log_prob(x, y=y).numpy()
    m = joint.max()
    return ours, joint - (m + np.log(np.exp(joint - m).sum() * (GRID[1] - GRID[0])))


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_gaussian_completion_is_a_normalised_conditional(float64, case):
    """Each case, one hidden variable: exp(log_prob(x, observed)) integrates to 1 over it on a
    fine grid; for cases a and b it equals the brute-force conditional p(x) / integral of
    p(x_O, u) du (for c, the ordering o's joint gives it: checked with x_U alone hidden,
    which any ordering o scores as the same chain)."""
    model = gaussian_model(case)
    observed = first_in_every_ordering(model, 2)
    rows = np.random.default_rng(1).standard_normal((3, 3))
    for row, y in zip(rows, (0, 1, 1)):
        ours, brute = conditional_on_grid(model, row, observed, y)
        assert abs(np.exp(ours).sum() * (GRID[1] - GRID[0]) - 1) < 1e-6
        if case != "c":
            np.testing.assert_allclose(ours, brute, rtol=1e-6, atol=1e-6)
        else:  # the one ordering's conditional of its last variable
            mask_set = model.completion_mask_set(observed)
            (u,) = np.flatnonzero(~observed)
            x = np.repeat(row[None], len(GRID), axis=0)
            x[:, u] = GRID
            with no_grad():
                want = model.distribution(model.as_input(x), model.check_labels(y, len(GRID)), mask_set).log_prob(x)
            np.testing.assert_allclose(ours, want.numpy()[:, u], rtol=1e-12, atol=1e-12)


def test_gaussian_two_hidden_variables_integrate_to_one(float64):
    """Cases b and c with two hidden variables: a 2-D grid."""
    g = np.linspace(-10, 10, 401)
    for case in ("b", "c"):
        model = gaussian_model(case)
        observed = first_in_every_ordering(model, 1)
        hidden = np.flatnonzero(~observed)
        x = np.zeros((len(g) ** 2, 3)) + np.random.default_rng(0).standard_normal(3)
        x[:, hidden] = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        with no_grad():
            lp = model.log_prob(x, y=1, observed=observed).numpy()
        assert abs(np.exp(lp).sum() * (g[1] - g[0]) ** 2 - 1) < 1e-5, case


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_gaussian_completion_samples_match_the_conditional(float64, case):
    """Chi-square of 20000 completions of the hidden variable in 25 bins of equal
    probability under exp(log_prob(x, observed)) on the grid; the observed values come back
    unchanged; fast and naive give the same samples."""
    model = gaussian_model(case)
    observed = first_in_every_ordering(model, 2)
    row = np.random.default_rng(2).standard_normal(3)
    (u,) = np.flatnonzero(~observed)
    x = model.sample(20000, seed=3, given=row, observed=observed, y=1)
    fast, naive = (model.sample(500, seed=4, given=row, observed=observed, y=1, method=m) for m in ("fast", "naive"))
    np.testing.assert_allclose(naive, fast, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(x[:, observed], np.broadcast_to(row[observed], (20000, 2)))
    ours, _ = conditional_on_grid(model, row, observed, 1)
    cdf = np.cumsum(np.exp(ours)) * (GRID[1] - GRID[0])
    edges = np.interp(np.linspace(0, 1, 26)[1:-1], cdf, GRID)
    counts = np.bincount(np.searchsorted(edges, x[:, u]), minlength=25)
    chi_square_test(counts, np.full(25, 20000 / 25), what="Gaussian completions")


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_gaussian_completions_whiten_to_the_noise(float64, case):
    """The hidden variables of a completion are drawn from the conditionals of the mask set
    used, conditioned on the given values: z_i = (x_i - mu_i) / sigma_i of every hidden
    variable is the noise drawn (after v, for case b, under the set each row picked)."""
    model = gaussian_model(case)
    observed = first_in_every_ordering(model, 1)
    row = np.random.default_rng(4).standard_normal(3)
    x = model.sample(200, seed=6, given=row, observed=observed, y=0)
    rng = np.random.default_rng(6)
    if case == "b":
        rng.random(200)  # the draws that pick k come first
    noise = rng.standard_normal((200, 3))
    mask_set = model.completion_mask_set(observed) if case == "c" else None
    y = model.check_labels(0, 200)
    if case == "b":  # each row under the set its posterior picked: find it by trying all
        z = np.stack([zscores(model, x, y, k) for k in range(3)])
        ok = np.isclose(z[..., ~observed], noise[None][..., ~observed], atol=1e-8).all(axis=2)
        assert ok.any(axis=0).all()
    else:
        z = zscores(model, x, y, mask_set)
        np.testing.assert_allclose(z[:, ~observed], noise[:, ~observed], atol=1e-8)


def zscores(model, x, y, k):
    """(x - mu(x_<i)) / sigma(x_<i) under mask set k (an index or a MaskSet): (N, D)."""
    with no_grad():
        dist = model.distribution(model.as_input(x), y, k)
    return (x - dist.mean.numpy()) / np.exp(dist.log_std.numpy())


# ============================================================================ every device
@pytest.mark.parametrize("cls", [MADE, GaussianMADE])
def test_labels_resampling_and_completion_on_every_device(device, cls):
    """On each device (CuPy's rules on the stand-in): a labelled training step with resampled
    masks, and completions of each case, the same by both samplers, observed values kept."""
    rng = np.random.default_rng(0)
    host = (rng.integers(0, 2, (6, 5)) if cls is MADE else rng.standard_normal((6, 5))).astype(np.float32)
    x, y = nanoar.to_device(host), nanoar.to_device(np.arange(6) % 2)
    for config in (dict(ordering="random"), dict(num_masks=3, ordering=[4, 1, 0, 2, 3]),
                   dict(num_masks=2, ordering="random", resample_masks=True)):
        model = with_labels(make(cls, d=5, hidden_sizes=[7, 6], seed=2, n_labels=2, **config))
        loss, _ = model.training_loss(x, None, y=y)
        loss.backward()
        observed = np.zeros((6, 5), bool)
        if model.order_agnostic:
            observed[:, [3, 1]] = [[True, False]] * 3 + [[False, True]] * 3
        else:
            observed[:, model.ordering[:2]] = True
        lp = model.log_prob(x, y=y, observed=observed)
        assert type(lp.data) is type(x) and lp.shape == (6,)
        fast = model.sample(6, seed=1, y=y, given=x, observed=observed)
        naive = model.sample(6, seed=1, y=y, given=x, observed=observed, method="naive")
        assert type(fast) is type(x)
        fast, naive = nanoar.to_numpy(fast), nanoar.to_numpy(naive)
        np.testing.assert_allclose(fast, naive, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(fast[observed], host[observed])


# ---------------------------------------------------------------------------- mask inputs
def test_resampled_masks_feed_every_layer_its_mask(float64):
    """With resample_masks every layer adds 1 (U * M): a bias that depends on the mask set
    only, so each set stays a normalised autoregressive model (enumeration, perturbation),
    the fast sampler still equals the naive one, gradients reach U, and U changes the model."""
    from model_zoo import order_agnostic_made
    model = order_agnostic_made(seed=3)
    names = [n for n, _ in model.named_parameters() if n.endswith("mask_weight")]
    assert names == ["layers.0.mask_weight", "layers.1.mask_weight", "head.mask_weight"]
    x = (np.random.default_rng(0).random((6, 4)) < 0.5).astype(np.float64)
    for k in range(model.num_masks):
        with no_grad():
            lp = nanoar.to_numpy(model.log_prob_mask(enumerate_inputs((4,)), k=k).data)
        assert abs(np.exp(lp).sum() - 1) < 1e-9
        model.mask_index = k
        assert_future_does_not_matter(model, x, np.random.default_rng(k), k=k)
    noise = nanoar.to_device(np.random.default_rng(1).random((50, 4)))
    for k in range(model.num_masks):
        model.mask_index = k
        np.testing.assert_array_equal(nanoar.to_numpy(model.sample_fast(noise)), nanoar.to_numpy(model.sample_naive(noise)))
    assert_param_grads(model, lambda: -model.log_prob(x).mean())
    with no_grad():
        before = nanoar.to_numpy(model.log_prob(x).data)
        model.layers[0].mask_weight.data[...] = 0
        assert not np.allclose(nanoar.to_numpy(model.log_prob(x).data), before)


def test_fixed_masks_have_no_mask_inputs():
    assert not [n for n, _ in MADE(5, [6], num_masks=2).named_parameters() if "mask_weight" in n]
