"""The GPU code path where there is no GPU: CuPy's rules, kept by the CPU stand-in in
tests/cupy_standin. Every device-parametrised test already runs on the stand-in (the
`cupy-standin` variants); this file adds the stand-in's own rules (so that it cannot drift
into accepting what CuPy refuses) and what only it can see: how often a train step or a
sampler waits for the GPU (a host synchronisation), which must not grow with the loop.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nanoar
from nanoar import backend
from nanoar.optim import Adam

from conftest import STANDIN, cupy_standin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def standin():
    with cupy_standin() as cupy:
        nanoar.set_device("cuda", seed=0)
        try:
            yield cupy
        finally:
            nanoar.set_device("cpu", seed=0)


# ----------------------------------------------------------------------------- the stand-in's rules
def test_standin_refuses_what_cupy_refuses(standin):
    a = standin.arange(3.0)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    for host_operand in (lambda: a + np.ones(3), lambda: np.ones(3) * a, lambda: standin.exp(np.ones(3)),
                         lambda: standin.add(a, [1.0, 2.0, 3.0]), lambda: standin.concatenate([a, np.ones(2)]),
                         lambda: a[np.array([0])], lambda: a.__setitem__(Ellipsis, np.ones(3)),
                         # arguments NumPy takes and CuPy does not (CuPy's own signatures)
                         lambda: standin.indices((2, 2), sparse=True), lambda: standin.exp(a, where=a > 0),
                         lambda: a.sum(initial=0.0)):
        with pytest.raises(TypeError):
            host_operand()
    g = standin.random.default_rng(0)
    for missing in ("choice", "normal", "permutation", "shuffle"):  # not on CuPy's Generator
        assert not hasattr(g, missing)
    assert not hasattr(standin, "errstate")


def test_standin_behaves_like_cupy_arrays(standin):
    a = standin.asarray(np.arange(6.0).reshape(2, 3))
    assert type(a.sum()) is standin.ndarray and a.sum().ndim == 0  # no NumPy scalars
    assert type(a[0, 1]) is standin.ndarray
    assert type(np.exp(a)) is standin.ndarray  # NumPy functions dispatch to CuPy's
    assert not isinstance(a.data, (np.ndarray, standin.ndarray))  # .data is a memory pointer
    host = np.ones(2)
    b = standin.asarray(host)
    host[0] = 5.0  # asarray copied: the device array does not see later host writes
    assert b.get().tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(standin.asnumpy(a), np.arange(6.0).reshape(2, 3))


def test_standin_counts_synchronisations(standin):
    a = standin.arange(4.0)
    before = standin.sync_count()
    b = (a * 2.0).sum() + standin.exp(a).max()
    assert standin.sync_count() == before  # device work alone never waits
    float(b), bool(b > 0), b.item(), a.get(), f"{b:.1f}"
    assert standin.sync_count() == before + 5


# ----------------------------------------------------------------------------- nanoar on it
def test_to_numpy_and_to_device_take_device_arrays_and_tensors(standin):
    raw = nanoar.to_device(np.arange(3.0))
    assert backend.is_device_array(raw)
    for a in (raw, nanoar.Tensor(raw)):
        out = nanoar.to_numpy(a)
        assert type(out) is np.ndarray and out.tolist() == [0.0, 1.0, 2.0]
    assert backend.is_device_array(nanoar.to_device(nanoar.Tensor(raw)))
    assert not backend.is_device_array(raw.data)  # CuPy's memory pointer is not an array


def _models():
    """name -> (make(side), kind, data shape(side)): image models on side x side images, sequence
    models on sequences of length 4 side."""
    from nanoar.models.fvsbn import FVSBN
    from nanoar.models.lstm import CharLSTM
    from nanoar.models.made import MADE
    from nanoar.models.nade import NADE
    from nanoar.models.pixelcnn import GatedPixelCNN, PixelCNN
    from nanoar.models.transformer import CharTransformer
    from nanoar.models.wavenet import WaveNet

    k = 11
    flat, image, seq = (lambda s: (6, s * s)), (lambda s: (6, 1, s, s)), (lambda s: (3, 4 * s))
    return {
        "fvsbn": (lambda s: FVSBN(s * s), "binary", flat),
        "nade": (lambda s: NADE(s * s, 8), "binary", flat),
        "made": (lambda s: MADE(s * s, [24], num_masks=2, ordering="random"), "binary", flat),
        "pixelcnn": (lambda s: PixelCNN(s, s, channels=4, n_residual=1), "binary", image),
        "gated-pixelcnn": (lambda s: GatedPixelCNN(s, s, channels=4, n_layers=2), "binary", image),
        "wavenet": (lambda s: WaveNet(n_classes=k, residual_channels=4, dilation_channels=4, skip_channels=4,
                                      dilations=(1, 2)), "ids", seq),
        "lstm": (lambda s: CharLSTM(k, embed_dim=4, hidden_size=6, n_layers=2), "ids", seq),
        "transformer": (lambda s: CharTransformer(n_classes=k, context=8, n_layers=1, n_heads=2, dim=8), "ids", seq),
    }, k


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made", "pixelcnn", "gated-pixelcnn", "wavenet", "lstm",
                                  "transformer"])
def test_train_steps_and_samplers_do_not_wait_for_the_gpu_in_loops(name, standin):
    """A train step syncs once (the data check); a sampler syncs a fixed few times per call
    (MADE reads its orderings and degrees on the host), never once per variable drawn:
    the counts are the same for 36 and 100 variables."""
    models, k = _models()
    make, kind, shape = models[name]
    counts = []
    for side in (6, 10):
        model = make(side)
        rng = np.random.default_rng(0)
        host = (rng.random(shape(side)) < 0.5).astype(np.float32) if kind == "binary" else rng.integers(0, k, shape(side))
        x = nanoar.to_device(host)
        opt = Adam(model.parameters(), 1e-3)

        def step():
            loss = -model.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        before = standin.sync_count()
        step()
        counts.append(standin.sync_count() - before)
        before = standin.sync_count()
        model.sample(2, seed=0, **({"length": 4 * side} if kind == "ids" else {}))
        counts.append(standin.sync_count() - before)
    assert counts[0] == counts[2] == 1, counts
    assert counts[1] == counts[3] <= 6, counts


def test_benchmark_runs_on_cuda_and_names_the_cupy_it_ran_on():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), REPO, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "nanoar.bench", "--only", "sample-made", "--device", "cuda",
                        "--steps", "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"] == "cuda" and out["cupy"].endswith("+standin") and "stand-in" in out["gpu"]
    assert out["ms_median"] > 0


@pytest.mark.parametrize("n_params", [2, 40])
def test_an_optimiser_step_is_a_few_whole_buffer_calls_on_the_gpu(standin, n_params):
    """On the GPU every array call is a kernel launch: Adam's step must not grow with the
    number of parameters (it was 13 calls per parameter)."""
    from nanoar.nn import Parameter
    from nanoar.optim import AdamW

    rng = np.random.default_rng(0)
    ps = [Parameter(nanoar.to_device(rng.standard_normal((3, 2) if i % 2 else (5,)))) for i in range(n_params)]
    opt = AdamW(ps, 1e-3)
    for p in ps:
        p.grad = nanoar.to_device(rng.standard_normal(p.shape).astype(np.float32))
    before = standin.call_count()
    opt.step()
    assert standin.call_count() - before <= 16


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made", "pixelcnn", "gated-pixelcnn", "wavenet", "lstm",
                                  "transformer"])
def test_every_model_gives_the_cpus_log_likelihood_and_gradients_on_every_device(name, device):
    """Same weights, same data: log p(x) and every parameter's gradient agree with NumPy's
    within float32 tolerance (on the GPU the kernels and summation orders differ)."""
    models, k = _models()
    make, kind, shape = models[name]
    rng = np.random.default_rng(1)
    host = (rng.random(shape(6)) < 0.5).astype(np.float32) if kind == "binary" else rng.integers(0, k, shape(6))

    def run():
        nanoar.manual_seed(0)
        model = make(6)
        lp = model.log_prob(nanoar.to_device(host))
        (-lp.sum()).backward()
        return model, nanoar.to_numpy(lp), {n: nanoar.to_numpy(p.grad) for n, p in model.named_parameters()}

    target = backend.get_device()
    nanoar.set_device("cpu", seed=0)
    cpu_model, cpu_lp, cpu_grads = run()
    state = {n: nanoar.to_numpy(v) for n, v in cpu_model.state_dict().items()}
    nanoar.set_device(target, seed=0)
    model = make(6)
    model.load_state_dict(state)
    lp = model.log_prob(nanoar.to_device(host))
    (-lp.sum()).backward()
    np.testing.assert_allclose(nanoar.to_numpy(lp), cpu_lp, rtol=1e-5, atol=1e-4)
    for n, p in model.named_parameters():
        scale = max(1.0, float(np.abs(cpu_grads[n]).max()))
        np.testing.assert_allclose(nanoar.to_numpy(p.grad), cpu_grads[n], rtol=1e-4, atol=1e-5 * scale, err_msg=n)
