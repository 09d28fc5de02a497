"""Converters of the real datasets (slotref.data.convert), on fixtures in the real formats.

The fixtures are written here, independently of the converter: CLEVR_v1.0
directories with 480x320 RGBA PNGs and a scenes JSON in CLEVR's structure, and
GZIP TFRecord files whose framing (length, masked CRC-32C from a table), and
tf.train.Example wire format are serialised by hand, with each DeepMind
dataset's feature keys, dtypes and shapes (images and masks as one 1-byte
string per element, as DeepMind's ``FixedLenFeature(shape, tf.string)`` expects).
"""

import gzip
import json
import struct

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from slotref.cli.data import convert as convert_command
from slotref.data import convert as cv


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# The multi-object converter's runtime dependencies (setup.cfg: protobuf, google-crc32c).
pytestmark_tfrecord = pytest.mark.skipif(
    not (_has("google.protobuf") and _has("google_crc32c")),
    reason="needs protobuf and google-crc32c (pip install protobuf google-crc32c)",
)

# ----------------------------------------------------------------------------
# Independent TFRecord + tf.train.Example writer


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def length_delimited(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def bytes_feature(array):
    """BytesList with one 1-byte string per element (tag 0x0A, length 1, byte)."""
    a = np.asarray(array, np.uint8).ravel()
    wire = np.empty((a.size, 3), np.uint8)
    wire[:, 0], wire[:, 1], wire[:, 2] = 0x0A, 1, a
    return length_delimited(1, wire.tobytes())  # Feature.bytes_list = 1


def float_feature(values):
    packed = np.asarray(values, "<f4").ravel().tobytes()
    return length_delimited(2, length_delimited(1, packed))  # Feature.float_list = 2


def example(features):
    entries = b"".join(
        length_delimited(1, length_delimited(1, key.encode()) + length_delimited(2, value))
        for key, value in features.items()
    )
    return length_delimited(1, entries)  # Example.features = 1, Features.feature = 1 (map)


def frame(record):
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


def write_tfrecords(path, records, compress=True):
    data = b"".join(frame(r) for r in records)
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as fh:
        fh.write(data)
    return path


@pytestmark_tfrecord
def test_independent_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert cv._masked_crc(b"slot attention") == masked_crc(b"slot attention")


# ----------------------------------------------------------------------------
# Multi-object fixtures: entity k (k >= 1) owns a square; entity 0 the rest.

SPECS = {  # dataset: (H, W, E, stored mask layout)
    "tetrominoes": (35, 35, 4, "EHW"),
    "multi_dsprites": (64, 64, 6, "HWE"),
    "multi_dsprites_colored_on_colored": (64, 64, 5, "HWE"),
    "clevr_with_masks": (240, 320, 11, "EHW"),
}


def squares_scene(dataset, boxes, visible, marker):
    """A record with entity k+1 filling boxes[k] = (r0, r1, c0, c1), colour (10k+20, marker, 7)."""
    h, w, e, layout = SPECS[dataset]
    image = np.zeros((h, w, 3), np.uint8)
    owner = np.zeros((h, w), np.int64)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        owner[r0:r1, c0:c1] = k + 1
        image[r0:r1, c0:c1] = (10 * k + 20, marker, 7)
    image[0, 0] = (0, marker, 0)
    masks = (np.arange(e)[:, None, None] == owner[None]).astype(np.uint8) * 255  # [E, H, W]
    stored = masks.transpose(1, 2, 0) if layout == "HWE" else masks  # [H, W, E] or [E, H, W]
    visibility = np.zeros(e, np.float32)
    visibility[0] = 1
    visibility[1:1 + len(boxes)] = visible
    feats = {"image": bytes_feature(image), "mask": bytes_feature(stored[..., None]),
             "visibility": float_feature(visibility)}
    floats = {"x": (e,), "y": (e,), "shape": (e,), "color": (e, 3)}
    if dataset.startswith("multi_dsprites"):
        floats.update(orientation=(e,), scale=(e,))
    if dataset == "clevr_with_masks":
        floats = {"x": (e,), "y": (e,), "z": (e,), "pixel_coords": (e, 3), "rotation": (e,)}
        for key in ("size", "material", "shape", "color"):
            feats[key] = bytes_feature(np.arange(e) % 3)
    for key, shape in floats.items():
        feats[key] = float_feature(np.full(shape, 0.5))
    return example(feats)


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("images", "masks", "num_objects") if k in f}, dict(f.attrs)


