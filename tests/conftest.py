"""Shared fixtures: the device parameter (CuPy variants skip with a reason) and
hypothesis profiles ('ci', the default, and 'thorough' for long local runs:
`HYPOTHESIS_PROFILE=thorough pytest`)."""
import importlib.util
import os
import pathlib

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


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Run the test on each device; the default dtype and seed are reset around it."""
    if request.param == "cuda":
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    nanoar.set_device(request.param, seed=0)
    try:
        yield request.param
    finally:
        nanoar.set_device("cpu", seed=0)
        nanoar.set_default_dtype("float32")


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
def stop_after():
    """stop_after(n): a StopRequested stand-in that 'presses Ctrl-C' at the n-th time the
    training loop checks the flag (for testing save-on-interrupt and --resume)."""
    def make(n):
        class StopAfter(training.StopRequested):
            calls = 0

            @property
            def requested(self):
                StopAfter.calls += 1
                return StopAfter.calls == n

            @requested.setter
            def requested(self, value):
                pass
        return StopAfter
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
