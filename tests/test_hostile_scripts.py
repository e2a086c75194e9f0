"""Both scripts against a careless or hostile user: every case ends with one line
`error: ...` naming the problem, the conventional exit status (2 for a bad argument, 1 for
the rest), no traceback, and nothing of the user's lost.

Each row of a table: the arguments, the exit status, and words the error line must hold.
`{idx}`, `{bin}`, `{text}`, `{out}`, ... are filled in with files made for the test.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nanoar
from nanoar import datasets
from nanoar.checkpoint import load_checkpoint, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_chars  # noqa: E402
import train_mnist  # noqa: E402

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 12
MNIST_SMALL = ["--model", "fvsbn", "--epochs", 1, "--batch-size", 20, "--n-samples", 2, "--quiet"]
CHARS_SMALL = ["--model", "transformer", "--dim", 8, "--layers", 1, "--heads", 2, "--context", 8, "--batch-size", 4,
               "--max-iters", 4, "--eval-interval", 2, "--length", 10, "--quiet"]


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


def grey_images(n, rng, side=8):
    x = rng.integers(0, 60, size=(n, side, side))
    x[np.arange(n), rng.integers(0, side, size=n), :] = 200
    return x.astype(np.uint8)


def idx_folder(path, n_train, n_test, binary=False, side=8):
    rng = np.random.default_rng(0)
    path.mkdir()
    for name, n in (("train-images-idx3-ubyte", n_train), ("t10k-images-idx3-ubyte", n_test)):
        x = grey_images(n, rng, side)
        datasets.write_idx(path / name, (x > 100).astype(np.uint8) if binary else x)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files the tables refer to, made once: data sets, texts, checkpoints of each script."""
    d = tmp_path_factory.mktemp("hostile")
    f = {"dir": d}
    f["idx"] = idx_folder(d / "idx", 200, 40)
    f["bin"] = idx_folder(d / "bin", 200, 40, binary=True)
    f["one"] = idx_folder(d / "one", 1, 1)
    f["zero"] = idx_folder(d / "zero", 0, 0)
    f["big"] = idx_folder(d / "big", 200, 40, side=10)
    f["text"] = d / "text.txt"
    f["text"].write_text(TEXT)
    for name, content in (("empty", ""), ("onechar", "a"), ("same", "aaaaaaaaaaaaaaaaaaaa"), ("short", "abcdefghij"),
                          ("nonewline", TEXT.replace("\n", " "))):
        f[name] = d / f"{name}.txt"
        f[name].write_text(content)
    f["latin1"] = d / "latin1.txt"
    f["latin1"].write_bytes("caf\xe9 ".encode("latin-1") * 50)
    f["nofile"] = d / "missing.npz"
    f["junk"] = d / "junk.npz"
    f["junk"].write_bytes(os.urandom(300))
    f["npy"] = d / "array.npy"
    np.save(f["npy"], np.arange(3))
    f["pickled"] = d / "pickled.npz"
    np.savez(f["pickled"], a=np.array([{"x": 1}], dtype=object))
    f["plain"] = d / "plain.npz"
    np.savez(f["plain"], a=np.arange(3))
    f["notrun"] = d / "notrun.npz"
    save_checkpoint(f["notrun"], {"a": np.arange(3)}, {"hello": 1})

    train_mnist.main([str(a) for a in ["--dataset", f["idx"], "--out", d / "mnist-run", *MNIST_SMALL]])
    f["mnist"] = d / "mnist-run" / "best.npz"
    train_chars.main([str(a) for a in ["--data", f["text"], "--out", d / "chars-run", *CHARS_SMALL]])
    f["chars"] = d / "chars-run" / "best.npz"
    arrays, meta = load_checkpoint(f["mnist"])
    f["truncated"] = d / "truncated.npz"
    f["truncated"].write_bytes(f["mnist"].read_bytes()[:-500])
    f["badconfig"] = d / "badconfig.npz"
    save_checkpoint(f["badconfig"], arrays, {**meta, "config": {**meta["config"], "width": 3}})
    f["badmodel"] = d / "badmodel.npz"
    save_checkpoint(f["badmodel"], arrays, {**meta, "model": "bogus"})
    f["badshape"] = d / "badshape.npz"
    save_checkpoint(f["badshape"], {**arrays, "model.W": arrays["model.W"][:3]}, meta)
    f["moved"] = d / "moved.npz"
    save_checkpoint(f["moved"], arrays, {**meta, "data": {**meta["data"], "dataset": str(d / "gone")}})
    f["file"] = d / "a-file"
    f["file"].write_text("not a folder")
    return f


