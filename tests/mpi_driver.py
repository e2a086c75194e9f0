"""Run by tests/test_distributed.py, under `mpiexec -n P` or alone: a few float64 training
steps of one model through `training.train` (the scripts' loop), then the evaluation NLL of
each held-out example, written by rank 0 to OUT/result.npz.

    python tests/mpi_driver.py MODEL BATCH STEPS OUT [die-at-step|hang-at-step N]

BATCH is the global batch (each of P ranks draws BATCH / P rows). The last argument makes
rank 1 die (os._exit) or hang (sleep) when it reaches step N, for the failure tests.
"""
import os
import sys
import time

import numpy as np

import nanoar
from nanoar import distributed, training
from nanoar.models.lstm import CharLSTM
from nanoar.models.made import MADE
from nanoar.models.pixelcnn import PixelCNN
from nanoar.models.transformer import CharTransformer
from nanoar.optim import Adam


class Images:
    """A data set of 64 random 6 x 6 binary images (the `train_batches` of `datasets`)."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.train = (rng.random((64, 1, 6, 6)) < 0.4).astype(np.float64)
        self.valid = (rng.random((13, 1, 6, 6)) < 0.4).astype(np.float64)

    def train_batches(self, batch_size, rng, with_labels=False):
        order = rng.permutation(len(self.train))
        for i in range(0, len(order) - len(order) % batch_size, batch_size):
            yield self.train[order[i:i + batch_size]]


def main():
    name, batch, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    fault = sys.argv[5:7]
    training.configure("cpu", 0)
    nanoar.set_default_dtype("float64")
    text = np.random.default_rng(2).integers(0, 5, 400)
    if name == "made":
        model, data = MADE(36, hidden_sizes=[20, 20], seed=0), Images()
        batches = training.EpochBatches(data, batch, len(data.train) // batch, model.event_shape)
        valid = data.valid.reshape(len(data.valid), -1)
    elif name == "pixelcnn":
        model, data = PixelCNN(6, 6, channels=4, n_residual=1, first_kernel=3, kernel=3, head_channels=4), Images()
        batches = training.EpochBatches(data, batch, len(data.train) // batch, model.event_shape)
        valid = data.valid
    elif name == "transformer":
        model = CharTransformer(n_classes=5, context=8, n_layers=1, n_heads=2, dim=8)
        batches, valid = training.RandomWindows(text, batch, 8), text[:72].reshape(9, 8)
    else:
        model = CharLSTM(n_classes=5, hidden_size=6)
        batches, valid = training.TextStreams(text, batch, 8, model), None    # carries its state
    opt = Adam(model.parameters(), lr=1e-2)

    def evaluate(train_loss, seconds):
        if fault and fault[0] == "die-at-step" and distributed.rank() == 1:
            os._exit(3)
        if fault and fault[0] == "hang-at-step" and distributed.rank() == 1:
            time.sleep(3600)
        return train_loss, {"loss": train_loss}, f"loss {train_loss}"

    with training.error_boundary():
        run = training.RunFolder(out, resuming=False, force=True)
        with run:
            run.begin()
            every = int(fault[1]) if fault else steps
            training.train(model, opt, batches, run, max_steps=steps, eval_every=every, evaluate=evaluate,
                           clip=1e9, meta={}, quiet=True)
        nll = np.zeros(0) if valid is None else training.example_nll(model, valid, batch_size=4)
        if distributed.is_main():
            params = {f"p{i}": nanoar.to_numpy(p.data) for i, p in enumerate(opt.params)}
            np.savez(os.path.join(out, "result.npz"), nll=nll, **params)


if __name__ == "__main__":
    main()
