"""Data-parallel throughput and all-reduce cost, one JSON line per measurement.

    python bench/distributed.py --only made --steps 30                  # one process
    mpiexec -n 2 python bench/distributed.py --only made --steps 30     # two ranks
    mpiexec -n 2 python bench/distributed.py --allreduce                # time per all-reduce vs size

A training workload is the benchmark's model (`nanoar.bench`) with --batch-size examples per
process (the global batch grows with the ranks), timed over whole steps: forward, backward,
the all-reduce of the flat gradient (with the loss) and Adam's update. Rank 0 prints.
"""
import argparse
import json
import os
import time

import numpy as np

import nanoar
from nanoar import distributed, training
from nanoar.bench import made_model, pixelcnn_model
from nanoar.optim import Adam


def train_throughput(name: str, batch: int, steps: int) -> dict:
    model = made_model() if name == "made" else pixelcnn_model()
    opt = Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(distributed.rank())
    x = (rng.random((batch, *model.event_shape)) < 0.3).astype(np.float32)
    distributed.broadcast_parameters(opt)
    times, reduce_times = [], []
    for _ in range(steps + 3):
        t = time.perf_counter()
        loss, _ = model.training_loss(nanoar.to_device(x))
        opt.zero_grad()
        loss.backward()
        r = time.perf_counter()
        distributed.all_reduce_mean(opt, loss.item())
        reduce_times.append(time.perf_counter() - r)
        opt.step()
        times.append(time.perf_counter() - t)
    step, reduce = float(np.median(times[3:])), float(np.median(reduce_times[3:]))
    p = distributed.world_size()
    return {"name": name, "ranks": p, "batch_per_rank": batch, "step_ms": round(step * 1e3, 2),
            "allreduce_ms": round(reduce * 1e3, 3), "images_per_s": round(p * batch / step, 1),
            "gradient_floats": int(opt.flat_parameters().size),
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}


def allreduce_sizes(repeats: int) -> list:
    out = []
    for n in (10**3, 10**4, 10**5, 10**6, 10**7):
        buf = np.ones(n, np.float32)

        class Flat:   # the optimiser's part that all_reduce_mean uses
            def pack_grads(self, spare):
                return buf
        times = []
        for _ in range(repeats + 2):
            distributed.barrier()
            t = time.perf_counter()
            distributed.all_reduce_mean(Flat())
            times.append(time.perf_counter() - t)
        ms = float(np.median(times[2:])) * 1e3
        out.append({"allreduce_floats": n, "bytes": 4 * n, "ranks": distributed.world_size(), "ms": round(ms, 3),
                    "GB_per_s": round(4 * n / (ms * 1e-3) / 1e9, 3)})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["made", "pixelcnn"], default="made")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default 100 made, 32 pixelcnn)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--allreduce", action="store_true", help="time all-reduces of 1e3..1e7 floats instead")
    args = p.parse_args()
    training.configure("cpu", 0)   # joins the process group under mpiexec
    rows = allreduce_sizes(args.steps) if args.allreduce else \
        [train_throughput(args.only, args.batch_size or (100 if args.only == "made" else 32), args.steps)]
    if distributed.is_main():
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
