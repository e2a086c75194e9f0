#!/usr/bin/env python
"""How training and sampling cost grow with image size, sequence length and width.

    python bench/scaling.py > bench/results/scaling_cpu.jsonl

Each line: the workload family, the size that varies, and the median milliseconds of 5
steps after 2 warm-up steps (fewer for slow sampling), in this one process.
"""
import json

import numpy as np

from nanoar import bench
from nanoar.models.pixelcnn import PixelCNN
from nanoar.models.transformer import CharTransformer
from nanoar.optim import Adam


def report(family, size, ms, unit):
    print(json.dumps({"family": family, unit: size, "ms_median": round(float(np.median(ms)), 2)}), flush=True)


def main():
    rng = np.random.default_rng(0)
    for side in (14, 28, 42):
        m = PixelCNN(side, side)
        step = bench._train_step(m, bench._binary((32, 1, side, side), rng), Adam(m.parameters()))
        report("pixelcnn train step (batch 32)", side, bench._time(step, 5, 2), "image_side")
    for side in (14, 28):
        m = PixelCNN(side, side)
        report("pixelcnn fast sampling (16 images)", side, bench._time(lambda: m.sample(16, seed=0), 2, 1), "image_side")
    for t in (256, 1024, 4096):
        m = bench.wavenet_model()
        step = bench._train_step(m, bench._ids((4, t), 256, rng), Adam(m.parameters()))
        report("wavenet train step (batch 4)", t, bench._time(step, 5, 2), "seq_len")
    m = bench.wavenet_model()
    for t in (512, 2048, 8192):
        report("wavenet fast sampling (1 sequence)", t, bench._time(lambda: m.sample(1, seed=0, length=t), 2, 1), "steps")
    for dim in (64, 128, 256):
        m = CharTransformer(65, context=64, n_layers=4, n_heads=4, dim=dim)
        step = bench._train_step(m, bench._ids((12, 64), 65, rng), Adam(m.parameters()))
        report("chargpt train step (batch 12 x 64)", dim, bench._time(step, 5, 2), "width")
    for ctx in (32, 64, 128):
        m = CharTransformer(65, context=ctx, n_layers=4, n_heads=4, dim=128)
        step = bench._train_step(m, bench._ids((12, ctx), 65, rng), Adam(m.parameters()))
        report("chargpt train step (batch 12)", ctx, bench._time(step, 5, 2), "context")


if __name__ == "__main__":
    main()
