"""What ``train --procs`` prints of mpiexec's own: nothing but one line for a rank that died.

mpiexec (MPICH's Hydra) runs as a child of the command; its output passes through as it comes (a
progress bar's carriage returns included), less its banner for a rank that ended badly and its Ctrl-C
lines. A rank killed with ``kill -9`` ends the job with one line naming the rank and status 1; Ctrl-C
and SIGTERM reach every rank once, which save a checkpoint and say so in slotref's words alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from slotref.training.mpiexec_output import LauncherFilter, banner_line
from test_distributed import needs_mpi

ROOT = Path(__file__).resolve().parents[2]

# Exactly what Hydra 5.0 prints on its stdout when rank 1 of `mpiexec -n 2` is killed with SIGKILL.
BANNER = b"""
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 26571 RUNNING AT vm
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
This typically refers to a problem with your application.
Please see the FAQ page for debugging suggestions
"""
CTRL_C = b"[mpiexec@vm] Sending Ctrl-C to processes as requested\n[mpiexec@vm] Press Ctrl-C again to force abort\n"


def filtered(data: bytes, size: int) -> tuple[bytes, LauncherFilter]:
    """``data`` through a filter in chunks of ``size`` bytes, then its end."""
    stream = LauncherFilter()
    out = b"".join(stream.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + stream.feed(b"", final=True), stream


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_the_banner_and_the_ctrl_c_lines_are_taken_out_and_the_rest_passes_byte_for_byte(size):
    before = "rank 0: step 3\n\n== a heading ==\n\r 10%|█ \r 20%|██\r 30%|███\n".encode()
    after = b"\nlast line\n\n"
    out, stream = filtered(before + BANNER + CTRL_C + after, size)
    assert out == before + after
    assert stream.banners == [{"pid": 26571, "code": 9, "signal": 9}]


def test_a_progress_bar_passes_at_once_and_only_what_could_open_a_banner_waits():
    stream = LauncherFilter()
    assert stream.feed("\rtrain:  50%|█████     | 2/4".encode()) == "\rtrain:  50%|█████     | 2/4".encode()
    assert stream.feed(b"\n====") == b"\n"  # the bar's line ends; what follows could be the banner's rule
    assert stream.feed(b" not a banner\n") == b"==== not a banner\n"
    assert stream.feed(b"[mpiexec") == b"" and stream.feed(b"@vm] other news\n") == b"[mpiexec@vm] other news\n"


def test_the_line_for_a_killed_rank_names_it_the_signal_and_the_checkpoint(tmp_path):
    banner = {"pid": 1234, "code": 9, "signal": 9}
    assert banner_line(banner, 1, tmp_path) == ("error: rank 1 (pid 1234) was killed by signal 9 (KILL); "
                                                "no checkpoint had been written yet")
    (tmp_path / "checkpoint.h5").write_bytes(b"")
    assert banner_line(banner, None, tmp_path) == (f"error: a rank (pid 1234) was killed by signal 9 (KILL); the last "
                                                   f"checkpoint {tmp_path / 'checkpoint.h5'} is kept; resume with --resume")


# --------------------------------------------------------------------------
# train --procs 2, stopped from outside once it has saved a checkpoint.

needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds a rank's pid in /proc")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def start(data_dir, run_dir, marker):
    """``train --procs 2`` for many steps, its ranks marked by ``marker`` in their environment."""
    command = [sys.executable, "cli.py", "train", "--task", "setpred", "--quiet", "--steps", "400", "--data-size",
               "64", "--batch-size", "8", "--data-dir", str(data_dir), "--out", str(run_dir), "--procs", "2"]
    env = {**os.environ, "SLOTREF_TEST_MARKER": marker}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "checkpoint.h5").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    return proc


def rank_pid(marker: str, rank: int) -> int:
    """The pid of the process that is rank ``rank`` of the job whose environment holds ``marker``."""
    wanted = {f"SLOTREF_TEST_MARKER={marker}".encode(), f"PMI_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:  # gone, or not ours
            continue
    raise AssertionError(f"no rank {rank} found")


def checkpoint_step(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f.attrs["step"])


def no_mpiexec_words(stderr: str, stdout: str) -> None:
    for text in (stderr, stdout):
        assert "BAD TERMINATION" not in text and "=====" not in text and "[mpiexec@" not in text, text


@needs_mpi
@needs_proc
def test_a_rank_killed_with_sigkill_ends_the_job_with_one_line_naming_it(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = start(data_dir, run_dir, str(tmp_path))
    pid = rank_pid(str(tmp_path), 1)
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    no_mpiexec_words(stderr, stdout)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: rank 1 (pid {pid}) was killed by signal 9 (KILL); the last checkpoint "
                      f"{run_dir / 'checkpoint.h5'} is kept; resume with --resume"], stderr
    assert checkpoint_step(run_dir / "checkpoint.h5") >= 1 and not list(run_dir.glob("*.tmp"))


@needs_mpi
@pytest.mark.parametrize("sig, code, said", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C) after step"),
    pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM) after step", marks=pytest.mark.slow)])  # same path
def test_a_signal_to_the_command_reaches_every_rank_and_slotref_alone_speaks(tmp_path, data_dir, sig, code, said):
    run_dir = tmp_path / "run"
    proc = start(data_dir, run_dir, str(tmp_path))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    no_mpiexec_words(stderr, stdout)
    assert stderr.count(said) == 1 and "error:" not in stderr, stderr  # rank 0 alone speaks
    step = int(stderr.split(said)[1].split(";")[0])
    assert checkpoint_step(run_dir / "checkpoint.h5") == step  # saved at the step it names
