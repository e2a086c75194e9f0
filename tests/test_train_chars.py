"""End to end: train_chars.py on a small text file for each model, resume, sampling from a
checkpoint (deterministic under a seed), and clear errors."""
import json
import os
import sys

import numpy as np
import pytest

import nanoar
from nanoar.checkpoint import load_checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_chars  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40)

SMALL = {
    "wavenet": ["--dim", 8, "--residual-channels", 8, "--dilations", "1,2", "--stacks", 1],
    "lstm": ["--dim", 8, "--hidden", 16, "--layers", 1],
    "transformer": ["--dim", 16, "--layers", 1, "--heads", 2],
}


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(args):
    train_chars.main([str(a) for a in args])


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def common(model, text_file, out, iters=20, device="cpu"):
    return ["--device", device, "--model", model, *SMALL[model], "--data", text_file, "--context", 16, "--batch-size", 4,
            "--max-iters", iters, "--eval-interval", 10, "--warmup", 2, "--lr", 3e-3, "--out", out,
            "--length", 20, "--quiet"]


@pytest.mark.parametrize("model", ["wavenet", "lstm", "transformer"])
def test_train_evaluate_sample(model, text_file, tmp_path, capsys, script_device):
    out = tmp_path / model
    run(common(model, text_file, out, iters=40, device=script_device))
    text = capsys.readouterr().out
    assert "nats/char" in text and "bits/char" in text and "--- sample" in text
    log = read_log(out)
    assert [r["iter"] for r in log] == [10, 20, 30, 40]
    # a repetitive text: the model must beat the uniform distribution over its vocabulary
    vocab = len(set(TEXT))
    assert min(r["valid_nats_per_char"] for r in log) < np.log(vocab)
    assert all(r["train_loss"] < 2 * np.log(vocab) for r in log)  # nats per character, not per window
    for name in ("best.npz", "last.npz"):
        assert (out / name).exists()


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_resume_continues_the_same_run(model, text_file, tmp_path, monkeypatch, stop_after, script_device):
    run(common(model, text_file, tmp_path / "straight", device=script_device))

    stop_after(7)
    out = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as e:
        run(common(model, text_file, out, device=script_device))
    assert e.value.code == 130
    _, meta = load_checkpoint(out / "last.npz")
    assert meta["optim"]["step"] == 7
    monkeypatch.undo()
    run(["--device", script_device, "--out", out, "--resume", "--max-iters", 20, "--eval-interval", 10, "--length", 20,
         "--quiet"])
    a = {r["iter"]: r for r in read_log(tmp_path / "straight")}
    b = {r["iter"]: r for r in read_log(out)}
    assert a[20]["valid_nats_per_char"] == pytest.approx(b[20]["valid_nats_per_char"], rel=1e-5)
    wa, _ = load_checkpoint(tmp_path / "straight" / "last.npz")
    wb, _ = load_checkpoint(out / "last.npz")
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sampling_a_checkpoint_is_deterministic_and_checks_the_prompt(text_file, tmp_path, capsys, script_device):
    out = tmp_path / "run"
    run(common("transformer", text_file, out, iters=10, device=script_device))
    capsys.readouterr()
    ckpt = out / "best.npz"
    args = ["--device", script_device, "--sample", ckpt, "--prompt", "All:", "--length", 30, "--temperature", 0.8, "--seed", 3]
    run(args)
    first = capsys.readouterr().out
    run(args)
    assert capsys.readouterr().out == first
    assert first.startswith("All:") and len(first.rstrip("\n")) >= 4
    run(args[:-2] + ["--seed", 4, "--top-k", 1])
    greedy = capsys.readouterr().out
    assert greedy.startswith("All:")
    with pytest.raises(SystemExit) as e:
        run(["--sample", ckpt, "--prompt", "ZOO"])
    assert e.value.code == 2 and "'Z'" in capsys.readouterr().err


def test_missing_text_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(["--data", tmp_path / "nope.txt", "--out", tmp_path / "run", "--quiet"])
    assert e.value.code == 1 and "nope.txt" in capsys.readouterr().err
