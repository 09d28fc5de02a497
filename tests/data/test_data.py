"""Specification of slotref.data: generators, the HDF5 schema, the data commands."""

import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from slotref.data import generators, hdf5
from slotref.cli.data import data
from slotref.data.generators import COLOR_RGB, GENERATORS, render
from slotref.data.hdf5 import DatasetError, load_dataset, set_prediction_targets, write_dataset
from slotref.data.writer import Writer, partial_status

# Small resolutions keep the suite fast; the generators take any resolution.
SMALL = {"clevr-shapes": 48, "clevr6-shapes": 48, "tetrominoes": 35, "multi-dsprites": 64}


@pytest.fixture(scope="module")
def samples():
    return {name: render(name, 3, 0, 24, SMALL[name]) for name in GENERATORS}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_example_depends_only_on_seed_and_index(name):
    whole = render(name, 7, 0, 10, SMALL[name])
    pieces = [render(name, 7, 0, 3, SMALL[name]), render(name, 7, 3, 7, SMALL[name])]
    late = render(name, 7, 6, 2, SMALL[name])
    other_seed = render(name, 8, 0, 10, SMALL[name])
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), value)
        np.testing.assert_array_equal(late[key], value[6:8])
    assert not np.array_equal(other_seed["images"], whole["images"])


@pytest.mark.parametrize("name", list(GENERATORS))
def test_fields_have_the_schema_shapes_and_dtypes(name, samples):
    d, res, n = samples[name], SMALL[name], 24
    assert d["images"].shape == (n, res, res, 3) and d["images"].dtype == np.uint8
    assert d["masks"].shape == (n, res, res) and d["masks"].dtype == np.uint8
    assert d["num_objects"].shape == (n,) and d["num_objects"].dtype == np.int32
    if GENERATORS[name].set_prediction:
        m = GENERATORS[name].max_objects
        assert d["objects/coords"].shape == (n, m, 3) and d["objects/coords"].dtype == np.float32
        for key in ("size", "material", "shape", "color"):
            assert d[f"objects/{key}"].shape == (n, m) and d[f"objects/{key}"].dtype == np.int8
    else:
        assert not any(key.startswith("objects/") for key in d)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_every_object_id_is_visible_and_no_other_id_appears(name, samples):
    d = samples[name]
    spec = GENERATORS[name]
    for masks, n in zip(d["masks"], d["num_objects"]):
        counts = np.bincount(masks.ravel(), minlength=n + 1)
        assert len(counts) == n + 1, "an id above num_objects"
        assert (counts[1:] > 0).all(), "an object without pixels"
        assert counts[0] > 0, "no background"
        if name != "multi-dsprites":  # sprites may hide each other and are then not counted
            assert spec.min_objects <= n <= spec.max_objects


def test_clevr_objects_show_their_palette_colour_and_labels_are_consistent(samples):
    d = samples["clevr-shapes"]
    palette = COLOR_RGB / np.linalg.norm(COLOR_RGB, axis=1, keepdims=True)
    checked = 0
    for i in range(len(d["images"])):
        n = d["num_objects"][i]
        assert (d["objects/color"][i, n:] == -1).all() and (d["objects/coords"][i, n:] == 0).all()
        xyz = d["objects/coords"][i, :n]
        assert (np.abs(xyz[:, :2]) < 3).all()
        np.testing.assert_allclose(xyz[:, 2], generators.SIZE_RADIUS[d["objects/size"][i, :n]], rtol=1e-6)
        for j in range(n):
            pixels = d["images"][i][d["masks"][i] == j + 1].astype(float)
            if len(pixels) < 12:  # a sliver at an edge says little about colour
                continue
            rgb = np.median(pixels, axis=0)
            nearest = np.argmax(palette @ (rgb / np.linalg.norm(rgb)))
            assert nearest == d["objects/color"][i, j], (i, j, rgb)
            checked += 1
    assert checked > 50


