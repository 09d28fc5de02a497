"""One inference path: ``slotref.predict`` on a loaded run gives what ``slotref eval`` scores, and
docs/api.md's inference example runs as printed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import slotref
from slotref.data.hdf5 import write_dataset
from slotref.training import load_run, train
from slotref.training.tasks import SetPredictionTask
from tests.tool.test_cli import invoke
from tests.training.test_curriculum import data_dir  # noqa: F401 - the fixture: 96 scenes of 2-4 objects at 32x32
from tests.training.test_train import setpred_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):  # noqa: F811
    """A 6-step set prediction run that tests with T = 5 (trains with T = 3), and a file of 5 scenes."""
    tmp = tmp_path_factory.mktemp("predict")
    train(setpred_run(data_dir, eval_iterations=5), tmp / "run", progress=False)
    write_dataset("clevr-shapes", tmp / "scenes.h5", 5, 1, resolution=32, min_objects=1, max_objects=4,
                  progress=False, workers=1)
    return tmp / "run", tmp / "scenes.h5"


def test_predict_defaults_to_the_runs_evaluation_and_scores_what_eval_reports(trained):
    run, scenes = trained
    config, params = slotref.load_model(run)
    data = slotref.load_dataset(str(scenes))
    out = slotref.predict(config, params, data.images)
    assert out["predictions"].shape == (5, 4, 19) and out["attention"].shape == (5, 64, 4)

    # the predictions eval makes: the same function, the same noise
    _, be, loaded, task, split, _ = load_run(run, dataset=scenes)
    np.testing.assert_array_equal(out["predictions"], task.predict(be, loaded, split)[0])
    reported = json.loads(invoke("eval", run, "--dataset", scenes, "--json").output)
    assert reported["num_iters"] == 5
    scores = SetPredictionTask.scores(out["predictions"], split.targets)
    for key in ("ap_inf", "ap_1", "ap_0.5", "acc_all"):
        assert scores[key] == pytest.approx(reported[key], rel=1e-9, abs=1e-12), key

    # the model function without the run's T runs the training T: not what eval reports
    noise = slotref.slot_noise(np.random.default_rng(0), 5, 4, config.model.slot_attention.slot_size, np.float32)
    images = slotref.images_to_float(data.images)
    at_5 = slotref.set_prediction(params, images, noise, config.model, config.test_iterations)
    at_3 = slotref.set_prediction(params, images, noise, config.model)
    assert not np.allclose(at_5, at_3)


def test_predict_takes_k_and_t_at_test_time_as_eval_does(trained):
    run, scenes = trained
    config, params = slotref.load_model(run)
    images = slotref.load_dataset(str(scenes)).images
    out = slotref.predict(config, params, images, num_slots=6, num_iterations=2)
    assert out["predictions"].shape == (5, 6, 19)
    _, be, loaded, task, split, _ = load_run(run, dataset=scenes)
    np.testing.assert_array_equal(out["predictions"], task.predict(be, loaded, split, 6, 2)[0])
    with pytest.raises(ValueError, match="uint8 images"):
        slotref.predict(config, params, slotref.images_to_float(images))


def test_the_inference_example_of_docs_api_md_runs_as_printed(trained, tmp_path):
    run, scenes = trained
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("## Inference from a checkpoint"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run_name = re.search(r'load_model\("([^"]+)"\)', code).group(1)
    file_name = re.search(r'load_dataset\("([^"]+)"', code).group(1)
    (tmp_path / run_name).parent.mkdir(parents=True)
    os.symlink(run, tmp_path / run_name)
    os.symlink(scenes, tmp_path / file_name)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {}
        exec(compile(code, "docs/api.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    config, params = slotref.load_model(run)
    expected = slotref.predict(config, params, slotref.load_dataset(str(scenes), limit=4).images)
    np.testing.assert_array_equal(namespace["predictions"], expected["predictions"])


def test_the_discovery_outputs_come_from_the_same_path(tmp_path):
    from slotref.training.presets import fast_dev_run, preset_config

    config = fast_dev_run(preset_config("discovery"))
    params = slotref.init_model(np.random.default_rng(0), config.model, dtype=np.float32)
    h, w = config.model.resolution
    images = np.random.default_rng(1).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    out = slotref.predict(config, params, images)
    k = config.model.num_slots
    assert out["masks"].shape == (3, k, h, w) and out["recon_combined"].shape == (3, h, w, 3)
    np.testing.assert_allclose(out["masks"].sum(1), 1, rtol=1e-5)
