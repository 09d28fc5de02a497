"""T at test time (``train --eval-iters``, ``TrainConfig.eval_iterations``): validation, the reported
evaluation, ``eval`` and ``viz`` run the model with it; a run without it tests with the T it trains with."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from slotref.cli.common import result_table
from slotref.experiments.plans import with_model
from slotref.training.config import TrainConfig, config_from_stored
from slotref.training import load_run, train
from slotref.training.presets import preset_config
from slotref.training.tasks import SetPredictionTask
from tests.tool.test_cli import assert_one_line_error, invoke
from tests.training.test_curriculum import data_dir  # noqa: F401 - the fixture: 96 scenes of 2-4 objects at 32x32
from tests.training.test_train import assert_config_refuses, records, setpred_run


@pytest.mark.parametrize("t", [0, 101, True, 2.5, "5"])
def test_a_config_with_eval_iterations_outside_1_100_is_a_one_line_error(t):
    assert_config_refuses("eval_iterations", t, "eval_iterations must be")


def test_configs_saved_before_eval_iterations_existed_test_with_their_training_t():
    stored = json.loads(replace(TrainConfig(), model=replace(TrainConfig().model, num_iterations=4)).to_json())
    stored.pop("eval_iterations")
    config = config_from_stored(stored, "old.json")
    assert config.eval_iterations is None and config.test_iterations == 4


@pytest.fixture(scope="module")
def run_t5(data_dir, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("t5") / "run"
    train(setpred_run(data_dir, eval_iterations=5), run_dir, progress=False)
    return run_dir


def test_a_run_validates_and_evaluates_with_its_test_time_t(run_t5):
    config, be, params, task, val, _ = load_run(run_t5)
    assert config.model.num_iterations == 3 and config.test_iterations == 5
    plain = SetPredictionTask(replace(config, eval_iterations=None))   # tests with the training T unless told
    at5 = plain.predict(be, params, val, num_iterations=5)[0]
    np.testing.assert_array_equal(task.predict(be, params, val)[0], at5)
    assert not np.allclose(plain.predict(be, params, val)[0], at5)     # T matters to these parameters
    logged = [r["eval"] for r in records(run_t5) if "eval" in r][-1]   # the last validation, at step 6
    expected = plain.evaluate(be, params, val, num_iterations=5)
    for key in ("ap_inf", "ap_1", "acc_all", "median_distance"):
        assert logged[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9)


def test_eval_defaults_to_the_runs_t_and_says_how_it_tested(run_t5):
    default = invoke("eval", run_t5, "--json")
    assert default.exit_code == 0, default.output
    assert json.loads(default.output)["num_iters"] == 5
    at5, at3 = (json.loads(invoke("eval", run_t5, "--json", "--num-iters", t).output) for t in (5, 3))
    assert json.loads(default.output) == at5
    assert at3["num_iters"] == 3
    text = invoke("eval", run_t5).output
    assert "T=5" in text and "evaluated with T = 5 iterations, trained with T = 3" in text
    assert "evaluated with T = " not in invoke("eval", run_t5, "--num-iters", 3).output


def test_the_setpred_cpu_preset_tests_with_five_iterations_and_other_t_drop_it():
    def resolved(*args):
        result = invoke("train", "--task", "setpred", "--print-config", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert preset_config("setpred").test_iterations == 5 and preset_config("setpred").model.num_iterations == 3
    assert resolved()["eval_iterations"] == 5
    assert resolved("--eval-iters", 7)["eval_iterations"] == 7
    assert resolved("--num-iters", 4)["eval_iterations"] is None            # tests with the T it trains with
    assert resolved("--num-iters", 4, "--eval-iters", 6)["eval_iterations"] == 6
    assert resolved("--preset", "paper")["eval_iterations"] is None
    discovery = preset_config("discovery")
    assert (discovery.model.num_iterations, discovery.test_iterations) == (5, 7)
    assert preset_config("discovery", preset="paper").eval_iterations is None
    assert_one_line_error(invoke("train", "--task", "setpred", "--print-config", "--eval-iters", 0), "--eval-iters")


def test_an_experiment_that_trains_with_another_t_tests_with_it():
    config = preset_config("setpred")
    assert with_model(num_iterations=1)(config).test_iterations == 1
    assert with_model(num_iterations=3)(config).test_iterations == 5           # the preset's own T keeps it
    assert with_model(position_embedding=False)(config).test_iterations == 5


def test_the_result_table_names_a_test_time_t_other_than_trainings():
    config, result = preset_config("setpred"), {"ap_inf": 0.5}
    assert "evaluated with T = 5 iterations, trained with T = 3" in result_table("setpred", config, result)
    assert "evaluated with T =" not in result_table("setpred", config, result, test_iterations=3)
    assert "evaluated with T =" not in result_table("setpred", replace(config, eval_iterations=None), result)