def test_background_of_tetrominoes_is_black_and_pieces_are_whole(samples):
    d = samples["tetrominoes"]
    block = 35 // 7
    assert (d["images"][d["masks"] == 0] == 0).all()
    assert (d["num_objects"] == 3).all()
    for masks in d["masks"]:
        np.testing.assert_array_equal(np.bincount(masks.ravel())[1:], 4 * block * block)
    colours = {tuple(c) for c in d["images"][d["masks"] > 0]}
    assert colours <= {tuple(c) for c in generators.TETROMINO_COLORS}


def test_multi_dsprites_background_is_grey_and_ids_follow_drawing_order(samples):
    d = samples["multi-dsprites"]
    for image, masks in zip(d["images"], d["masks"]):
        background = image[masks == 0]
        assert (background == background[0]).all() and len(set(background[0])) == 1
    assert d["num_objects"].min() >= 1 and d["num_objects"].max() <= 5


def test_set_prediction_targets_encode_a_hand_built_scene():
    objects = {
        "coords": np.array([[[3.0, -3.0, 0.7], [0.0, 1.5, 0.35], [0, 0, 0]]], np.float32),
        "size": np.array([[1, 0, -1]], np.int8),
        "material": np.array([[0, 1, -1]], np.int8),
        "shape": np.array([[2, 0, -1]], np.int8),
        "color": np.array([[7, 3, -1]], np.int8),
    }
    targets = set_prediction_targets(objects, np.array([2]), max_objects=4)
    assert targets.shape == (1, 4, 19) and targets.dtype == np.float32
    first = [1, 0, 3.7 / 6, 0, 1, 1, 0, 0, 0, 1] + [0] * 7 + [1] + [1]
    second = [0.5, 0.75, 3.35 / 6, 1, 0, 0, 1, 1, 0, 0] + [0, 0, 0, 1, 0, 0, 0, 0] + [1]
    np.testing.assert_allclose(targets[0, 0], first, atol=1e-6)
    np.testing.assert_allclose(targets[0, 1], second, atol=1e-6)
    assert not targets[0, 2:].any()
    with pytest.raises(DatasetError, match="more than max_objects=1"):
        set_prediction_targets(objects, np.array([2]), max_objects=1)


def test_images_to_float_maps_0_255_to_minus_one_one():
    x = hdf5.images_to_float(np.array([0, 255, 51], np.uint8))
    np.testing.assert_allclose(x, [-1, 1, -0.6], atol=1e-6)
    assert x.dtype == np.float32


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

OPTIONS = dict(resolution=32, chunk=8, progress=False, workers=1)


def test_written_file_round_trips_and_has_a_stable_fingerprint(tmp_path):
    path = write_dataset("clevr6-shapes", tmp_path / "a.h5", 20, seed=1, **OPTIONS)
    ds = load_dataset(path)
    expected = render("clevr6-shapes", 1, 0, 20, 32)
    np.testing.assert_array_equal(ds.images, expected["images"])
    np.testing.assert_array_equal(ds.masks, expected["masks"])
    np.testing.assert_array_equal(ds.objects["color"], expected["objects/color"])
    assert ds.meta["complete"] and ds.meta["max_objects"] == 6 and json.loads(ds.meta["config"])["seed"] == 1
    assert ds.fingerprint == load_dataset(path).fingerprint
    part = load_dataset(path, start=5, limit=4)
    np.testing.assert_array_equal(part.images, ds.images[5:9])
    assert part.fingerprint != ds.fingerprint
    other = write_dataset("clevr6-shapes", tmp_path / "b.h5", 20, seed=2, **OPTIONS)
    assert load_dataset(other).fingerprint != ds.fingerprint