def run(main, args, files, out):
    """Run a script's main in this process; returns (exit status, stdout, stderr lines)."""
    fill = {k: str(v) for k, v in files.items()} | {"out": str(out)}
    argv = [str(a).format(**fill) for a in args]
    try:
        main(argv)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    return status, argv


def check(capsys, status, want_status, words):
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == want_status, (status, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    for w in words:
        assert w.lower() in errors[0].lower(), (w, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------- train_mnist.py
MNIST_CASES = [
    # arguments outside their ranges: usage errors, before any work
    (["--epochs", 0], 2, ["--epochs", ">= 1"]),
    (["--epochs", -1], 2, ["--epochs"]),
    (["--epochs", "ten"], 2, ["--epochs"]),
    (["--batch-size", 0], 2, ["--batch-size"]),
    (["--batch-size", -5], 2, ["--batch-size"]),
    (["--batch-size", 100000], 2, ["--batch-size", "180 training images"]),
    (["--max-steps-per-epoch", -1], 2, ["--max-steps-per-epoch"]),
    (["--lr", -1], 2, ["--lr", "> 0"]),
    (["--lr", 0], 2, ["--lr"]),
    (["--lr", "nan"], 2, ["--lr"]),
    (["--lr", "inf"], 2, ["--lr"]),
    (["--clip", "nan"], 2, ["--clip"]),
    (["--clip", 0], 2, ["--clip"]),
    (["--threshold", 2], 2, ["--threshold", "[0, 1)"]),
    (["--threshold", "nan"], 2, ["--threshold"]),
    (["--threshold", -0.1], 2, ["--threshold"]),
    (["--threshold", 1], 2, ["--threshold"]),
    (["--hidden", 0, "--model", "nade"], 2, ["--hidden"]),
    (["--hidden-sizes", "a,b"], 2, ["--hidden-sizes"]),
    (["--hidden-sizes", "10,0"], 2, ["--hidden-sizes"]),
    (["--num-masks", 0], 2, ["--num-masks"]),
    (["--channels", 0], 2, ["--channels"]),
    (["--layers", 0], 2, ["--layers"]),
    (["--n-samples", 0], 2, ["--n-samples"]),
    (["--eval-batch-size", 0], 2, ["--eval-batch-size"]),
    (["--seed", -1], 2, ["--seed"]),
    (["--seed", 1.5], 2, ["--seed"]),
    (["--seed", 2**40], 2, ["--seed", "2^32"]),
    (["--out", ""], 2, ["--out", "empty"]),
    (["--dataset", ""], 2, ["--dataset"]),
    (["--model", "bogus"], 2, ["--model"]),
    (["--ordering", "bogus"], 2, ["--ordering"]),
    (["--binarization", "bogus"], 2, ["--binarization"]),
    (["--device", "tpu"], 2, ["--device"]),
    (["--no-such-flag"], 2, ["unrecognized"]),
    (["--binarization", "fixed"], 2, ["--binarization", "grey"]),
    (["--out", "{file}"], 2, ["--out", "is a file"]),
    (["--out", "{file}/sub"], 1, ["--out"]),
    (["--eval", "{mnist}", "--resume"], 2, ["--resume", "--eval"]),
    (["--perturb", 1], 2, ["--perturb", "[0, 1)"]),
    (["--perturb", -0.1], 2, ["--perturb"]),
    (["--perturb", "nan"], 2, ["--perturb"]),
    (["--classes", ""], 2, ["--classes"]),
    (["--classes", "a,b"], 2, ["--classes"]),
    (["--classes", "0,300"], 2, ["--classes", "0..255"]),
    (["--classes", "1"], 1, ["no class labels"]),
    (["--against", "noise"], 2, ["--against", "--score"]),
    (["--background", "{mnist}"], 2, ["--background", "--score"]),
    (["--fpr", 0.1], 2, ["--fpr", "--score"]),
    (["--conditional"], 1, ["no class labels", "--conditional"]),
    (["--conditional", "--dataset", "binarized-mnist"], 2, ["--conditional", "no class labels"]),
    (["--mask", "top"], 2, ["--mask", "--complete"]),
    (["--complete", "{mnist}", "--resume"], 2, ["--resume", "--complete"]),
    (["--complete", "{mnist}", "--conditional"], 2, ["--conditional", "--complete"]),
    (["--complete", "{mnist}", "--eval", "{mnist}"], 2, ["--complete", "--eval"]),
    (["--complete", "{mnist}", "--mask", "middle"], 2, ["--mask", "middle"]),
]

SCORE_CASES = [  # --score of a usable checkpoint, with bad companions
    (["--against", "bogus"], 2, ["--against", "bogus"]),
    (["--against", ","], 2, ["--against", "at least one"]),
    (["--against", "{file}"], 2, ["--against", "a-file"]),
    (["--against", "held-out-classes"], 2, ["held-out-classes", "--classes"]),
    (["--against", "{big}"], 1, ["10x10", "8x8"]),
    (["--against", "{zero}"], 1, ["zero"]),
    (["--background", "{chars}"], 1, ["train_chars.py"]),
    (["--background", "{nofile}"], 1, ["missing.npz"]),
    (["--background", "{junk}"], 1, ["junk.npz"]),
    (["--fpr", 1], 2, ["--fpr"]),
    (["--fpr", "nan"], 2, ["--fpr"]),
    (["--eval", "{mnist}"], 2, ["--score", "--eval"]),
    (["--sample", "{mnist}"], 2, ["--score", "--sample"]),
    (["--resume"], 2, ["--resume", "--score"]),
    (["--perturb", 0.1], 2, ["--perturb", "--score"]),
    (["--classes", "1"], 2, ["--classes", "--score"]),
    (["--out", "{file}"], 2, ["--out", "is a file"]),
    (["--dataset", "{big}"], 1, ["64 pixels", "10x10"]),
]

MNIST_DATA_CASES = [
    (["--dataset", "{dir}/nowhere"], 2, ["--dataset", "nowhere"]),
    (["--dataset", "{bin}", "--binarization", "threshold"], 2, ["--binarization", "binary"]),
    (["--dataset", "{bin}", "--binarization", "dynamic"], 2, ["--binarization", "binary"]),
    (["--dataset", "{one}"], 1, ["one"]),
    (["--dataset", "{zero}"], 1, ["zero", "0"]),
]

CHECKPOINT_CASES = [  # --eval and --sample of things that are not usable train_mnist checkpoints
    ("{nofile}", 1, ["no checkpoint", "missing.npz"]),
    ("{junk}", 1, ["junk.npz"]),
    ("{npy}", 1, ["array.npy"]),
    ("{pickled}", 1, ["pickled.npz"]),
    ("{plain}", 1, ["plain.npz", "not a nanoar checkpoint"]),
    ("{notrun}", 1, ["notrun.npz", "training run"]),
    ("{truncated}", 1, ["truncated.npz"]),
    ("{badconfig}", 1, ["badconfig.npz", "config"]),
    ("{badmodel}", 1, ["badmodel.npz", "bogus"]),
    ("{badshape}", 1, ["badshape.npz", "arrays"]),
    ("{moved}", 1, ["gone", "--dataset"]),
    ("{chars}", 1, ["train_chars.py", "transformer"]),
    ("{dir}", 1, ["hostile"]),
]


@pytest.mark.parametrize("args,status,words", MNIST_CASES + MNIST_DATA_CASES,
                         ids=[" ".join(map(str, a)) for a, _, _ in MNIST_CASES + MNIST_DATA_CASES])
def test_train_mnist_refuses(args, status, words, files, tmp_path, capsys):
    base = ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL]
    got, _ = run(train_mnist.main, base + args, files, tmp_path / "run")
    check(capsys, got, status, words)
    assert not (tmp_path / "run" / "last.npz").exists()  # refused before any work


@pytest.mark.parametrize("flag", ["--eval", "--sample", "--score", "--complete"])
@pytest.mark.parametrize("path,status,words", CHECKPOINT_CASES, ids=[p for p, _, _ in CHECKPOINT_CASES])
def test_train_mnist_refuses_unusable_checkpoints(flag, path, status, words, files, tmp_path, capsys):
    got, _ = run(train_mnist.main, [flag, path], files, tmp_path / "run")
    check(capsys, got, status, words)


@pytest.mark.parametrize("args,status,words", SCORE_CASES, ids=[" ".join(map(str, a)) for a, _, _ in SCORE_CASES])
def test_scoring_refuses_bad_companions_before_any_work(args, status, words, files, tmp_path, capsys):
    got, _ = run(train_mnist.main, ["--score", "{mnist}", "--quiet", *args], files, tmp_path / "run")
    check(capsys, got, status, words)
    assert not any(p.name.startswith("scores") for p in (files["dir"] / "mnist-run").iterdir())


def test_eval_on_other_data_and_a_mismatched_size(files, tmp_path, capsys):
    got, _ = run(train_mnist.main, ["--eval", "{moved}", "--dataset", "{idx}"], files, tmp_path)
    assert got == 0 and "test NLL of" in capsys.readouterr().out
    got, _ = run(train_mnist.main, ["--eval", "{mnist}", "--dataset", "{big}"], files, tmp_path)
    check(capsys, got, 1, ["64 pixels", "10x10"])


def test_binary_images_are_recognised_not_thresholded_to_black(files, tmp_path, capsys):
    got, _ = run(train_mnist.main, ["--dataset", "{bin}", "--out", "{out}", *MNIST_SMALL], files, tmp_path / "run")
    assert got == 0
    out = capsys.readouterr().out
    assert "binary" in out
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert 0 < log[-1]["test_nll"] < 64 * np.log(2)  # not the near-0 NLL of all-black images


# ---------------------------------------------------------------------------- run folders
def test_a_finished_run_is_not_replaced_without_force(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL]
    assert run(train_mnist.main, args, files, out)[0] == 0
    capsys.readouterr()
    before = (out / "best.npz").read_bytes()
    got, _ = run(train_mnist.main, args, files, out)
    check(capsys, got, 2, ["already holds a run", "--resume", "--force"])
    assert (out / "best.npz").read_bytes() == before
    got, _ = run(train_mnist.main, args + ["--force", "--seed", 3], files, out)
    assert got == 0
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r.get("event") for r in log] == [None, "test"]  # the new run's lines only