@pytestmark_tfrecord
@pytest.mark.parametrize("dataset", ["tetrominoes", "multi_dsprites", "multi_dsprites_colored_on_colored"])
def test_entity_masks_become_instance_ids_where_the_entities_are(tmp_path, dataset):
    h, w, e, _ = SPECS[dataset]
    boxes = [(2, 6, 3, 9), (10, 20, 1, 4), (20, 30, 25, 33)]
    # Entity 2 invisible (an empty slot in the real files): its pixels stay background.
    src = write_tfrecords(tmp_path / "in.tfrecords",
                          [squares_scene(dataset, boxes, [1, 0, 1], marker=m) for m in (1, 2)])
    out = tmp_path / "out.h5"
    cv.convert_multi_object(src, dataset, out, progress=False)
    data, attrs = read(out)
    assert attrs["complete"] and attrs["num_examples"] == 2 and attrs["source"] == "converted"
    assert (attrs["height"], attrs["width"]) == (h, w)
    assert data["images"].shape == (2, h, w, 3) and data["masks"].shape == (2, h, w)
    ids = data["masks"][0]
    assert (ids[2:6, 3:9] == 1).all()
    assert (ids[10:20, 1:4] == 0).all()
    assert (ids[20:30, 25:33] == 2).all()
    assert ids.sum() == 1 * 24 + 2 * 80
    np.testing.assert_array_equal(data["num_objects"], [2, 2])
    np.testing.assert_array_equal(data["images"][0, 21, 26], (40, 1, 7))
    np.testing.assert_array_equal(data["images"][:, 0, 0, 1], [1, 2])


@pytestmark_tfrecord
def test_multi_dsprites_masks_are_transposed_from_hwe(tmp_path):
    # A mask stored [H, W, E] but read as [E, H, W] would scatter entity 1's
    # square over rows; only the transpose puts it back at rows 40..50.
    src = write_tfrecords(tmp_path / "in.tfrecords",
                          [squares_scene("multi_dsprites", [(40, 50, 5, 12)], [1], marker=0)])
    cv.convert_multi_object(src, "multi_dsprites", tmp_path / "o.h5", progress=False)
    ids = read(tmp_path / "o.h5")[0]["masks"][0]
    expected = np.zeros((64, 64), np.uint8)
    expected[40:50, 5:12] = 1
    np.testing.assert_array_equal(ids, expected)


@pytest.fixture(scope="module")
def clevr_masks_file(tmp_path_factory):
    """clevr_with_masks: records 0, 2, 3 have <= 6 visible objects; record 1 has 7."""
    crop_box = (29 + 48, 29 + 96, 64 + 96, 64 + 144)  # crop coords rows 48..96, cols 96..144
    outside = (0, 20, 0, 20)  # above the crop: must vanish
    small = [(130 + 6 * i, 134 + 6 * i, 70, 74) for i in range(5)]
    records = [
        squares_scene("clevr_with_masks", [crop_box, outside], [1, 1], marker=0),
        squares_scene("clevr_with_masks", [crop_box] + small + [outside], [1] * 7, marker=1),
        squares_scene("clevr_with_masks", [crop_box] + small, [1] * 6, marker=2),
        squares_scene("clevr_with_masks", [crop_box], [1], marker=3),
    ]
    path = tmp_path_factory.mktemp("cwm") / "clevr_with_masks_train.tfrecords"
    return write_tfrecords(path, records)


