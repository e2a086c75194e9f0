"""What the model protocol refuses, and the edge it accepts, for every model of the registry:

- an empty batch (N = 0) is scored: log_prob (0,), log_prob_per_variable (0, *event_shape),
  distribution a head, training_loss 0 with zero gradients; a sequence of length T = 0 is
  refused;
- sample(0) is an empty array of the samples' shape and dtype, and no sampler runs;
- every bad sampling argument (n, seed, method, temperature, top_k, length, unknown
  options) is a ValueError naming the argument, raised before any work: before a
  generator is made or a sampler runs (`check_sampling_options` is the same check without a
  model, and `sample_categorical` checks its own).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanoar
from nanoar import backend, no_grad
from nanoar.distributions import Categorical, check_temperature, check_top_k, sample_categorical
from nanoar.models.base import SequenceModel, check_sampling_options

from conftest import to_xp
from model_zoo import FUSED, NAMES, data, make, sample_options

SEQUENCES = [n for n in NAMES if isinstance(make(n), SequenceModel)]

# values that are not what each argument takes (None is a default, so it is added where it is not)
NOT_NUMBERS = st.one_of(st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 3), max_size=2),
                        st.sampled_from([np.bool_(True), object(), 1j]))
BAD_TEMPERATURES = st.one_of(
    NOT_NUMBERS, st.none(),
    st.floats(max_value=0.0),                               # 0, negative, -inf (NaN below)
    st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), 0, -1, np.int64(0)]),
)
BAD_COUNTS = st.one_of(  # n, top_k (>= 0) and seeds: non-negative integers only
    NOT_NUMBERS,
    st.integers(max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([np.float64(2.0), np.int64(-1), "3"]),
)
BAD_LENGTHS = st.one_of(BAD_COUNTS, st.sampled_from([0, np.int64(0)]))


def _refuses_before_work(model, monkeypatch):
    """Make every way into sampling fail loudly, so that a check that came too late shows."""
    def boom(*args, **kwargs):
        raise AssertionError("sampling work started before the arguments were checked")
    monkeypatch.setattr(backend, "make_rng", boom)
    for name in ("sample_fast", "sample_naive", "next_logits", "_sample"):
        if hasattr(model, name):
            monkeypatch.setattr(model, name, boom)


# ---------------------------------------------------------------------------- empty batches
def _check_empty_batch(model, length=None):
    x = nanoar.to_device(data(model, 0, seed=0, length=length))
    event = (length,) if isinstance(model, SequenceModel) else model.event_shape
    with no_grad():
        lp = model.log_prob(x)
        assert isinstance(lp, nanoar.Tensor) and lp.shape == (0,)
        if model.factorises:
            assert model.log_prob_per_variable(x).shape == (0, *event)
        else:  # a mixture of masks: each mask set's conditionals
            assert model.log_prob_per_variable(x, k=0).shape == (0, *event)
        dist = model.distribution(x if isinstance(model, SequenceModel) else model.as_input(x))
        assert type(dist).__name__ in ("Bernoulli", "Categorical", "Gaussian")
    model.zero_grad()
    loss, _ = model.training_loss(x, None)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    for p in model.parameters():
        assert p.grad is None or not np.abs(nanoar.to_numpy(p.grad)).any()


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_scored(device, name):
    model = make(name)
    _check_empty_batch(model, length=model.seq_len if isinstance(model, SequenceModel) else None)
    if name in FUSED:  # ... on the textbook path too
        model.fused = False
        _check_empty_batch(model, length=model.seq_len if isinstance(model, SequenceModel) else None)


@settings(deadline=None)
@given(name=st.sampled_from(SEQUENCES), length=st.integers(1, 12), fused=st.booleans())
def test_an_empty_batch_of_any_length_is_scored(name, length, fused):
    """Past the transformer's context and the WaveNet's receptive field too."""
    model = make(name)
    model.fused = fused
    _check_empty_batch(model, length=length)


@pytest.mark.parametrize("name", SEQUENCES)
def test_a_sequence_of_length_zero_is_refused(name):
    model = make(name)
    for n in (2, 0):
        for call in (model.log_prob, model.log_prob_per_variable, lambda x: model.training_loss(x, None)):
            with pytest.raises(ValueError, match=r"shape \(N, T\) with T >= 1, got \(%d, 0\)" % n):
                call(np.zeros((n, 0), np.int64))


# ---------------------------------------------------------------------------- sample(0)
@pytest.mark.parametrize("method", ["fast", "naive"])
@pytest.mark.parametrize("name", NAMES)
def test_sample_zero_is_empty_and_runs_no_sampler(device, name, method, monkeypatch):
    model = make(name)
    for attr in ("sample_fast", "sample_naive", "next_logits", "sample_noise"):
        if hasattr(model, attr):
            monkeypatch.setattr(model, attr, lambda *a, **k: pytest.fail("sample(0) ran a sampler"))
    out = model.sample(0, seed=1, method=method, **sample_options(model))
    assert type(out) is type(nanoar.xp().zeros(1))
    if isinstance(model, SequenceModel):
        assert out.shape == (0, model.seq_len) and out.dtype == np.int64
        assert model.sample(np.int64(0), length=7).shape == (0, 7)
        assert model.sample(0, length=5, prompt=to_xp([1, 0])).shape == (0, 5)
        with pytest.raises(ValueError, match="longer than length"):  # the prompt is still checked
            model.sample(0, length=1, prompt=to_xp([1, 0]))
    else:
        assert out.shape == (0, *model.event_shape) and out.dtype == model.dtype


# ---------------------------------------------------------------------------- bad arguments
@settings(deadline=None)
@given(n=st.one_of(BAD_COUNTS, st.none()), name=st.sampled_from(NAMES))
def test_bad_n_is_refused(n, name):
    with pytest.raises(ValueError, match="n, the number of samples, must be a non-negative integer"):
        make(name).sample(n)


@settings(deadline=None)
@given(seed=st.one_of(BAD_COUNTS, st.sampled_from([np.random.RandomState(0), np.random.SeedSequence(0)])),
       name=st.sampled_from(NAMES))
def test_bad_seed_is_refused(seed, name):
    with pytest.raises(ValueError, match="seed must be None, a non-negative integer or a numpy Generator"):
        make(name).sample(2, seed=seed)


@settings(deadline=None)
@given(method=st.one_of(NOT_NUMBERS, st.text(max_size=6).filter(lambda m: m not in ("fast", "naive"))),
       name=st.sampled_from(NAMES))
def test_bad_method_is_refused(method, name):
    with pytest.raises(ValueError, match="method must be 'fast' or 'naive'"):
        make(name).sample(2, method=method)


@settings(deadline=None)
@given(temperature=BAD_TEMPERATURES, name=st.sampled_from(SEQUENCES))
def test_bad_temperature_is_refused(temperature, name):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        make(name).sample(2, temperature=temperature)


@settings(deadline=None)
@given(top_k=st.one_of(BAD_COUNTS, st.none()), name=st.sampled_from(SEQUENCES))
def test_bad_top_k_is_refused(top_k, name):
    with pytest.raises(ValueError, match="top_k must be a non-negative integer"):
        make(name).sample(2, top_k=top_k)


@settings(deadline=None)
@given(length=BAD_LENGTHS, name=st.sampled_from(SEQUENCES))
def test_bad_length_is_refused(length, name):
    with pytest.raises(ValueError, match="length must be a positive integer"):
        make(name).sample(2, length=length)


@pytest.mark.parametrize("name", NAMES)
def test_every_argument_is_checked_before_any_work(name, monkeypatch):
    model = make(name)
    bad = [dict(n=-1), dict(n=2.0), dict(n=True), dict(seed="1"), dict(seed=1.5), dict(seed=-3),
           dict(method="quick")]
    if isinstance(model, SequenceModel):
        bad += [dict(temperature=0), dict(temperature=math.nan), dict(temperature="hot"), dict(top_k=-1),
                dict(top_k=2.5), dict(top_k=True), dict(length=0), dict(length="5"), dict(colour=1),
                dict(prompt=[[0, 1]] * 3), dict(prompt=[0, model.n_classes]), dict(prompt=[0, 1, 0], length=2),
                dict(prompt="ab"), dict(prompt=[0.5])]
    else:
        bad += [dict(temperature=0.5), dict(length=3), dict(top_k=1)]  # options of sequence models only
    _refuses_before_work(model, monkeypatch)
    for kwargs in bad:
        kwargs = {"n": 2, **kwargs}
        with pytest.raises(ValueError) as e:
            model.sample(kwargs.pop("n"), **kwargs)
        assert type(model).__name__ in str(e.value)


def test_image_models_name_the_options_they_do_not_take():
    with pytest.raises(ValueError, match=r"unknown option\(s\) length, temperature; this model takes only n, seed"):
        make("made").sample(2, temperature=0.5, length=3)


@pytest.mark.parametrize("name", NAMES)
def test_good_arguments_of_every_integer_kind(name):
    """numpy integers count as integers; a numpy seed and a numpy Generator as seeds."""
    model = make(name)
    opts = sample_options(model)
    want = nanoar.to_numpy(model.sample(3, seed=5, **opts))
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(np.int32(3), seed=np.uint8(5), **opts)), want)
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(3, seed=np.random.default_rng(5), **opts)), want)
    if isinstance(model, SequenceModel):
        got = model.sample(2, seed=0, length=np.int64(4), temperature=np.float32(0.5), top_k=np.int8(2))
        assert got.shape == (2, 4)
        assert model.sample(2, seed=0, temperature=2, top_k=10 * model.n_classes).shape == (2, model.seq_len)


def test_a_numpy_generator_seeds_the_device(cuda):
    """On the 'cuda' device a numpy Generator seeds a fresh device generator: samples are
    reproducible from the generator's state, and no host array reaches the device."""
    nanoar.set_device("cuda", seed=0)
    try:
        model = make("wavenet")
        a = model.sample(3, seed=np.random.default_rng(7), length=5)
        b = model.sample(3, seed=np.random.default_rng(7), length=5)
        assert type(a) is cuda.ndarray
        np.testing.assert_array_equal(nanoar.to_numpy(a), nanoar.to_numpy(b))
    finally:
        nanoar.set_device("cpu", seed=0)


