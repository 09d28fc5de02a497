"""Launching the ranks of data-parallel training (docs/scale.md), and which of them this process is.

``mpiexec -n N python cli.py train ...`` starts N ranks; ``train --procs``
starts them itself (``relaunch``). A process started without mpiexec gets the
single-process ``World`` and never imports mpi4py. What the ranks exchange is
``slotref.training.collectives``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slotref.training.collectives import DistributedError, MPIWorld, World
from slotref.training.mpiexec_output import RANK_DIR_ENV, LauncherFilter, banner_line, rank_of

# Set by the launchers before the program starts: MPICH/Hydra and Intel MPI
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE), PMIx.
SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
# Each launcher's size and rank variables, and what else it always sets (any one of them): a variable
# left over in a shell, alone or without its companions, does not make a process a rank.
LAUNCHERS = (("PMI_SIZE", "PMI_RANK", ("PMI_FD", "PMI_PORT")),
             ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_LOCAL_RANK",)),
             ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", ("MV2_COMM_WORLD_LOCAL_RANK",)),
             ("PMIX_SIZE", "PMIX_RANK", ("PMIX_NAMESPACE",)))
MPI_ENV = "SLOTREF_MPI"              # 1: use MPI even for one rank; 0: never


def _launched() -> tuple[int, int]:
    """(size, rank) a launcher announced, with all its variables present and agreeing; (1, 0) otherwise."""
    for size_name, rank_name, companions in LAUNCHERS:
        size, rank = os.environ.get(size_name, ""), os.environ.get(rank_name, "")
        if (size.isdigit() and rank.isdigit() and int(rank) < int(size)
                and any(os.environ.get(name) for name in companions)):
            return int(size), int(rank)
    return 1, 0


def launched_size() -> int:
    """The world size the launcher announced in the environment (1 without a launcher, or a stray variable)."""
    return _launched()[0]


def launched_rank() -> int:
    """This process's rank as the launcher announced it (0 without a launcher)."""
    return _launched()[1]


def is_writer() -> bool:
    """Whether this process writes (and locks) the run directory: rank 0 of MPI's own world when this
    is a rank, else the single process; a stray launcher variable cannot make it skip the lock."""
    if launched_size() > 1 or os.environ.get(MPI_ENV) == "1":
        return world().rank == 0
    return True


def check_device(procs: int, device: str | None) -> None:
    """Refuse, before any rank starts, ranks on a device this machine cannot give them (one line)."""
    import importlib.util

    if procs > 1 and device == "gpu" and importlib.util.find_spec("cupy") is None:
        raise DistributedError(f"--procs {procs} --device gpu: CuPy is not installed, so no rank could use a "
                               "GPU; pip install cupy-cuda12x (matching your CUDA), or train with --device cpu")


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


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; a reader gone (``| head``) drops it, the ranks still run to the end."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _end_with_parent() -> None:
    """In the launcher's child: SIGTERM when this process dies (Linux), so that a killed ``train`` does not
    leave mpiexec and its ranks running; they save a checkpoint and stop as on any SIGTERM."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def relaunch(n: int, run_dir) -> int:
    """Run ``mpiexec -n n`` with this same command, one BLAS thread per rank; its exit status.

    The command is this interpreter with its original arguments (``cli.py train ...``, ``-m slotref
    train ...`` or the ``slotref`` script), so every rank parses what the user typed; under the launcher
    ``launched_size()`` is n and no rank launches again. mpiexec runs in its own process group, and
    SIGINT, SIGTERM and SIGHUP sent to this process are passed to it once, so Ctrl-C reaches every rank
    as under a hand-typed mpiexec (docs/scale.md). Its output passes through as it comes, less its Ctrl-C
    lines and its banner for a rank that ended badly: a rank killed by a signal gets one line naming it
    instead (status 1); one that exited with a status printed its own error.
    """
    import selectors
    import signal
    import subprocess
    import tempfile

    launcher = mpiexec_path()
    if launcher is None:
        raise DistributedError(f"--procs {n} needs mpiexec: pip install 'slotref[mpi]' (mpi4py and mpich)")
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="slotref-ranks-") as rank_dir:
        env = {**os.environ, RANK_DIR_ENV: rank_dir}
        for name in BLAS_THREAD_ENV:
            env.setdefault(name, "1")
        child = subprocess.Popen([launcher, "-n", str(n), sys.executable, *sys.orig_argv[1:]], env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True,  # a terminal's Ctrl-C reaches it once, from here
                                 preexec_fn=_end_with_parent)
        forwarded = []

        def forward(signum, frame):
            forwarded.append(signum)
            child.send_signal(signum)

        passed_on = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
        previous = {s: signal.signal(s, forward) for s in passed_on}
        try:
            streams = {child.stdout.fileno(): (sys.stdout.fileno(), LauncherFilter()),
                       child.stderr.fileno(): (sys.stderr.fileno(), LauncherFilter())}
            with selectors.DefaultSelector() as selector:
                for fd in streams:
                    selector.register(fd, selectors.EVENT_READ)
                while selector.get_map():
                    for key, _ in selector.select():
                        target, stream = streams[key.fd]
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            selector.unregister(key.fd)
                        _write_all(target, stream.feed(chunk, final=not chunk))
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            child.stdout.close()
            child.stderr.close()
        # A rank that exited with a status said why itself; one killed by a signal (kill -9, the OOM
        # killer, a crash) could not, unless the signal came through here.
        killed = [b for _, stream in streams.values() for b in stream.banners if b["signal"]]
        if killed and not forwarded:
            for banner in killed:
                print(banner_line(banner, rank_of(banner["pid"], rank_dir), run_dir), file=sys.stderr, flush=True)
            return 1
    return code


def note_rank() -> None:
    """Under ``relaunch``: leave this rank's number under its pid, for the line naming a rank that died."""
    rank_dir = os.environ.get(RANK_DIR_ENV)
    if rank_dir and launched_size() > 1:
        try:
            (Path(rank_dir) / str(os.getpid())).write_text(str(launched_rank()))
        except OSError:  # only the line naming a dead rank is the poorer
            pass


# --------------------------------------------------------------------------
# The world of this process.

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
                made = MPIWorld()
            except ImportError as err:
                raise DistributedError(f"{launched_size()} ranks were launched but mpi4py is missing: "
                                       "pip install 'slotref[mpi]' (mpi4py and mpich)") from err
            if launched_size() > 1 and made.size != launched_size():
                raise DistributedError(f"the environment announces {launched_size()} ranks but MPI has "
                                       f"{made.size}: a launcher variable left over in this shell? unset it, "
                                       "or start the ranks with mpiexec")
            _WORLD = made
            note_rank()
        else:
            _WORLD = World()
    return _WORLD
