"""The training loop as a specification (``docs/spec.md``: training, checkpoints, runs).

Tiny end-to-end runs on tiny generated files: what a run directory holds, a
checkpoint readable with plain h5py, exact resume (bitwise on the CPU),
Ctrl-C, NaN loss, and the one-line errors of bad run directories, checkpoints
and dataset files.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from slotref.data.hdf5 import DatasetError, write_dataset
from slotref.models import discovery_config, setpred_config
from slotref.slot_attention import SlotAttentionConfig
from slotref.training.config import DivergenceError, TrainConfig, TrainingError, config_from_stored
from slotref.training.data import BatchOrder, resolve_dataset
from slotref.training import load_run, train
from slotref.training.presets import preset_config
from slotref.training.diagnostics import collapse_diagnostics, looks_collapsed
from slotref.training.tasks import SetPredictionTask

SA16 = SlotAttentionConfig(input_size=16, slot_size=16, mlp_hidden_size=32)
SA8 = SlotAttentionConfig(input_size=8, slot_size=8, mlp_hidden_size=16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny generated files: CLEVR-like scenes at 32x32 with 2-4 objects, Tetrominoes at 35x35."""
    d = tmp_path_factory.mktemp("data")
    write_dataset("clevr-shapes", d / "clevr.h5", 96, 0, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    write_dataset("clevr-shapes", d / "clevr-other.h5", 96, 1, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    write_dataset("tetrominoes", d / "tetrominoes.h5", 48, 0, progress=False, workers=1)
    return d


def setpred_run(data_dir, **overrides) -> TrainConfig:
    """Set prediction at 32x32 with 16 channels, K = 4; every step logged (log_every 1)."""
    model = setpred_config(32, num_slots=4, encoder_channels=16, mlp_size=16, head_hidden=16, slot_attention=SA16)
    base = dict(dataset=str(data_dir / "clevr.h5"), preset="test", steps=6, batch_size=8, eval_every=3,
                checkpoint_every=2, eval_size=16, log_every=1, warmup_steps=2, decay_steps=100, max_objects=4,
                model=model)
    return TrainConfig(**{**base, **overrides})


def assert_config_refuses(key: str, value, message: str) -> None:
    """``TrainConfig(key=value)`` and a stored config.json holding it are one-line errors."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{key: value})
    stored = json.loads(TrainConfig().to_json())
    stored[key] = value
    with pytest.raises(TrainingError, match=rf"config\.{key}|{message}"):
        config_from_stored(stored, "run/config.json")


def discovery_run(data_dir, **overrides) -> TrainConfig:
    model = discovery_config("tetrominoes", encoder_channels=8, mlp_size=8, decoder_channels=8, slot_attention=SA8)
    base = dict(task="discovery", dataset=str(data_dir / "tetrominoes.h5"), preset="test", steps=3, batch_size=4,
                eval_every=3, checkpoint_every=3, eval_size=8, log_every=1, warmup_steps=2, decay_steps=100,
                model=model)
    return TrainConfig(**{**base, **overrides})


def read_checkpoint(path) -> dict:
    """Every dataset of an HDF5 file by name, and its attributes, with plain h5py."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
        out["attrs"] = dict(f.attrs)
    return out


def records(run_dir) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        r = json.loads(line)
        r.pop("time", None)
        r.pop("images_per_s", None)
        out.append(r)
    return out


def assert_same_checkpoints(a, b):
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert ca["attrs"]["step"] == cb["attrs"]["step"]
    names = sorted(k for k in ca if k != "attrs")
    assert names == sorted(k for k in cb if k != "attrs")
    for name in names:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)  # bitwise on the CPU


class LossHook:
    """Wraps the task's loss: ``action(call_index, loss)`` may replace the loss or raise."""

    def __init__(self, monkeypatch, task_cls, action):
        self.calls = 0
        original = task_cls.loss

        def loss(task, params, images, targets, noise, *options):   # options: set prediction's coord_weight
            value = original(task, params, images, targets, noise, *options)
            self.calls += 1
            return action(self.calls - 1, value)

        monkeypatch.setattr(task_cls, "loss", loss)


# --------------------------------------------------------------------------
# A run and what it leaves behind.

@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    """Six steps without interruption: the reference for every resume test."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = train(setpred_run(data_dir), run_dir, progress=False)
    return run_dir, result


def test_a_run_writes_config_metrics_and_checkpoint(straight_run, data_dir):
    run_dir, result = straight_run
    ap_keys = {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"}
    accuracy_keys = {"acc_size", "acc_material", "acc_shape", "acc_color", "acc_all"}
    assert set(result) == ap_keys | accuracy_keys | {"median_distance", "binding"}   # binding: docs/binding.md
    assert all(0.0 <= result[k] <= 1.0 for k in ap_keys | accuracy_keys)
    config = json.loads((run_dir / "config.json").read_text())
    # The device is resolved ($SLOTREF_DEVICE, else cpu) before the config is saved.
    assert TrainConfig.from_dict(config) == replace(setpred_run(data_dir), device="cpu")
    lines = records(run_dir)
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 for r in lines if "loss" in r)
    assert [r["lr"] for r in lines if "loss" in r][0] == 0.0  # warm-up starts at 0 (Table 11)
    evals = [r for r in lines if "eval" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval"] == result


def test_checkpoint_is_readable_with_plain_h5py(straight_run, data_dir):
    run_dir, _ = straight_run
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        assert f.attrs["format"] == "slotref-checkpoint"
        assert f.attrs["step"] == 6 and f.attrs["adam_t"] == 6 and f.attrs["task"] == "setpred"
        assert json.loads(f.attrs["config"])["model"]["num_slots"] == 4
        assert len(f.attrs["dataset_fingerprint"]) == 64
        assert f["params/encoder/convs/0/w"].shape == (5, 5, 3, 16)
        assert f["params/encoder/convs/0/b"].shape == (16,)
        assert f["params/slot_attention/gru/w_input"].ndim == 2
        assert f["params/slot_attention/slots_mu"].shape == (16,)
        assert f["params/head/1/w"].shape == (16, 19)
        assert f["adam/m/encoder/convs/0/w"].shape == (5, 5, 3, 16)
        assert f["adam/v/head/1/b"].shape == (19,)
        assert f["params/encoder/convs/0/w"].dtype == np.float32
    assert not (run_dir / "checkpoint.h5.tmp").exists()


def test_load_run_returns_the_trained_parameters(straight_run):
    run_dir, result = straight_run
    config, be, params, task, val, step = load_run(run_dir)
    assert step == 6 and config.task == "setpred" and len(val) == 9  # 96 // 10 held out
    saved = read_checkpoint(run_dir / "checkpoint.h5")
    np.testing.assert_array_equal(params["head"][1]["w"], saved["params/head/1/w"])
    from slotref.training.binding import evaluate_binding

    assert {**task.evaluate(be, params, val), "binding": evaluate_binding(be, params, config, val)} == result


# --------------------------------------------------------------------------
# Exact resume.

def test_resume_continues_exactly(straight_run, data_dir, tmp_path):
    reference, _ = straight_run
    run_dir = tmp_path / "resumed"
    train(setpred_run(data_dir, steps=3), run_dir, progress=False)
    assert read_checkpoint(run_dir / "checkpoint.h5")["attrs"]["step"] == 3
    result = train(setpred_run(data_dir, steps=6), run_dir, resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    assert records(run_dir) == records(reference)
    assert result == records(reference)[-1]["eval"]


def test_ctrl_c_saves_the_step_in_progress_and_resume_continues_exactly(straight_run, data_dir, tmp_path,
                                                                        monkeypatch):
    reference, _ = straight_run
    run_dir = tmp_path / "interrupted"

    def ctrl_c_during_the_fourth_step(i, loss):
        if i == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the loop's handler: finish this step, save, stop
        return loss

    LossHook(monkeypatch, SetPredictionTask, ctrl_c_during_the_fourth_step)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt, match="after step 4"):
        train(setpred_run(data_dir), run_dir, progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert read_checkpoint(run_dir / "checkpoint.h5")["attrs"]["step"] == 4
    monkeypatch.undo()
    train(setpred_run(data_dir), run_dir, resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    assert records(run_dir) == records(reference)


def test_an_immediate_interrupt_keeps_the_last_checkpoint_and_resume_is_exact(straight_run, data_dir, tmp_path,
                                                                             monkeypatch):
    # A KeyboardInterrupt inside a step (a second Ctrl-C, or outside the main
    # thread) abandons that step; the last periodic checkpoint stays whole.
    reference, _ = straight_run
    run_dir = tmp_path / "killed"

    def interrupt(i, loss):
        if i == 4:
            raise KeyboardInterrupt
        return loss

    LossHook(monkeypatch, SetPredictionTask, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(setpred_run(data_dir), run_dir, progress=False)
    assert read_checkpoint(run_dir / "checkpoint.h5")["attrs"]["step"] == 4
    assert not (run_dir / "checkpoint.h5.tmp").exists()
    monkeypatch.undo()
    train(setpred_run(data_dir), run_dir, resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    # Steps 1-4 were logged before the interruption; the resumed run logs 5 and 6.
    assert [r for r in records(run_dir) if "loss" in r] == [r for r in records(reference) if "loss" in r]


def test_batch_order_depends_only_on_seed_and_step():
    order = BatchOrder(10, 4, seed=3)
    epoch = np.concatenate([order(0), order(1), order(2)])          # 12 positions over 10 examples
    assert sorted(epoch[:10]) == list(range(10))                    # an epoch is a permutation
    np.testing.assert_array_equal(BatchOrder(10, 4, seed=3)(2), order(2))  # no hidden state
    assert not np.array_equal(BatchOrder(10, 4, seed=4)(0), order(0))


# --------------------------------------------------------------------------
# NaN loss.

def nan_from(step):
    return lambda i, loss: loss * np.nan if i >= step else loss


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(data_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "nan"
    LossHook(monkeypatch, SetPredictionTask, nan_from(3))
    with pytest.raises(DivergenceError, match=r"loss became nan at step 3") as err:
        train(setpred_run(data_dir), run_dir, progress=False)
    assert "\n" not in str(err.value) and str(run_dir / "checkpoint.h5") in str(err.value)
    saved = read_checkpoint(run_dir / "checkpoint.h5")
    assert saved["attrs"]["step"] == 2
    assert all(np.isfinite(v).all() for k, v in saved.items() if k != "attrs")


def test_nan_between_log_steps_is_caught_before_the_checkpoint_is_written(data_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "nan-unlogged"
    LossHook(monkeypatch, SetPredictionTask, nan_from(2))
    # NaN parameters after step 3 are caught by the check before that step's
    # evaluation (eval_every=3), before the checkpoint of step 4 could be written.
    with pytest.raises(DivergenceError, match=r"not finite at step 3") as err:
        train(setpred_run(data_dir, log_every=100), run_dir, progress=False)
    assert "\n" not in str(err.value)
    assert read_checkpoint(run_dir / "checkpoint.h5")["attrs"]["step"] == 2


# --------------------------------------------------------------------------
# Bad run directories, checkpoints and files: one-line errors.

def one_line(err) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_a_new_run_refuses_a_directory_that_holds_a_checkpoint(straight_run, data_dir):
    run_dir, _ = straight_run
    before = (run_dir / "checkpoint.h5").read_bytes()
    with pytest.raises(TrainingError, match="--resume") as err:
        train(setpred_run(data_dir), run_dir, progress=False)
    assert str(run_dir) in one_line(err)
    assert (run_dir / "checkpoint.h5").read_bytes() == before


def test_resume_into_a_run_of_another_task_is_refused(straight_run, data_dir):
    run_dir, _ = straight_run
    with pytest.raises(TrainingError, match="setpred run") as err:
        train(discovery_run(data_dir), run_dir, resume=True, progress=False)
    one_line(err)


def test_resume_with_nothing_to_resume_is_refused(tmp_path, data_dir):
    with pytest.raises(TrainingError, match="nothing to resume") as err:
        train(setpred_run(data_dir), tmp_path / "empty", resume=True, progress=False)
    one_line(err)


def test_checkpoint_of_another_architecture_names_the_parameter(straight_run, data_dir, tmp_path):
    source, _ = straight_run
    run_dir = tmp_path / "other-shapes"
    run_dir.mkdir()
    other = replace(setpred_run(data_dir), model=replace(setpred_run(data_dir).model, encoder_channels=8))
    (run_dir / "config.json").write_text(other.to_json())
    (run_dir / "checkpoint.h5").write_bytes((source / "checkpoint.h5").read_bytes())
    with pytest.raises(TrainingError, match=r"params/encoder/convs/0/w: has shape \(5, 5, 3, 16\), "
                                            r"expected \(5, 5, 3, 8\)") as err:
        train(other, run_dir, resume=True, progress=False)
    one_line(err)


def test_checkpoint_of_another_dataset_is_refused(straight_run, data_dir, tmp_path):
    source, _ = straight_run
    run_dir = tmp_path / "other-data"
    run_dir.mkdir()
    config = setpred_run(data_dir, dataset=str(data_dir / "clevr-other.h5"))
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "checkpoint.h5").write_bytes((source / "checkpoint.h5").read_bytes())
    with pytest.raises(TrainingError, match="another dataset") as err:
        train(config, run_dir, resume=True, progress=False)
    one_line(err)


def test_a_missing_dataset_file_is_a_one_line_error(tmp_path):
    config = replace(TrainConfig(), dataset=str(tmp_path / "nowhere.h5"))
    with pytest.raises(TrainingError, match="nowhere.h5") as err:
        train(config, tmp_path / "run", progress=False)
    one_line(err)


def test_a_truncated_dataset_file_is_a_one_line_error(data_dir, tmp_path):
    path = tmp_path / "truncated.h5"
    whole = (data_dir / "clevr.h5").read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DatasetError, match="truncated.h5") as err:
        train(setpred_run(data_dir, dataset=str(path)), tmp_path / "run", progress=False)
    one_line(err)


def test_a_file_of_another_resolution_is_a_one_line_error(data_dir, tmp_path):
    config = setpred_run(data_dir, model=replace(setpred_run(data_dir).model, resolution=(64, 64)))
    with pytest.raises(TrainingError, match=r"32x32.*64x64") as err:
        train(config, tmp_path / "run", progress=False)
    one_line(err)


def test_scenes_with_more_objects_than_target_rows_are_refused(data_dir, tmp_path):
    with pytest.raises(TrainingError, match="max_objects=3") as err:
        train(setpred_run(data_dir, max_objects=3), tmp_path / "run", progress=False)
    one_line(err)


def test_a_file_without_object_properties_cannot_train_set_prediction(data_dir, tmp_path):
    config = setpred_run(data_dir, dataset=str(data_dir / "tetrominoes.h5"),
                         model=replace(setpred_run(data_dir).model, resolution=(35, 35)))
    with pytest.raises(DatasetError, match="objects") as err:
        train(config, tmp_path / "run", progress=False)
    one_line(err)


def test_load_run_of_a_non_run_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint.h5") as err:
        load_run(tmp_path)
    one_line(err)


# --------------------------------------------------------------------------
# Object discovery through the same loop.

def test_tiny_discovery_run(data_dir, tmp_path):
    run_dir = tmp_path / "discovery"
    result = train(discovery_run(data_dir), run_dir, progress=False)
    assert 0.0 <= result["fg_ari"] <= 1.0 or np.isnan(result["fg_ari"])
    assert np.isfinite(result["mse"])
    assert len(result["slot_area_sorted"]) == 4
    assert {"attention_entropy", "slot_cosine"} <= set(result)
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        assert f.attrs["step"] == 3 and f.attrs["task"] == "discovery"
        assert f["params/decoder/deconvs/0/w"].shape == (5, 5, 8, 8)
        assert f["params/encoder/convs/0/w"].shape == (5, 5, 3, 8)
    lines = records(run_dir)
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
    assert lines[-1]["eval"] == result
    # The discovery run dir cannot be resumed as set prediction either.
    with pytest.raises(TrainingError, match="discovery run"):
        train(setpred_run(data_dir), run_dir, resume=True, progress=False)


@pytest.mark.parametrize("collapsed", [True, False])
def test_a_run_that_looks_collapsed_says_so_at_its_evaluation(data_dir, tmp_path, capsys, monkeypatch, collapsed):
    seen = []

    def judge(diag):
        seen.append(diag)
        return ["entropy"] if collapsed else []
    monkeypatch.setattr("slotref.training.binding.WARN_FROM_STEP", 0)
    monkeypatch.setattr("slotref.training.binding.unbound", judge)
    train(discovery_run(data_dir), tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert seen and set(seen[0]) == {"entropy", "slot_cosine", "slot_change"}   # the evaluation's binding
    assert ("warning: slots have not bound by step 3" in out) == collapsed


def test_collapse_diagnostics_tell_objects_from_stripes():
    n, k, h, w, d = 2, 3, 4, 6, 5
    # Objects: each slot wins one third of the image, attends to its own inputs, and slots differ.
    winner = np.repeat(np.arange(k), h * w // k).reshape(h, w)
    masks = np.broadcast_to((winner == np.arange(k)[:, None, None]).astype(float), (n, k, h, w))
    slots = np.broadcast_to(np.eye(k, d), (n, k, d))
    attention = np.broadcast_to(masks.reshape(n, 1, k, h * w).transpose(0, 1, 3, 2), (n, 3, h * w, k))
    good = collapse_diagnostics(masks, slots, attention)
    assert good["slot_area_sorted"] == pytest.approx([1 / 3] * 3, abs=1e-4)
    assert good["attention_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert good["slot_cosine"] == pytest.approx(0.0, abs=1e-9)
    assert not looks_collapsed(good)
    # Stripes: attention split evenly over slots, near-identical slots.
    even = np.full((n, 3, h * w, k), 1 / k)
    same = np.ones((n, k, d))
    bad = collapse_diagnostics(masks, same, even)
    assert bad["attention_entropy"] == pytest.approx(1.0)
    assert bad["slot_cosine"] == pytest.approx(1.0)
    assert looks_collapsed(bad)


def test_the_set_prediction_cpu_preset_can_draw_its_scenes():
    # The CPU preset looks through a zoomed camera: its largest scenes must still fit the view.
    from slotref.data.generators import render
    config = preset_config("setpred")
    assert (config.data_zoom, config.data_resolution, config.model.resolution) == (3.0, 32, (32, 32))
    n = config.data_max_objects
    out = render("clevr-shapes", 0, 0, 8, config.data_resolution, min_objects=n, max_objects=n, zoom=config.data_zoom)
    assert (out["num_objects"] == n).all() and config.model.num_slots >= n == config.max_objects


def test_presets_are_the_papers_table_11():
    paper = preset_config("setpred", preset="paper")
    assert (paper.steps, paper.batch_size, paper.learning_rate, paper.warmup_steps, paper.decay_steps) == \
        (150_000, 512, 4e-4, 1_000, 50_000)
    assert paper.model.resolution == (128, 128) and paper.model.num_slots == 10
    discovery = preset_config("discovery", "tetrominoes", "paper")
    assert (discovery.steps, discovery.batch_size, discovery.warmup_steps, discovery.decay_steps) == \
        (500_000, 64, 10_000, 100_000)
    assert discovery.model.resolution == (35, 35) and discovery.model.num_slots == 4
    # The official code's Glorot initialisers at the paper's settings and for set prediction on the CPU;
    # PyTorch's for the discovery CPU presets, drawn again when the slots have not bound after 1,500
    # steps (training.restart). The other presets never draw again.
    cpu = [preset_config("discovery", d, "cpu") for d in ("tetrominoes", "multi-dsprites")]
    assert paper.model.init == discovery.model.init == preset_config("setpred").model.init == "glorot"
    assert {c.model.init for c in cpu} == {"torch"}
    assert [c.restart_unbound for c in [paper, discovery, preset_config("setpred"), *cpu]] == [0, 0, 0, 1500, 1500]
    with pytest.raises(ValueError, match="preset"):
        preset_config("setpred", preset="huge")
    with pytest.raises(ValueError, match="task"):
        preset_config("detection")


def test_built_in_data_is_made_once_with_the_configs_options(tmp_path):
    config = replace(preset_config("setpred"), data_dir=str(tmp_path), data_size=4, data_resolution=32,
                     data_min_objects=1, data_max_objects=2, data_zoom=2.0)
    path = resolve_dataset(config)
    assert path.name == "clevr-shapes-32px-n4-max2-min1-zoom2-s0.h5"
    meta = json.loads(h5py.File(path, "r").attrs["config"])
    assert (meta["zoom"], meta["min_objects"], meta["max_objects"], meta["resolution"]) == (2.0, 1, 2, 32)
    plain = resolve_dataset(replace(config, data_zoom=1.0))
    assert plain.name == "clevr-shapes-32px-n4-max2-min1-s0.h5" and plain != path
