"""Malformed datasets and converter inputs: each is refused with a one-line error naming the file.

Every file here is written by the test itself and stays small (a few hundred KB at most): the
hostile ones only *declare* huge sizes, and the check must refuse them before allocating.
"""

import gzip
import json
import struct
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image

from slotref.data import convert as cv
from slotref.data import hdf5, validate
from slotref.data.hdf5 import DatasetError, load_dataset, validate_dataset, write_dataset

OPTIONS = dict(resolution=32, chunk=8, progress=False, workers=1)


def one_line_naming(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.fixture
def setpred_file(tmp_path):
    return write_dataset("clevr-shapes", tmp_path / "s.h5", 6, seed=0, **OPTIONS)


@pytest.fixture
def discovery_file(tmp_path):
    return write_dataset("tetrominoes", tmp_path / "t.h5", 6, seed=0, progress=False, workers=1)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


def _first_real(f):
    return int(np.nonzero(f["num_objects"][:] > 0)[0][0])


def _set_label(f, key, value):
    i = _first_real(f)
    f[key][i, 0] = value


def _truncate(path):
    size = len(open(path, "rb").read())
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _external(f, tmp_path):
    data = f["num_objects"][:]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(data.astype(np.int32).tobytes())
    del f["num_objects"]
    f.create_dataset("num_objects", data.shape, np.int32, external=[(str(outside), 0, h5py.h5f.UNLIMITED)])


def _virtual(f, tmp_path):
    data = f["num_objects"][:]
    with h5py.File(tmp_path / "source.h5", "w") as src:
        src["counts"] = data
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    layout[:] = h5py.VirtualSource(str(tmp_path / "source.h5"), "counts", shape=data.shape)
    del f["num_objects"]
    f.create_virtual_dataset("num_objects", layout)


def _external_link(f, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other["counts"] = f["num_objects"][:]
    del f["num_objects"]
    f["num_objects"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/counts")


DAMAGE = {
    "truncated": (lambda p, t: _truncate(p), "truncated or corrupt"),
    "missing-dataset": (lambda p, t: _edit(p, lambda f: f.__delitem__("num_objects")), "missing required dataset"),
    "missing-label": (lambda p, t: _edit(p, lambda f: f.__delitem__("objects/shape")), "objects/shape"),
    "wrong-dtype": (lambda p, t: _edit(p, lambda f: _replace(f, "images", f["images"][:].astype(np.float32))),
                    "dtype float32, expected uint8"),
    "label-dtype": (lambda p, t: _edit(p, lambda f: _replace(f, "objects/color", f["objects/color"][:].astype(float))),
                    "objects/color: has dtype float64"),
    "attribute-array": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("num_examples", np.array([6, 6]))),
                        "num_examples: attribute is an array"),
    "attribute-string": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("height", "32")),
                         "height: attribute is '32'"),
    "color-100": (lambda p, t: _edit(p, lambda f: _set_label(f, "objects/color", 100)),
                  r"objects/color: example \d+, object 0: label 100 is outside 0..7"),
    "size-negative": (lambda p, t: _edit(p, lambda f: _set_label(f, "objects/size", -1)),
                      "objects/size: .*label -1 is outside 0..1"),
    "nan-coordinate": (lambda p, t: _edit(p, lambda f: _set_label(f, "objects/coords", np.nan)),
                       "objects/coords: .* is not finite"),
    "inf-padding": (lambda p, t: _edit(p, lambda f: f["objects/coords"].__setitem__((0, 9), np.inf)),
                    "objects/coords: .* is not finite"),
    "far-coordinate": (lambda p, t: _edit(p, lambda f: _set_label(f, "objects/coords", 1e6)),
                       "objects/coords: .* is outside -10..10"),
    "count-above-max": (lambda p, t: _edit(p, lambda f: f["num_objects"].__setitem__(0, 11)),
                        "num_objects: example 0 has 11 objects, outside 0..10"),
    "count-negative": (lambda p, t: _edit(p, lambda f: f["num_objects"].__setitem__(0, -3)),
                       "num_objects: example 0 has -3 objects"),
    "max-objects-1e7": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("max_objects", 10**7)),
                        "max_objects: is 10000000, outside 1..255"),
    "soft-link": (lambda p, t: _edit(p, lambda f: f.__setitem__("alias", h5py.SoftLink("/images"))),
                  "alias: is a SoftLink"),
    "external-link": (lambda p, t: _edit(p, lambda f: _external_link(f, t)), "num_objects: is a ExternalLink"),
    "external-storage": (lambda p, t: _edit(p, lambda f: _external(f, t)), "num_objects: has external storage"),
    "virtual": (lambda p, t: _edit(p, lambda f: _virtual(f, t)), "num_objects: is a virtual dataset"),
    "format-version": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("format_version", 99)),
                       "unsupported format_version 99"),
    "no-examples": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("num_examples", 0)), "holds no examples"),
    "huge-side": (lambda p, t: _edit(p, lambda f: f.attrs.__setitem__("height", 10**6)), "height: is 1000000"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_set_prediction_file_is_a_one_line_error_naming_file_and_field(setpred_file, tmp_path, case):
    damage, message = DAMAGE[case]
    damage(setpred_file, tmp_path)
    with pytest.raises(DatasetError, match=message) as error:
        validate_dataset(setpred_file)
    one_line_naming(error, setpred_file)
    with pytest.raises(DatasetError):
        load_dataset(setpred_file)
    if case != "truncated":  # the attributes are still readable: info reports the rejection
        assert "status: REJECTED: " in hdf5.describe(setpred_file)


def _hostile_file(path, n, res=8, max_objects=None, count=1, chunk_rows=1, contiguous=False, direct=False):
    """A file that declares ``n`` examples but writes only the first row of each dataset
    (``direct``: every chunk of the images, each as a few bytes of deflate that expand to less)."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": hdf5.FORMAT, "format_version": hdf5.FORMAT_VERSION, "name": "tetrominoes",
                        "complete": True, "num_examples": n, "num_written": n, "height": res, "width": res})
        chunks = None if contiguous else (chunk_rows, res, res, 3)
        images = f.create_dataset("images", (n, res, res, 3), np.uint8, chunks=chunks,
                                  compression=None if contiguous else "gzip")
        if direct:
            for start in range(0, n, chunk_rows):
                images.id.write_direct_chunk((start, 0, 0, 0), zlib.compress(bytes(10)))
        elif not contiguous:  # a contiguous dataset is allocated whole at its first write
            images[0] = 7
        f.create_dataset("num_objects", (n,), np.int32, chunks=(min(n, 1024),))[0] = count
        if max_objects is not None:
            f.attrs["max_objects"] = max_objects
            m = max_objects
            f.create_dataset("objects/coords", (n, m, 3), np.float32, chunks=(1, min(m, 1024), 3))
            for key in hdf5.OBJECT_FIELDS[1:]:
                f.create_dataset(f"objects/{key}", (n, m), np.int8, chunks=(1, min(m, 1024)))
    return path


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=10**12), "images: declares 1,000,000,000,000 rows but only 1 of"),
    (dict(n=10**12, chunk_rows=2**16), "images: declares 1,000,000,000,000 rows but only 1 of"),
    (dict(n=8, res=64, chunk_rows=4, direct=True), r"images: declares 98,304 bytes but stores only \d+ "),
    (dict(n=10**6, contiguous=True), "images: declares 192,000,000 bytes but stores 0"),
    (dict(n=4, max_objects=10**7), "max_objects: is 10000000, outside 1..255"),
    (dict(n=4, max_objects=200, chunk_rows=4), "objects/coords: declares 4 rows but only 0 of"),
    (dict(n=1, count=100_000), "num_objects: example 0 has 100000 objects, outside 0..255"),
], ids=["num-examples-1e12", "huge-chunks", "deflate-bomb", "contiguous-unwritten", "max-objects-1e7",
        "objects-unwritten", "count-1e5"])
def test_declared_sizes_beyond_the_stored_bytes_are_refused_before_reading(tmp_path, kwargs, message):
    path = _hostile_file(tmp_path / "hostile.h5", **kwargs)
    assert path.stat().st_size < 2**20  # the file is small: only the declared sizes are huge
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(path)
    one_line_naming(error, path)
    assert "status: REJECTED" in hdf5.describe(path)


def test_data_info_of_a_rejected_file_says_why_instead_of_complete(setpred_file):
    _edit(setpred_file, lambda f: _set_label(f, "objects/color", 100))
    text = hdf5.describe(setpred_file)
    assert "status: complete" not in text and "label 100 is outside 0..7" in text
    assert "objects per example" not in text  # the data is not summarised before it is known to be sane


def test_data_info_checks_the_masks_as_training_does(discovery_file):
    _edit(discovery_file, lambda f: f["num_objects"].__setitem__(2, 1))  # the masks have 3 ids
    assert "example 2 has mask id 3 but num_objects 1" in hdf5.describe(discovery_file)
    validate_dataset(discovery_file)  # the masks are read only when asked (they are the bulk of the file)
    with pytest.raises(DatasetError, match="mask id"):
        validate_dataset(discovery_file, masks=True)


def test_valid_generated_files_pass_and_say_what_they_hold(setpred_file, discovery_file):
    info = validate_dataset(setpred_file, task="setpred", masks=True)
    assert (info.name, info.num_examples, info.height, info.max_objects) == ("clevr-shapes", 6, 32, 10)
    assert info.has_objects and info.has_masks
    info = validate_dataset(discovery_file, task="discovery")
    assert info.max_objects is None and not info.has_objects
    assert "status: complete" in hdf5.describe(discovery_file)
    with pytest.raises(DatasetError, match="objects: no per-object properties") as error:
        validate_dataset(discovery_file, task="setpred")
    one_line_naming(error, discovery_file)


def test_a_file_of_20000_examples_is_checked_in_pieces(tmp_path, monkeypatch):
    n, m = 20_000, 10
    rng = np.random.default_rng(0)
    counts = rng.integers(0, m + 1, n).astype(np.int32)
    real = np.arange(m)[None, :] < counts[:, None]
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": hdf5.FORMAT, "format_version": hdf5.FORMAT_VERSION, "name": "clevr",
                        "complete": True, "num_examples": n, "height": 4, "width": 4, "max_objects": m})
        f.create_dataset("images", data=np.zeros((n, 4, 4, 3), np.uint8), chunks=(1000, 4, 4, 3), compression="gzip")
        f["num_objects"] = counts
        f["objects/coords"] = np.where(real[..., None], rng.uniform(-3, 3, (n, m, 3)), 0).astype(np.float32)
        for key, size in hdf5.LABEL_VOCABULARY.items():
            f[f"objects/{key}"] = np.where(real, rng.integers(0, size, (n, m)), -1).astype(np.int8)
    monkeypatch.setattr(validate, "READ_ROWS_BYTES", 2**14)  # about 100 rows at a time: many pieces
    assert validate_dataset(path).num_examples == n
    _edit(path, lambda f: f["objects/color"].__setitem__((n - 1, 0), 8 if counts[-1] else -1) or
          f["num_objects"].__setitem__(n - 1, max(1, counts[-1])))
    with pytest.raises(DatasetError, match=f"example {n - 1}, object 0: label (8|-1) is outside"):
        validate_dataset(path)


def test_a_range_that_does_not_fit_in_free_memory_is_refused_before_reading(setpred_file, monkeypatch):
    monkeypatch.setattr(hdf5, "_available_memory", lambda: 10_000)
    with pytest.raises(DatasetError, match="num_examples: 6 examples need about .* GiB") as error:
        load_dataset(setpred_file)
    one_line_naming(error, setpred_file)
    assert len(load_dataset(setpred_file, limit=1)) == 1  # one example fits


def test_a_file_named_hdf5_is_a_dataset_file_whatever_its_name(tmp_path):
    path = write_dataset("tetrominoes", tmp_path / "my-data.hdf5", 4, seed=0, progress=False, workers=1)
    assert hdf5.is_dataset_path(path) and hdf5.is_dataset_path("X.HDF5") and hdf5.is_dataset_path("x.h5")
    assert not hdf5.is_dataset_path("tetrominoes")
    assert hdf5.dataset_name(path) == "tetrominoes"  # the name attribute, not the file name, says what it is
    _truncate(path)
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as error:
        hdf5.dataset_name(path)
    one_line_naming(error, path)


# --------------------------------------------------------------------------
# Converter inputs


def _clevr_dir(root, objects, n=1, size=(48, 32)):
    (root / "images" / "train").mkdir(parents=True)
    (root / "scenes").mkdir()
    scenes = []
    for i in range(n):
        filename = f"CLEVR_train_{i:06d}.png"
        Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(root / "images" / "train" / filename)
        scenes.append({"image_index": i, "image_filename": filename, "split": "train", "objects": objects})
    (root / "scenes" / "CLEVR_train_scenes.json").write_text(json.dumps({"scenes": scenes}))
    return root


OBJECT = {"3d_coords": [1.0, -2.0, 0.35], "size": "small", "material": "metal", "shape": "cube", "color": "red"}


def _convert_error(src, out, **kwargs):
    with pytest.raises(cv.ConvertError) as error:
        cv.convert_clevr(src, "train", out, resolution=8, progress=False, **kwargs)
    assert "\n" not in str(error.value) and not out.exists()
    return str(error.value)


@pytest.mark.parametrize("coords", [[float("nan"), 0.0, 0.35], [0.0, float("inf"), 0.35], [1e9, 0, 0.35],
                                    [1.0, 2.0]], ids=["nan", "inf", "far", "two-numbers"])
def test_a_bad_clevr_coordinate_is_an_error_naming_the_scene(tmp_path, coords):
    src = _clevr_dir(tmp_path / "clevr", [dict(OBJECT), {**OBJECT, "3d_coords": coords}])
    message = _convert_error(src, tmp_path / "out.h5")
    assert "CLEVR_train_scenes.json: scene 0 (CLEVR_train_000000.png), object 1: 3d_coords" in message


def test_an_empty_scenes_file_is_an_error(tmp_path):
    src = _clevr_dir(tmp_path / "clevr", [OBJECT], n=0)
    message = _convert_error(src, tmp_path / "out.h5")
    assert "CLEVR_train_scenes.json: holds no scenes" in message


def test_a_part_with_no_scene_small_enough_is_an_error(tmp_path):
    src = _clevr_dir(tmp_path / "clevr", [OBJECT] * 3)
    message = _convert_error(src, tmp_path / "out.h5", max_objects=2)
    assert "no scene of part 'all' has at most 2 objects" in message


def _patch_png_size(path, width, height):
    """Rewrite the IHDR of a small PNG to claim another size (the file stays small)."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [20_000, 5_000])  # beyond Pillow's own bomb limit, and beyond ours only
def test_an_image_claiming_a_huge_size_is_refused_before_decoding(tmp_path, side):
    src = _clevr_dir(tmp_path / "clevr", [OBJECT])
    png = src / "images" / "train" / "CLEVR_train_000000.png"
    _patch_png_size(png, side, side)
    assert png.stat().st_size < 4096
    message = _convert_error(src, tmp_path / "out.h5")
    assert message.startswith(f"{png}: image ") and "pixels allowed" in message


def _frame(payload, length=None):
    header = struct.pack("<Q", len(payload) if length is None else length)
    return header + struct.pack("<I", cv._masked_crc(header)) + payload + struct.pack("<I", cv._masked_crc(payload))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_tfrecord_length_of_2_to_the_50_is_refused_before_reading(tmp_path, compress):
    path = tmp_path / "bad.tfrecords"
    data = _frame(b"ok") + _frame(b"x" * 16, length=2**50)
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(cv.ConvertError, match="record 1: header claims 1,125,899,906,842,624 bytes") as error:
        list(cv.read_tfrecords(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_tfrecord_length_beyond_the_end_of_a_plain_file_is_truncation(tmp_path):
    path = tmp_path / "short.tfrecords"
    path.write_bytes(_frame(b"x" * 16, length=1000))
    with pytest.raises(cv.ConvertError, match="record 0: truncated .*claims 1,000 bytes"):
        list(cv.read_tfrecords(path))