def test_interrupted_write_leaves_no_final_file_and_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    real_render = generators.render
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    out = tmp_path / "t.h5"
    monkeypatch.setattr(generators, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        write_dataset("tetrominoes", out, 30, seed=4, **{**OPTIONS, "resolution": None})
    assert not out.exists()
    partial = str(out) + ".partial"
    with h5py.File(partial) as f:
        assert f.attrs["num_written"] == 16 and not f.attrs["complete"]
    with pytest.raises(DatasetError, match="interrupted"):
        load_dataset(out)
    with pytest.raises(DatasetError, match="incomplete"):
        load_dataset(partial)

    calls.clear()
    monkeypatch.setattr(generators, "render", lambda *a, **k: calls.append(a) or real_render(*a, **k))
    write_dataset("tetrominoes", out, 30, seed=4, **{**OPTIONS, "resolution": None})
    assert [c[2] for c in calls] == [16, 24]  # only the missing chunks
    assert not os.path.exists(partial)
    straight = write_dataset("tetrominoes", tmp_path / "u.h5", 30, seed=4, progress=False, chunk=30)
    a, b = load_dataset(out), load_dataset(straight)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.fingerprint == b.fingerprint


def test_the_writer_resumes_from_the_last_commit_and_drops_rows_written_after_it(tmp_path):
    out = tmp_path / "w.h5"
    batch = render("tetrominoes", 0, 0, 7, None)
    layout = dict(name="tetrominoes", height=35, width=35, source="generator", config={"k": 1}, masks=True)
    with Writer(out, state={"records_consumed": 0}, chunk=2, **layout) as writer:
        for i in range(5):
            writer.add({key: value[i] for key, value in batch.items()}, records_consumed=i + 1)
        writer._write_buffer()  # row 4 reaches the file, its commit does not: as a crash would leave it
    assert partial_status(out, **{k: layout[k] for k in ("name", "config")}) == "resumable"
    assert partial_status(out, name="tetrominoes", config={"k": 2}) == "other"
    with Writer(out, state={"records_consumed": 0}, **layout) as writer:
        assert writer.resumed and writer.num_written == 4 and writer.state == {"records_consumed": 4}
        assert len(writer.f["images"]) == 4
        writer.extend({key: value[4:] for key, value in batch.items()}, records_consumed=7)
        writer.finish()
    with h5py.File(out) as f:
        assert f.attrs["complete"] and f.attrs["num_examples"] == f.attrs["num_written"] == 7
        assert json.loads(f.attrs["state"]) == {"records_consumed": 7}
        for key in ("images", "masks", "num_objects"):
            np.testing.assert_array_equal(f[key][()], batch[key])
    assert not os.path.exists(str(out) + ".partial")


def test_a_partial_file_with_other_options_is_started_afresh(tmp_path):
    out = tmp_path / "d.h5"
    write_dataset("multi-dsprites", str(out) + ".tmp", 10, seed=0, **OPTIONS)
    os.replace(str(out) + ".tmp", str(out) + ".partial")  # a stale partial of another config
    write_dataset("multi-dsprites", out, 10, seed=1, **OPTIONS)
    np.testing.assert_array_equal(load_dataset(out).images, render("multi-dsprites", 1, 0, 10, 32)["images"])


def test_ensure_dataset_makes_once_and_refuses_other_contents(tmp_path):
    out = tmp_path / "e.h5"
    path = hdf5.ensure_dataset("tetrominoes", out, 5, 0)
    mtime = os.path.getmtime(path)
    assert hdf5.ensure_dataset("tetrominoes", out, 5, 0) == path and os.path.getmtime(path) == mtime
    with pytest.raises(DatasetError, match="exists with other contents"):
        hdf5.ensure_dataset("tetrominoes", out, 6, 0)


@pytest.fixture
def good_file(tmp_path):
    return write_dataset("clevr-shapes", tmp_path / "g.h5", 6, seed=0, **OPTIONS)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: os.remove(p), "no such file"),
        (lambda p: open(p, "wb").write(b"not hdf5 at all" * 10), "not a readable HDF5 file"),
        (lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2), "truncated or corrupt"),
        (lambda p: _edit(p, lambda f: f.attrs.__setitem__("format", "other")), "not a slotref dataset"),
        (lambda p: _edit(p, lambda f: f.attrs.__setitem__("complete", False)), "incomplete .*rerun `data make`"),
        (lambda p: _edit(p, lambda f: f.__delitem__("images")), "missing required dataset 'images'"),
        (lambda p: _edit(p, lambda f: f.__delitem__("objects/color")), "missing required dataset 'objects/color'"),
        (lambda p: _edit(p, lambda f: f.attrs.__setitem__("num_examples", 7)), r"images has shape \(6"),
        (lambda p: _edit(p, lambda f: f["num_objects"].__setitem__(0, 0)), "has mask id"),
    ],
    ids=["missing", "not-hdf5", "truncated", "format", "incomplete", "no-images", "no-color", "length", "mask-ids"],
)
def test_unusable_files_raise_dataset_error_naming_the_file(good_file, damage, message):
    damage(good_file)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(good_file)
    assert str(error.value).startswith(str(good_file)) and "\n" not in str(error.value)


