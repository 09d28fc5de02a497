"""The public Python API (docs/api.md): re-exports, dtypes, checkpoints, and the examples as scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slotref
from slotref.backend import tree_leaves
from slotref.data.hdf5 import write_dataset
from slotref.training import TrainConfig, TrainingError
from slotref.training.presets import fast_dev_run, preset_config

ROOT = Path(__file__).resolve().parents[2]


def run_example(name, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                            text=True, env=env, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A checkpoint of the fast-dev-run setpred model (untrained) and a file of its 32x32 scenes."""
    tmp = tmp_path_factory.mktemp("api")
    config = fast_dev_run(preset_config("setpred"))
    params = slotref.init_model(np.random.default_rng(0), config.model, dtype=np.float32)
    slotref.save_model(tmp / "run", config, params, step=7)
    data = tmp / "scenes.h5"
    write_dataset("clevr-shapes", data, 4, 0, resolution=32, min_objects=1, max_objects=3, zoom=3.0,
                  progress=False, workers=1)
    return tmp / "run", data, config, params


def test_the_documented_names_are_importable_from_slotref():
    for name in slotref.__all__:
        assert getattr(slotref, name) is not None, name
    from slotref.slot_attention import SlotAttentionConfig   # the module stays importable by its name
    assert SlotAttentionConfig is slotref.SlotAttentionConfig


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_and_outputs_follow_the_requested_dtype(dtype):
    rng = np.random.default_rng(0)
    config = slotref.SlotAttentionConfig(input_size=6, slot_size=8, mlp_hidden_size=16)
    params = slotref.init_slot_attention(rng, config, dtype=dtype)
    assert {leaf.dtype for _, leaf in tree_leaves(params)} == {np.dtype(dtype)}
    x = rng.standard_normal((2, 5, 6)).astype(dtype)
    slots = slotref.sample_initial_slots(params, slotref.slot_noise(rng, 2, 3, 8, dtype))
    out = slotref.slot_attention(params, x, slots, 2, config)
    assert out.dtype == np.dtype(dtype)
    model = slotref.setpred_config(32, encoder_channels=8, mlp_size=8)
    assert {leaf.dtype for _, leaf in tree_leaves(slotref.init_model(rng, model, dtype=dtype))} == {np.dtype(dtype)}


def test_without_dtype_the_parameters_stay_float64():
    params = slotref.init_slot_attention(np.random.default_rng(0), slotref.SlotAttentionConfig(input_size=4))
    assert {leaf.dtype for _, leaf in tree_leaves(params)} == {np.dtype(np.float64)}


def test_save_and_load_model_round_trip(tiny_run):
    run, _, config, params = tiny_run
    for path in (run, run / "checkpoint.h5"):
        loaded_config, loaded = slotref.load_model(path)
        assert loaded_config == config
        for (name, a), (_, b) in zip(tree_leaves(params), tree_leaves(loaded)):
            np.testing.assert_array_equal(a, b, err_msg=name)
            assert b.dtype == np.float32


def test_load_model_of_something_else_is_a_one_line_error(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        slotref.load_model(tmp_path)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(TrainingError, match="x.h5"):
        slotref.load_model(tmp_path / "x.h5")


def test_the_former_checkpoint_names_still_work_and_name_their_successors(tiny_run, tmp_path):
    run, _, config, params = tiny_run
    with pytest.warns(DeprecationWarning, match="use slotref.load_model"):
        loaded_config, loaded = slotref.load_checkpoint(run)
    assert loaded_config == config
    with pytest.warns(DeprecationWarning, match="use slotref.save_model"):
        slotref.save_checkpoint(tmp_path / "again", config, loaded, step=7)
    with open(run / "checkpoint.h5", "rb") as a, open(tmp_path / "again" / "checkpoint.h5", "rb") as b:
        assert len(a.read()) == len(b.read())   # the same file, written by the same function
    from slotref import load_checkpoint         # importable by name as before
    assert load_checkpoint.__name__ == "load_checkpoint" and "load_checkpoint" not in slotref.__all__


def test_example_slot_attention_on_features():
    out = run_example("slot_attention_on_features.py", "--batch", 2, "--inputs", 16, "--features", 8, "--slots", 3)
    assert "float32" in out and "inputs per slot" in out
    assert sum(int(n) for n in out.split("[")[-1].strip(" ]\n").split(",")) == 16


def test_example_training_step():
    out = run_example("training_step.py", "--steps", 2, "--resolution", 16, "--batch", 2)
    assert out.count("loss") == 2


def test_example_inference_from_checkpoint(tiny_run, tmp_path):
    run, data, _, _ = tiny_run
    out = run_example("inference_from_checkpoint.py", run, data, "--num", 3, cwd=tmp_path)
    assert [line.split(":")[0] for line in out.splitlines()] == ["image 0", "image 1", "image 2"]
    assert not (tmp_path / "data").exists()              # nothing generated


def test_config_of_a_saved_checkpoint_is_a_train_config(tiny_run):
    config, _ = slotref.load_model(tiny_run[0])
    assert isinstance(config, TrainConfig) and config.model.resolution == (32, 32)
