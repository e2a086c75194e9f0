"""MADE and GaussianMADE: masks from degrees (and the benchmark's), K mask sets and the
mixture over them (normalised, unlike averaged logits), training one mask set per step,
masked weights, self-contained checkpoints, fits to known distributions, the Gaussian
formula, and bad data. The protocol's identities are in test_protocol.py; the degree-ordered
sampler against the naive one in test_kernels_made.py."""
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from ar_checks import assert_jacobian_autoregressive, assert_normalised, enumerate_inputs
from nanoar import bernoulli_log_prob, no_grad, stack
from nanoar.models.made import GaussianMADE, MADE
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

    def log_prob(self, x):
        return self.model.log_prob_mask(x, self.k)


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
                                  model.distribution(model.as_input(x), 1).log_prob(x).numpy())
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
