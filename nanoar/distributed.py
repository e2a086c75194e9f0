"""Data-parallel training over MPI: mpi4py on CPUs, NCCL (through CuPy) between GPUs.

    mpiexec -n 4 python train_mnist.py --model pixelcnn --batch-size 32     # 4 x 32 per step

Every process (rank) builds the same model from the same seed, and `broadcast_parameters`
makes them start equal anyway. Each step every rank draws the same global batch of P x B
examples and keeps its own B rows (`shard`), runs forward and backward on them, and
`all_reduce_mean` averages the gradients, with the loss riding along, in one collective
call. All ranks then take the same update, so P processes with batch B follow one process
with batch P x B, up to floating-point rounding. Evaluation is sharded too (`shard_range`,
`all_gather_rows`, `all_reduce_sum`): each rank scores its part and every rank gets the
whole result. Only rank 0 prints (`init` sends the others' standard output to /dev/null)
and writes files.

Launched without MPI (no mpiexec in the environment), everything is world size 1 and
nothing of MPI is imported. A rank that fails aborts the whole job (`abort`); a collective
that gets no answer for `NANOAR_COLLECTIVE_TIMEOUT` seconds (default 600) stops its rank
with a message, so a hung peer never hangs the others forever.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from . import backend

__all__ = ["DistributedError", "init", "rank", "world_size", "is_main", "broadcast_parameters",
           "all_reduce_mean", "all_reduce_sum", "barrier", "shard", "shard_range", "all_gather_rows", "all_gather_object",
           "abort", "launched_size"]

# (MPI module, COMM_WORLD, NCCL communicator or None) once `init` found a launch of P > 1
_world = None
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class DistributedError(RuntimeError):
    """A data-parallel launch that cannot work (no mpi4py, too few GPUs, a silent peer)."""


def launched_size() -> int:
    """The number of processes mpiexec started, read from the environment it sets (Open MPI,
    MPICH and Intel MPI's Hydra, PMIx); 1 when the process was not launched by MPI."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def init(device: str | None = None) -> None:
    """Join the process group when launched under MPI with more than one process; with
    device 'cuda', each rank takes its own GPU (the node-local rank's). Call it once, before
    any array is made on a GPU. Silences standard output on every rank but 0."""
    global _world
    size = launched_size()
    if size <= 1 or _world is not None:
        return
    try:
        from mpi4py import MPI  # noqa: PLC0415
    except ImportError:
        raise DistributedError(f"launched by mpiexec as {size} processes, but mpi4py is not installed: "
                               "pip install -e '.[mpi]' (it needs an MPI library, such as Debian's openmpi-bin "
                               "and libopenmpi-dev)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        raise DistributedError(f"mpiexec started {size} processes but mpi4py sees {comm.Get_size()}: mpi4py was "
                               "built against another MPI than the mpiexec that launched it")
    _world = (MPI, comm, None)   # set first: an error from here on stops the whole job
    if (device or os.environ.get("NANOAR_DEVICE", "cpu")) == "cuda":
        _use_local_gpu(comm, MPI)
    if comm.Get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (held for the process's life)


def _use_local_gpu(comm, MPI) -> None:
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        import cupy  # noqa: PLC0415
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:   # no CuPy or no driver: backend.configure says which, in one line
        return
    if local.Get_size() > count:
        raise DistributedError(f"{local.Get_size()} processes on this node share {count} GPU(s); start at most "
                               f"{count} per node (mpiexec -n {count} ..., or --npernode)")
    cupy.cuda.Device(local.Get_rank()).use()


def rank() -> int:
    return 0 if _world is None else _world[1].Get_rank()


def world_size() -> int:
    return 1 if _world is None else _world[1].Get_size()


def is_main() -> bool:
    """True on rank 0, the one process that prints and writes files (and when not distributed)."""
    return rank() == 0


def abort(status: int = 1) -> None:
    """Stop every rank of the job at once (MPI_Abort): the error path of a distributed run,
    so that the ranks still waiting in a collective do not wait for the one that failed."""
    if _world is not None:
        sys.stderr.flush()
        _world[1].Abort(status)


# ----------------------------------------------------------------------------- collectives
def _timeout() -> float:
    return float(os.environ.get("NANOAR_COLLECTIVE_TIMEOUT", "600"))


def _wait(request, what: str) -> None:
    """Wait for a non-blocking MPI call, giving up after the collective timeout."""
    deadline = time.monotonic() + _timeout()
    while not request.Test():
        if time.monotonic() > deadline:
            print(f"error (rank {rank()}): no answer from the other processes for {_timeout():.0f} s in {what}: "
                  "one of them died or hangs; stopping the job", file=sys.stderr, flush=True)
            abort(1)
        time.sleep(1e-4)


def _nccl():
    """The NCCL communicator of the job, made on first use: rank 0 draws its id and MPI
    broadcasts it (NCCL's own handshake)."""
    global _world
    MPI, comm, nccl_comm = _world
    if nccl_comm is None:
        from cupy.cuda import nccl  # noqa: PLC0415
        uid = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        nccl_comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())
        _world = (MPI, comm, nccl_comm)
    return nccl_comm


def _nccl_type(dtype):
    from cupy.cuda import nccl  # noqa: PLC0415
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(dtype)]


