"""Fault injection: damaged checkpoints and run directories, bad numbers, full disks, kill -9.

Every bad input must end in one line naming the file, field or option, exit
status 1 or 2 and no traceback; every output is written whole or not at all,
and an existing file under an ``--out`` is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from slotref import io
from slotref.cli import main as cli
from slotref.data.hdf5 import write_dataset
from slotref.models import setpred_config
from slotref.slot_attention import SlotAttentionConfig
from slotref.training.checkpoint import load_training_state, read_checkpoint_config
from slotref.training.config import TrainConfig, TrainingError, config_from_stored
from slotref.training.loop import train
from slotref.training.stop import StopRequest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_config(data: Path, **overrides) -> TrainConfig:
    """Set prediction at 32x32 with 16 channels, K = 4: a step takes milliseconds."""
    sa = SlotAttentionConfig(input_size=16, slot_size=16, mlp_hidden_size=32)
    model = setpred_config(32, num_slots=4, encoder_channels=16, mlp_size=16, head_hidden=16, slot_attention=sa)
    base = dict(dataset=str(data), preset="test", steps=4, batch_size=4, eval_every=4, checkpoint_every=2,
                eval_size=8, log_every=1, warmup_steps=2, decay_steps=100, max_objects=4, model=model)
    return TrainConfig(**{**base, **overrides})


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_one_line_error(result, *words):
    """Exit status 1 or 2, no traceback, exactly one 'Error: ...' line (the last) naming ``words``."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset("clevr-shapes", d / "scenes.h5", 48, 0, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    write_dataset("clevr-shapes", d / "other.h5", 48, 1, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    return d


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(data / "scenes.h5"), run_dir, progress=False)
    return run_dir


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# --------------------------------------------------------------------------
# A corpus of damaged checkpoints: eval and viz answer each with one line.

def _set_attr(key, value):
    def edit(f):
        f.attrs[key] = value
    return edit


def _edit_config(change):
    def edit(f):
        config = json.loads(f.attrs["config"])
        change(config)
        f.attrs["config"] = json.dumps(config)
    return edit


def _replace_leaf(make):
    def edit(f):
        name = "params/encoder/convs/0/w"
        shape = f[name].shape
        del f[name]
        make(f, name, shape)
    return edit


def _nan_leaf(f):
    data = f["params/encoder/convs/0/w"][()]
    data.flat[0] = np.nan
    f["params/encoder/convs/0/w"][...] = data


DAMAGED_CHECKPOINTS = {
    "wrong-format": (_set_attr("format", "something-else"), "format"),
    "future-version": (_set_attr("format_version", 2), "format_version"),
    "unknown-task": (_set_attr("task", "painting"), "task"),
    "negative-step": (_set_attr("step", -3), "step"),
    "step-as-text": (_set_attr("step", "four"), "step"),
    "config-not-json": (_set_attr("config", "{not json"), "config"),
    "config-extra-key": (_edit_config(lambda c: c.__setitem__("launch_missiles", True)), "launch_missiles"),
    "config-missing-key": (_edit_config(lambda c: c["model"].pop("num_slots")), "model.num_slots"),
    "config-slots-as-text": (_edit_config(lambda c: c["model"].__setitem__("num_slots", "4")), "model.num_slots"),
    "config-absurd-slots": (_edit_config(lambda c: c["model"].__setitem__("num_slots", 10**8)), "model.num_slots"),
    "config-absurd-examples": (_edit_config(lambda c: c.__setitem__("data_size", 10**9)), "data_size"),
    "config-absurd-resolution": (_edit_config(lambda c: c["model"].__setitem__("resolution", [10**6, 10**6])),
                                 "model.resolution"),
    "config-absurd-batch": (_edit_config(lambda c: c.__setitem__("batch_size", 10**9)), "batch_size"),
    "config-absurd-iterations": (_edit_config(lambda c: c["model"].__setitem__("num_iterations", 10**6)),
                                 "model.num_iterations"),
    "config-nan-rate": (_edit_config(lambda c: c.__setitem__("learning_rate", float("nan"))), "learning_rate"),
    "param-as-text": (_replace_leaf(lambda f, n, s: f.create_dataset(n, data="weights")), "convs/0/w"),
    "param-as-group": (_replace_leaf(lambda f, n, s: f.create_group(n)), "convs/0/w"),
    "param-wrong-shape": (_replace_leaf(lambda f, n, s: f.create_dataset(n, data=np.zeros((2, 2)))), "convs/0/w"),
    "param-missing": (_replace_leaf(lambda f, n, s: None), "convs/0/w"),
    "param-nan": (_nan_leaf, "convs/0/w"),
}


