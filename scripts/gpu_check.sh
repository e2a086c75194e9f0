#!/usr/bin/env bash
# GPU verification on a machine with an NVIDIA GPU and CuPy: installs nanoar, runs the
# CUDA variants of the tests, the benchmark on --device cuda (and PyTorch CUDA beside it
# when torch sees the GPU), and a short train_mnist.py run on a generated IDX data set.
# Results land in one folder as at most 8 small files (default gpu_results/; the data and
# checkpoints go to a temporary folder). Budget: well under 8 minutes.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]          # PYTHON=python3.12 to pick the interpreter
#
# Rehearsal without a GPU (checks this script and the CuPy code path, not the GPU):
#   PYTHONPATH=tests/cupy_standin bash scripts/gpu_check.sh /tmp/gpu_rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_results}
py=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  echo "== machine"; date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$py" -c "import sys, numpy, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
} >"$out/env.txt" 2>&1

# no network on such machines: install without dependencies (numpy, pytest, hypothesis are there)
"$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || "$py" -m pip install -q -e . >>"$out/install.log" 2>&1

echo "== CUDA tests (the 'cuda' and 'gpu' variants; CuPy compiles each kernel once, the first run is slower)"
parallel=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8")
SECONDS=0
timeout 240 "$py" -m pytest -q -rs $parallel -k "cuda or gpu" -p no:cacheprovider tests 2>&1 \
  | tee "$out/tests_cuda.txt" | tail -5
echo "tests took ${SECONDS} s" | tee -a "$out/tests_cuda.txt"

echo "== benchmark, nanoar on CuPy"
for w in made made-eval pixelcnn wavenet chargpt sample-wavenet sample-made; do
  timeout 45 "$py" -m nanoar.bench --only "$w" --device cuda --steps 20 2>>"$out/bench_errors.txt"
done | tee "$out/bench_cuda.jsonl"

if "$py" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "== benchmark, PyTorch on CUDA"
  for w in made pixelcnn wavenet chargpt sample-wavenet-cached; do
    timeout 45 "$py" bench/torch_ref.py --only "$w" --device cuda --steps 20 2>>"$out/bench_errors.txt"
  done | tee "$out/bench_torch_cuda.jsonl"
fi

echo "== train_mnist.py --device cuda (generated 28x28 IDX data, 2 epochs)"
"$py" - "$work/idx" <<'PY'
import sys, numpy as np
from nanoar.datasets import write_idx
rng = np.random.default_rng(0)
for name, n in (("train-images-idx3-ubyte.gz", 2000), ("t10k-images-idx3-ubyte.gz", 500)):
    x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    x[:, :, 10:18] = 255
    write_idx(f"{sys.argv[1]}/{name}", x)
PY
for m in made nade pixelcnn; do
  echo "-- $m"
  timeout 90 "$py" train_mnist.py --device cuda --model "$m" --dataset "$work/idx" --epochs 2 \
    --out "$work/run-$m" --quiet --n-samples 16 2>&1 | tail -4
done | tee "$out/train.txt"
rm -rf "$work"
echo "results in $out/"
