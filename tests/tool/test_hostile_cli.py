"""Hostile inputs at the command line that the fault-injection suite (tests/training/test_hostile_inputs.py)
leaves to this file: a run's logs checked before a resumed run writes anything, readers of a run naming what
a FIFO or a device is, options named in their errors, runs stored before a field was added.

Each case ends in one line naming the file or option, exit status 1 or 2 and no traceback (or the right
result), and no file that existed before the command has changed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import pytest

from slotref.training.config import TrainConfig, config_from_stored

from tests.training.test_faults import assert_one_line_error, copy_run, invoke, snapshot
from tests.training.test_faults import data, run  # noqa: F401  (module fixtures: a small dataset and a trained run)

LOGS = ["metrics.jsonl", "train.csv", "eval.csv", "command.txt", "console.log"]


# --------------------------------------------------------------------------
# A resumed run whose log is a link or a FIFO is refused before it writes config.json, command.txt, a
# checkpoint or another log: the last logs are written only after training.

@pytest.mark.parametrize("log", LOGS)
def test_a_linked_log_refuses_the_resume_before_any_file_of_the_run_changes(log, run, tmp_path):  # noqa: F811
    run_dir = copy_run(run, tmp_path / "run")
    target = tmp_path / "victim.txt"
    target.write_text("keep me\n")
    (run_dir / log).unlink()
    os.symlink(target, run_dir / log)
    before = snapshot(run_dir)
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, log, "symbolic link")
    assert snapshot(run_dir) == before and target.read_text() == "keep me\n"
    assert not (run_dir / "run.lock").exists()


def test_a_log_that_is_a_fifo_refuses_the_resume_unopened_for_reading(run, tmp_path):  # noqa: F811
    run_dir = copy_run(run, tmp_path / "run")
    (run_dir / "eval.csv").unlink()
    os.mkfifo(run_dir / "eval.csv")
    before = snapshot(run_dir)
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, "eval.csv", "FIFO")
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------
# Readers of a run say what a FIFO or a device is, rather than that it does not exist.

@pytest.mark.parametrize("command", ["eval", "viz"])
def test_eval_and_viz_name_a_fifo_or_a_device_given_as_dataset(command, run, tmp_path):  # noqa: F811
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    before = snapshot(run)
    extra = ["--out", tmp_path / "v.png"] if command == "viz" else []
    assert_one_line_error(invoke(command, run, "--dataset", fifo, *extra), "pipe.h5", "FIFO")
    if Path("/dev/zero").exists():
        assert_one_line_error(invoke(command, run, "--dataset", "/dev/zero", *extra), "/dev/zero", "device")
    assert_one_line_error(invoke(command, run, "--dataset", tmp_path / "none.h5", *extra), "none.h5")
    assert snapshot(run) == before and not (tmp_path / "v.png").exists()


# --------------------------------------------------------------------------
# Options are named in their errors; every command's seed is one train accepts.

def test_data_make_names_a_negative_seed_and_writes_nothing(tmp_path):
    result = invoke("data", "make", "tetrominoes", "--n", 4, "--out", tmp_path / "d.h5", "--seed", -1,
                    "--no-progress", "--workers", 1)
    assert_one_line_error(result, "--seed")
    assert result.exit_code == 2 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# A run stored before a field was added still loads, with the field's former behaviour.

def test_a_run_stored_before_the_gradient_option_loads_as_the_paper(run, tmp_path):  # noqa: F811
    stored = json.loads(TrainConfig().to_json())
    del stored["grad"]
    assert config_from_stored(stored, "run/config.json").grad == "all"
    run_dir = copy_run(run, tmp_path / "run")
    for name in ("config.json", "checkpoint.h5"):  # as a run trained before ``grad`` existed stored it
        if name == "config.json":
            text = json.loads((run_dir / name).read_text())
            del text["grad"]
            (run_dir / name).write_text(json.dumps(text))
        else:
            with h5py.File(run_dir / name, "r+") as f:
                text = json.loads(f.attrs["config"])
                del text["grad"]
                f.attrs["config"] = json.dumps(text)
    result = invoke("eval", run_dir, "--json")
    assert result.exit_code == 0, result.output
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------
# Outputs: a FIFO or a device named as --out is never replaced; a link planted under a temporary name is
# removed, never written through.

MAKE = ("data", "make", "tetrominoes", "--n", 4, "--no-progress", "--workers", 1)


def _nodes(tmp_path):
    """A FIFO, and a device where this process may make one (root)."""
    os.mkfifo(tmp_path / "pipe")
    nodes = [(tmp_path / "pipe", "FIFO")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        nodes.append((tmp_path / "null", "device"))
    return nodes


def test_an_out_that_is_a_fifo_or_a_device_is_refused_and_kept(run, tmp_path):  # noqa: F811
    nodes = _nodes(tmp_path)
    for node, kind in nodes:
        mode = os.lstat(node).st_mode
        assert_one_line_error(invoke(*MAKE, "--out", node, "--overwrite"), node.name, kind, "never replaced")
        result = invoke("viz", run, "--out", node, "--overwrite", "--num-images", 1)
        assert_one_line_error(result, node.name)  # its suffix is refused first, or the node itself
        picture = node.with_name(node.name + ".png")
        os.rename(node, picture)
        result = invoke("viz", run, "--out", picture, "--overwrite", "--num-images", 1)
        assert_one_line_error(result, picture.name, kind, "never replaced")
        assert os.lstat(picture).st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n.name + ".png" for n, _ in nodes)


@pytest.mark.parametrize("planted", [".partial", ".tmp"])
def test_a_link_planted_at_a_temporary_name_is_not_written_through(planted, run, tmp_path):  # noqa: F811
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    out = tmp_path / ("x.h5" if planted == ".partial" else "x.png")
    os.symlink(victim, f"{out}{planted}")
    command = (*MAKE, "--out", out) if planted == ".partial" else ("viz", run, "--out", out, "--num-images", 1)
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me\n"
    assert out.is_file() and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim", out.name])
