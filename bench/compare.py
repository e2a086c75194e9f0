#!/usr/bin/env python
"""nanoar against PyTorch on the same workloads, side by side in one run.

    python bench/compare.py [--device cpu|cuda] [--only made,pixelcnn] [--steps 20]

For each workload, nanoar (`python -m nanoar.bench --only W`) and the PyTorch reference
(`bench/torch_ref.py --only W`) run in turn, each in a fresh process, so the machine's
state is as alike as it can be for both; prints one JSON line per pair with the ratios
nanoar / PyTorch of median step time and of peak resident memory.
"""
import argparse
import json
import subprocess
import sys

TRAIN = ("made", "made-eval", "pixelcnn", "wavenet", "chargpt")


def run(cmd):
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return lines[-1] if lines else {"error": f"exit status {out.returncode}"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=",".join(TRAIN))
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    for w in args.only.split(","):
        ours = run([sys.executable, "-m", "nanoar.bench", "--only", w, "--device", args.device, "--steps", str(args.steps)])
        theirs = run([sys.executable, "bench/torch_ref.py", "--only", w, "--device", args.device, "--steps", str(args.steps)])
        row = {"name": w, "device": args.device, "nanoar_ms": ours.get("ms_median"), "torch_ms": theirs.get("ms_median"),
               "nanoar_rss_mib": ours.get("peak_rss_mib"), "torch_rss_mib": theirs.get("peak_rss_mib")}
        if row["nanoar_ms"] and row["torch_ms"]:
            row["time_ratio"] = round(row["nanoar_ms"] / row["torch_ms"], 3)
            row["rss_ratio"] = round(row["nanoar_rss_mib"] / row["torch_rss_mib"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
