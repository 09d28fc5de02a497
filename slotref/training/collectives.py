"""Collectives of data-parallel training: N ranks that together train as one process (docs/scale.md).

Rank r trains on ``local_slice(B, r, N)`` of every global batch B, drawn as one
process draws it; ``GradientSync`` sums the ranks' shares of the global mean
loss and its gradient with one allreduce per dtype of the gradient's flat
buffer (``slotref.flat.FlatLayout``, the parameters' layout) per step, so
every rank applies the same flat Adam update to the same parameters.
``World`` is one process (every collective the identity), ``MPIWorld`` the
ranks of ``MPI.COMM_WORLD``; which one this process is in is decided where
the ranks are launched (``slotref.training.launch.world``).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from slotref.backend import is_host_array, to_float, to_host, tree_leaves, xp_of
from slotref.flat import FlatLayout, FlatTree

ALLREDUCE_ENV = "SLOTREF_ALLREDUCE"  # host | nccl: override the automatic choice
ABORT_GRACE_S = 0.5  # seconds between a rank's last line and MPI_Abort (MPIWorld.abort)


class DistributedError(ValueError):
    """Ranks disagree, or the run cannot be split across them; one line (a ValueError: the commands print it)."""


def local_slice(global_batch: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch: ``global_batch / size`` examples."""
    if global_batch % size:
        raise DistributedError(f"--batch-size {global_batch} is not divisible by the world size {size}: "
                               f"choose a multiple of {size} or run on a divisor of {global_batch} ranks")
    b = global_batch // size
    return slice(rank * b, (rank + 1) * b)