def test_commands_make_and_describe_a_file(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.h5"
    result = runner.invoke(data, ["make", "clevr6-shapes", "--out", str(out), "--n", "5", "--resolution", "32",
                                  "--seed", "3", "--min-objects", "3", "--max-objects", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    ds = load_dataset(out)
    assert ds.images.shape == (5, 32, 32, 3) and ds.num_objects.max() <= 4
    result = runner.invoke(data, ["info", str(out)])
    assert result.exit_code == 0 and "objects per example" in result.output and "max_objects = 4" in result.output
    result = runner.invoke(data, ["make", "clevr-shapes", "--out", str(out), "--n", "5", "--min-objects", "6",
                                  "--max-objects", "4"])
    assert result.exit_code == 1 and "min_objects <= max_objects" in result.output
    result = runner.invoke(data, ["info", str(tmp_path / "nothing.h5")])
    assert result.exit_code == 1 and "no such file" in result.output


# --------------------------------------------------------------------------
# Camera zoom of the CLEVR generators.

def test_zoom_makes_objects_larger_and_keeps_them_in_the_smaller_placement_area():
    plain = render("clevr-shapes", 5, 0, 40, 32, min_objects=1, max_objects=3)
    zoomed = render("clevr-shapes", 5, 0, 40, 32, min_objects=1, max_objects=3, zoom=2)

    def mean_area(d):
        ids = d["masks"]
        return np.mean([(ids[i] == j + 1).sum() for i in range(len(ids)) for j in range(d["num_objects"][i])])

    # Twice the linear size in pixels: about four times the area (occlusion and
    # clipping at the border keep it below 4).
    assert 2.5 < mean_area(zoomed) / mean_area(plain) < 4.5
    real = np.arange(3)[None, :] < zoomed["num_objects"][:, None]
    xy = zoomed["objects/coords"][..., :2][real]
    assert np.abs(xy).max() < 1.5 and np.abs(plain["objects/coords"][..., :2]).max() > 1.5


def test_zoom_is_part_of_the_file_config_and_a_zoomed_file_resumes_as_zoomed(tmp_path):
    path = write_dataset("clevr-shapes", tmp_path / "z.h5", 6, seed=2, resolution=32, zoom=2, progress=False)
    ds = load_dataset(path)
    assert json.loads(ds.meta["config"])["zoom"] == 2
    np.testing.assert_array_equal(ds.images, render("clevr-shapes", 2, 0, 6, 32, zoom=2)["images"])
    # zoom 1 is the default and is not written: files made before the option keep their config.
    assert "zoom" not in hdf5.generator_config("clevr-shapes", 0, 32, zoom=1)
    with pytest.raises(DatasetError):
        hdf5.ensure_dataset("clevr-shapes", path, 6, 2, resolution=32)  # same file, other options


@pytest.mark.parametrize("name, zoom, message", [("tetrominoes", 2, "CLEVR generators only"),
                                                  ("clevr-shapes", 0.5, "zoom must be in"),
                                                  ("clevr-shapes", 9, "zoom must be in")])
def test_bad_zoom_is_a_value_error(name, zoom, message):
    with pytest.raises(ValueError, match=message):
        render(name, 0, 0, 2, SMALL[name], zoom=zoom)


def test_data_make_takes_a_zoom(tmp_path):
    out = tmp_path / "z.h5"
    result = CliRunner().invoke(data, ["make", "clevr-shapes", "--out", str(out), "--n", "3", "--resolution", "32",
                                       "--zoom", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(load_dataset(out).meta["config"])["zoom"] == 2
