"""A short run evaluates and checkpoints on a budget proportional to its length (``presets.scale_budget``),
however the length arrives: ``train --steps``, a config file's ``steps`` or ``experiment --steps``."""

from __future__ import annotations

import json

import pytest

from slotref.training.presets import MIN_CHECKPOINT_EVERY, MIN_EVAL_SIZE, preset_config
from slotref.training.resolve import resolve_config


def evaluations(config) -> int:
    """How many evaluations the training loop makes: every ``eval_every`` steps and at the last step."""
    return config.steps // config.eval_every + (config.steps % config.eval_every != 0)


@pytest.mark.parametrize("task", ["setpred", "discovery"])
def test_a_30_step_run_evaluates_on_a_budget_proportional_to_its_length(task):
    full = preset_config(task)
    config, _ = resolve_config(task, flags={"--steps": 30})
    examples = min(config.eval_size, config.data_size // 10)  # the validation split (training.data)
    # Between two evaluations the run trains on at least as many examples as an evaluation reads.
    assert config.eval_every * config.batch_size >= examples or config.eval_every == config.steps
    assert evaluations(config) <= 2
    # The last evaluation reads the whole validation split, which holds at most a quarter of the scenes the
    # run trains on (at least MIN_EVAL_SIZE); the data are the full run's.
    assert config.eval_size == min(full.eval_size, max(MIN_EVAL_SIZE, 30 * config.batch_size // 4))
    assert config.eval_size < full.eval_size
    assert config.data_size == full.data_size
    # A checkpoint at the end (and on Ctrl-C), not every step.
    assert config.checkpoint_every == 30


def test_the_set_prediction_preset_at_30_steps_evaluates_once_at_its_end():
    config, _ = resolve_config("setpred", flags={"--steps": 30})
    assert (config.eval_every, config.checkpoint_every) == (30, 30)
    assert evaluations(config) == 1


def test_longer_scaled_runs_keep_the_presets_proportions():
    config, _ = resolve_config("setpred", flags={"--steps": 1250})  # a tenth of the preset
    assert config.eval_size == preset_config("setpred").eval_size
    assert (config.eval_every, config.checkpoint_every) == (100, MIN_CHECKPOINT_EVERY)
    twice = 2 * preset_config("discovery").steps
    longer, _ = resolve_config("discovery", flags={"--steps": twice})
    assert (longer.eval_every, longer.checkpoint_every) == (1_000, 500)


def test_experiment_and_config_file_short_runs_get_the_same_budget(tmp_path):
    from slotref.experiments.plans import Options, configurations
    from slotref.experiments.runner import run_config

    by_flag, _ = resolve_config("discovery", flags={"--steps": 30})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "discovery", "steps": 30}))
    by_file, _ = resolve_config(config_file=path)
    assert (by_file.eval_every, by_file.checkpoint_every) == (by_flag.eval_every, by_flag.checkpoint_every)
    opts = Options(steps=30, seeds=1)
    for configuration in configurations("iterations", opts)[0]:
        config = run_config(configuration, opts, 0)
        alone, _ = resolve_config(configuration.task, configuration.dataset, flags={"--steps": 30})
        assert (config.eval_every, config.checkpoint_every) == (alone.eval_every, alone.checkpoint_every)
        assert evaluations(config) <= 2
