"""Hostile inputs and faults at every door: full disks during HDF5 writes, files that are not what
they claim (FIFOs, devices, HDF5 indirection), logs that are links, awkward paths.

Each case ends in one line naming the file or option, exit status 1 or 2 and no traceback (or the
right result), and no file that existed before the command has changed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from slotref import hdf5_write, io
from slotref.data.hdf5 import write_dataset
from slotref.training.checkpoint import load_model
from slotref.training.config import TrainingError

from test_faults import assert_one_line_error, copy_run, invoke, snapshot
from test_faults import data, run  # noqa: F401  (module fixtures: a small dataset and a trained run)

MAKE = ("data", "make", "tetrominoes", "--n", 96, "--no-progress", "--workers", 1)


def small_disk(monkeypatch, capacity):
    """Every HDF5 file written through ``slotref.hdf5_write`` shares ``capacity`` bytes; past them
    a write fails as on a full disk (ENOSPC), after a short write of what still fits."""
    real = hdf5_write._Sink._raw_write
    used = [0]

    def write(self, data):
        room = capacity - used[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(self, data[:room])
        used[0] += n
        return n
    monkeypatch.setattr(hdf5_write._Sink, "_raw_write", write)


def count_writes(monkeypatch):
    """Count the writes that reach the disk; returns the counter (a one-item list)."""
    real = hdf5_write._Sink._raw_write
    count = [0]

    def write(self, data):
        count[0] += 1
        return real(self, data)
    monkeypatch.setattr(hdf5_write._Sink, "_raw_write", write)
    return count


def fail_write(monkeypatch, number):
    """Write number ``number`` (counting from 1) fails as on a full disk; the others go through."""
    real = hdf5_write._Sink._raw_write
    count = [0]

    def write(self, data):
        count[0] += 1
        if count[0] == number:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)
    monkeypatch.setattr(hdf5_write._Sink, "_raw_write", write)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".tmp")))


# --------------------------------------------------------------------------
# A full disk while writing a dataset: the old file stays, nothing half-written is left.

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A valid dataset to be overwritten, and the size of the file the failing commands write."""
    folder = tmp_path_factory.mktemp("made")
    old = folder / "old.h5"
    assert invoke(*MAKE[:3], "--out", old, "--n", 16, *MAKE[5:]).exit_code == 0
    probe = folder / "probe.h5"
    assert invoke(*MAKE, "--out", probe).exit_code == 0
    return old, probe.stat().st_size


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9, 0.999, 0.99999])
def test_a_full_disk_while_making_a_dataset_keeps_the_old_one(made, tmp_path, monkeypatch, fraction):
    """From the first write to the last bytes HDF5 writes when it closes the file."""
    old, size = made
    out = tmp_path / "data.h5"
    shutil.copy(old, out)
    before = out.read_bytes()
    small_disk(monkeypatch, int(size * fraction))
    result = invoke(*MAKE, "--out", out, "--overwrite")
    assert_one_line_error(result, "data.h5", "ENOSPC")
    assert "wrote" not in result.output
    assert out.read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("from_end", [0, 1, 2])
def test_a_failure_in_the_last_writes_while_closing_the_file(made, tmp_path, monkeypatch, from_end):
    """The writes HDF5 makes when it closes the file: errors it would report only on stderr."""
    old, _ = made
    count = count_writes(monkeypatch)
    assert invoke(*MAKE, "--out", tmp_path / "probe.h5").exit_code == 0
    monkeypatch.undo()
    out = tmp_path / "data.h5"
    shutil.copy(old, out)
    before = out.read_bytes()
    fail_write(monkeypatch, count[0] - from_end)
    result = invoke(*MAKE, "--out", out, "--overwrite")
    assert_one_line_error(result, "data.h5", "ENOSPC")
    assert out.read_bytes() == before and leftovers(tmp_path) == []


def test_a_disk_that_loses_writes_silently_is_caught_before_the_rename(made, tmp_path, monkeypatch):
    """A write that claims success but stores nothing: the file is read back before it takes the name."""
    old, size = made
    out = tmp_path / "data.h5"
    shutil.copy(old, out)
    before = out.read_bytes()
    real = hdf5_write._Sink._raw_write

    def lossy(self, data):  # every image chunk lands as zeros
        return real(self, bytes(len(data)) if len(data) > 2000 else data)
    monkeypatch.setattr(hdf5_write._Sink, "_raw_write", lossy)
    assert_one_line_error(invoke(*MAKE, "--out", out, "--overwrite"), "data.h5", "does not read back")
    assert out.read_bytes() == before and leftovers(tmp_path) == []


def test_a_full_disk_while_train_builds_its_data_cache(tmp_path, monkeypatch):
    small_disk(monkeypatch, 20_000)
    cache = tmp_path / "cache"
    result = invoke("train", "--dataset", "clevr-shapes", "--data-dir", cache, "--data-size", 64,
                    "--out", tmp_path / "run", "--steps", 1, "--quiet")
    assert_one_line_error(result, "ENOSPC")
    assert not cache.exists() or [p.name for p in cache.rglob("*") if p.is_file()] == []


