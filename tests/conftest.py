"""Shared fixtures: the device parameter (CuPy variants skip with a reason) and
hypothesis profiles ('ci', the default, and 'thorough' for long local runs:
`HYPOTHESIS_PROFILE=thorough pytest`)."""
import contextlib
import importlib.util
import os
import pathlib
import signal
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import nanoar
from nanoar import backend, training

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_skip_reason():
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'nanoar[gpu]'): CUDA variant skipped"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no GPU visible to CuPy: CUDA variant skipped"
    except Exception as e:  # no driver
        return f"no usable GPU ({type(e).__name__}): CUDA variant skipped"
    return None


STANDIN = pathlib.Path(__file__).resolve().parent / "cupy_standin"
_standin_modules = {}


def _is_cupy_module(name):
    return name in ("cupy", "cupyx") or name.startswith(("cupy.", "cupyx."))


@contextlib.contextmanager
def cupy_standin():
    """`import cupy` gives the CPU stand-in (tests/cupy_standin: CuPy's rules on NumPy
    storage) inside the block; whatever CuPy was imported before comes back after."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_cupy_module(k)}
    if not _standin_modules:
        sys.path.insert(0, str(STANDIN))
        try:
            import cupy  # noqa: F401
            import cupyx  # noqa: F401
        finally:
            sys.path.remove(str(STANDIN))
        _standin_modules.update({k: v for k, v in sys.modules.items() if _is_cupy_module(k)})
    sys.modules.update(_standin_modules)
    try:
        yield sys.modules["cupy"]
    finally:
        for k in [k for k in sys.modules if _is_cupy_module(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


@contextlib.contextmanager
def _backend_for(param):
    """For a device parameter: 'cpu' (NumPy), 'cuda' / 'gpu' (CuPy on a GPU: skips, with the
    reason, where there is none) or 'cupy-standin' (CuPy's rules on the CPU stand-in, which
    runs everywhere). Yields (the backend's device name, the cupy module or None); the
    backend is back on 'cpu', float32, seed 0 afterwards."""
    try:
        if param == "cpu":
            yield "cpu", None
        elif param == "cupy-standin":
            with cupy_standin() as cupy:
                yield "cuda", cupy
        else:
            reason = _cuda_skip_reason()
            if reason:
                pytest.skip(reason)
            import cupy

            yield "cuda", cupy
    finally:
        nanoar.set_device("cpu", seed=0)
        nanoar.set_default_dtype("float32")


@pytest.fixture(params=["cpu", "cuda", "cupy-standin"])
def device(request):
    """Run the test on each device (the backend's device is 'cuda' for the last two)."""
    with _backend_for(request.param) as (device, _):
        nanoar.set_device(device, seed=0)
        yield device


@pytest.fixture(params=["cpu", "cuda", "cupy-standin"])
def script_device(request):
    """The `--device` value for a script run on each device (the script switches itself)."""
    with _backend_for(request.param) as (device, _):
        yield device


@pytest.fixture(params=["gpu", "cupy-standin"])
def cuda(request):
    """The `cupy` module, real (skips without a GPU) or the stand-in; the test switches the
    device itself."""
    with _backend_for(request.param) as (_, cupy):
        yield cupy


@pytest.fixture
def float64():
    """Default dtype float64 for the test (gradient checks, exact sums)."""
    backend.set_default_dtype("float64")
    try:
        yield
    finally:
        backend.set_default_dtype("float32")


def to_xp(a):
    """A host array on the current device (tests' explicit copy)."""
    return nanoar.to_device(np.asarray(a))


@pytest.fixture
def stop_after(monkeypatch):
    """stop_after(n): the training loop sees a Ctrl-C at the n-th time it checks for a
    signal (for testing save-on-interrupt and --resume); undone by monkeypatch.undo()."""
    def make(n):
        class StopAfter(training.StopRequested):
            calls = 0

            @property
            def signum(self):
                StopAfter.calls += 1
                return signal.SIGINT if StopAfter.calls == n else None

            @signum.setter
            def signum(self, value):
                pass
        monkeypatch.setattr(training, "StopRequested", StopAfter)
    return make


@pytest.fixture
def torch_ref():
    """bench/torch_ref.py (the PyTorch reference models) as a module; skips without torch."""
    pytest.importorskip("torch")
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "torch_ref.py"
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
