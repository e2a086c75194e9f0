"""Tests for nanoar.checkpoint."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoar import checkpoint as ckpt
from nanoar.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from conftest import cupy_standin


def _arrays():
    return {
        "embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "blocks/0/bias": np.array([1, -2], dtype=np.int64),
        "mask": np.array([True, False]),
        "half": np.array([0.5, np.nan, np.inf], dtype=np.float16),
        "scalar": np.array(3.25),
        "empty": np.zeros((0, 5), np.float64),
        "file": np.ones(1),  # names that are also np.savez's keyword arguments
        "allow_pickle": np.zeros(1),
    }


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_round_trip(tmp_path):
    path = tmp_path / "model.ckpt"  # any name; nothing is appended
    meta = {"step": 1200, "config": {"d_model": 64, "layers": [1, 2]}, "vocab": "abc", "loss": 1.5, "note": "héllo"}
    save_checkpoint(path, _arrays(), meta)
    assert os.listdir(tmp_path) == ["model.ckpt"]
    arrays, meta2 = load_checkpoint(path)
    assert meta2 == meta
    assert set(arrays) == set(_arrays())
    for k, v in _arrays().items():
        assert _same(arrays[k], v), k


def test_is_a_plain_npz_without_pickle(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"a": 1})
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"w", ckpt.META_KEY}
        assert z[ckpt.META_KEY].dtype == np.uint8
        assert json.loads(z[ckpt.META_KEY].tobytes())["meta"] == {"a": 1}


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _arrays(), {"x": [1, 2]})

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    arrays, meta = load_checkpoint(path)
    assert meta == {"x": [1, 2]}


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789_.", min_size=1, max_size=8),
        hnp.arrays(
            st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes()),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        max_size=5,
    ),
    meta=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
        max_leaves=10,
    ),
)
def test_round_trip_property(tmp_path_factory, arrays, meta):
    path = tmp_path_factory.mktemp("ck") / "c.npz"
    save_checkpoint(path, arrays, {"m": meta})
    back, meta2 = load_checkpoint(path)
    assert meta2 == {"m": meta}
    assert set(back) == set(arrays)
    for k in arrays:
        assert _same(back[k], arrays[k])


def test_overwrite_replaces_previous(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(2)}, {"step": 1})
    save_checkpoint(path, {"w": np.ones(2)}, {"step": 2})
    arrays, meta = load_checkpoint(path)
    assert meta["step"] == 2 and arrays["w"].tolist() == [1.0, 1.0]
    assert os.listdir(tmp_path) == ["c.npz"]


def test_crash_mid_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(1000)}, {"step": 1})
    before = path.read_bytes()
    real_write = np.lib.format.write_array
    calls = []

    def failing_write(fp, array, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # after the first array is already in the file
            raise OSError(28, "No space left on device")
        return real_write(fp, array, *a, **k)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"w": np.ones(1000), "v": np.ones(5)}, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1] == {"step": 1}
    assert os.listdir(tmp_path) == ["c.npz"]  # temporary file cleaned up


def test_crash_before_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"step": 1})

    def no_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.ones(3)}, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"step": 1}
    assert os.listdir(tmp_path) == ["c.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_checkpoint(tmp_path / "nope.npz")
    assert "nope.npz" in str(e.value)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"garbage" * 100,  # not a zip at all
        lambda b: b"",  # empty
    ],
)
def test_corrupt_file(tmp_path, corrupt):
    path = tmp_path / "bad.npz"
    save_checkpoint(path, {"w": np.arange(1000.0)}, {"step": 1})
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "bad.npz"
    save_checkpoint(path, {"w": np.zeros(10000)}, {"step": 1})
    raw = bytearray(path.read_bytes())
    raw[40000] ^= 0xFF  # inside the array data: caught by the zip CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_plain_npz_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, w=np.ones(2))
    with pytest.raises(CheckpointError, match="not a nanoar checkpoint"):
        load_checkpoint(path)
    np.save(tmp_path / "one.npy", np.ones(2))
    with pytest.raises(CheckpointError, match="single .npy"):
        load_checkpoint(tmp_path / "one.npy")


def test_non_numpy_arrays_rejected(tmp_path):
    path = tmp_path / "c.npz"
    with cupy_standin() as cupy, pytest.raises(TypeError, match="cupy.asnumpy"):
        save_checkpoint(path, {"w": cupy.zeros(2)}, {})
    with pytest.raises(TypeError, match="'w' is builtins.list"):
        save_checkpoint(path, {"w": [1.0, 2.0]}, {})
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, {"w": np.array([{}, 1], dtype=object)}, {})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, {"w": np.ones(1)}, {"bad": np.ones(1)})
    with pytest.raises(ValueError):
        save_checkpoint(path, {ckpt.META_KEY: np.ones(1)}, {})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
def test_rng_state_round_trip_through_checkpoint(tmp_path, name):
    rng = np.random.Generator(getattr(np.random, name)(1234))
    rng.random(7)
    path = tmp_path / "c.npz"
    save_checkpoint(path, {}, {"rng": ckpt.rng_state(rng)})
    _, meta = load_checkpoint(path)
    resumed = ckpt.rng_from_state(meta["rng"])
    assert np.array_equal(rng.random(20), resumed.random(20))
    assert np.array_equal(rng.integers(0, 10**9, 5), resumed.integers(0, 10**9, 5))


def test_rng_from_state_rejects_unknown():
    with pytest.raises(ValueError, match="bit generator"):
        ckpt.rng_from_state({"bit_generator": "os.system"})