def test_a_resumed_run_keeps_its_model_and_data(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_mnist.main, ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL], files, out)[0] == 0
    capsys.readouterr()
    for flag in (["--model", "made"], ["--batch-size", 10], ["--dataset", "{bin}"]):
        got, _ = run(train_mnist.main, ["--out", "{out}", "--resume", *flag], files, out)
        check(capsys, got, 2, [flag[0], "resumed run"])
    got, _ = run(train_mnist.main, ["--out", "{out}", "--resume", "--quiet"], files, out)
    check(capsys, got, 2, ["--epochs", "already"])
    got, _ = run(train_mnist.main, ["--out", "{out}", "--resume", "--epochs", 2, "--quiet", "--n-samples", 2], files, out)
    assert got == 0, capsys.readouterr().err


def test_resuming_into_another_folder_finds_the_best_checkpoint_beside_the_resumed_one(files, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(train_mnist.main, ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL], files, first)[0] == 0
    args = ["--resume", str(first / "last.npz"), "--out", "{out}", "--epochs", 2, "--quiet", "--n-samples", 2]
    assert run(train_mnist.main, args, files, second)[0] == 0
    assert (second / "last.npz").exists() and "test NLL of" in capsys.readouterr().out


@pytest.mark.parametrize("main", [train_mnist.main, train_chars.main], ids=["mnist", "chars"])
def test_resuming_nothing_is_refused_before_making_anything(main, files, tmp_path, capsys):
    for args in (["--resume", "--out", "{out}"], ["--resume", "{out}/last.npz"]):
        got, _ = run(main, args, files, tmp_path / "none")
        check(capsys, got, 1, ["--resume", "no checkpoint"])
    assert not (tmp_path / "none").exists()