@pytestmark_tfrecord
def test_clevr_with_masks_is_cropped_resized_and_clevr6_filtered(tmp_path, clevr_masks_file):
    out = tmp_path / "c6.h5"
    cv.convert_multi_object(clevr_masks_file, "clevr_with_masks", out, progress=False)
    data, attrs = read(out)
    assert attrs["complete"] and attrs["name"] == "clevr_with_masks"
    assert data["images"].shape == (3, 128, 128, 3)
    np.testing.assert_array_equal(data["num_objects"], [2, 6, 1])  # the 7-object scene is dropped
    ids = data["masks"][0]
    # Crop rows 48..96, cols 96..144 of 192x192 -> rows 32..64, cols 64..96 of 128x128.
    assert (ids[32:64, 64:96] == 1).all()
    assert (ids == 1).sum() == 32 * 32
    assert not (ids == 2).any()  # entity 2 lay outside the crop
    assert tuple(data["images"][0, 48, 80]) == (20, 0, 7)
    assert tuple(data["images"][0, 10, 10]) == (0, 0, 0)
    # Bilinear image edges blend; the interior of the square keeps its colour.
    assert np.all(data["images"][0, 34:62, 66:94] == (20, 0, 7))


@pytestmark_tfrecord
def test_skip_and_limit_count_records_and_max_examples_counts_kept_ones(tmp_path, clevr_masks_file):
    # --skip/--limit select records of the file (the paper's "first 70K samples")
    # before the CLEVR6 filter: records 1 (7 objects, dropped) and 2.
    cv.convert_multi_object(clevr_masks_file, "clevr_with_masks", tmp_path / "a.h5", skip=1, limit=2,
                            progress=False)
    np.testing.assert_array_equal(read(tmp_path / "a.h5")[0]["num_objects"], [6])
    # --max-examples counts written (CLEVR6) examples: records 1..2 give one.
    summary = cv.convert_multi_object(clevr_masks_file, "clevr_with_masks", tmp_path / "b.h5", skip=1,
                                      max_examples=1, progress=False)
    np.testing.assert_array_equal(read(tmp_path / "b.h5")[0]["num_objects"], [6])
    assert summary["records"] == 3