def test_a_full_disk_while_converting_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("google.protobuf")
    from tests.data.test_convert import squares_scene, write_tfrecords

    src = write_tfrecords(tmp_path / "in.tfrecords",
                          [squares_scene("tetrominoes", [(2, 8, 2, 8)], [1], i) for i in range(40)])
    small_disk(monkeypatch, 5_000)
    out = tmp_path / "out.h5"
    result = invoke("data", "convert", "multi-object", "--src", src, "--dataset", "tetrominoes", "--out", out)
    assert_one_line_error(result, "out.h5", "ENOSPC")
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_full_disk_while_saving_a_checkpoint(run, tmp_path, monkeypatch):  # noqa: F811
    run_dir = copy_run(run, tmp_path / "run")
    before = (run_dir / "checkpoint.h5").read_bytes()
    small_disk(monkeypatch, 50_000)
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, "checkpoint.h5", "ENOSPC")
    assert (run_dir / "checkpoint.h5").read_bytes() == before and leftovers(run_dir) == []


# --------------------------------------------------------------------------
# Files are what they claim: FIFOs and devices are refused unopened, missing files are missing.

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.h5"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_unopened_by_every_reader(fifo, run, tmp_path):  # noqa: F811
    assert_one_line_error(invoke("data", "info", fifo), "pipe.h5", "FIFO")
    result = invoke("train", "--dataset", fifo, "--out", tmp_path / "r", "--steps", 1, "--quiet")
    assert_one_line_error(result, "pipe.h5", "FIFO")
    run_dir = copy_run(run, tmp_path / "run")
    (run_dir / "checkpoint.h5").unlink()
    os.mkfifo(run_dir / "checkpoint.h5")
    assert_one_line_error(invoke("eval", run_dir), "checkpoint.h5", "FIFO")
    with pytest.raises(TrainingError, match="FIFO"):
        load_model(run_dir)
    (run_dir / "metrics.jsonl").unlink()
    os.mkfifo(run_dir / "metrics.jsonl")
    assert_one_line_error(invoke("eval", run_dir, "--curve"), "metrics.jsonl", "FIFO")
    result = invoke("data", "convert", "multi-object", "--src", fifo, "--dataset", "tetrominoes",
                    "--out", tmp_path / "out.h5")
    assert_one_line_error(result, "pipe.h5", "FIFO")


def test_a_device_or_a_missing_file_says_what_it_is(tmp_path):
    assert_one_line_error(invoke("data", "info", "/dev/null"), "/dev/null", "device")
    error = assert_one_line_error(invoke("data", "info", tmp_path / "none.h5"), "none.h5", "no such file")
    os.symlink(tmp_path / "none.h5", tmp_path / "dangling.h5")
    assert_one_line_error(invoke("data", "info", tmp_path / "dangling.h5"), "dangling.h5", "no such file")
    assert "FIFO" not in error


# --------------------------------------------------------------------------
# A checkpoint's bytes live in the checkpoint: no external storage, no virtual datasets.

LEAF = "params/encoder/convs/0/w"


def _external(f, folder):
    data = f[LEAF][()]
    (folder / "outside.bin").write_bytes(data.tobytes())
    del f[LEAF]
    f.create_dataset(LEAF, data.shape, data.dtype, external=[(str(folder / "outside.bin"), 0, data.nbytes)])


def _virtual(f, folder):
    data = f[LEAF][()]
    with h5py.File(folder / "outside.h5", "w") as g:
        g["w"] = data
    layout = h5py.VirtualLayout(data.shape, data.dtype)
    layout[...] = h5py.VirtualSource(str(folder / "outside.h5"), "w", shape=data.shape)
    del f[LEAF]
    f.create_virtual_dataset(LEAF, layout)


@pytest.mark.parametrize("indirection,words", [(_external, "external storage"), (_virtual, "virtual storage")])
def test_a_checkpoint_that_points_elsewhere_is_refused(indirection, words, run, tmp_path):  # noqa: F811
    run_dir = copy_run(run, tmp_path / "run")
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        indirection(f, tmp_path)
    assert_one_line_error(invoke("eval", run_dir), "checkpoint.h5", "convs/0/w", words)
    with pytest.raises(TrainingError, match=words):
        load_model(run_dir)


# --------------------------------------------------------------------------
# A run's logs are its own files: a link is refused, never written through (a resume with a linked log:
# tests/tool/test_hostile_cli.py).

def test_append_line_refuses_a_link_and_a_fifo(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "log.jsonl")
    with pytest.raises(io.WriteError, match="symbolic link"):
        io.append_line(tmp_path / "log.jsonl", "{}")
    assert not (tmp_path / "elsewhere").exists()
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(io.WriteError, match="pipe.jsonl"):
        io.append_line(tmp_path / "pipe.jsonl", "{}")


# --------------------------------------------------------------------------
# Paths: names at the file system's limit, undecodable bytes.

