"""End to end: train_mnist.py on a small generated IDX data set, then --resume, --eval,
--sample; exact resumption after an interruption; clear errors."""
import json
import os
import sys

import numpy as np
import pytest

import nanoar
from nanoar import datasets, training
from nanoar.checkpoint import load_checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mnist  # noqa: E402


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


@pytest.fixture
def idx_folder(tmp_path):
    """A tiny MNIST-style data set: 8x8 grey 'digits' (bars at random positions)."""
    rng = np.random.default_rng(0)

    def images(n):
        x = rng.integers(0, 60, size=(n, 8, 8))
        rows = rng.integers(0, 8, size=n)
        x[np.arange(n), rows, :] = rng.integers(180, 256, size=(n, 8))
        return x.astype(np.uint8)

    folder = tmp_path / "idx"
    folder.mkdir()
    datasets.write_idx(folder / "train-images-idx3-ubyte.gz", images(240))
    datasets.write_idx(folder / "t10k-images-idx3-ubyte", images(60))
    return str(folder)


def run(args):
    train_mnist.main([str(a) for a in args])


def fails(args, capsys, status=1):
    """Run the script expecting it to stop with `status`; returns its one-line error."""
    with pytest.raises(SystemExit) as e:
        run(args)
    assert e.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("model", ["fvsbn", "made", "nade", "pixelcnn", "gated-pixelcnn"])
def test_each_model_trains_evaluates_and_samples(model, idx_folder, tmp_path, capsys, script_device):
    out = tmp_path / model
    run(["--device", script_device, "--model", model, "--dataset", idx_folder, "--epochs", 1, "--batch-size", 20, "--hidden", 16,
         "--hidden-sizes", "32", "--channels", 8, "--layers", 1, "--n-samples", 4, "--out", out, "--quiet"])
    text = capsys.readouterr().out
    assert "uniform over {0,1}^64: 44.4 nats" in text
    assert "independent per-pixel Bernoulli" in text
    assert "(best validation)" in text and "test NLL of" in text and "bits/dim" in text
    assert "threshold 0.5" in text  # every NLL names its binarization
    log = read_log(out)
    assert [r.get("epoch") for r in log[:-1]] == [1] and log[-1]["event"] == "test"
    assert np.isfinite(log[-1]["test_nll"]) and 0 < log[-1]["test_nll"] < 64 * np.log(2) * 1.5
    for name in ("best.npz", "last.npz", "samples.png", "samples_conditionals.png"):
        assert (out / name).exists(), name


def test_resume_gives_the_same_run_as_no_interruption(idx_folder, tmp_path, monkeypatch, stop_after,
                                                      script_device):
    common = ["--device", script_device, "--model", "made", "--dataset", idx_folder, "--binarization", "dynamic", "--epochs", 2,
              "--batch-size", 20, "--hidden-sizes", "24,24", "--n-samples", 2, "--quiet"]
    run(common + ["--out", tmp_path / "straight"])

    # Interrupt in the middle of epoch 1 (as Ctrl-C would): the run saves and exits with 130.
    stop_after(5)
    out = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as e:
        run(common + ["--out", out])
    assert e.value.code == 130
    arrays, meta = load_checkpoint(out / "last.npz")
    assert meta["loop"]["epoch"] == 0 and meta["loop"]["batch"] == 5
    monkeypatch.undo()
    run(["--device", script_device, "--out", out, "--resume", "--n-samples", 2, "--quiet"])

    a, b = read_log(tmp_path / "straight"), read_log(out)
    assert [r.get("event") for r in b] == ["resume", None, None, "test"]  # one run's lines, the resume marked
    b = b[1:]
    assert [r["epoch"] for r in b if "epoch" in r] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("train_nll", "valid_nll", "test_nll"):
            if key in ra and not (key == "train_nll" and rb.get("epoch") == 1):
                assert rb[key] == pytest.approx(ra[key], rel=1e-6), key
    wa, _ = load_checkpoint(tmp_path / "straight" / "last.npz")
    wb, _ = load_checkpoint(out / "last.npz")
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_made_with_several_masks_trains_one_mask_per_step(idx_folder, tmp_path):
    out = tmp_path / "masks"
    run(["--model", "made", "--num-masks", 3, "--ordering", "random", "--dataset", idx_folder, "--epochs", 1,
         "--batch-size", 20, "--hidden-sizes", "32", "--n-samples", 4, "--out", out, "--quiet"])
    _, meta = load_checkpoint(out / "last.npz")
    assert meta["model_state"]["mask_index"] in (0, 1, 2)
    assert (out / "samples.png").exists()


def test_unknown_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["--dataset", tmp_path / "nope"])
    assert "neither one of mnist" in capsys.readouterr().err


def test_eval_and_sample_a_checkpoint(idx_folder, tmp_path, capsys, script_device):
    out = tmp_path / "run"
    run(["--device", script_device, "--model", "fvsbn", "--dataset", idx_folder, "--epochs", 1, "--batch-size", 20, "--out", out,
         "--n-samples", 4, "--quiet"])
    test_nll = read_log(out)[-1]["test_nll"]
    capsys.readouterr()
    run(["--device", script_device, "--eval", out / "best.npz"])
    text = capsys.readouterr().out
    assert f"{test_nll:.2f} nats" in text
    os.remove(out / "samples.png")
    run(["--device", script_device, "--sample", out / "best.npz", "--n-samples", 9])
    assert (out / "samples.png").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(idx_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--model", "fvsbn", "--dataset", idx_folder, "--batch-size", 20, "--out", out, "--n-samples", 2,
            "--quiet"]
    run(args + ["--epochs", 1])
    before, _ = load_checkpoint(out / "last.npz")
    check_finite = training.check_finite
    monkeypatch.setattr(training, "check_finite", lambda value, step: check_finite(float("nan"), step))
    assert "loss became nan" in fails(["--out", out, "--epochs", 2, "--resume", "--quiet"], capsys)
    after, _ = load_checkpoint(out / "last.npz")
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_missing_data_folder_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = fails(["--dataset", tmp_path / "empty", "--out", tmp_path / "run", "--quiet"], capsys)
    assert "t10k-images" in err or "train-images" in err


def test_cuda_without_cupy_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *a, **k):
        if name == "cupy":
            raise ImportError("no cupy")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    assert "CuPy" in fails(["--device", "cuda", "--out", tmp_path / "run"], capsys)
