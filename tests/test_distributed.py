"""Data-parallel training (`nanoar.distributed`): two MPI ranks with batch B against one
process with batch 2B, sharded evaluation, cross-resume, failures, and the sharding rules.

The tests that launch `mpiexec -n 2` need an MPI (Debian: openmpi-bin, libopenmpi-dev) and
mpi4py (`pip install -e '.[mpi]'`); without them they skip and say so."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoar import datasets, distributed, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "mpi_driver.py")


def _mpi_missing() -> str:
    if shutil.which("mpiexec") is None:
        return "no mpiexec: install an MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401, PLC0415  (not mpi4py.MPI: that would start MPI in pytest's process)
    except ImportError:
        return "mpi4py is not installed: pip install -e '.[mpi]'"
    r = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True, text=True)
    if r.returncode:
        return f"mpi4py cannot load an MPI library ({(r.stderr.strip().splitlines() or ['?'])[-1]})"
    return ""


needs_mpi = pytest.mark.skipif(bool(_mpi_missing()), reason=_mpi_missing() or "MPI is there")


def mpiexec(n, *args, env=None, timeout=240):
    """Run `python ARGS` as n MPI processes (Open MPI may run as root and oversubscribe here)."""
    version = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True).stdout
    flags = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
               **(env or {}))
    return subprocess.run(["mpiexec", *flags, "-n", str(n), sys.executable, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def alone(*args, env=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]), **(env or {}))
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)


# ----------------------------------------------------------------------------- two ranks
@needs_mpi
@pytest.mark.parametrize("name", ["made", "pixelcnn", "transformer", "lstm"])
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b_in_float64(name, tmp_path):
    """After 6 steps (float64, the scripts' loop: broadcast, sharded batches, one all-reduce
    a step) the parameters equal a single process's with the global batch, to rounding; so
    does the sharded evaluation NLL of each held-out example."""
    r2 = mpiexec(2, DRIVER, name, "8", "6", str(tmp_path / "p2"))
    assert r2.returncode == 0, r2.stderr
    r1 = alone(DRIVER, name, "8", "6", str(tmp_path / "p1"))
    assert r1.returncode == 0, r1.stderr
    a, b = np.load(tmp_path / "p1" / "result.npz"), np.load(tmp_path / "p2" / "result.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)
    moved = np.load(tmp_path / "p1" / "result.npz")  # the steps did something
    assert any(np.abs(moved[k]).sum() > 0 for k in moved.files if k.startswith("p"))


@needs_mpi
def test_a_rank_that_dies_stops_the_job(tmp_path):
    t = time.monotonic()
    r = mpiexec(2, DRIVER, "made", "8", "6", str(tmp_path / "die"), "die-at-step", "2")
    assert r.returncode != 0
    assert time.monotonic() - t < 120
    assert "exit" in (r.stderr + r.stdout).lower()


@needs_mpi
def test_a_rank_that_hangs_stops_the_others_after_the_timeout(tmp_path):
    r = mpiexec(2, DRIVER, "made", "8", "6", str(tmp_path / "hang"), "hang-at-step", "2",
                env={"NANOAR_COLLECTIVE_TIMEOUT": "3"}, timeout=120)
    assert r.returncode != 0
    assert "no answer from the other processes for 3 s" in r.stderr


# ----------------------------------------------------------------------------- the scripts
def _images(tmp_path):
    folder = tmp_path / "idx"
    if not folder.exists():
        rng = np.random.default_rng(0)
        for split, n in (("train", 96), ("t10k", 40)):
            x = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
            x[:, 2:6] = 255
            datasets.write_idx(folder / f"{split}-images-idx3-ubyte", x)
    return str(folder)


def _train(tmp_path, n, out, epochs, batch, extra=()):
    """A new run of batch `batch` per process, or (batch None) a resumed one."""
    args = ["train_mnist.py", "--epochs", str(epochs), "--out", str(tmp_path / out), "--quiet", "--n-samples", "4",
            *extra]
    if batch is not None:
        args += ["--model", "made", "--hidden-sizes", "16", "--dataset", _images(tmp_path), "--batch-size", str(batch)]
    return mpiexec(n, *args) if n > 1 else alone(*args)


def _weights(path):
    z = np.load(path)
    return {k: z[k] for k in z.files if k.startswith(("model.", "optim."))}


@needs_mpi
def test_train_mnist_two_ranks_checkpoints_resume_in_one_process_and_back(tmp_path):
    """2 ranks x 8 for one epoch, then one process resumes (its batch: the global 16); and
    one process of 16, resumed by 2 ranks: both end where an uninterrupted single run of
    batch 16 ends, to float32 rounding, with the same test NLL. Rank 0 alone writes."""
    ref = _train(tmp_path, 1, "ref", 2, 16)
    assert ref.returncode == 0, ref.stderr
    first = _train(tmp_path, 2, "a", 1, 8)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("baselines on") == 1          # only rank 0 prints
    assert "batch 2 x 8 = 16" in first.stdout
    resumed = _train(tmp_path, 1, "a", 2, None, ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    second = _train(tmp_path, 1, "b", 1, 16)
    assert second.returncode == 0, second.stderr
    back = _train(tmp_path, 2, "b", 2, None, ["--resume"])
    assert back.returncode == 0, back.stderr
    want = _weights(tmp_path / "ref" / "last.npz")
    for run in ("a", "b"):
        got = _weights(tmp_path / run / "last.npz")
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-5, err_msg=f"{run}: {k}")
    nll = [line for line in ref.stdout.splitlines() if line.startswith("test NLL")]
    assert nll and nll[0].split(":")[1] == [line for line in back.stdout.splitlines()
                                            if line.startswith("test NLL")][0].split(":")[1]
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.listdir(tmp_path / "ref"))


@needs_mpi
def test_under_mpiexec_the_one_process_commands_are_refused_in_one_line(tmp_path):
    r = _train(tmp_path, 1, "one", 1, 16)
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "one" / "best.npz")
    for flag in ("--eval", "--sample"):
        r = mpiexec(2, "train_mnist.py", flag, ckpt)
        assert r.returncode != 0
        assert f"error: argument {flag}: runs in one process; launch it without mpiexec" in r.stderr
        assert "Traceback" not in r.stderr
    r = _train(tmp_path, 3, "one", 2, None, ["--resume"])
    assert r.returncode != 0 and "does not split over 3 processes" in r.stderr


# ----------------------------------------------------------------------------- in one process
def _world(monkeypatch, rank, size):
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: size)


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 6), b=st.integers(1, 5), n=st.integers(0, 40))
def test_shards_are_disjoint_and_cover_the_batch_and_the_evaluation(p, b, n):
    batch = np.arange(p * b)
    with pytest.MonkeyPatch.context() as m:
        parts, ranges = [], []
        for r in range(p):
            _world(m, r, p)
            parts.append(distributed.shard(batch))
            ranges.append(distributed.shard_range(n))
    assert all(len(part) == b for part in parts)
    assert np.array_equal(np.concatenate(parts), batch)            # disjoint, in order, all of it
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(ranges[r][1] == ranges[r + 1][0] for r in range(p - 1))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_a_batch_that_does_not_split_is_refused(monkeypatch):
    _world(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        distributed.shard(np.arange(8))


def test_without_mpi_everything_is_one_process_and_mpi4py_is_not_imported(monkeypatch):
    for name in distributed._SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "mpi4py", raising=False)
    distributed.init()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert "mpi4py" not in sys.modules
    assert distributed.all_reduce_sum([1.5, 2.0]).tolist() == [1.5, 2.0]
    assert distributed.shard(np.arange(4)).tolist() == [0, 1, 2, 3]


def test_a_launch_without_mpi4py_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import fails
    with pytest.raises(distributed.DistributedError, match=r"mpi4py is not installed: pip install -e '\.\[mpi\]'"):
        distributed.init()


def test_a_resumed_run_keeps_its_global_batch(monkeypatch):
    class Args:
        batch_size = 8
    _world(monkeypatch, 0, 4)
    args = Args()
    training.resume_batch_size(args, {"world_size": 2})
    assert args.batch_size == 4
    args.batch_size = 8
    _world(monkeypatch, 0, 3)
    with pytest.raises(training.UsageError, match="global batch of 16 examples does not split over 3"):
        training.resume_batch_size(args, {"world_size": 2})
