"""The pictures: set prediction's attention over the image at its resolution with the matching drawn,
and slot colours without look-alikes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import pyplot as plt
from PIL import Image

import slotref
from slotref import viz
from slotref.data.hdf5 import write_dataset
from slotref.metrics import matched_objects
from slotref.training import load_run
from slotref.training.presets import fast_dev_run, preset_config
from tests.tool.test_cli import invoke


def cielab(rgb) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB (D65)."""
    rgb = np.asarray(rgb, np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    t = xyz / [0.95047, 1.0, 1.08883]
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def closest_pair(colours) -> float:
    lab = cielab(colours)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return d[np.triu_indices(len(lab), 1)].min()


def test_slot_colours_are_distinct_where_tab20_has_look_alike_pairs():
    assert closest_pair(viz.SLOT_PALETTE) >= 25
    assert closest_pair(np.array(plt.get_cmap("tab20").colors)) < 20
    assert len(viz.SLOT_PALETTE) >= 11                                  # CLEVR6 tests with K = 11


def test_attention_is_upsampled_to_the_image_cell_by_cell():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    up = viz.upsample(grid, (32, 32))
    assert up.shape == (32, 32)
    row, col = np.unravel_index(up.argmax(), up.shape)
    assert 8 <= row < 12 and 20 <= col < 24                             # the cell's own 4x4 patch of pixels
    np.testing.assert_allclose(viz.upsample(np.full((8, 8), 0.25), (32, 32)), 0.25, rtol=1e-6)


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viz")
    config = fast_dev_run(preset_config("setpred"))
    params = slotref.init_model(np.random.default_rng(0), config.model, dtype=np.float32)
    slotref.save_model(tmp / "run", config, params, step=3)
    write_dataset("clevr-shapes", tmp / "scenes.h5", 3, 0, resolution=32, min_objects=1, max_objects=3,
                  zoom=3.0, progress=False, workers=1)
    return tmp / "run", tmp / "scenes.h5"


def test_the_set_prediction_figure_draws_the_matching_eval_makes(untrained_run, tmp_path):
    run, scenes = untrained_run
    config, be, params, task, split, step = load_run(run, dataset=scenes)
    pairs = viz.draw_run(tmp_path / "figure.png", config, be, params, task, split)
    predictions = task.predict(be, params, split)[0]
    assert [(b, i, j) for b, i, j, _ in pairs] == matched_objects(predictions, split.targets)
    assert len(pairs) == int((split.targets[..., -1] > 0.5).sum())     # every real object is linked
    b, i, j, d = pairs[0]
    np.testing.assert_allclose(d, 6 * np.linalg.norm(split.targets[b, i, :3] - predictions[b, j, :3]), rtol=1e-6)
    with Image.open(tmp_path / "figure.png") as picture:
        assert picture.format == "PNG" and picture.width > 600


def test_viz_writes_the_set_prediction_figure(untrained_run, tmp_path):
    run, scenes = untrained_run
    result = invoke("viz", run, "--dataset", scenes, "--out", tmp_path / "v.png", "--num-images", 2)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.png").stat().st_size > 10_000
