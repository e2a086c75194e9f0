"""The backend: device selection and its errors, seeding, host/device copies, NANOAR_DEVICE.

The CuPy-missing and no-GPU paths are simulated (a blocked import, a fake module), so they
run on every machine; the tests that need a real GPU skip with a reason where there is none.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, backend
from nanoar.backend import DeviceError

from conftest import STANDIN, cupy_standin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def back_to_cpu():
    """Whatever a test does, the next one starts on 'cpu', float32, seed 0."""
    yield
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


def fake_cupy(get_device_count):
    """A module that imports as `cupy` but has no usable GPU."""
    m = types.ModuleType("cupy")
    m.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return m


# ----------------------------------------------------------------------------- set_device
def test_cuda_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(DeviceError) as e:
        nanoar.set_device("cuda")
    msg = str(e.value)
    assert "CuPy" in msg and "pip install cupy-cuda12x" in msg
    assert isinstance(e.value, RuntimeError)
    assert nanoar.get_device() == "cpu" and nanoar.xp() is np  # no silent fallback, no half switch


def _raise_no_device():
    raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")


@pytest.mark.parametrize("count,match", [(_raise_no_device, "no usable GPU"), (lambda: 0, "no GPU was found")],
                         ids=["driver-error", "zero-devices"])
def test_cupy_present_but_no_gpu(monkeypatch, count, match):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count))
    with pytest.raises(DeviceError, match=match) as e:
        nanoar.set_device("cuda")
    assert "CuPy is installed" in str(e.value)
    assert nanoar.get_device() == "cpu" and nanoar.xp() is np


@pytest.mark.parametrize("name", ["gpu", "CUDA", "tpu", "", "cuda:0"])
def test_unknown_device_is_a_value_error(name):
    with pytest.raises(ValueError) as e:
        nanoar.set_device(name)
    assert repr(name) in str(e.value) and "'cpu'" in str(e.value) and "'cuda'" in str(e.value)
    assert nanoar.get_device() == "cpu"


def test_cpu_device_uses_numpy():
    nanoar.set_device("cpu")
    assert nanoar.get_device() == "cpu" and nanoar.xp() is np
    assert isinstance(Tensor([1.0]).data, np.ndarray)


# ----------------------------------------------------------------------------- seeds
def test_manual_seed_reproducibility():
    nanoar.manual_seed(123)
    a = backend.rng().standard_normal(5)
    b = backend.rng().standard_normal(5)
    nanoar.manual_seed(123)
    np.testing.assert_array_equal(backend.rng().standard_normal(5), a)
    np.testing.assert_array_equal(backend.rng().standard_normal(5), b)
    nanoar.manual_seed(124)
    assert not np.array_equal(backend.rng().standard_normal(5), a)
    nanoar.set_device("cpu", seed=123)  # set_device seeds too
    np.testing.assert_array_equal(backend.rng().standard_normal(5), a)
    # make_rng(seed) is an independent generator; make_rng() is the backend's own
    np.testing.assert_array_equal(backend.make_rng(123).standard_normal(5), a)
    assert backend.make_rng() is backend.rng()


# ----------------------------------------------------------------------------- host and device
def test_to_numpy_and_to_device_on_cpu():
    t = Tensor([[1.0, 2.0]])
    for x in (t, t.data, np.array([[1.0, 2.0]], np.float32)):
        out = nanoar.to_numpy(x)
        assert type(out) is np.ndarray
        np.testing.assert_array_equal(out, [[1.0, 2.0]])
    assert type(t.numpy()) is np.ndarray
    assert type(nanoar.to_device(np.ones(2))) is np.ndarray
    assert type(nanoar.to_device(t)) is np.ndarray
    assert not backend.is_device_array(np.ones(2))
    assert backend.array_module(np.ones(2)) is np


def test_mixing_arrays_across_devices_is_refused_without_a_gpu(monkeypatch):
    """Both directions: a device array (the stand-in's) on 'cpu', and a host array while the
    device is 'cuda'; the error says how to move it."""
    backend.check_same_device(np.ones(2))  # fine on cpu
    with cupy_standin() as cupy:
        with pytest.raises(DeviceError, match="CuPy"):
            Tensor(cupy.ones(3))
        with pytest.raises(DeviceError, match="CuPy"):
            Tensor([1.0, 2.0, 3.0]) + cupy.ones(3)
    monkeypatch.setitem(backend._state, "device", "cuda")
    with pytest.raises(DeviceError) as e:
        backend.check_same_device(np.ones(2), "here: ")
    assert "NumPy" in str(e.value) and "to_device" in str(e.value) and str(e.value).startswith("here: ")


def test_default_dtype_as_restores_after_an_error():
    with pytest.raises(KeyError):
        with backend.default_dtype_as("float64"):
            assert nanoar.default_dtype() == np.float64
            raise KeyError
    assert nanoar.default_dtype() == np.float32


def test_scatter_add_accumulates_and_as_strided_is_read_only():
    target = np.zeros(3)
    backend.scatter_add(target, np.array([0, 0, 2, 0]), np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(target, [7.0, 0.0, 3.0])
    a = np.arange(6.0)
    w = backend.as_strided(a, (4, 3), (8, 8))
    np.testing.assert_array_equal(w[1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        w[0, 0] = 1.0


@given(v=st.integers(1, 6), d=st.integers(0, 3), ids=st.lists(st.integers(-6, 5), max_size=30), seed=st.integers(0, 99))
def test_scatter_add_of_rows_equals_add_at(v, d, ids, seed):
    """Rows by one int array (sorted and summed per id on the CPU) equal numpy's add.at,
    negative ids and repeats included."""
    ids = np.array([i % v if i >= 0 else -(-i % v or v) for i in ids], np.int64)
    values = np.random.default_rng(seed).standard_normal((len(ids), d))
    got, want = np.ones((v, d)), np.ones((v, d))
    backend.scatter_add(got, ids, values)
    np.add.at(want, ids, values)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- a real GPU
def test_cuda_refuses_numpy_arrays_and_cpu_refuses_cupy_arrays(cuda):
    nanoar.set_device("cuda")
    assert nanoar.xp() is cuda
    t = Tensor([1.0, 2.0], requires_grad=True)
    assert backend.is_device_array(t.data)
    host = np.ones(2, np.float32)
    for mix in (lambda: Tensor(host), lambda: t + host, lambda: host * t,
                lambda: nanoar.gather(t.reshape(1, 2), np.zeros((1, 1), np.int64)),
                lambda: nanoar.embedding(t.reshape(2, 1), np.zeros(1, np.int64)),
                lambda: nanoar.where(np.ones(2, bool), t, t),
                lambda: nanoar.bernoulli_log_prob(t, host),
                lambda: (t * 2.0).backward(host)):
        with pytest.raises(DeviceError):
            mix()
    out = nanoar.to_numpy(t)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, [1.0, 2.0])
    moved = nanoar.to_device(np.arange(3.0))
    assert backend.is_device_array(moved)
    nanoar.manual_seed(7)
    a = nanoar.to_numpy(backend.rng().standard_normal(4))
    nanoar.manual_seed(7)
    np.testing.assert_array_equal(nanoar.to_numpy(backend.rng().standard_normal(4)), a)

    nanoar.set_device("cpu")
    dev_arr = cuda.ones(3, dtype=cuda.float32)
    with pytest.raises(DeviceError):
        Tensor(dev_arr)
    with pytest.raises(DeviceError):
        Tensor(np.ones(3)) + dev_arr


# ----------------------------------------------------------------------------- NANOAR_DEVICE
def _python(code, device=None, block_cupy=False, cupy=None):
    """Run `code` in a fresh interpreter; with `cupy` the stand-in module, its folder goes
    first on PYTHONPATH so that the child imports it too."""
    env = {k: v for k, v in os.environ.items() if k != "NANOAR_DEVICE"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if getattr(cupy, "STANDIN", False):
        env["PYTHONPATH"] = str(STANDIN) + os.pathsep + env["PYTHONPATH"]
    if device is not None:
        env["NANOAR_DEVICE"] = device
    prelude = "import sys; sys.modules['cupy'] = None\n" if block_cupy else ""
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_import_does_no_work_and_configure_reads_nanoar_device():
    show = "import nanoar; print(nanoar.get_device())"
    r = _python(show, "bogus")  # importing reads nothing from the environment
    assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr
    configure = "import nanoar; print(nanoar.configure(), nanoar.get_device())"
    r = _python(configure)
    assert r.returncode == 0 and r.stdout.split() == ["cpu", "cpu"], r.stderr
    r = _python(configure, "cpu")
    assert r.returncode == 0 and r.stdout.split() == ["cpu", "cpu"], r.stderr
    r = _python(configure, "bogus")
    assert r.returncode != 0 and "ValueError" in r.stderr and "unknown device 'bogus'" in r.stderr
    r = _python(configure, "cuda", block_cupy=True)  # as on a machine without CuPy: a clear error
    assert r.returncode != 0 and "DeviceError" in r.stderr and "pip install cupy" in r.stderr
    r = _python("import nanoar; print(nanoar.configure('cpu'))", "bogus")  # an explicit device wins
    assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr


def test_nanoar_device_env_var_selects_cuda(cuda):
    r = _python("import nanoar; nanoar.configure(); print(nanoar.get_device(), type(nanoar.Tensor([1.0]).data).__module__)",
                "cuda", cupy=cuda)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "cuda" and r.stdout.split()[1].startswith("cupy")
