#!/usr/bin/env python
"""The MADE yardstick in PyTorch, on nanoar's own data pipeline, for a like-for-like figure.

    python bench/torch_made_yardstick.py [--epochs 10]

MADE 784-500-500 (the masks of bench/torch_ref.py), natural ordering, batch 100, Adam 1e-3,
Fashion-MNIST binarized at 0.5 with the last 10% of the training file held out, batches
shuffled by the same generator as `train_mnist.py --seed 0`. Prints the test NLL in nats
after each epoch and the wall time so far.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402

from nanoar import datasets  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    ds = datasets.BinaryImageData.load("fashion-mnist")
    model = torch_ref.MADE(784, (500, 500))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(0)

    def nll(x):
        t = torch.from_numpy(x.reshape(len(x), -1))
        return F.binary_cross_entropy_with_logits(model(t), t, reduction="none").sum(1)

    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        for x in ds.train_batches(100, rng):
            loss = nll(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            test = np.mean([nll(ds.test[i:i + 1000]).mean().item() for i in range(0, len(ds.test), 1000)])
        print(f"epoch {epoch}: test NLL {test:.2f} nats | {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