@pytestmark_tfrecord
def test_skip_and_limit_select_records_in_order(tmp_path):
    src = write_tfrecords(tmp_path / "t.tfrecords",
                          [squares_scene("tetrominoes", [(1, 3, 1, 3)], [1], marker=m) for m in range(6)])
    cv.convert_multi_object(src, "tetrominoes", tmp_path / "a.h5", skip=2, limit=3, progress=False)
    np.testing.assert_array_equal(read(tmp_path / "a.h5")[0]["images"][:, 0, 0, 1], [2, 3, 4])
    result = CliRunner().invoke(convert_command, ["multi-object", "--src", str(src), "--dataset", "tetrominoes",
                                             "--out", str(tmp_path / "b.h5"), "--skip", "4"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read(tmp_path / "b.h5")[0]["images"][:, 0, 0, 1], [4, 5])


@pytestmark_tfrecord
def test_interrupted_conversion_resumes_to_the_same_file(tmp_path, monkeypatch):
    src = write_tfrecords(tmp_path / "t.tfrecords",
                          [squares_scene("tetrominoes", [(1, 3, 1, 3 + m % 4)], [1], marker=m)
                           for m in range(9)])
    cv.convert_multi_object(src, "tetrominoes", tmp_path / "ref.h5", skip=1, chunk=2, progress=False)

    parse, calls = cv.parse_example, []

    def interrupted(data):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return parse(data)

    out = tmp_path / "out.h5"
    monkeypatch.setattr(cv, "parse_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cv.convert_multi_object(src, "tetrominoes", out, skip=1, chunk=2, progress=False)
    monkeypatch.setattr(cv, "parse_example", parse)
    assert not out.exists()
    with h5py.File(str(out) + ".partial", "r") as f:
        assert not f.attrs["complete"] and f.attrs["num_examples"] == 4
        assert json.loads(f.attrs["state"])["records_consumed"] == 5
    # A different command must not continue someone else's partial file.
    with pytest.raises(cv.ConvertError, match="other options"):
        cv.convert_multi_object(src, "tetrominoes", out, skip=2, chunk=2, progress=False)
    seen = []
    monkeypatch.setattr(cv, "parse_example", lambda d: seen.append(1) or parse(d))
    cv.convert_multi_object(src, "tetrominoes", out, skip=1, chunk=2, progress=False)
    assert len(seen) == 4  # records 5..8 only
    got, ref = read(out), read(tmp_path / "ref.h5")
    for key in ("images", "masks", "num_objects"):
        np.testing.assert_array_equal(got[0][key], ref[0][key])
    assert got[1]["complete"] and not (tmp_path / "out.h5.partial").exists()
    # Rerunning the finished command changes nothing; other options are refused.
    assert cv.convert_multi_object(src, "tetrominoes", out, skip=1, chunk=2, progress=False)["num_examples"] == 8
    assert len(seen) == 4
    with pytest.raises(cv.ConvertError, match="already exists"):
        cv.convert_multi_object(src, "tetrominoes", out, skip=3, progress=False)


def _cli_error(args):
    result = CliRunner().invoke(convert_command, args)
    assert result.exit_code == 1, result.output
    # The progress bar (stderr) may precede the error; the error itself is one line.
    assert result.output.count("Error: ") == 1, result.output
    message = result.output[result.output.index("Error: "):].rstrip("\n")
    assert "\n" not in message and "\r" not in message, message
    return message


@pytestmark_tfrecord
def test_truncated_tfrecord_is_a_one_line_error_naming_file_and_record(tmp_path):
    records = [squares_scene("tetrominoes", [(1, 3, 1, 3)], [1], marker=m) for m in range(3)]
    raw = b"".join(frame(r) for r in records)
    src = tmp_path / "cut.tfrecords"
    with gzip.open(src, "wb") as fh:
        fh.write(raw[: len(raw) - 100])  # record 2 ends early
    out = tmp_path / "o.h5"
    msg = _cli_error(["multi-object", "--src", str(src), "--dataset", "tetrominoes", "--out", str(out)])
    assert "cut.tfrecords" in msg and "record 2" in msg and "truncated" in msg
    assert not out.exists()
    with h5py.File(str(out) + ".partial", "r") as f:
        assert not f.attrs["complete"]
    # A gzip stream cut short is reported the same way.
    gz = src.read_bytes()
    (tmp_path / "cutgz.tfrecords").write_bytes(gz[: len(gz) // 2])
    msg = _cli_error(["multi-object", "--src", str(tmp_path / "cutgz.tfrecords"), "--dataset", "tetrominoes",
                      "--out", str(tmp_path / "p.h5")])
    assert "cutgz.tfrecords" in msg and "record " in msg


@pytestmark_tfrecord
def test_bad_crc_is_a_one_line_error_naming_file_and_record(tmp_path):
    records = [squares_scene("tetrominoes", [(1, 3, 1, 3)], [1], marker=m) for m in range(3)]
    framed = [bytearray(frame(r)) for r in records]
    framed[1][40] ^= 0xFF  # corrupt record 1's payload
    src = tmp_path / "bad.tfrecords"
    with gzip.open(src, "wb") as fh:
        fh.write(b"".join(framed))
    msg = _cli_error(["multi-object", "--src", str(src), "--dataset", "tetrominoes",
                      "--out", str(tmp_path / "o.h5")])
    assert "bad.tfrecords" in msg and "record 1" in msg and "CRC" in msg
    assert not (tmp_path / "o.h5").exists()


@pytestmark_tfrecord
def test_features_of_another_dataset_are_a_one_line_error(tmp_path):
    src = write_tfrecords(tmp_path / "tetro.tfrecords",
                          [squares_scene("tetrominoes", [(1, 3, 1, 3)], [1], marker=0)])
    msg = _cli_error(["multi-object", "--src", str(src), "--dataset", "multi_dsprites",
                      "--out", str(tmp_path / "o.h5")])
    assert "tetro.tfrecords" in msg and "record 0" in msg and "image" in msg
    # colored_on_colored has 5 entities, colored_on_grayscale 6: told apart by the mask.
    src = write_tfrecords(tmp_path / "coc.tfrecords",
                          [squares_scene("multi_dsprites_colored_on_colored", [(1, 3, 1, 3)], [1], marker=0)])
    msg = _cli_error(["multi-object", "--src", str(src), "--dataset", "multi_dsprites",
                      "--out", str(tmp_path / "o2.h5")])
    assert "coc.tfrecords" in msg and "record 0" in msg and "mask" in msg
    src = write_tfrecords(tmp_path / "nomask.tfrecords", [example({"image": bytes_feature(np.zeros(35 * 35 * 3))})])
    msg = _cli_error(["multi-object", "--src", str(src), "--dataset", "tetrominoes",
                      "--out", str(tmp_path / "o3.h5")])
    assert "nomask.tfrecords" in msg and "record 0" in msg and "'mask'" in msg


# ----------------------------------------------------------------------------
# CLEVR v1.0 fixtures

CLEVR_OBJECTS = [
    {"3d_coords": [-1.5, 2.0, 0.7], "pixel_coords": [100, 200, 12.0], "rotation": 30.0,
     "size": "large", "material": "metal", "shape": "cylinder", "color": "cyan"},
    {"3d_coords": [2.5, -0.5, 0.35], "pixel_coords": [300, 150, 10.0], "rotation": 200.0,
     "size": "small", "material": "rubber", "shape": "sphere", "color": "brown"},
    {"3d_coords": [0.0, 0.0, 0.35], "pixel_coords": [240, 160, 11.0], "rotation": 0.0,
     "size": "small", "material": "metal", "shape": "cube", "color": "gray"},
]


def make_clevr(root, split="train", n=5, crowded=(3,)):
    """CLEVR_v1.0-like directory: image i is red on its left half, (0, i, 200) on the right."""
    (root / "images" / split).mkdir(parents=True)
    (root / "scenes").mkdir()
    scenes = []
    for i in range(n):
        filename = f"CLEVR_{split}_{i:06d}.png"
        rgba = np.zeros((320, 480, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[:, :240, :3] = (200, 0, 0)
        rgba[:, 240:, :3] = (0, i, 200)
        Image.fromarray(rgba, "RGBA").save(root / "images" / split / filename)
        objects = [dict(o) for o in CLEVR_OBJECTS[: 1 + i % 3]]
        if i in crowded:
            objects = [dict(CLEVR_OBJECTS[0]) for _ in range(11)]
        scenes.append({"image_index": i, "image_filename": filename, "split": split, "objects": objects,
                       "relationships": {"left": [[] for _ in objects]}, "directions": {}})
    scenes.reverse()  # order in the file must not matter; image_index does
    (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(
        json.dumps({"info": {"split": split, "version": "1.0"}, "scenes": scenes}))
    return root


def read_clevr(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("images", "num_objects", "objects/coords", "objects/size",
                                      "objects/material", "objects/shape", "objects/color")}, dict(f.attrs)


def test_clevr_labels_images_and_object_filter(tmp_path):
    src = make_clevr(tmp_path / "CLEVR_v1.0")
    out = tmp_path / "clevr.h5"
    result = CliRunner().invoke(convert_command, ["clevr", "--src", str(src), "--split", "train",
                                             "--out", str(out), "--resolution", "32"])
    assert result.exit_code == 0, result.output
    d, attrs = read_clevr(out)
    assert attrs["complete"] and attrs["name"] == "clevr" and attrs["max_objects"] == 10
    assert attrs["num_examples"] == 4  # scene 3 has 11 objects
    assert d["images"].shape == (4, 32, 32, 3) and d["images"].dtype == np.uint8
    np.testing.assert_array_equal(d["num_objects"], [1, 2, 3, 2])  # scenes 0, 1, 2, 4
    # Bilinear resize of the whole 480x320 frame: left half red, right half (0, i, 200).
    np.testing.assert_array_equal(d["images"][:, 16, 3], [(200, 0, 0)] * 4)
    np.testing.assert_array_equal(d["images"][:, 10, 29], [(0, i, 200) for i in (0, 1, 2, 4)])
    # Scene 2 holds all three objects; labels as indices into the tfds orderings.
    np.testing.assert_array_equal(d["objects/size"][2, :4], [1, 0, 0, -1])
    np.testing.assert_array_equal(d["objects/material"][2, :4], [1, 0, 1, -1])
    np.testing.assert_array_equal(d["objects/shape"][2, :4], [2, 1, 0, -1])
    np.testing.assert_array_equal(d["objects/color"][2, :4], [7, 2, 0, -1])
    np.testing.assert_allclose(d["objects/coords"][2, :3], [o["3d_coords"] for o in CLEVR_OBJECTS])
    assert (d["objects/coords"][2, 3:] == 0).all() and (d["objects/color"][2, 3:] == -1).all()


def test_clevr_monitor_part_is_the_first_training_images(tmp_path):
    src = make_clevr(tmp_path / "CLEVR_v1.0", crowded=())
    cv.convert_clevr(src, "train", tmp_path / "m.h5", resolution=16, part="monitor", monitor_size=2,
                     progress=False)
    cv.convert_clevr(src, "train", tmp_path / "t.h5", resolution=16, part="train", monitor_size=2,
                     progress=False)
    assert list(read_clevr(tmp_path / "m.h5")[0]["images"][:, 8, 15, 1]) == [0, 1]
    assert list(read_clevr(tmp_path / "t.h5")[0]["images"][:, 8, 15, 1]) == [2, 3, 4]


def test_clevr_conversion_resumes_after_interruption(tmp_path, monkeypatch):
    src = make_clevr(tmp_path / "CLEVR_v1.0", n=7)
    cv.convert_clevr(src, "train", tmp_path / "ref.h5", resolution=16, chunk=2, progress=False)
    load, calls = cv._load_png, []

    def interrupted(path, resolution):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return load(path, resolution)

    out = tmp_path / "out.h5"
    monkeypatch.setattr(cv, "_load_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cv.convert_clevr(src, "train", out, resolution=16, chunk=2, progress=False)
    monkeypatch.setattr(cv, "_load_png", load)
    assert not out.exists() and (tmp_path / "out.h5.partial").exists()
    cv.convert_clevr(src, "train", out, resolution=16, chunk=2, progress=False)
    got, ref = read_clevr(out)[0], read_clevr(tmp_path / "ref.h5")[0]
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])


def test_clevr_without_scenes_is_a_one_line_error(tmp_path):
    src = make_clevr(tmp_path / "CLEVR_v1.0")
    (src / "images" / "test").mkdir()
    out = tmp_path / "o.h5"
    msg = _cli_error(["clevr", "--src", str(src), "--split", "val", "--out", str(out)])
    assert "CLEVR_val_scenes.json" in msg
    assert not out.exists() and not (tmp_path / "o.h5.partial").exists()


def test_clevr_scenes_not_matching_images_is_a_one_line_error(tmp_path):
    src = make_clevr(tmp_path / "CLEVR_v1.0")
    (src / "images" / "train" / "CLEVR_train_000004.png").unlink()
    out = tmp_path / "o.h5"
    msg = _cli_error(["clevr", "--src", str(src), "--out", str(out)])
    assert "CLEVR_train_scenes.json" in msg and "scene 4" in msg and "CLEVR_train_000004.png" in msg
    assert not out.exists() and not (tmp_path / "o.h5.partial").exists()

    src2 = make_clevr(tmp_path / "other")
    Image.new("RGB", (480, 320)).save(src2 / "images" / "train" / "CLEVR_train_000099.png")
    msg = _cli_error(["clevr", "--src", str(src2), "--out", str(out)])
    assert "CLEVR_train_scenes.json" in msg and "CLEVR_train_000099.png" in msg


def test_clevr_unknown_label_name_is_a_one_line_error(tmp_path):
    src = make_clevr(tmp_path / "CLEVR_v1.0", crowded=())
    path = src / "scenes" / "CLEVR_train_scenes.json"
    data = json.loads(path.read_text())
    data["scenes"][0]["objects"][0]["color"] = "magenta"  # scene 4 (the file is reversed)
    path.write_text(json.dumps(data))
    msg = _cli_error(["clevr", "--src", str(src), "--out", str(tmp_path / "o.h5")])
    assert "CLEVR_train_scenes.json" in msg and "scene 4" in msg and "magenta" in msg
    assert not (tmp_path / "o.h5").exists()


# ----------------------------------------------------------------------------
# Converted files go straight into the normal training and evaluation path.

def _tiny_train_config(task, dataset, model, **extra):
    from slotref.training import TrainConfig
    return TrainConfig(task=task, dataset=str(dataset), preset="test", steps=2, batch_size=2, eval_every=2,
                       checkpoint_every=2, eval_size=1, log_every=1, warmup_steps=1, decay_steps=100,
                       model=model, **extra)


@pytestmark_tfrecord
def test_converted_tetrominoes_file_trains_and_evaluates(tmp_path):
    from dataclasses import replace

    from slotref.models import discovery_config
    from slotref.slot_attention import SlotAttentionConfig
    from slotref.training import load_run, train

    boxes = [(2, 6, 3, 9), (10, 20, 1, 4), (20, 30, 25, 33)]
    src = write_tfrecords(tmp_path / "tetrominoes_train.tfrecords",
                          [squares_scene("tetrominoes", boxes, [1, 1, 1], marker=m) for m in range(12)])
    converted = tmp_path / "tetro.h5"
    cv.convert_multi_object(src, "tetrominoes", converted, progress=False)
    model = replace(discovery_config("tetrominoes"), encoder_channels=4, mlp_size=8, decoder_channels=4,
                    slot_attention=SlotAttentionConfig(input_size=8, slot_size=8, mlp_hidden_size=8))
    result = train(_tiny_train_config("discovery", converted, model), tmp_path / "run", progress=False)
    assert -1.0 <= result["fg_ari"] <= 1.0  # ARI is negative for worse-than-chance masks
    config, be, params, task, val, step = load_run(tmp_path / "run")
    assert step == 2 and len(val) == 1 and val.masks is not None


def test_converted_clevr_file_trains_set_prediction_and_evaluates(tmp_path):
    from dataclasses import replace

    from slotref.models import setpred_config
    from slotref.slot_attention import SlotAttentionConfig
    from slotref.training import load_run, train

    src = make_clevr(tmp_path / "CLEVR_v1.0", n=12, crowded=())
    converted = tmp_path / "clevr.h5"
    cv.convert_clevr(src, "train", converted, resolution=32, progress=False)
    model = replace(setpred_config(32), encoder_channels=4, mlp_size=8, head_hidden=8,
                    slot_attention=SlotAttentionConfig(input_size=8, slot_size=8, mlp_hidden_size=8))
    result = train(_tiny_train_config("setpred", converted, model), tmp_path / "run", progress=False)
    assert set(result) >= {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"}
    config, be, params, task, val, step = load_run(tmp_path / "run")
    assert step == 2 and val.targets.shape == (1, 10, 19)
