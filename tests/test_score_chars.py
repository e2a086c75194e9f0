"""train_chars.py --score CHECKPOINT --text FILE: lines scored by bits per character and a
p-value among the validation text's lines; the padded batched scores are exact; clear
refusals."""
import json
import math
import os
import random
import sys

import numpy as np
import pytest

import nanoar
from nanoar import backend, datasets, no_grad, training
from nanoar.models import build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_chars  # noqa: E402

BASE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
TRAIN_TEXT = BASE * 120
MODEL = ["--model", "wavenet", "--dim", 16, "--residual-channels", 16, "--dilations", "1,2,4,8", "--stacks", 1]


@pytest.fixture(autouse=True)
def _cpu():
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")


def run(args):
    train_chars.main([str(a) for a in args])


def table_rows(printed):
    """The rows of the printed table of least likely lines (after its header)."""
    rows = printed.split("least likely lines:")[1].strip().splitlines()[1:]
    return [r for r in rows if not r.startswith("scores of every line")]


def fails(args, capsys, status=1):
    """Run the script expecting it to stop with `status`; returns its one-line error."""
    with pytest.raises(SystemExit) as e:
        run(args)
    assert e.value.code == status
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Traceback" not in out
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny WaveNet trained on a repetitive text (about a second): its checkpoint."""
    nanoar.set_device("cpu", seed=0)
    nanoar.set_default_dtype("float32")
    d = tmp_path_factory.mktemp("score")
    data = d / "train.txt"
    data.write_text(TRAIN_TEXT, encoding="utf-8")
    run(["--device", "cpu", *MODEL, "--data", data, "--context", 32, "--batch-size", 8, "--max-iters", 150,
         "--eval-interval", 150, "--warmup", 5, "--lr", 1e-2, "--min-lr", 1e-3, "--out", d / "run", "--length", 5,
         "--quiet"])
    return {"dir": d, "data": data, "ckpt": d / "run" / "best.npz"}


def garbage_lines(n, seed=1):
    """Lines of random letters of the training text's alphabet: in the vocabulary, but
    nothing like the training lines."""
    rng = random.Random(seed)
    letters = sorted({c for c in BASE if c.isalpha()})
    return [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 5))) for _ in range(4))
            for _ in range(n)]


# ----------------------------------------------------------------------------- end to end
def test_inserted_lines_are_the_least_likely(trained, tmp_path, capsys):
    lines = (BASE * 6).split("\n")
    inserted = {}
    for at, g in zip((5, 17, 29), garbage_lines(3)):
        lines.insert(at, g)
    for number, line in enumerate(lines, 1):
        if line in garbage_lines(3):
            inserted[number] = line
    text = tmp_path / "play.txt"
    text.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "scores"
    run(["--score", trained["ckpt"], "--text", text, "--show", 3, "--out", out, "--quiet"])
    printed = capsys.readouterr().out
    non_empty = [n for n, line in enumerate(lines, 1) if line]
    assert f"{len(non_empty)} of {len(non_empty)} non-empty lines scored" in printed
    assert "bits/char" in printed and "validation lines" in printed

    report = json.loads((out / "scores.json").read_text())
    assert str(out / "scores.json") in printed
    entries = report["lines"]
    assert [e["number"] for e in entries] == non_empty          # one entry per non-empty line
    assert all(0 < e["p_value"] <= 1 and e["bits_per_char"] > 0 for e in entries)
    worst = sorted(entries, key=lambda e: -e["bits_per_char"])[:3]
    assert {e["number"] for e in worst} == set(inserted)
    # the p-values rank the inserted lines below every validation line
    n_ref = report["reference"]["lines"]
    assert n_ref > 20
    assert all(e["p_value"] == pytest.approx(1 / (n_ref + 1)) for e in worst)
    assert report["bits_per_char"] > report["reference"]["bits_per_char"]
    # the table lists them first, most unlikely first
    table = table_rows(printed)
    assert len(table) == 3
    assert [int(row.split()[0]) for row in table] == [e["number"] for e in worst]
    for row, e in zip(table, worst):
        assert inserted[e["number"]] in row


def test_scores_go_next_to_the_checkpoint_by_default(trained, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("All:\nSpeak, speak.\n", encoding="utf-8")
    run(["--score", trained["ckpt"], "--text", text, "--show", 0, "--quiet"])
    printed = capsys.readouterr().out
    path = trained["ckpt"].parent / "scores.json"
    assert str(path) in printed and "least likely" not in printed
    assert [e["number"] for e in json.loads(path.read_text())["lines"]] == [1, 2]


def test_a_character_outside_the_vocabulary_makes_its_line_unscorable(trained, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("All:\nZounds! caf\u00e9\nSpeak, speak.\n\tWeird\x07 line\n", encoding="utf-8")
    run(["--score", trained["ckpt"], "--text", text, "--out", tmp_path, "--quiet"])
    printed = capsys.readouterr().out
    assert "2 of 4 non-empty lines scored (2 unscorable" in printed
    table = table_rows(printed)
    assert [int(row.split()[0]) for row in table[:2]] == [2, 4]     # listed first
    assert "'Z' not in the model's vocabulary" in table[0]
    assert "\\x07" in table[1] and "\x07" not in printed            # shown escaped
    entries = json.loads((tmp_path / "scores.json").read_text())["lines"]
    assert entries[1] == {"number": 2, "chars": 12, "unscorable": "character 'Z' not in the model's vocabulary"}
    assert "unscorable" in entries[3] and "p_value" in entries[0] and "p_value" in entries[2]


def test_the_training_text_can_be_given_again_when_it_moved(trained, tmp_path, capsys):
    moved = tmp_path / "moved.txt"
    moved.write_bytes(trained["data"].read_bytes())
    ckpt = tmp_path / "ckpt.npz"
    arrays, meta = nanoar.checkpoint.load_checkpoint(trained["ckpt"])
    nanoar.checkpoint.save_checkpoint(ckpt, arrays, {**meta, "data": {"path": str(tmp_path / "gone.txt")}})
    text = tmp_path / "t.txt"
    text.write_text("All:\n", encoding="utf-8")
    err = fails(["--score", ckpt, "--text", text, "--quiet"], capsys)
    assert "gone.txt" in err and "--data" in err
    run(["--score", ckpt, "--text", text, "--data", moved, "--quiet"])
    assert "1 of 1 non-empty lines scored" in capsys.readouterr().out


# ----------------------------------------------------------------------------- exactness
def _models(n_classes):
    return {
        "wavenet": build_model("wavenet", {"n_classes": n_classes, "input": "embedding", "embed_dim": 8,
                                           "residual_channels": 8, "dilation_channels": 16, "skip_channels": 8,
                                           "dilations": [1, 2, 4], "n_stacks": 1}),
        "lstm": build_model("lstm", {"n_classes": n_classes, "embed_dim": 8, "hidden_size": 12, "n_layers": 2}),
        "transformer": build_model("transformer", {"n_classes": n_classes, "context": 8, "n_layers": 2,
                                                   "n_heads": 2, "dim": 16}),
    }


LINES = ["a", "ab", "All:", "Speak, speak.", "Before we proceed any further, hear me speak.", "xy z",
         "First Citizen: and a line well past the transformer's context of eight", "q", "All:"]


def _direct(model, vocab, line):
    """log p(line | "\\n") from one unpadded sequence, the newline scored by nothing."""
    prefix = "\n" if "\n" in vocab.chars else ""
    ids = vocab.encode(prefix + line)[None, :]
    with no_grad():
        lp = backend.to_numpy(model.log_prob_per_variable(backend.to_device(ids)).data)
    return -float(lp[0, len(prefix):].sum())


@pytest.mark.parametrize("name", ["wavenet", "lstm", "transformer"])
@pytest.mark.parametrize("newline", [True, False], ids=["newline", "no-newline"])
def test_padded_batches_score_each_line_exactly(name, newline, float64):
    vocab = datasets.CharVocab.from_text("".join(LINES) + ("\n" if newline else "") + "Q")
    model = _models(len(vocab))[name]
    want = np.array([_direct(model, vocab, line) for line in LINES])
    assert np.all(want > 0)
    # several batch shapes: one line per batch, a few, and all at once
    for batch_size, max_chars in ((1, 10 ** 6), (3, 10 ** 6), (64, 10 ** 6), (64, 40), (64, 4096)):
        nll, reasons = train_chars.score_lines(model, vocab, LINES, batch_size=batch_size, max_chars=max_chars)
        assert reasons == [None] * len(LINES)
        np.testing.assert_allclose(nll, want, rtol=1e-10, atol=1e-12, err_msg=f"{batch_size}, {max_chars}")
    # a line outside the vocabulary is reported, not scored, and changes no other line
    lines = LINES[:3] + ["caf\u00e9"] + LINES[3:]
    nll, reasons = train_chars.score_lines(model, vocab, lines)
    assert reasons[3] == "character '\u00e9' not in the model's vocabulary" and np.isnan(nll[3])
    np.testing.assert_allclose(np.delete(nll, 3), want, rtol=1e-10, atol=1e-12)


def test_bits_per_char(float64):
    nll = np.array([math.log(2) * 4, math.log(2) * 3])
    np.testing.assert_allclose(train_chars.bits_per_char(nll, ["abcd", "abc"]), [1.0, 1.0])


# ----------------------------------------------------------------------------- refusals
USAGE_CASES = [
    (["--text", "x.txt"], ["--text", "--score"]),
    (["--show", 3], ["--show", "--score"]),
    (["--score", "c.npz"], ["--score", "--text"]),
    (["--score", "c.npz", "--text", "x.txt", "--sample", "c.npz"], ["--sample", "--score"]),
    (["--score", "c.npz", "--text", "x.txt", "--resume"], ["--resume", "--score"]),
    (["--score", "c.npz", "--text", "x.txt", "--show", -1], ["--show"]),
    (["--score", "c.npz", "--text", ""], ["--text"]),
]


@pytest.mark.parametrize("args,words", USAGE_CASES, ids=[" ".join(map(str, a)) for a, _ in USAGE_CASES])
def test_usage_errors(args, words, capsys):
    err = fails(args, capsys, status=2)
    for w in words:
        assert w in err, (w, err)


def test_unusable_texts_are_refused_before_any_scoring(trained, tmp_path, capsys):
    ckpt = trained["ckpt"]
    err = fails(["--score", ckpt, "--text", tmp_path / "nope.txt"], capsys)
    assert "nope.txt" in err and "no such file" in err
    (tmp_path / "blank.txt").write_text("\n\n\n", encoding="utf-8")
    err = fails(["--score", ckpt, "--text", tmp_path / "blank.txt"], capsys)
    assert "blank.txt" in err and "no non-empty line" in err
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert "no non-empty line" in fails(["--score", ckpt, "--text", tmp_path / "empty.txt"], capsys)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    err = fails(["--score", ckpt, "--text", tmp_path / "latin1.txt"], capsys)
    assert "latin1.txt" in err and "UTF-8" in err
    err = fails(["--score", ckpt, "--text", tmp_path], capsys)
    assert "folder" in err
    (tmp_path / "ok.txt").write_text("All:\n", encoding="utf-8")
    (tmp_path / "a-file").write_text("x")
    err = fails(["--score", ckpt, "--text", tmp_path / "ok.txt", "--out", tmp_path / "a-file"], capsys, status=2)
    assert "--out" in err and "a-file" in err
    assert not (tmp_path / "scores.json").exists()


def test_unusable_checkpoints_are_refused(tmp_path, capsys):
    text = tmp_path / "ok.txt"
    text.write_text("All:\n", encoding="utf-8")
    err = fails(["--score", tmp_path / "missing.npz", "--text", text], capsys)
    assert "no checkpoint" in err and "missing.npz" in err
    mnist = tmp_path / "mnist.npz"   # a train_mnist.py checkpoint (an FVSBN over 16 pixels)
    training.save_run(mnist, build_model("fvsbn", {"d": 16}), script="train_mnist", data={"dataset": None})
    err = fails(["--score", mnist, "--text", text], capsys)
    assert "train_mnist.py" in err and "mnist.npz" in err
    assert not (tmp_path / "scores.json").exists()