@pytest.mark.parametrize("case", list(DAMAGED_CHECKPOINTS))
def test_a_damaged_checkpoint_is_one_line_for_eval_and_viz(case, run, tmp_path):
    edit, field = DAMAGED_CHECKPOINTS[case]
    run_dir = copy_run(run, tmp_path / "run")
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        edit(f)
    before = snapshot(run_dir)
    assert_one_line_error(invoke("eval", run_dir), "checkpoint.h5", field)
    assert_one_line_error(invoke("viz", run_dir), "checkpoint.h5", field)
    assert snapshot(run_dir) == before  # nothing written, not even viz.png


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "folder"])
def test_an_unreadable_checkpoint_file_is_one_line(damage, run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    ckpt = run_dir / "checkpoint.h5"
    whole = ckpt.read_bytes()
    if damage == "folder":
        ckpt.unlink()
        ckpt.mkdir()
    else:
        ckpt.write_bytes({"truncated": whole[: len(whole) // 2], "empty": b"", "text": b"hello\n" * 100}[damage])
    assert_one_line_error(invoke("eval", run_dir), "checkpoint.h5")
    assert_one_line_error(invoke("viz", run_dir), "checkpoint.h5")
    result = invoke("train", "--out", run_dir, "--resume", "--quiet")
    assert_one_line_error(result, "checkpoint.h5")


def test_a_stored_config_cannot_make_eval_write_elsewhere(run, tmp_path):
    """A checkpoint naming a built-in dataset and a data_dir outside: eval neither creates it nor generates."""
    run_dir = copy_run(run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere" / "deep"
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        _edit_config(lambda c: c.update(dataset="clevr-shapes", data_dir=str(elsewhere), data_size=10**6))(f)
    assert_one_line_error(invoke("eval", run_dir), "not there")
    assert_one_line_error(invoke("viz", run_dir), "not there")
    assert not (tmp_path / "elsewhere").exists()


def test_stored_config_validation_names_the_key():
    good = json.loads(TrainConfig().to_json())
    assert config_from_stored(good, "c.json") == TrainConfig()
    older = {k: v for k, v in good.items() if k not in ("curriculum", "coord_weight")}  # saved before these existed
    assert config_from_stored(older, "c.json") == TrainConfig() == TrainConfig.from_dict(older)
    for change, key in [(lambda c: c["model"]["slot_attention"].__setitem__("aggregation", "max"), "slot_attention"),
                        (lambda c: c.__setitem__("model", []), "model"),
                        (lambda c: c.__setitem__("seed", True), "seed"),
                        (lambda c: c["model"].__setitem__("encoder_strides", [1] * 100), "encoder_strides"),
                        (lambda c: c.__setitem__("coord_weight", -1.0), "coord_weight"),
                        (lambda c: c.__setitem__("coord_weight", "heavy"), "coord_weight")]:
        bad = json.loads(TrainConfig().to_json())
        change(bad)
        with pytest.raises(TrainingError, match=key) as err:
            config_from_stored(bad, "c.json")
        assert str(err.value).startswith("c.json: config.") and "\n" not in str(err.value)


def test_a_checkpoint_whose_config_disagrees_with_its_task(run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        f.attrs["task"] = "discovery"
    with pytest.raises(TrainingError, match="task"):
        read_checkpoint_config(run_dir / "checkpoint.h5")


# --------------------------------------------------------------------------
# Run directories: logs, configs, locks.

def test_eval_curve_tolerates_a_torn_last_line_and_training_cuts_it_off(run, tmp_path, data):
    run_dir = copy_run(run, tmp_path / "run")
    metrics = run_dir / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 5, "loss": 0.')   # a crash in the middle of a line
    result = invoke("eval", run_dir, "--curve")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("| 4 |")
    io.append_line(metrics, json.dumps({"step": 6}))
    assert metrics.read_text() == whole + '{"step": 6}\n'


def test_eval_curve_on_a_damaged_log_is_one_line(run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:1] + ["garbage"] + lines[1:]) + "\n")
    assert_one_line_error(invoke("eval", run_dir, "--curve"), "metrics.jsonl", "line 2")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "eval": {"ap_inf": 0.5}}\n')
    assert_one_line_error(invoke("eval", run_dir, "--curve"), "metrics.jsonl")


@pytest.mark.parametrize("content", ["{not json", '{"name": "my notes"}', "[1, 2, 3]"])
def test_resume_of_a_damaged_config_json_is_one_line(content, run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    (run_dir / "config.json").write_text(content)
    assert_one_line_error(invoke("train", "--out", run_dir, "--resume", "--quiet"), "config.json")


def test_train_into_a_folder_that_is_not_a_run_leaves_it_alone(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(mine)
    args = ("train", "--dataset", data / "scenes.h5", "--steps", 1, "--batch-size", 2, "--quiet")
    assert_one_line_error(invoke(*args, "--out", mine), "config.json")
    (mine / "config.json").unlink()
    assert_one_line_error(invoke(*args, "--out", mine), "not a slotref run")
    (mine / "config.json").write_text('{"my": "settings"}')
    assert snapshot(mine) == before


def test_a_new_run_refuses_another_runs_folder(run, data, tmp_path):
    """A folder holding another run's config.json (no checkpoint yet) is not taken over by a different run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(run / "config.json", run_dir / "config.json")
    before = snapshot(run_dir)
    with pytest.raises(TrainingError, match="another run") as err:
        train(tiny_config(data / "scenes.h5", seed=7), run_dir, progress=False)
    assert "seed" in str(err.value)
    assert snapshot(run_dir) == before


def test_a_live_runs_lock_is_refused_and_a_dead_ones_taken_over(run, tmp_path, data, capsys):
    run_dir = copy_run(run, tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / io.LOCK_NAME).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
        assert_one_line_error(result, io.LOCK_NAME, str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    # The process has ended: its lock is stale, taken over with a note, released at the end.
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert result.exit_code == 0, result.output
    assert "stale lock" in result.output and str(sleeper.pid) in result.output
    assert not (run_dir / io.LOCK_NAME).exists()


def test_two_locks_on_one_folder(tmp_path):
    with io.RunLock(tmp_path):
        with pytest.raises(io.LockError, match="in use"):
            other = io.RunLock(tmp_path)
            other._owner = lambda: (os.getppid(), os.uname().nodename)  # another live process holds it
            other.acquire()
    assert not (tmp_path / io.LOCK_NAME).exists()


# --------------------------------------------------------------------------
# Resume: a flag that changes the run is refused, a harmless one recorded.

CHANGING_FLAGS = [
    ("--lr", "0.01"), ("--batch-size", "8"), ("--num-slots", "5"), ("--num-iters", "2"), ("--model", "slot-mlp"),
    ("--seed", "3"), ("--preset", "paper"), ("--init", "torch"), ("--aggregation", "sum"),
    ("--softmax-axis", "inputs"), ("--slot-init", "per_slot"), ("--update", "none"), ("--no-layer-norms", None),
    ("--no-residual-mlp", None), ("--temperature", "one"), ("--epsilon-placement", "denominator"),
    ("--soft-kmeans", None), ("--no-position-embedding", None), ("--coord-weight", "2"),
    ("--decay-steps", "7"), ("--warmup-steps", "3"), ("--curriculum", "slots=1,objects=1:2; slots=3"),
    ("--ema", "0.9"),
]


@pytest.mark.parametrize("flag,value", CHANGING_FLAGS, ids=[f for f, _ in CHANGING_FLAGS])
def test_resume_refuses_a_flag_that_changes_the_run(flag, value, run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    before = snapshot(run_dir)
    args = [flag] + ([value] if value is not None else [])
    line = assert_one_line_error(invoke("train", "--out", run_dir, "--resume", "--quiet", *args),
                                 flag.replace("--no-", "--"))
    assert "trained with" in line
    assert snapshot(run_dir) == before


def test_resume_refuses_another_dataset_but_takes_the_same_one(run, data, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    line = assert_one_line_error(invoke("train", "--out", run_dir, "--resume", "--dataset", data / "other.h5"),
                                 "--dataset", "other.h5", "scenes.h5")
    assert "trained with" in line
    result = invoke("train", "--out", run_dir, "--resume", "--quiet", "--dataset", data / "scenes.h5",
                    "--seed", 0, "--lr", TrainConfig().learning_rate)
    assert result.exit_code == 0, result.output


def test_resume_with_more_steps_is_allowed_and_recorded(run, tmp_path):
    run_dir = copy_run(run, tmp_path / "run")
    result = invoke("train", "--out", run_dir, "--resume", "--quiet", "--steps", 6, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "note: resuming with steps = 6 (was 4)" in result.output
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 6
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        assert int(f.attrs["step"]) == 6 and json.loads(f.attrs["config"])["steps"] == 6


# --------------------------------------------------------------------------
# Numbers on the command line: click's ranges, naming the option.

BAD_NUMBERS = [
    ("train", "--steps", "0"), ("train", "--batch-size", "0"), ("train", "--num-slots", "0"),
    ("train", "--num-slots", "-2"), ("train", "--num-iters", "0"), ("train", "--lr", "0"), ("train", "--lr", "-1"),
    ("eval", "--num-slots", "0"), ("eval", "--num-iters", "0"), ("viz", "--num-images", "-1"),
    ("viz", "--num-images", "0"), ("viz", "--num-slots", "-2"), ("viz", "--num-iters", "0"),
]


@pytest.mark.parametrize("command,option,value", BAD_NUMBERS, ids=[" ".join(b) for b in BAD_NUMBERS])
def test_a_number_out_of_range_names_the_option(command, option, value, run, tmp_path):
    target = [run] if command in ("eval", "viz") else ["--out", tmp_path / "run"]
    result = invoke(command, *target, option, value)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and option in result.output
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# Existing outputs are kept; full and read-only disks are one line.

def test_data_make_and_viz_keep_an_existing_out(run, tmp_path):
    out = tmp_path / "precious.h5"
    out.write_bytes(b"precious")
    result = invoke("data", "make", "clevr-shapes", "--out", out, "--n", 4, "--resolution", 16, "--no-progress")
    assert_one_line_error(result, "precious.h5", "--overwrite")
    assert out.read_bytes() == b"precious"
    result = invoke("data", "make", "clevr-shapes", "--out", out, "--n", 4, "--resolution", 16, "--no-progress",
                    "--workers", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89HDF"
    picture = tmp_path / "precious.png"
    picture.write_bytes(b"precious")
    assert_one_line_error(invoke("viz", run, "--out", picture, "--num-images", 1), "precious.png", "--overwrite")
    assert picture.read_bytes() == b"precious"
    result = invoke("viz", run, "--out", picture, "--num-images", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == PNG_SIGNATURE


def _fail_on(monkeypatch, suffix, code=errno.ENOSPC):
    """The fsync of a temporary file ending in ``suffix`` fails as on a full disk (ENOSPC)."""
    real = io.fsync_file

    def fsync_file(path):
        if str(path).endswith(suffix):
            raise OSError(code, os.strerror(code))
        real(path)
    monkeypatch.setattr(io, "fsync_file", fsync_file)


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_old_one(run, tmp_path, monkeypatch):
    run_dir = copy_run(run, tmp_path / "run")
    before = (run_dir / "checkpoint.h5").read_bytes()
    _fail_on(monkeypatch, "checkpoint.h5.tmp")
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, "checkpoint.h5", "ENOSPC")
    assert (run_dir / "checkpoint.h5").read_bytes() == before
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / io.LOCK_NAME).exists()


def test_a_full_disk_while_drawing_keeps_the_old_picture(run, tmp_path, monkeypatch):
    picture = tmp_path / "viz.png"
    picture.write_bytes(b"old picture")
    _fail_on(monkeypatch, "viz.png.tmp")
    result = invoke("viz", run, "--out", picture, "--num-images", 1, "--overwrite")
    assert_one_line_error(result, "viz.png", "ENOSPC")
    assert picture.read_bytes() == b"old picture" and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("code,words", [(errno.EACCES, "EACCES"), (errno.EROFS, "EROFS")])
def test_permission_errors_name_the_path(run, tmp_path, monkeypatch, code, words):
    run_dir = copy_run(run, tmp_path / "run")
    _fail_on(monkeypatch, "config.json.tmp", code)
    result = invoke("train", "--out", run_dir, "--resume", "--steps", 6, "--quiet")
    assert_one_line_error(result, "config.json", words)
    assert not list(run_dir.glob("*.tmp"))


def test_a_full_disk_never_leaves_half_a_log_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(io.WriteError, match="metrics.jsonl: cannot write: no space left") as err:
        io.append_line(log, json.dumps({"step": 2, "loss": 0.5}))
    monkeypatch.undo()
    assert "\n" not in str(err.value)
    assert log.read_text() == '{"step": 1}\n'
    assert io.read_jsonl(log) == [{"step": 1}]


def test_atomic_write_removes_its_temporary_file_on_any_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_write(target) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------------
# Signals and kill -9: the checkpoint stays whole and resume is exact.

def test_a_second_ctrl_c_says_why_it_stopped_at_once():
    stop = StopRequest()
    with stop:
        stop._handler(signal.SIGTERM, None)
        assert stop.requested and "SIGTERM" in stop.reason
        with pytest.raises(KeyboardInterrupt, match="a second time: stopped at once, without saving"):
            stop._handler(signal.SIGINT, None)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_faults import tiny_config
    from slotref.training.loop import train
    try:
        train(tiny_config(Path({data!r}), steps={steps}, checkpoint_every=1, eval_every=1000), {run!r},
              resume={resume}, progress=False)
    except KeyboardInterrupt as err:
        print(err, flush=True)
        sys.exit(143)
""")


def _start(data, run_dir, steps, resume=False):
    script = TRAIN_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests" / "training"), data=str(data / "scenes.h5"),
                                 steps=steps, run=str(run_dir), resume=resume)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_checkpoint(proc, path, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The reference: STEPS steps without interruption, a checkpoint every step."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(data / "scenes.h5", steps=STEPS, checkpoint_every=1, eval_every=1000), run_dir,
          progress=False)
    return run_dir


STEPS = 8


def _params(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda n, item: out.__setitem__(n, item[()]) if isinstance(item, h5py.Dataset) else None)
        return int(f.attrs["step"]), out


def _kill_and_resume(data, straight, tmp_path, delay, sig):
    run_dir = tmp_path / "run"
    proc = _start(data, run_dir, STEPS)
    _wait_for_checkpoint(proc, run_dir / "checkpoint.h5")
    time.sleep(delay)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode in (0, 143 if sig == signal.SIGTERM else -signal.SIGKILL), output
    if proc.returncode == 143:
        assert "terminated (SIGTERM) after step" in output
    # Whatever the moment, the checkpoint is whole and valid, and no temporary file is taken for it.
    config = tiny_config(data / "scenes.h5", steps=STEPS, checkpoint_every=1, eval_every=1000)
    step, _ = _params(run_dir / "checkpoint.h5")
    assert 1 <= step <= STEPS
    read_checkpoint_config(run_dir / "checkpoint.h5")
    io.read_jsonl(run_dir / "metrics.jsonl")
    train(config, run_dir, resume=True, progress=False)   # a stale lock of the killed process is taken over
    step, resumed = _params(run_dir / "checkpoint.h5")
    _, reference = _params(straight / "checkpoint.h5")
    assert step == STEPS and sorted(resumed) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / io.LOCK_NAME).exists()
    logged = [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert logged[-1] == STEPS


def test_kill_9_during_training_then_resume_is_exact(data, straight, tmp_path):
    _kill_and_resume(data, straight, tmp_path, 0.05, signal.SIGKILL)


def test_sigterm_saves_a_checkpoint_then_resume_is_exact(data, straight, tmp_path):
    _kill_and_resume(data, straight, tmp_path, 0.05, signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.13, 0.31, 0.57])
def test_kill_9_at_several_moments(data, straight, tmp_path, delay):
    _kill_and_resume(data, straight, tmp_path, delay, signal.SIGKILL)


def test_checkpoint_loads_after_a_resume_with_the_run_config(run):
    """The run's own checkpoint passes every check (the corpus above fails only by its damage)."""
    from slotref.backend import get_backend, host_rng
    from slotref.models import init_model

    config = read_checkpoint_config(run / "checkpoint.h5")
    be = get_backend("cpu", config.dtype)
    template = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model))
    params, state, step, fingerprint = load_training_state(run / "checkpoint.h5", be, template, config)
    assert step == 4 and state["t"] == 4 and fingerprint
