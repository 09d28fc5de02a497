"""slotref as a tool: the fast dev run, stand-alone checkpoints, run logs, configs as files, and
one-line answers to slips (click's CliRunner, in process; data and runs in a temporary directory)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import sys

import pytest
from click.testing import CliRunner

from slotref.cli import main as cli
from slotref.training.presets import preset_config, scale_budget

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True, **kw)


def assert_one_line_error(result, *words, absent=()):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and result.output.splitlines()[-1] == errors[0], result.output
    for word in words:
        assert word in errors[0], errors[0]
    for word in absent:
        assert word not in errors[0], errors[0]


def fast_run(tmp, task, *extra):
    out = tmp / f"{task}-run"
    result = invoke("train", "--task", task, "--fast-dev-run", "--data-dir", tmp / "data", "--out", out, "--quiet",
                    *extra)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def setpred_run(tmp_path_factory):
    return fast_run(tmp_path_factory.mktemp("tool"), "setpred")


@pytest.fixture(scope="module")
def discovery_run(tmp_path_factory):
    return fast_run(tmp_path_factory.mktemp("tool"), "discovery")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------
# A first result in seconds

def test_fast_dev_run_ends_with_the_result_table_and_a_full_run_directory(setpred_run):
    out, output = setpred_run
    assert "AP_inf" in output and "paper, CLEVR10 (Table 3)" in output and "fast dev run" in output
    assert {"checkpoint.h5", "config.json", "command.txt", "train.csv", "eval.csv", "metrics.jsonl"} <= \
        {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["data_size"] == 64 and config["model"]["encoder_channels"] == 8


def test_fast_dev_run_of_discovery_prints_fg_ari_in_percent(discovery_run):
    out, output = discovery_run
    assert "FG-ARI (%): slotref" in output
    result = invoke("eval", out)
    assert result.exit_code == 0, result.output
    assert "FG-ARI (%): slotref" in result.output and "slot_area_sorted: [" in result.output
    assert "%" in result.output.split("slot_area_sorted:")[1].splitlines()[0]


def test_metrics_print_as_percent_in_every_place():
    from slotref.training.logs import format_metrics

    line = format_metrics({"fg_ari": 0.8951, "ap_inf": 0.041, "acc_color": 0.5, "mse": 0.0123456,
                           "slot_area_sorted": [0.5, 0.25], "ap_by_num_objects": {"1": {}}})
    assert line == "fg_ari=89.5%, ap_inf=4.1%, acc_color=50.0%, mse=0.01235, slot_area_sorted=[50.0%, 25.0%]"


def test_steps_scale_the_budget_as_experiment_steps(tmp_path):
    result = invoke("train", "--task", "setpred", "--steps", 1250, "--print-config")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    expected = scale_budget(preset_config("setpred"), 1250)
    for key in ("steps", "warmup_steps", "decay_steps", "eval_every", "checkpoint_every"):
        assert printed[key] == getattr(expected, key), key
    assert printed["warmup_steps"] == 50 and printed["eval_every"] == 100


def test_data_size_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOTREF_DATA_DIR", str(tmp_path / "elsewhere"))
    printed = json.loads(invoke("train", "--fast-dev-run", "--data-size", 80, "--print-config").output)
    assert printed["data_size"] == 80 and printed["data_dir"] == str(tmp_path / "elsewhere")
    printed = json.loads(invoke("train", "--data-size", 500, "--print-config").output)
    assert printed["data_size"] == 500 and printed["steps"] == preset_config("setpred").steps


def test_data_size_of_a_file_is_refused(tmp_path):
    path = tmp_path / "x.h5"
    from slotref.data.hdf5 import write_dataset
    write_dataset("clevr-shapes", path, 4, 0, resolution=32, progress=False, workers=1)
    assert_one_line_error(invoke("train", "--dataset", path, "--data-size", 10, "--print-config"), "--data-size")


def test_preset_help_states_the_cost_per_task():
    text = "".join(invoke("train", "--help").output.split())
    for words in ("~15min", "~45min", "Multi-dSprites", "CLEVR6", "GPU", "--fast-dev-run", "scalewithit"):
        assert words in text, words
    assert "minutesonalaptop" not in text


# --------------------------------------------------------------------------
# Checkpoints stand alone

def test_eval_and_viz_need_only_the_checkpoint_and_a_file(tmp_path):
    out, _ = fast_run(tmp_path, "setpred")
    data = tmp_path / "data"
    [training_file] = list(data.iterdir())
    copy = tmp_path / "copy.h5"
    shutil.move(training_file, copy)
    assert_one_line_error(invoke("eval", out), "--dataset", str(training_file.name), absent=("--preset",))
    assert_one_line_error(invoke("viz", out), "--dataset")
    assert list(data.iterdir()) == []                       # nothing generated to evaluate
    result = invoke("eval", out, "--dataset", copy, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["examples"] == 64
    result = invoke("viz", out, "--dataset", copy, "--out", tmp_path / "v.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.png").read_bytes()[:8] == PNG_SIGNATURE
    assert_one_line_error(invoke("eval", out, "--dataset", tmp_path / "missing.h5"), "missing.h5")


def test_eval_on_a_file_of_another_size_names_no_missing_flag(setpred_run, tmp_path):
    from slotref.data.hdf5 import write_dataset
    path = tmp_path / "big.h5"
    write_dataset("clevr-shapes", path, 4, 0, resolution=40, progress=False, workers=1)
    assert_one_line_error(invoke("eval", setpred_run[0], "--dataset", path), "40x40", absent=("--preset",))


def test_viz_pictures_name_the_run_and_step(setpred_run, discovery_run, tmp_path):
    for out, _ in (setpred_run, discovery_run):
        result = invoke("viz", out, "--out", tmp_path / f"{out.name}.png", "--num-images", 2)
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"{out.name}.png").read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------
# Logs

def test_train_and_eval_csv_are_flat_tables(setpred_run):
    out, _ = setpred_run
    train_rows = read_csv(out / "train.csv")
    assert [int(r["step"]) for r in train_rows] == [1, 2, 3, 4]
    assert set(train_rows[0]) == {"step", "loss", "lr", "images_per_s", "time", "elapsed_s",
                                  "grad_norm_slot_attention", "grad_norm_encoder"}
    [row] = read_csv(out / "eval.csv")
    assert row["step"] == "4" and 0.0 <= float(row["ap_inf"]) <= 1.0
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert float(row["ap_inf"]) == next(r["eval"]["ap_inf"] for r in jsonl if "eval" in r)
    command = (out / "command.txt").read_text()
    assert f"slotref train --task setpred --fast-dev-run --data-dir {out.parent / 'data'} --out {out} --quiet" \
        in command and "slotref 0.1.0" in command and "\ngit " in command


def _scalars_in_event_files(run_dir):
    """Tag -> [(step, value)] from TensorBoard event files (TFRecords of Event protos)."""
    return {tag: [(step, v.simple_value) for step, v in found] for tag, found in _event_values(run_dir).items()}


def _event_values(run_dir):
    """Tag -> [(step, Summary.Value)] from TensorBoard event files (TFRecords of Event protos)."""
    from tensorboardX.proto import event_pb2

    values = {}
    for path in run_dir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                values.setdefault(v.tag, []).append((event.step, v))
    return values


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboardX")
    out, _ = fast_run(tmp_path, "setpred", "--logger", "tensorboard")
    scalars = _scalars_in_event_files(out)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    [(step, ap)] = scalars["eval/ap_inf"]
    assert step == 4 and ap == pytest.approx(float(read_csv(out / "eval.csv")[0]["ap_inf"]), abs=1e-6)
    # once at the start: the config as text and the hyperparameters against the headline metric
    values = _event_values(out)
    [(_, text)] = values["config/text_summary"]
    config = json.loads((out / "config.json").read_text())
    assert json.loads(text.tensor.string_val[0].decode()) == config
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    [(_, start)] = values["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info.hparams
    assert hparams["model.num_slots"].number_value == config["model"]["num_slots"]
    assert hparams["dataset"].string_value == config["dataset"]
    [(_, experiment)] = values["_hparams_/experiment"]
    metrics = HParamsPluginData.FromString(experiment.metadata.plugin_data.content).experiment.metric_infos
    assert [m.name.tag for m in metrics] == ["eval/ap_inf"]
    # at each evaluation: viz's picture, a PNG
    from PIL import Image

    [(step, figure)] = values["eval/figure"]
    picture = Image.open(io.BytesIO(figure.image.encoded_image_string))
    assert step == 4 and picture.format == "PNG" and picture.size == (figure.image.width, figure.image.height)
    assert min(picture.size) > 100


def test_tensorboard_without_tensorboardx_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    result = invoke("train", "--fast-dev-run", "--logger", "tensorboard", "--data-dir", tmp_path / "d",
                    "--out", tmp_path / "r", "--quiet")
    assert_one_line_error(result, "tensorboardX")


# --------------------------------------------------------------------------
# Configs as files

def test_config_file_starts_a_run_with_flags_overriding_it(setpred_run, tmp_path):
    out, _ = setpred_run
    saved = json.loads((out / "config.json").read_text())
    result = invoke("train", "--config", out / "config.json", "--seed", 3, "--print-config")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["seed"] == 3 and {k: v for k, v in printed.items() if k not in ("seed", "device")} == \
        {k: v for k, v in saved.items() if k not in ("seed", "device")}
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"task": "discovery", "steps": 123, "model": {"num_slots": 5}}))
    printed = json.loads(invoke("train", "--config", partial, "--print-config").output)
    assert printed["steps"] == 123 and printed["model"]["num_slots"] == 5 and printed["dataset"] == "tetrominoes"
    partial.write_text(json.dumps({"stepz": 1}))
    assert_one_line_error(invoke("train", "--config", partial, "--print-config"), "stepz")
    partial.write_text(json.dumps({"coord_weight": 0}))
    assert_one_line_error(invoke("train", "--config", partial, "--print-config"), "coord_weight must be a positive")
    partial.write_text(json.dumps({"ema": 1}))
    assert_one_line_error(invoke("train", "--config", partial, "--print-config"), "ema must be 0")
    assert json.loads(invoke("train", "--ema", 0.99, "--print-config").output)["ema"] == 0.99
    assert_one_line_error(invoke("train", "--ema", 1, "--print-config"), "--ema")
    partial.write_text(json.dumps({"task": "discovery"}))
    assert_one_line_error(invoke("train", "--config", partial, "--task", "setpred"), "--task")


def test_a_run_started_from_a_config_file_trains(setpred_run, tmp_path):
    out, _ = setpred_run
    result = invoke("train", "--config", out / "config.json", "--steps", 2, "--out", tmp_path / "again", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again" / "config.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------
# Slips

def test_selfcheck_defaults_to_the_default_device(monkeypatch):
    import slotref.selfcheck

    seen = []
    monkeypatch.delenv("SLOTREF_DEVICE", raising=False)
    monkeypatch.setattr(slotref.selfcheck, "run_selfcheck", lambda device, out: seen.append(device) or True)
    assert invoke("selfcheck").exit_code == 0 and seen == ["cpu"]


def test_viz_on_gpu_without_cupy_is_one_line(setpred_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert_one_line_error(invoke("viz", setpred_run[0], "--device", "gpu"), "CuPy")


@pytest.mark.parametrize("what", ["module", "layers", "data"])
def test_bench_task_belongs_to_the_step_benchmark(what):
    assert_one_line_error(invoke("bench", "--what", what, "--task", "setpred"), "--what step")


def test_both_spellings_of_multi_dsprites(tmp_path):
    printed = json.loads(invoke("train", "--task", "discovery", "--dataset", "multi_dsprites", "--print-config").output)
    assert printed["dataset"] == "multi-dsprites"
    result = invoke("data", "make", "multi_dsprites", "--out", tmp_path / "m.h5", "--n", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "multi-dsprites" in result.output and "K=6" in result.output


@pytest.mark.parametrize("name, k", [("tetrominoes", 4), ("clevr6-shapes", 7), ("clevr-shapes", 10)])
def test_data_make_names_the_papers_slots_of_each_dataset(tmp_path, name, k):
    result = invoke("data", "make", name, "--out", tmp_path / "x.h5", "--n", 1, "--no-progress",
                    "--resolution", 32)
    assert result.exit_code == 0, result.output
    assert f"K={k} slots" in result.output


def test_a_small_file_says_how_much_it_holds_out(tmp_path):
    out, output = fast_run(tmp_path, "setpred", "--data-size", 40)
    assert "fast dev run" in output
    from slotref.training.presets import fast_dev_run
    config = fast_dev_run(preset_config("setpred"), data_size=40)
    assert config.eval_size == 4
    result = invoke("train", "--fast-dev-run", "--data-size", 40, "--data-dir", tmp_path / "data", "--quiet",
                    "--out", tmp_path / "other", "--batch-size", 2, "--seed", 0)
    assert result.exit_code == 0 and "note: validation" not in result.output


def test_validation_note_when_the_file_is_too_small_for_eval_size(tmp_path):
    from slotref.data.hdf5 import write_dataset
    path = tmp_path / "s.h5"
    write_dataset("clevr-shapes", path, 30, 0, resolution=32, min_objects=1, max_objects=3, progress=False,
                  workers=1)
    result = invoke("train", "--dataset", path, "--steps", 1, "--batch-size", 2, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    assert "note: validation holds the first 3 of the 30 examples" in result.output


def test_bench_step_measures_pytorch_or_leaves_the_column_out(monkeypatch):
    from slotref.backend import get_backend
    from slotref.bench import step as bench, torch_twin

    monkeypatch.setattr(bench, "best_seconds", lambda fn, xp, repeats: 0.5)
    be = get_backend("cpu", "float32")
    monkeypatch.setattr(torch_twin, "available", lambda: False)
    lines = []
    bench.bench_step(be, "setpred", resolution=16, batch_size=2, repeats=1, echo=lines.append)
    assert "PyTorch" not in lines[0] and len(lines) == 2
    monkeypatch.setattr(torch_twin, "available", lambda: True)
    monkeypatch.setattr(torch_twin, "step_seconds_apart", lambda task, dataset, b, repeats: 0.25)
    lines = []
    [row] = bench.bench_step(be, "setpred", resolution=16, batch_size=2, repeats=1, echo=lines.append)
    assert "PyTorch CPU" in lines[0] and row["torch_images_per_s"] == 8.0
    assert lines[1].split()[4:6] == ["8.0", "0.50"]


@pytest.fixture
def restore_kernels(monkeypatch):
    from slotref import dispatch

    monkeypatch.setenv(dispatch.KERNELS_ENV, "fast")    # restored after the test, as --kernels sets it
    previous = dispatch.use(None)
    yield dispatch
    dispatch.use(previous)


@pytest.mark.parametrize("task, extra", [("setpred", ()), ("discovery", ()), ("setpred", ("--model", "slot-mlp"))],
                         ids=["setpred", "discovery", "slot-mlp"])
def test_the_specification_kernels_train_every_task(tmp_path, restore_kernels, task, extra):
    out, output = fast_run(tmp_path, task, "--kernels", "reference", *extra)
    assert restore_kernels.active() == "reference"
    assert (out / "checkpoint.h5").exists() and ("AP" in output or "FG-ARI" in output)


def test_info_names_a_bad_kernel_choice_in_one_line(monkeypatch):
    monkeypatch.setenv("SLOTREF_KERNELS", "bogus")
    result = invoke("info")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "kernels: $SLOTREF_KERNELS must be one of reference, fast, all, got 'bogus'" in result.output
