#!/usr/bin/env bash
# GPU verification on a machine with an NVIDIA GPU and CuPy: installs nanoar, runs the
# CUDA variants of the tests, the benchmark on --device cuda (and PyTorch CUDA beside it
# when torch is installed), and a short train_mnist.py run on a generated IDX data set.
# Everything lands in one folder (default gpu_results/); budget: well under 8 minutes.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]
#
# Rehearsal without a GPU (checks this script and the CuPy code path, not the GPU):
#   PYTHONPATH=tests/cupy_standin bash scripts/gpu_check.sh /tmp/gpu_rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  echo "== machine"; date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
} >"$out/env.txt" 2>&1

pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || pip install -q -e . >>"$out/install.log" 2>&1
python -c "import pytest, hypothesis" 2>/dev/null || pip install -q pytest hypothesis tqdm pillow >>"$out/install.log" 2>&1

echo "== CUDA tests (the 'cuda' and 'gpu' variants; CuPy compiles each kernel once, the first run is slower)"
SECONDS=0
timeout 300 python -m pytest -q -rs -k "cuda or gpu" -p no:cacheprovider tests 2>&1 | tee "$out/tests_cuda.txt" | tail -5
echo "tests took ${SECONDS} s" | tee -a "$out/tests_cuda.txt"

echo "== benchmark, nanoar on CuPy"
for w in made made-eval pixelcnn wavenet chargpt sample-wavenet sample-made; do
  timeout 60 python -m nanoar.bench --only "$w" --device cuda --steps 20 2>>"$out/bench_errors.txt"
done | tee "$out/bench_cuda.jsonl"

if python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "== benchmark, PyTorch on CUDA"
  for w in made pixelcnn wavenet chargpt sample-wavenet; do
    timeout 60 python bench/torch_ref.py --only "$w" --device cuda --steps 20 2>>"$out/bench_errors.txt"
  done | tee "$out/bench_torch_cuda.jsonl"
fi

echo "== train_mnist.py --device cuda (generated 28x28 IDX data, 2 epochs)"
python - "$out/idx" <<'PY'
import sys, numpy as np
from nanoar.data import write_idx
rng = np.random.default_rng(0)
for name, n in (("train-images-idx3-ubyte.gz", 2000), ("t10k-images-idx3-ubyte.gz", 500)):
    x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    x[:, :, 10:18] = 255
    write_idx(f"{sys.argv[1]}/{name}", x)
PY
for m in made pixelcnn; do
  timeout 120 python train_mnist.py --device cuda --model "$m" --dataset "$out/idx" --epochs 2 \
    --out "$out/run-$m" --quiet --n-samples 16 2>&1 | tee "$out/train_$m.txt" | tail -3
done
echo "results in $out/"