# ---------------------------------------------------------------------------- without a model
def test_check_sampling_options_normalises():
    got = check_sampling_options(n=np.int64(4), temperature=np.float32(0.5), top_k=np.uint8(3), length=np.int16(7),
                                 seed=np.int64(2), method="naive")
    assert got == dict(n=4, temperature=0.5, top_k=3, length=7, seed=2, method="naive")
    assert all(type(got[k]) is t for k, t in dict(n=int, temperature=float, top_k=int, length=int, seed=int).items())
    assert check_sampling_options() == dict(n=None, temperature=1.0, top_k=0, length=None, seed=None, method="fast")
    gen = np.random.default_rng(0)
    assert check_sampling_options(seed=gen)["seed"] is gen


@settings(deadline=None)
@given(which=st.sampled_from(["n", "temperature", "top_k", "length", "seed"]), data=st.data())
def test_check_sampling_options_refuses(which, data):
    bad = data.draw({"n": BAD_COUNTS, "temperature": BAD_TEMPERATURES, "top_k": BAD_COUNTS, "length": BAD_LENGTHS,
                     "seed": BAD_COUNTS}[which])
    with pytest.raises(ValueError, match=f"^--: {'n, the number' if which == 'n' else which}"):
        check_sampling_options(**{which: bad}, where="--: ")


