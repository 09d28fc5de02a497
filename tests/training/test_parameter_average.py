"""The parameter average (``--ema``, slotref/training/average.py ParameterAverage): its arithmetic, where a run
starts it, that evaluation and the checkpoint's model read it, exact resume, and one-line errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import slotref
from slotref.flat import FlatTree
from slotref.optim import Adam
from slotref.training.average import ParameterAverage
from slotref.training import tasks as train_module
from slotref.training.config import TrainConfig, TrainingError, config_from_stored
from slotref.training import load_run, train
from slotref.training.presets import fast_dev_run, preset_config, scale_budget
from tests.training.test_curriculum import data_dir  # noqa: F401 - the fixture: 96 scenes of 2-4 objects at 32x32
from tests.training.test_train import assert_config_refuses, assert_same_checkpoints, read_checkpoint, records, setpred_run

CURRICULUM = "slots=2,objects=2:2; slots=4,reset_adam"   # stages start at steps 0 and 2


def test_an_update_moves_the_average_a_fraction_of_the_way_to_the_parameters(rng):
    tree = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": [rng.normal(size=5).astype(np.float64)]}
    params = FlatTree.from_tree(tree)
    average = ParameterAverage.start(params)
    start = {"w": tree["w"].copy(), "b": [tree["b"][0].copy()]}
    for _, view in [("w", params.tree["w"]), ("b", params.tree["b"][0])]:
        view += 1.0                                                  # the parameters move; the average is a copy
    ParameterAverage(0.75).update(average, params)
    for got, before, now in [(average.tree["w"], start["w"], params.tree["w"]),
                             (average.tree["b"][0], start["b"][0], params.tree["b"][0])]:
        np.testing.assert_allclose(got, 0.75 * before + 0.25 * now, rtol=1e-6)
        assert got.dtype == before.dtype


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 2.0])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        ParameterAverage(decay)


@pytest.mark.parametrize("ema", [1.0, -0.1, True, "0.9", float("nan")])
def test_a_config_with_an_ema_outside_0_1_is_a_one_line_error(ema):
    assert_config_refuses("ema", ema, "ema must be 0")


def test_configs_saved_before_the_average_existed_load_without_one():
    stored = json.loads(TrainConfig().to_json())
    stored.pop("ema")
    assert config_from_stored(stored, "old.json").ema == 0.0


def recorded_run(data_dir, run_dir, monkeypatch, **overrides):
    """Train; return the parameters after every step and the parameters each evaluation read."""
    steps, evaluated = [], []
    update, evaluate = Adam.update, train_module.SetPredictionTask.evaluate

    def recording_update(self, params, grads, state, lr):
        out = update(self, params, grads, state, lr)
        steps.append({k: v.copy() for k, v in params.buffers.items()})
        return out

    def recording_evaluate(self, be, params, split, **kw):
        evaluated.append(FlatTree.from_tree(params).buffers)
        return evaluate(self, be, params, split, **kw)

    monkeypatch.setattr(Adam, "update", recording_update)
    monkeypatch.setattr(train_module.SetPredictionTask, "evaluate", recording_evaluate)
    train(setpred_run(data_dir, **overrides), run_dir, progress=False)
    return steps, evaluated


def test_a_run_averages_from_each_stages_first_step_and_evaluates_the_average(data_dir, tmp_path, monkeypatch):
    decay = 0.5
    steps, evaluated = recorded_run(data_dir, tmp_path / "ema", monkeypatch, ema=decay, curriculum=CURRICULUM)
    assert len(steps) == 6 and len(evaluated) == 2                    # eval_every 3: after steps 3 and 6
    expected = []
    for s, p in enumerate(steps):                                     # restarted at step 2, the second stage
        a = {k: v.copy() for k, v in p.items()} if s in (0, 2) else \
            {k: a[k] + np.float32(1 - decay) * (p[k] - a[k]) for k in p}
        expected.append(a)
    for got, want in zip(evaluated, (expected[2], expected[5])):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(evaluated[1]["float32"], steps[5]["float32"])  # the average, not the parameters
    ckpt = read_checkpoint(tmp_path / "ema" / "checkpoint.h5")
    layout = FlatTree.from_tree(load_run(tmp_path / "ema")[2]).buffers
    np.testing.assert_allclose(layout["float32"], expected[5]["float32"], rtol=1e-6, atol=1e-7)
    config, params = slotref.load_model(tmp_path / "ema")
    assert config.ema == decay
    np.testing.assert_array_equal(FlatTree.from_tree(params).buffers["float32"], layout["float32"])
    assert any(name.startswith("average/") for name in ckpt) and any(name.startswith("params/") for name in ckpt)


def test_without_ema_a_run_evaluates_its_parameters_and_stores_no_average(data_dir, tmp_path, monkeypatch):
    steps, evaluated = recorded_run(data_dir, tmp_path / "plain", monkeypatch)
    np.testing.assert_array_equal(evaluated[-1]["float32"], steps[-1]["float32"])
    assert not any(name.startswith("average/") for name in read_checkpoint(tmp_path / "plain" / "checkpoint.h5"))


@pytest.mark.parametrize("stop", [1, 2, 3])   # before, at and after the stage boundary (step 2)
def test_resume_with_an_average_is_exact(data_dir, tmp_path, stop):
    reference = tmp_path / "straight"
    train(setpred_run(data_dir, ema=0.9, curriculum=CURRICULUM), reference, progress=False)
    run_dir = tmp_path / "resumed"
    train(setpred_run(data_dir, ema=0.9, curriculum=CURRICULUM, steps=stop, checkpoint_every=1), run_dir,
          progress=False)
    train(setpred_run(data_dir, ema=0.9, curriculum=CURRICULUM), run_dir, resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    kept = lambda r: "loss" in r or r["step"] in (3, 6)  # noqa: E731 - the short run also evaluates at its end
    assert [r for r in records(run_dir) if kept(r)] == [r for r in records(reference) if kept(r)]


def test_a_checkpoint_of_an_averaging_run_without_its_average_is_a_one_line_error(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(setpred_run(data_dir, ema=0.9, steps=2), run_dir, progress=False)
    with h5py.File(run_dir / "checkpoint.h5", "a") as f:
        del f["average"]
    for load in (lambda: load_run(run_dir), lambda: slotref.load_model(run_dir),
                 lambda: train(setpred_run(data_dir, ema=0.9, steps=4), run_dir, resume=True, progress=False)):
        with pytest.raises(TrainingError, match=r"checkpoint\.h5: average/.*missing") as err:
            load()
        assert "\n" not in str(err.value)


def test_a_shorter_or_longer_budget_scales_the_span_of_the_presets_average():
    config = preset_config("setpred", preset="cpu")
    assert config.ema == 0.999                                   # about the last 1,000 of 12,500 steps
    assert scale_budget(config, 1_250).ema == 0.99               # the last 100 of 1,250
    assert scale_budget(config, 25_000).ema == 0.9995
    assert fast_dev_run(config).ema == 0.5                       # at least two steps
    discovery = preset_config("discovery", preset="cpu")
    assert discovery.ema == 0.999 and scale_budget(discovery, 1_100).ema == 0.99   # the last 100 of 1,100
    for task in ("setpred", "discovery"):                        # the paper reports its last parameters
        assert preset_config(task, preset="paper").ema == 0.0
