"""The standard benchmark: the workloads of BENCHMARKS.md, one JSON object per line.

    python -m nanoar.bench                    # every workload, each in its own process
    python -m nanoar.bench --only pixelcnn    # one workload
    python -m nanoar.bench --device cuda      # on CuPy

A train step is forward + exact NLL + backward + one Adam update (lr 1e-3); its time is the
median over `--steps` (default 20) steps after 3 warm-up steps. Each workload runs in a
fresh process so that its peak resident memory (ru_maxrss) is its own. Data is random but
valid; no network and no data files are needed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from . import backend
from .tensor import no_grad
from .optim import Adam, AdamW

WORKLOADS = ("made", "made-eval", "pixelcnn", "wavenet", "chargpt", "sample-wavenet", "sample-pixelcnn", "sample-made")


def _sync():
    if backend.get_device() == "cuda":
        backend.xp().cuda.Device().synchronize()


def _time(fn, steps, warmup=3):
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return np.array(times) * 1000.0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _train_step(model, x, opt):
    def step():
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


# ----------------------------------------------------------------------------- the models
def made_model():
    from .models.made import MADE  # noqa: PLC0415

    return MADE(784, [500, 500])


def pixelcnn_model():
    from .models.pixelcnn import PixelCNN  # noqa: PLC0415

    return PixelCNN(28, 28, channels=64, n_residual=5, first_kernel=7, kernel=3, head_channels=64)


def wavenet_model():
    from .models.wavenet import WaveNet  # noqa: PLC0415

    return WaveNet(n_classes=256, residual_channels=64, dilation_channels=128, skip_channels=64,
                   dilations=tuple(2 ** i for i in range(10)), input="onehot")


def chargpt_model():
    from .models.transformer import CharTransformer  # noqa: PLC0415

    return CharTransformer(n_classes=65, context=64, n_layers=4, n_heads=4, dim=128, bias=False, tied=False)


def _binary(shape, rng):
    return backend.to_device((rng.random(shape) < 0.5).astype(backend.default_dtype()))


def _ids(shape, k, rng):
    return backend.to_device(rng.integers(0, k, size=shape))


# ----------------------------------------------------------------------------- workloads
def run_workload(name: str, steps: int) -> dict:
    """Run one workload in this process; returns its figures."""
    rng = np.random.default_rng(0)
    backend.manual_seed(0)
    extra = {}
    if name in ("made", "made-eval"):
        model = made_model()
        if name == "made":
            ms = _time(_train_step(model, _binary((100, 784), rng), Adam(model.parameters(), 1e-3)), steps)
            items = 100
        else:
            x = _binary((1000, 784), rng)

            def evaluate():
                with no_grad():
                    model.log_prob(x)
            ms, items = _time(evaluate, steps), 1000
    elif name == "pixelcnn":
        model = pixelcnn_model()
        ms = _time(_train_step(model, _binary((32, 1, 28, 28), rng), Adam(model.parameters(), 1e-3)), steps)
        items = 32
    elif name == "wavenet":
        model = wavenet_model()
        ms = _time(_train_step(model, _ids((4, 1024), 256, rng), Adam(model.parameters(), 1e-3)), steps)
        items = 4 * 1024
    elif name == "chargpt":
        model = chargpt_model()
        opt = AdamW(model.parameters(), 1e-3)
        ms = _time(_train_step(model, _ids((12, 64), 65, rng), opt), steps)
        items, extra = 12 * 64, {"output_head": "untied", "optimizer": "AdamW lr 1e-3"}
    elif name == "sample-wavenet":
        model = wavenet_model()
        ms = _time(lambda: model.sample(1, seed=0, length=2048, method="fast"), max(3, steps // 4), warmup=1)
        naive = _time(lambda: model.sample(1, seed=0, length=2048, method="naive"), 1, warmup=0)
        items = 2048
        extra = {"naive_ms": float(naive[0]), "speedup_vs_naive": float(naive[0] / np.median(ms))}
    elif name == "sample-pixelcnn":
        model = pixelcnn_model()
        ms = _time(lambda: model.sample(16, seed=0, method="fast"), max(3, steps // 4), warmup=1)
        naive = _time(lambda: model.sample(16, seed=0, method="naive"), 1, warmup=0)
        items = 16
        extra = {"naive_ms": float(naive[0]), "speedup_vs_naive": float(naive[0] / np.median(ms))}
    elif name == "sample-made":
        model = made_model()
        ms, items = _time(lambda: model.sample(100, seed=0), steps), 100
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
    med = float(np.median(ms))
    return {"name": name, "impl": "nanoar", "device": backend.get_device(), "ms_median": round(med, 3),
            "ms_min": round(float(ms.min()), 3), "ms_max": round(float(ms.max()), 3),
            "items_per_s": round(items / (med / 1000.0), 1), "peak_rss_mib": round(_peak_rss_mib(), 1),
            **extra, **_blas(), **_gpu()}


def _gpu() -> dict:
    """On 'cuda': the CuPy version, the GPU, and the memory CuPy's pool holds at the end of
    the run (the pool keeps freed blocks, so this is about the peak device footprint)."""
    if backend.get_device() != "cuda":
        return {}
    cupy = backend.xp()
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return {"cupy": cupy.__version__, "gpu": name.decode() if isinstance(name, bytes) else name,
            "gpu_pool_mib": round(cupy.get_default_memory_pool().total_bytes() / 2**20, 1)}


def _blas() -> dict:
    """Which BLAS kernel ran (threadpoolctl, when installed) and the OpenBLAS settings."""
    info = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return info
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            info.update(blas=lib.get("internal_api"), blas_kernel=lib.get("architecture"),
                        blas_threads=lib.get("num_threads"))
            break
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=WORKLOADS, help="run one workload (in this process)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps")
    args = p.parse_args(argv)
    if args.only:
        try:
            backend.configure(args.device)
        except backend.DeviceError as e:
            sys.exit(f"error: {e}")
        print(json.dumps(run_workload(args.only, args.steps)), flush=True)
        return
    for name in WORKLOADS:  # a fresh process per workload: its peak memory is its own
        cmd = [sys.executable, "-m", "nanoar.bench", "--only", name, "--device", args.device, "--steps", str(args.steps)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            print(json.dumps({"name": name, "error": f"exit status {result.returncode}"}), flush=True)
        else:
            sys.stdout.write(result.stdout)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