def test_a_second_run_on_a_folder_in_use_fails_at_once(files, tmp_path, capsys):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got, _ = run(train_mnist.main, ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL], files, out)
        check(capsys, got, 1, ["another run", str(out)])
        got, _ = run(train_chars.main, ["--data", "{text}", "--out", "{out}", *CHARS_SMALL], files, out)
        check(capsys, got, 1, ["another run"])
    assert not (out / "last.npz").exists()


def _script(args, **kw):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path, proc, timeout=60):
    """Wait until the process has written `path` (a stuck process fails the test, not hangs it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.05)


LONG_CHARS = ["--model", "lstm", "--dim", 8, "--hidden", 8, "--layers", 1, "--context", 8, "--batch-size", 2,
              "--max-iters", 100000, "--eval-interval", 5, "--length", 5, "--quiet"]


def test_sigterm_saves_and_exits_143_then_resume_continues(files, tmp_path):
    out = tmp_path / "run"
    proc = _script(["train_chars.py", "--data", files["text"], "--out", out, *LONG_CHARS])
    _wait_for(out / "last.npz", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    step = load_checkpoint(out / "last.npz")[1]["optim"]["step"]
    assert step >= 5
    r = subprocess.run([sys.executable, "train_chars.py", "--out", str(out), "--resume", "--max-iters", str(step + 3),
                        "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / "last.npz")[1]["optim"]["step"] == step + 3


def test_kill_9_mid_training_then_resume(files, tmp_path):
    """A killed run leaves its last checkpoint whole, its lock free and at worst a stray
    temporary file, which the next run removes."""
    out = tmp_path / "run"
    proc = _script(["train_chars.py", "--data", files["text"], "--out", out, *LONG_CHARS])
    _wait_for(out / "last.npz", proc)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=60)
    (out / ".last.npz.abc123.tmp").write_bytes(b"half a checkpoint")
    step = load_checkpoint(out / "last.npz")[1]["optim"]["step"]
    r = subprocess.run([sys.executable, "train_chars.py", "--out", str(out), "--resume", "--max-iters", str(step + 2),
                        "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not (out / ".last.npz.abc123.tmp").exists()


def test_a_bad_nanoar_device_is_a_usage_error(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOAR_DEVICE", "tpu")
    got, _ = run(train_mnist.main, ["--dataset", "{idx}", "--out", "{out}", *MNIST_SMALL], files, tmp_path / "run")
    check(capsys, got, 2, ["NANOAR_DEVICE", "tpu"])


def test_debug_shows_the_traceback(files, tmp_path):
    r = subprocess.run([sys.executable, "train_mnist.py", "--eval", str(files["junk"]), "--debug"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = subprocess.run([sys.executable, "train_mnist.py", "--eval", str(files["junk"])], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")


# ---------------------------------------------------------------------------- train_chars.py
CHARS_CASES = [
    (["--context", 1], 2, ["--context", ">= 2"]),
    (["--context", 0], 2, ["--context"]),
    (["--batch-size", 0], 2, ["--batch-size"]),
    (["--max-iters", 0], 2, ["--max-iters"]),
    (["--eval-interval", 0], 2, ["--eval-interval"]),
    (["--eval-windows", -1], 2, ["--eval-windows"]),
    (["--lr", -1], 2, ["--lr"]),
    (["--lr", "nan"], 2, ["--lr"]),
    (["--min-lr", 1], 2, ["--min-lr", "--lr"]),
    (["--warmup", -1], 2, ["--warmup"]),
    (["--weight-decay", -0.1], 2, ["--weight-decay"]),
    (["--clip", "nan"], 2, ["--clip"]),
    (["--temperature", "nan"], 2, ["--temperature"]),
    (["--temperature", 0], 2, ["--temperature"]),
    (["--temperature", -1], 2, ["--temperature"]),
    (["--temperature", "inf"], 2, ["--temperature"]),
    (["--top-k", -1], 2, ["--top-k"]),
    (["--top-k", 2.5], 2, ["--top-k"]),
    (["--length", 0], 2, ["--length"]),
    (["--dim", 0], 2, ["--dim"]),
    (["--heads", 3], 2, ["--heads", "--dim"]),
    (["--model", "wavenet", "--dilations", ""], 2, ["--dilations"]),
    (["--model", "wavenet", "--dilations", "0,1"], 2, ["--dilations"]),
    (["--model", "wavenet", "--stacks", 0], 2, ["--stacks"]),
    (["--prompt", "ZZZ"], 2, ["--prompt", "'Z'"]),
    (["--out", "{file}"], 2, ["--out"]),
    (["--sample", "{chars}", "--resume"], 2, ["--resume"]),
    (["--data", "{dir}/nope.txt"], 1, ["nope.txt"]),
    (["--data", ""], 2, ["--data"]),
    (["--data", "{empty}"], 1, ["empty.txt", "2 distinct"]),
    (["--data", "{onechar}"], 1, ["onechar.txt"]),
    (["--data", "{same}"], 1, ["same.txt", "2 distinct"]),
    (["--data", "{short}"], 1, ["short.txt", "--context"]),
    (["--data", "{latin1}"], 1, ["latin1.txt", "utf-8"]),
    (["--data", "{text}", "--model", "lstm", "--batch-size", 200], 2, ["--batch-size", "streams"]),
]


@pytest.mark.parametrize("args,status,words", CHARS_CASES, ids=[" ".join(map(str, a)) for a, _, _ in CHARS_CASES])
def test_train_chars_refuses(args, status, words, files, tmp_path, capsys):
    base = ["--data", "{text}", "--out", "{out}", *CHARS_SMALL]
    got, _ = run(train_chars.main, base + args, files, tmp_path / "run")
    check(capsys, got, status, words)
    assert not (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("path,words", [("{mnist}", ["train_mnist.py", "fvsbn"]), ("{nofile}", ["missing.npz"]),
                                        ("{junk}", ["junk.npz"]), ("{notrun}", ["training run"])])
def test_train_chars_refuses_unusable_checkpoints(path, words, files, tmp_path, capsys):
    got, _ = run(train_chars.main, ["--sample", path], files, tmp_path)
    check(capsys, got, 1, words)
    got, _ = run(train_chars.main, ["--sample", "{chars}", "--prompt", "QQ"], files, tmp_path)
    check(capsys, got, 2, ["--prompt", "'Q'"])


def test_a_text_without_a_newline_trains_and_samples(files, tmp_path, capsys):
    got, _ = run(train_chars.main, ["--data", "{nonewline}", "--out", "{out}", *CHARS_SMALL], files, tmp_path / "r")
    assert got == 0, capsys.readouterr().err
    assert "--- sample" in capsys.readouterr().out


def test_a_resumed_run_whose_text_moved_says_how_to_point_at_it(files, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    assert run(train_chars.main, ["--data", str(text), "--out", "{out}", *CHARS_SMALL], files, out)[0] == 0
    os.rename(text, tmp_path / "moved.txt")
    capsys.readouterr()
    got, _ = run(train_chars.main, ["--out", "{out}", "--resume", "--max-iters", 6], files, out)
    check(capsys, got, 1, ["mine.txt"])
    got, _ = run(train_chars.main, ["--out", "{out}", "--resume", "--max-iters", 6, "--data", str(tmp_path / "moved.txt"),
                                    "--quiet"], files, out)
    assert got == 0, capsys.readouterr().err
