"""Tests for nanoar.datasets.text: tiny Shakespeare, CharVocab, split_text, get_windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets_fixtures import clear_proxies, dead_url, no_pooch, server, sha  # noqa: F401 (fixtures)
from nanoar import datasets
from nanoar.datasets import DataError
from nanoar.datasets import text as text_module


def test_load_text_downloads_and_caches(server, tmp_path, monkeypatch, dead_url):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    body = text.encode()
    url = server.add("/shakespeare.txt", body)
    monkeypatch.setattr(text_module, "TINY_SHAKESPEARE_SHA256", sha(body))
    monkeypatch.chdir(tmp_path)  # no stray local copies
    assert datasets.load_text(data_dir=str(tmp_path / "cache"), mirrors=[url]) == text
    assert (tmp_path / "cache" / "tinyshakespeare" / "input.txt").read_bytes() == body
    assert datasets.load_text(data_dir=str(tmp_path / "cache"), mirrors=[dead_url]) == text


def test_load_text_prefers_verified_local_copy(tmp_path, monkeypatch, dead_url):
    body = "local copy\n".encode()
    monkeypatch.setattr(text_module, "TINY_SHAKESPEARE_SHA256", sha(body))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.txt").write_bytes(body)
    assert datasets.load_text(data_dir=str(tmp_path / "c"), mirrors=[dead_url]) == "local copy\n"
    # A local file that is something else is ignored (then download fails here).
    (tmp_path / "input.txt").write_text("something else")
    with pytest.raises(DataError, match="put it at exactly"):
        datasets.load_text(data_dir=str(tmp_path / "c"), mirrors=[dead_url])


def test_load_text_explicit_path(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo\n", encoding="utf-8")
    assert datasets.load_text(str(p)) == "héllo\n"
    with pytest.raises(DataError, match="not found"):
        datasets.load_text(str(tmp_path / "missing.txt"))


def test_local_text_needs_no_pooch(tmp_path, monkeypatch, no_pooch):
    p = tmp_path / "t.txt"
    p.write_text("any text\n")
    assert datasets.load_text(str(p)) == "any text\n"
    body = b"tiny Shakespeare stand-in\n"
    monkeypatch.setattr(text_module, "TINY_SHAKESPEARE_SHA256", sha(body))
    monkeypatch.chdir(tmp_path)
    # Put into the cache by hand.
    cached = tmp_path / "c" / "tinyshakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    assert datasets.load_text(data_dir=str(tmp_path / "c")) == body.decode()
    # A verified copy in the working directory.
    (tmp_path / "tinyshakespeare.txt").write_bytes(body)
    assert datasets.load_text(data_dir=str(tmp_path / "elsewhere")) == body.decode()
    # Nothing local: the error says what to install.
    (tmp_path / "tinyshakespeare.txt").unlink()
    with pytest.raises(DataError, match="pip install pooch"):
        datasets.load_text(data_dir=str(tmp_path / "elsewhere"))


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_char_vocab_round_trip(text):
    v = datasets.CharVocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < len(v)
    assert v.decode(ids) == text
    assert v.chars == sorted(set(text))
    assert datasets.CharVocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_char_vocab_ids_are_sorted_order():
    v = datasets.CharVocab.from_text("hello world")
    assert "".join(v.chars) == " dehlorw"
    assert v.encode("dew").tolist() == [1, 2, 7]
    assert v.decode([0, 3]) == " h"
    assert v.decode(np.array([], np.int64)) == ""


def test_char_vocab_unknown_chars_are_listed():
    v = datasets.CharVocab.from_text("abc")
    with pytest.raises(ValueError) as e:
        v.encode("abzxyzq")
    msg = str(e.value)
    assert "4 character(s)" in msg
    for c in "qxyz":
        assert repr(c) in msg


def test_char_vocab_decode_out_of_range():
    v = datasets.CharVocab.from_text("ab")
    with pytest.raises(ValueError, match="ids must be in"):
        v.decode([0, 2])


def test_split_text():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    tr, va = datasets.split_text(text)
    assert len(tr) == 900 and len(va) == 100 and tr + va == text


def test_get_windows_shapes_and_shift():
    ids = np.arange(1000, dtype=np.int64)
    w = datasets.get_windows(ids, 8, 16, np.random.default_rng(0))
    assert w.shape == (8, 17) and w.dtype == np.int64
    x, y = w[:, :-1], w[:, 1:]  # inputs and next-token targets
    assert np.array_equal(y, x + 1)
    assert np.array_equal(x - x[:, :1], np.broadcast_to(np.arange(16), (8, 16)))  # contiguous windows
    assert np.array_equal(w, datasets.get_windows(ids, 8, 16, np.random.default_rng(0)))  # reproducible from the rng


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 200), context=st.integers(1, 50), batch=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_get_windows_property(n, context, batch, seed):
    ids = np.random.default_rng(seed).integers(0, 65, n)
    if n < context + 1:
        with pytest.raises(ValueError):
            datasets.get_windows(ids, batch, context, np.random.default_rng(seed))
        return
    w = datasets.get_windows(ids, batch, context, np.random.default_rng(seed))
    assert w.shape == (batch, context + 1) and w.dtype == np.int64
    # every window is a real slice of the text
    for row in w:
        starts = [s for s in range(n - context) if np.array_equal(ids[s : s + context + 1], row)]
        assert starts


def test_get_windows_covers_last_window():
    ids = np.arange(11)
    w = datasets.get_windows(ids, 200, 10, np.random.default_rng(0))
    assert np.all(w == np.arange(11))  # only one possible window, it is used