def test_refusal_messages_say_what_is_valid():
    with pytest.raises(ValueError) as e:
        check_sampling_options(temperature=-0.5)
    assert str(e.value) == "temperature must be a finite number > 0 (1.0: the model's own conditionals), got -0.5"
    with pytest.raises(ValueError) as e:
        check_sampling_options(top_k=2.5)
    assert str(e.value) == "top_k must be a non-negative integer (0: sample among all classes), got 2.5"
    with pytest.raises(ValueError) as e:
        check_sampling_options(length=0)
    assert str(e.value) == "length must be a positive integer (the number of ids per sample), got 0"
    with pytest.raises(ValueError) as e:
        check_sampling_options(seed="42")
    assert str(e.value) == "seed must be None, a non-negative integer or a numpy Generator, got '42'"
    with pytest.raises(ValueError) as e:
        make("wavenet").sample(-1)
    assert str(e.value) == "WaveNet.sample: n, the number of samples, must be a non-negative integer, got -1"


@settings(deadline=None)
@given(temperature=BAD_TEMPERATURES)
def test_sample_categorical_checks_before_it_reads_the_logits(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(None, None, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(temperature)


@settings(deadline=None)
@given(top_k=BAD_COUNTS)
def test_sample_categorical_refuses_a_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        sample_categorical(None, None, top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        Categorical(nanoar.Tensor(np.zeros((2, 3)))).sample(np.random.default_rng(0), top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        check_top_k(top_k)


@settings(deadline=None)
@given(temperature=st.sampled_from([1e-300, 1e-45, 1e-30, 1e-8]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_a_tiny_temperature_is_greedy(temperature, dtype, seed):
    """However small the temperature, the draw is the most likely class (never a NaN's
    arbitrary class 0)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((6, 5)).astype(dtype) * 3
    ids = sample_categorical(logits, rng, temperature=temperature)
    np.testing.assert_array_equal(ids, logits.argmax(axis=-1))


def test_a_huge_temperature_is_uniform():
    rng = np.random.default_rng(0)
    logits = np.array([[50.0, 0.0, -50.0]], np.float32).repeat(6000, axis=0)
    ids = sample_categorical(logits, rng, temperature=1e300)
    assert abs(np.bincount(ids, minlength=3) / 6000 - 1 / 3).max() < 0.03