def shard_range(n: int, rank: int, size: int, align: int = 1) -> tuple[int, int]:
    """[start, stop) of rank's share of n items, in whole blocks of ``align`` (evaluation batches)."""
    blocks = -(-n // align)
    lo, hi = (blocks * rank) // size, (blocks * (rank + 1)) // size
    return min(lo * align, n), min(hi * align, n)


# --------------------------------------------------------------------------
# Parameter checksums.

def checksum(buffers: dict) -> tuple[float, ...]:
    """Sum and sum of squares of each buffer, in float64: equal on every rank iff nothing diverged."""
    values = []
    for _, buf in sorted(buffers.items()):
        xp = xp_of(buf)
        values += [to_float(xp.sum(buf, dtype=np.float64)), to_float(xp.sum(xp.square(buf, dtype=np.float64)))]
    return tuple(values)


# --------------------------------------------------------------------------
# Worlds.

class World:
    """One process: rank 0 of 1; every collective is the identity."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    is_root = property(lambda self: self.rank == 0)

    def allreduce_sum_(self, buf):
        """Sum ``buf`` (a contiguous 1-d NumPy or CuPy array) over ranks, in place; returns it."""
        return buf

    def broadcast(self, obj, root: int = 0):
        return obj

    def gather(self, obj, root: int = 0) -> list | None:
        """[obj of rank 0, ..., obj of rank N-1] on ``root``, None elsewhere."""
        return [obj]

    def allgather(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def check_same(self, value, what: str = "parameters") -> None:
        """Raise DistributedError on every rank if ``value`` differs between ranks."""

    def abort(self, message: str):
        """Print one line naming this rank and end the whole job with exit status 1."""
        sys.exit(message)

    def raise_together(self, err: BaseException | None) -> None:
        """Collective: if any rank passes an error, every rank raises (its own, or the first rank's)."""
        if err is not None:
            raise err

    def layout(self) -> list[dict]:
        """Collective: {rank, host, local_rank} of every rank, in rank order."""
        import platform

        return [{"rank": 0, "host": platform.node(), "local_rank": 0}]

    @contextmanager
    def fail_fast(self, agreed: tuple = ()):
        """Any exception in the block ends every rank (one process: it propagates unchanged).

        ``agreed``: exception types that every rank raises at the same point (they are decided from
        reduced or identical values, e.g. a NaN global loss); they propagate on every rank instead.
        """
        yield

    def use_device(self) -> int:
        """Make GPU ``local_rank % num_gpus`` current (CuPy); returns its index."""
        import cupy

        index = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(index).use()
        return index

    def allreduce_path(self) -> str:
        return "none (one process)"

    def describe(self) -> str:
        """One line for ``slotref info`` (local: any rank may call it alone)."""
        return "world: 1 process (no MPI; mpiexec -n N slotref train ... runs N ranks)"


class MPIWorld(World):
    """Ranks of MPI.COMM_WORLD; local ranks from the shared-memory split of it."""

    def __init__(self):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.hosts = len(set(self.comm.allgather(MPI.Get_processor_name())))
        self._nccl, self._path = None, None

    def allreduce_sum_(self, buf):
        if self.size == 1:
            return buf
        if is_host_array(buf):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        elif self.allreduce_path() == "nccl" and hasattr(getattr(buf, "data", None), "ptr"):  # CuPy
            self._nccl_allreduce(buf)
        else:  # a device buffer through host memory
            host = to_host(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf[...] = xp_of(buf).asarray(host)
        return buf

    def _nccl_allreduce(self, buf):
        import cupy
        from cupy.cuda import nccl

        if self._nccl is None:
            uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        stream = cupy.cuda.get_current_stream().ptr
        self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[buf.dtype.name], nccl.NCCL_SUM, stream)

    def broadcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def gather(self, obj, root: int = 0) -> list | None:
        return self.comm.gather(obj, root=root)

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def check_same(self, value, what: str = "parameters") -> None:
        values = [repr(v) for v in self.comm.allgather(value)]  # repr: a NaN equals a NaN
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise DistributedError(f"{what} diverged across ranks: ranks {differ} differ from rank 0 "
                                   f"({values[differ[0]]} vs {values[0]})")

    def abort(self, message: str):
        # sys.__stderr__: the command line silences the other ranks' sys.stderr, never this line
        print(f"rank {self.rank} of {self.size}: {message}", file=sys.__stderr__, flush=True)
        # MPI_Abort has mpiexec kill every rank at once, and what a rank wrote but mpiexec has not yet
        # forwarded (this line, a traceback) can be lost on a loaded machine: give it time to pass.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(1)

    def raise_together(self, err: BaseException | None) -> None:
        errors = self.comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
        first = next((r for r, e in enumerate(errors) if e is not None), None)
        if err is not None:
            raise err
        if first is not None:
            raise DistributedError(f"rank {first} of {self.size} could not start: {errors[first]}")

    def layout(self) -> list[dict]:
        return self.comm.allgather({"rank": self.rank, "host": self.MPI.Get_processor_name(),
                                    "local_rank": self.local_rank})

    @contextmanager
    def fail_fast(self, agreed: tuple = ()):
        try:
            yield
        except BaseException as err:  # noqa: BLE001 - every failure must end every rank
            if isinstance(err, agreed) or (isinstance(err, SystemExit) and err.code in (0, None)):
                raise
            self.abort(f"{type(err).__name__}: {err}")

    def allreduce_path(self) -> str:
        """'nccl' when CuPy has NCCL and every rank of a node has a GPU of its own, else 'host (MPI)'."""
        if self._path is None:
            self._path = {"host": "host (MPI)", "nccl": "nccl"}.get(os.environ.get(ALLREDUCE_ENV, "").lower())
        if self._path is None:
            try:
                import cupy
                from cupy.cuda import nccl

                own_gpus = cupy.cuda.runtime.getDeviceCount() >= self.local_size
                self._path = "nccl" if getattr(nccl, "available", False) and own_gpus else "host (MPI)"
            except Exception:  # noqa: BLE001 - no CuPy, no driver: the host path
                self._path = "host (MPI)"
        return self._path

    def describe(self) -> str:
        library = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return (f"world: {self.size} ranks on {self.hosts} host(s), {self.local_size} on this one "
                f"(rank {self.rank}, local rank {self.local_rank}); {library}; "
                f"allreduce: {self.allreduce_path()}")


class GradientSync:
    """The training loop's seam: this rank's ``slice`` of each global batch; ``reduce(loss, grads, stop)``
    turns the slice's mean loss and gradient tree into the global batch's, and ``stop`` into the number of
    ranks that asked to stop (0-d, on the loss's device: read it with the loss). One process: unchanged.

    Several ranks: the gradient comes back as a ``FlatTree`` in ``layout`` (the parameters' layout, as
    flat Adam takes it). The loss and the stop vote ride in front of the gradient in the buffer of the
    loss's dtype, so a step costs one allreduce (one per dtype of parameters).
    """

    def __init__(self, w: World, global_batch: int, layout: FlatLayout | None = None):
        self.world, self.slice, self.layout = w, local_slice(global_batch, w.rank, w.size), layout

    def reduce(self, loss, grads, stop: bool = False):
        if self.world.size == 1:
            return loss, grads, stop
        if isinstance(grads, FlatTree):
            grads = grads.tree
        layout = self.layout = self.layout or FlatLayout(grads)
        xp, n = xp_of(loss), self.world.size
        head_dtype = loss.dtype.name if loss.dtype.name in layout.sizes else next(iter(layout.sizes))
        leaves = [leaf for _, leaf in tree_leaves(grads)]
        buffers, head = {}, None
        for dtype in layout.sizes:
            parts = [leaf.reshape(-1) for leaf, s in zip(leaves, layout.slots, strict=True) if s.dtype == dtype]
            if dtype == head_dtype:
                head = xp.stack([xp.asarray(loss, dtype=dtype), xp.asarray(float(stop) * n, dtype=dtype)])
                parts = [head] + parts
            buf = xp.concatenate([p if p.dtype == dtype else p.astype(dtype) for p in parts])
            buf *= 1.0 / n    # this rank's share of the global mean: b / B
            buffers[dtype] = self.world.allreduce_sum_(buf)
        head = buffers[head_dtype][:2]
        buffers[head_dtype] = buffers[head_dtype][2:]
        return head[0].astype(loss.dtype), layout.wrap(buffers), head[1]
