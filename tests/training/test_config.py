"""A run's configuration, decided once (``slotref.training.resolve``) and checked once, however it arrives:
flags, ``--config FILE``, a stored run or ``TrainConfig(...)``."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from slotref.training.config import ConfigError, TrainConfig, TrainingError, config_from_stored
from slotref.training.resolve import OPTION_FIELDS, RESUME_MAY_CHANGE, OptionError, resolve_config
from tests.tool.test_commands import assert_one_line_error, invoke

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def printed(*args):
    result = invoke("train", "--print-config", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# --------------------------------------------------------------------------
# The presets and options resolve as they always did.

GOLDEN = json.loads((FIXTURES / "print_config.json").read_text())


@pytest.mark.parametrize("args", sorted(GOLDEN))
def test_print_config_prints_the_configs_recorded_for_the_presets_and_options(args):
    """``tests/fixtures/print_config.json``: the output of ``train --print-config ARGS`` before the
    configuration was decided in one place; a change there is a change of every run."""
    assert printed(*shlex.split(args)) == GOLDEN[args]


@pytest.mark.parametrize("task,extra", [("setpred", []), ("discovery", []), ("setpred", ["--preset", "paper"]),
                                        ("discovery", ["--dataset", "multi-dsprites"])])
def test_a_config_files_steps_scale_the_budget_as_the_steps_option(task, extra, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": task, "steps": 50}))
    by_flag = printed("--task", task, "--steps", 50, *extra)
    assert printed("--config", path, *extra) == by_flag
    assert by_flag["warmup_steps"] < printed("--task", task, *extra)["warmup_steps"]
    path.write_text(json.dumps({"task": task, "steps": 50, "warmup_steps": 7}))  # a key given is kept
    assert printed("--config", path, *extra) == {**by_flag, "warmup_steps": 7}


def test_the_resolution_is_a_function_of_its_arguments():
    config, notes = resolve_config("setpred", flags={"--num-slots": 5, "--steps": 100})
    assert config.model.num_slots == 5 and config.steps == 100 and config.curriculum == ""
    assert notes and "curriculum" in notes[0]
    with pytest.raises(OptionError, match="seed") as err:
        resolve_config(flags={"--seed": -1})
    assert err.value.option == "--seed"


def test_an_experiment_run_resolves_as_train_resolves_its_options():
    from slotref.experiments.plans import Options, configurations
    from slotref.experiments.runner import run_config

    opts = Options(steps=100)
    configs, _ = configurations("table3", opts)
    flags = {"--steps": 100, "--seed": 2, "--device": "cpu", "--model": "slot-mlp"}
    assert run_config(configs[1], opts, 2) == resolve_config("setpred", "clevr-shapes", "cpu", flags=flags)[0]


def test_resume_keeps_the_stored_config_but_what_a_resume_may_change(tmp_path):
    from dataclasses import replace

    from slotref.training.resolve import resume_config

    saved = resolve_config(flags={"--steps": 100})[0]
    (tmp_path / "config.json").write_text(saved.to_json())
    config, notes = resume_config(tmp_path, flags={"--steps": 200, "--data-dir": "elsewhere", "--seed": 0})
    assert config == replace(saved, steps=200, data_dir="elsewhere") and len(notes) == 2
    with pytest.raises(OptionError, match="--lr 0.01: the run .* was trained with --lr 0.0004"):
        resume_config(tmp_path, flags={"--lr": 0.01})


def test_every_option_of_train_sets_a_field_or_says_how_to_run():
    from slotref.cli.train import train

    options = {p.opts[0] for p in train.params}
    how_to_run = {"--task", "--dataset", "--preset", "--config", "--print-config", "--fast-dev-run", "--out",
                  "--resume", "--logger", "--quiet", "--procs", "--kernels"}
    assert options - how_to_run == set(OPTION_FIELDS)


def test_every_resume_refusal_comes_from_the_one_policy():
    fields = set(OPTION_FIELDS.values())
    assert {"steps", "device", "data_dir"} <= fields and set(RESUME_MAY_CHANGE) <= set(TrainConfig.__dataclass_fields__)
    assert not any(f.startswith("model.") for f in RESUME_MAY_CHANGE)


# --------------------------------------------------------------------------
# One validation: a bad value is one line naming the field, exit 2, nothing written.

BAD_CONFIGS = [
    ({"model": 5}, "model"), ({"dataset": 5}, "dataset"), ({"steps": "ten"}, "steps"), ({"log_every": 0}, "log_every"),
    ({"model": {"num_slots": 1e8}}, "num_slots"), ({"num_slots": 1e8}, "num_slots"),
    ({"model": {"encoder_channels": 100000}}, "encoder_channels"), ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": -1}, "learning_rate"), ({"eval_size": -1}, "eval_size"), ({"seed": 1.5}, "seed"),
    ({"steps": 1e30}, "steps"), ({"curriculum": "slots=1:"}, "curriculum"), ({"curriculum": "slots=x"}, "slots"),
    ({"curriculum": "slots=100000000"}, "slots"), ({"task": "nope"}, "task"), ({"task": 5}, "task"),
    ({"model": {"slot_attention": []}}, "slot_attention"), ({"model": {"slot_attention": {"update": "lstm"}}}, "update"),
    ({"eval_every": 10**9}, "eval_every"), ({"seed": 2**64}, "seed"), ({"data_zoom": 0}, "data_zoom"),
    ([1, 2], "object"),
]


@pytest.mark.parametrize("content,field", BAD_CONFIGS, ids=[json.dumps(c)[:40] for c, _ in BAD_CONFIGS])
def test_a_bad_config_file_is_one_line_naming_the_field(content, field, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    for args in (["--print-config"], ["--out", tmp_path / "run", "--data-dir", tmp_path / "data", "--quiet"]):
        result = invoke("train", "--config", path, *args)
        assert_one_line_error(result, "--config", field)
        assert result.exit_code == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("content,field", [c for c in BAD_CONFIGS if isinstance(c[0], dict) and
                                           len(c[0]) == 1 and not isinstance(next(iter(c[0].values())), dict)
                                           and next(iter(c[0])) not in ("num_slots", "curriculum", "task")])
def test_the_python_api_and_a_stored_run_refuse_what_the_config_file_refuses(content, field):
    with pytest.raises(ConfigError, match=field) as err:
        TrainConfig(**content)
    assert err.value.key == next(iter(content)) and "\n" not in str(err.value)
    with pytest.raises(TrainingError, match=rf"config\.{field}"):
        config_from_stored({**json.loads(TrainConfig().to_json()), **content}, "run/config.json")


def deeply_nested(path):
    path.write_text("[" * 100_000 + "]" * 100_000)


def fifo(path):
    os.mkfifo(path)


@pytest.mark.parametrize("make", [deeply_nested, fifo, lambda p: p.write_bytes(b"\xff\xfe{"),
                                  lambda p: p.write_text('{"steps": 1' + " " * 2**21 + "}")],
                         ids=["deeply-nested", "fifo", "not-utf8", "huge"])
def test_a_config_file_that_is_not_a_small_json_file_is_one_line(make, tmp_path):
    path = tmp_path / "c.json"
    make(path)
    assert_one_line_error(invoke("train", "--config", path, "--print-config"), "--config", str(path))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_config_file_that_is_a_device_is_refused_unread():
    assert_one_line_error(invoke("train", "--config", "/dev/zero", "--print-config"), "not a regular file")


@pytest.mark.parametrize("args,option", [(["--seed", -1], "--seed"), (["--seed", 2**64], "--seed"),
                                         (["--curriculum", "slots=1:10; slots=2"], "--curriculum"),
                                         (["--num-slots", 1], "--num-slots")])
def test_a_bad_option_is_one_line_naming_it_before_anything_is_written(args, option, tmp_path):
    for extra in (["--print-config"], ["--out", tmp_path / "run", "--data-dir", tmp_path / "data"]):
        result = invoke("train", *args, *extra)
        assert_one_line_error(result, option)
        assert result.exit_code == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("dataset", ["tetrominoes", "multi-dsprites"])
def test_set_prediction_on_a_dataset_without_labels_is_one_line_before_anything_is_written(dataset, tmp_path):
    result = invoke("train", "--dataset", dataset, "--out", tmp_path / "run", "--data-dir", tmp_path / "data")
    assert_one_line_error(result, "--task discovery")
    assert result.exit_code == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_a_config_file_with_resume_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{}")
    result = invoke("train", "--config", path, "--resume", "--out", tmp_path / "run")
    assert_one_line_error(result, "--config", "resume")
    assert result.exit_code == 2


def test_the_config_checks_hold_for_a_built_config_and_for_replace():
    from dataclasses import replace

    with pytest.raises(ConfigError, match="model.num_slots"):
        replace(TrainConfig(), model=replace(TrainConfig().model, num_slots=10**6))
    with pytest.raises(ConfigError, match="data_min_objects"):
        TrainConfig(data_min_objects=5, data_max_objects=3)