def test_a_name_of_255_bytes_gets_a_temporary_name_that_fits(tmp_path):
    out = tmp_path / ("d" * 252 + ".h5")
    assert invoke(*MAKE, "--out", out).exit_code == 0
    assert out.exists() and leftovers(tmp_path) == []
    io.write_text(tmp_path / ("t" * 255), "text")
    assert (tmp_path / ("t" * 255)).read_text() == "text"
    assert io.sibling_name(out, ".partial") == io.sibling_name(out, ".partial")  # stable: resumable
    assert len(os.fsencode(io.sibling_name(out, ".partial").name)) <= 255


def test_undecodable_bytes_in_a_path_are_shown_safely(tmp_path):
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")  # Latin-1, not UTF-8
    result = invoke(*MAKE, "--out", os.path.join(folder, "x.h5"))
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.path.join(folder, "x.h5"))
    assert io.shown(folder).endswith("caf\\xe9")
    os.mkfifo(os.path.join(folder, "p.h5"))
    error = assert_one_line_error(invoke("data", "info", os.path.join(folder, "p.h5")), "caf\\xe9", "FIFO")
    assert "\udce9" not in error
    result = invoke("train", "--dataset", os.path.join(folder, "none.h5"), "--out", os.path.join(folder, "run"),
                    "--steps", 1, "--quiet")
    assert_one_line_error(result, "caf\\xe9/none.h5")
    assert sorted(os.listdir(folder)) == ["p.h5", "x.h5"]


@pytest.mark.parametrize("suffix,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".jpg", b"\xff\xd8\xff"),
                                          (".PNG", b"\x89PNG")])
def test_viz_writes_the_format_its_suffix_names(suffix, magic, run, tmp_path):  # noqa: F811
    out = tmp_path / f"picture{suffix}"
    result = invoke("viz", run, "--out", out, "--num-images", 1)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(magic) and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["picture.txt", "picture"])
def test_viz_refuses_a_suffix_it_cannot_write(name, run, tmp_path):  # noqa: F811
    before = snapshot(run)
    assert_one_line_error(invoke("viz", run, "--out", tmp_path / name), name, "unknown picture format")
    assert not (tmp_path / name).exists() and snapshot(run) == before


def test_a_train_into_a_folder_with_undecodable_bytes(run, tmp_path):  # noqa: F811
    run_dir = copy_run(run, Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9")))
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert result.exit_code == 0, result.output
    assert b"r\xe9" in (run_dir / "command.txt").read_bytes()
    result = invoke("viz", run_dir, "--num-images", 1)
    assert result.exit_code == 0 and "r\\xe9" in result.output, result.output


# --------------------------------------------------------------------------
# Bounds and messages: bench sizes, a lock whose PID now names another process.

@pytest.mark.parametrize("option,value", [("--batch-size", 0), ("--repeats", 0), ("--resolution", 10**6),
                                          ("--batch-size", 10**9)])
def test_bench_refuses_sizes_it_cannot_measure(option, value):
    assert_one_line_error(invoke("bench", "--what", "step", "--task", "setpred", option, value), option)


def test_a_lock_whose_pid_was_reused_is_taken_over_and_a_live_one_names_the_way_out(tmp_path):
    from slotref import runlock

    other = os.getppid()  # alive, and not this process
    lock = tmp_path / io.LOCK_NAME
    lock.write_text(f"{other} {os.uname().nodename} {(runlock._started(other) or 0) + 1}\n")  # started later
    notes = []
    with io.RunLock(tmp_path, note=notes.append):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert len(notes) == 1 and "belongs to another process" in notes[0]
    lock.write_text(f"{other} {os.uname().nodename}\n")  # an older lock without the start time
    with pytest.raises(io.LockError, match=f"delete {lock}"):
        io.RunLock(tmp_path).acquire()


# --------------------------------------------------------------------------
# Launch hygiene: variables left in a shell do not make a process a rank.

@pytest.mark.parametrize("env", [{"PMI_RANK": "1"}, {"PMI_SIZE": "2"}, {"PMI_SIZE": "2", "PMI_RANK": "1"},
                                 {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}])
def test_a_stray_launcher_variable_does_not_skip_the_lock(env, run, tmp_path, monkeypatch):  # noqa: F811
    from slotref.training import launch

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.launched_size() == 1 and launch.is_writer()
    run_dir = copy_run(run, tmp_path / "run")
    (run_dir / io.LOCK_NAME).write_text(f"{os.getppid()} {os.uname().nodename}\n")  # a live run holds it
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, io.LOCK_NAME, str(os.getppid()))
    assert "processes" not in result.output


def test_procs_on_a_gpu_without_cupy_is_one_line_before_any_rank(tmp_path, data):  # noqa: F811
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    result = invoke("train", "--dataset", data / "scenes.h5", "--out", tmp_path / "run", "--procs", 2,
                    "--device", "gpu", "--steps", 1, "--quiet")
    assert_one_line_error(result, "CuPy")
    assert not (tmp_path / "run").exists()
