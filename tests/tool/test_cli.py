"""The command line as users meet it (click's CliRunner, in process).

The CLI has no option for the model's width: ``train`` runs the ``cpu``
preset's architecture (64 channels), fitted to the file's image size and
object count, so the tiny run here is a 64x64 file of 30 scenes, batch 2,
2 steps (a few seconds).
"""

from __future__ import annotations

import json
import sys

import click
import pytest
from click.testing import CliRunner

from slotref.cli import main as cli
from slotref.data.hdf5 import write_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_one_line_error(result, *words):
    """Exit status != 0, no traceback, a single 'Error: ...' line naming ``words``."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = result.output.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "scenes64.h5"
    write_dataset("clevr-shapes", path, 30, 0, resolution=64, min_objects=1, max_objects=3, progress=False,
                  workers=1)
    return path


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "setpred"
    result = invoke("train", "--dataset", dataset, "--steps", 2, "--batch-size", 2, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out, result.output


def all_commands(group=cli, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


# --------------------------------------------------------------------------

def test_info_runs():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "slotref" in result.output and "GPU:" in result.output


@pytest.mark.parametrize("command", [()] + list(all_commands()), ids=lambda c: " ".join(c) or "cli")
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


def test_the_documented_commands_exist():
    assert {"train", "eval", "viz", "bench", "selfcheck", "info", "data"} <= set(cli.commands)


def test_train_runs_and_prints_the_ap_table(run_dir):
    out, output = run_dir
    assert f"run directory: {out}" in output
    assert "AP_inf" in output and "Table 3" in output
    assert (out / "checkpoint.h5").exists() and (out / "config.json").exists() and (out / "metrics.jsonl").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["steps"], config["batch_size"], config["task"]) == (2, 2, "setpred")


def test_eval_prints_ap_at_five_thresholds_and_by_object_count(run_dir):
    out, _ = run_dir
    result = invoke("eval", out)
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output
    for name in ("AP_inf", "AP_1", "AP_0.5", "AP_0.25", "AP_0.125"):
        assert name in result.output
    assert "by number of objects" in result.output


def test_eval_json_with_more_slots_and_iterations(run_dir):
    out, _ = run_dir
    result = invoke("eval", out, "--json", "--num-slots", 6, "--num-iters", 4)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["step"], report["num_slots"], report["num_iters"], report["examples"]) == (2, 6, 4, 3)
    for key in ("ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["ap_by_num_objects"]) <= {"1", "2", "3"}
    assert {"acc_size", "acc_material", "acc_shape", "acc_color", "acc_all", "median_distance"} <= set(report)


def test_eval_positions_prints_the_three_position_errors(run_dir):
    out, _ = run_dir
    result = invoke("eval", out, "--positions")
    assert result.exit_code == 0, result.output
    for label in ("the model's prediction", "fit from the slot's attention", "the mean position"):
        assert label in result.output
    report = json.loads(invoke("eval", out, "--positions", "--json").output)
    assert set(report["positions"]) == {"model", "attention", "constant"}
    assert all(r["median_distance"] >= 0 and 0 <= r["within_1"] <= 1 for r in report["positions"].values())


def test_eval_curve_prints_the_logged_validation_as_a_table(run_dir, tmp_path):
    out, _ = run_dir
    result = invoke("eval", out, "--curve")
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.output.strip().splitlines()
    assert header.startswith("| step | minutes | ap_inf |") and rule.startswith("|---")
    assert rows[-1].startswith("| 2 |")  # the evaluation at the end of the 2-step run
    missing = invoke("eval", tmp_path, "--curve")
    assert missing.exit_code != 0 and "no metrics.jsonl" in missing.output


def test_viz_writes_a_png(run_dir, tmp_path):
    out, _ = run_dir
    picture = tmp_path / "x.png"
    result = invoke("viz", out, "--out", picture, "--num-images", 2)
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == PNG_SIGNATURE


def test_train_into_an_existing_run_needs_resume(run_dir, dataset):
    out, _ = run_dir
    result = invoke("train", "--dataset", dataset, "--steps", 2, "--batch-size", 2, "--out", out, "--quiet")
    assert_one_line_error(result, "--resume")


# --------------------------------------------------------------------------
# Bad input: exit status != 0 and one line, no traceback.

def test_train_on_a_missing_dataset_file(tmp_path):
    result = invoke("train", "--dataset", tmp_path / "nowhere.h5", "--steps", 1, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "nowhere.h5")


def test_train_on_a_truncated_dataset_file(dataset, tmp_path):
    broken = tmp_path / "broken.h5"
    whole = dataset.read_bytes()
    broken.write_bytes(whole[:len(whole) // 3])
    result = invoke("train", "--dataset", broken, "--steps", 1, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "broken.h5")


def test_set_prediction_fits_the_model_to_the_users_file(tmp_path):
    # The CPU preset is 32x32 with 3 target rows and K = 3; the file is 48x48 with up to 4 objects.
    path = tmp_path / "scenes48.h5"
    write_dataset("clevr-shapes", path, 20, 0, resolution=48, min_objects=2, max_objects=4, progress=False, workers=1)
    result = invoke("train", "--dataset", path, "--steps", 1, "--batch-size", 2, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert "48x48 images" in result.output and "up to 4 objects" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["resolution"] == [48, 48]
    assert config["max_objects"] == 4 and config["model"]["num_slots"] == 4
    # An explicit --num-slots is kept, and too few slots for the file's scenes is a one-line error.
    result = invoke("train", "--dataset", path, "--steps", 1, "--batch-size", 2, "--num-slots", 3,
                    "--out", tmp_path / "run3", "--quiet")
    assert_one_line_error(result, "slots")
    # Fewer objects than the preset's 3 target rows: one row per object, so K = 1 can train.
    single = tmp_path / "single.h5"
    write_dataset("clevr-shapes", single, 20, 0, resolution=32, min_objects=1, max_objects=1, progress=False,
                  workers=1)
    result = invoke("train", "--dataset", single, "--steps", 1, "--batch-size", 2, "--num-slots", 1,
                    "--out", tmp_path / "run1", "--quiet")
    assert result.exit_code == 0, result.output
    assert "up to 1 object:" in result.output and "K = " not in result.output   # the note keeps the asked-for K
    config = json.loads((tmp_path / "run1" / "config.json").read_text())
    assert (config["max_objects"], config["model"]["num_slots"]) == (1, 1)


def test_discovery_on_a_file_of_another_resolution(tmp_path):
    path = tmp_path / "small.h5"
    write_dataset("clevr6-shapes", path, 20, 0, resolution=32, progress=False, workers=1)
    result = invoke("train", "--task", "discovery", "--dataset", path, "--steps", 1, "--out", tmp_path / "run",
                    "--quiet")
    assert_one_line_error(result, "32x32", "128x128")


def test_eval_and_viz_on_a_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(invoke("eval", tmp_path), "checkpoint")
    assert_one_line_error(invoke("viz", tmp_path), "checkpoint")


def test_device_gpu_without_cupy(run_dir, dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # "import cupy" raises ImportError, as when it is not installed
    out, _ = run_dir
    result = invoke("train", "--dataset", dataset, "--device", "gpu", "--steps", 1, "--batch-size", 2,
                    "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "CuPy")
    assert_one_line_error(invoke("eval", out, "--device", "gpu"), "CuPy")
    assert_one_line_error(invoke("selfcheck", "--device", "gpu"), "CuPy")