def _all_reduce_sum_inplace(buf, what: str) -> None:
    """buf <- the sum of every rank's buf, in place: NCCL on the GPU (no host copy), MPI else."""
    if backend.is_device_array(buf):
        import cupy  # noqa: PLC0415
        from cupy.cuda import nccl  # noqa: PLC0415
        _nccl().allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_type(buf.dtype), nccl.NCCL_SUM,
                          cupy.cuda.get_current_stream().ptr)
        return
    MPI, comm, _ = _world
    _wait(comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)


def broadcast_parameters(optimizer) -> None:
    """Every rank's parameters (the optimiser's flat buffer, of which they are views) become
    rank 0's: one broadcast."""
    if _world is None:
        return
    flat = optimizer.flat_parameters()
    if backend.is_device_array(flat):
        import cupy  # noqa: PLC0415
        _nccl().bcast(flat.data.ptr, flat.size, _nccl_type(flat.dtype), 0, cupy.cuda.get_current_stream().ptr)
        return
    _wait(_world[1].Ibcast(flat, root=0), "broadcast_parameters")


def all_reduce_mean(optimizer, *scalars: float) -> tuple:
    """Average every gradient over the ranks, in one collective call on the optimiser's flat
    gradient buffer, with `scalars` (the step's loss, a stop flag, ...) carried in its spare
    slots; returns the scalars averaged over the ranks. Each rank's gradient must be the mean
    over the same number of examples (`shard` gives every rank B rows)."""
    buf = optimizer.pack_grads(len(scalars))
    if _world is None:
        return scalars
    tail = buf.size - len(scalars)
    if scalars:
        buf[tail:] = backend.xp().asarray(scalars, dtype=buf.dtype) if backend.is_device_array(buf) else scalars
    _all_reduce_sum_inplace(buf, "all_reduce_mean")
    buf *= 1.0 / world_size()
    return tuple(float(v) for v in (backend.to_numpy(buf[tail:]) if scalars else ()))


def barrier() -> None:
    """Wait until every rank got here."""
    if _world is not None:
        _wait(_world[1].Ibarrier(), "barrier")


def all_reduce_sum(values) -> np.ndarray:
    """The sum over the ranks of a few host numbers (float64), e.g. a sharded evaluation's totals."""
    out = np.array(values, dtype=np.float64)
    if _world is not None:
        MPI, comm, _ = _world
        _wait(comm.Iallreduce(MPI.IN_PLACE, out, op=MPI.SUM), "all_reduce_sum")
    return out


# ----------------------------------------------------------------------------- sharding
def shard(batch):
    """This rank's rows of a global batch: rows [r B, (r + 1) B) of its P B rows, for an
    array or a tuple of arrays (images and labels). Disjoint across ranks, and together the
    whole batch, in order."""
    if isinstance(batch, tuple):
        return tuple(shard(b) for b in batch)
    p = world_size()
    if p == 1:
        return batch
    b, rest = divmod(len(batch), p)
    if rest:
        raise ValueError(f"a global batch of {len(batch)} rows does not split over {p} processes")
    r = rank()
    return batch[r * b:(r + 1) * b]


def shard_range(n: int) -> tuple[int, int]:
    """This rank's part [lo, hi) of n items for a sharded evaluation: contiguous, sizes
    differing by at most one, in rank order (np.array_split's boundaries)."""
    p, r = world_size(), rank()
    return r * n // p, (r + 1) * n // p


def all_gather_rows(part: np.ndarray, n: int) -> np.ndarray:
    """Every rank's `shard_range(n)` part of a host array (float64 rows along axis 0),
    joined in rank order: the whole (n, ...) array, on every rank."""
    part = np.ascontiguousarray(part, dtype=np.float64)
    if _world is None:
        return part
    MPI, comm, _ = _world
    p, row = world_size(), int(np.prod(part.shape[1:], dtype=np.int64))
    counts = np.array([((r + 1) * n // p - r * n // p) * row for r in range(p)])
    out = np.empty((n, *part.shape[1:]), np.float64)
    _wait(comm.Iallgatherv(part, [out, counts, np.concatenate([[0], np.cumsum(counts)[:-1]]), MPI.DOUBLE]),
          "all_gather_rows")
    return out


def all_gather_object(obj) -> list:
    """Every rank's `obj` (small, picklable: a carried state to checkpoint), in rank order."""
    if _world is None:
        return [obj]
    return _world[1].allgather(obj)
