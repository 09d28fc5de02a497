"""Data-parallel training over MPI: N ranks that together train as one process (docs/scale.md).

``mpiexec -n N python cli.py train ...`` starts N ranks; a process started
without mpiexec gets the single-process ``World`` and never imports mpi4py.
Rank r trains on ``local_slice(B, r, N)`` of every global batch B, drawn as one
process draws it; ``GradientSync`` sums the ranks' shares of the global mean
loss and its gradient with one allreduce per dtype of the gradient's flat
buffer (``slotref.flat.FlatLayout``, the parameters' layout) per step, so
every rank applies the same flat Adam update to the same parameters.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

from slotref.backend import is_host_array, to_float, to_host, tree_leaves, xp_of
from slotref.flat import FlatLayout, FlatTree

# Set by the launchers before the program starts: MPICH/Hydra and Intel MPI
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE), PMIx.
SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
MPI_ENV = "SLOTREF_MPI"              # 1: use MPI even for one rank; 0: never
ALLREDUCE_ENV = "SLOTREF_ALLREDUCE"  # host | nccl: override the automatic choice


class DistributedError(ValueError):
    """Ranks disagree, or the run cannot be split across them; one line (a ValueError: the commands print it)."""


def launched_size() -> int:
    """The world size the launcher announced in the environment (1 without a launcher)."""
    values = [os.environ.get(name, "") for name in SIZE_ENV]
    return next((int(v) for v in values if v.isdigit()), 1)


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
# Launching ranks on this machine (train --procs).

BLAS_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def mpiexec_path() -> str | None:
    """The launcher: the one beside this Python (the mpich wheel's), else the first on PATH; None if neither."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def can_launch() -> bool:
    """Whether ranks can be started here: mpi4py importable and an mpiexec found (neither is imported or run)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None and mpiexec_path() is not None


def launch_error(n: int, timeout: float = 60.0) -> str | None:
    """Why ``mpiexec -n n`` cannot run ranks that meet in a barrier here (None: it can). About a second."""
    import subprocess

    probe = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    env = {**os.environ, **{name: "1" for name in BLAS_THREAD_ENV}}
    try:
        done = subprocess.run([mpiexec_path(), "-n", str(n), sys.executable, "-c", probe], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return None


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_procs(global_batch: int, cores: int, min_local_batch: int = 4) -> int:
    """How many single-threaded ranks to train on ``cores`` CPU cores: the largest divisor of the batch
    that is at most the cores and leaves every rank at least ``min_local_batch`` examples (1 if none)."""
    limit = min(cores, global_batch // min_local_batch)
    return max([n for n in range(1, limit + 1) if global_batch % n == 0], default=1)


def relaunch(n: int) -> None:
    """Replace this process by ``mpiexec -n n`` running this same command, one BLAS thread per rank.

    The command is this interpreter with its original arguments (``cli.py train ...``, ``-m slotref
    train ...`` or the ``slotref`` script), so every rank parses what the user typed; under the launcher
    ``launched_size()`` is n and no rank launches again. Ctrl-C then reaches the ranks as under a
    hand-typed mpiexec (docs/scale.md). Does not return.
    """
    launcher = mpiexec_path()
    if launcher is None:
        raise DistributedError(f"--procs {n} needs mpiexec: pip install 'slotref[mpi]' (mpi4py and mpich)")
    env = dict(os.environ)
    for name in BLAS_THREAD_ENV:
        env.setdefault(name, "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(launcher, [launcher, "-n", str(n), sys.executable, *sys.orig_argv[1:]], env)


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
        """One line for ``cli.py info`` (local: any rank may call it alone)."""
        return "world: 1 process (no MPI; mpiexec -n N python cli.py train ... runs N ranks)"


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


_WORLD: World | None = None


def world(use_mpi: bool | None = None) -> World:
    """The world of this process, made once: MPI when launched on several ranks (or asked), else one process.

    ``use_mpi`` (default: $SLOTREF_MPI, else whether the launcher's size is > 1):
    mpi4py is imported only when it is true.
    """
    global _WORLD
    if _WORLD is None:
        if use_mpi is None:
            env = os.environ.get(MPI_ENV, "")
            use_mpi = env == "1" if env in ("0", "1") else launched_size() > 1
        if use_mpi:
            try:
                _WORLD = MPIWorld()
            except ImportError as err:
                raise DistributedError(f"{launched_size()} ranks were launched but mpi4py is missing: "
                                       "pip install 'slotref[mpi]' (mpi4py and mpich)") from err
        else:
            _WORLD = World()
    return _WORLD
