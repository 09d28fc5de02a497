"""Converters from the paper's real datasets to slotref's HDF5 schema.

Two sources (docs/datasets.md, "The schema"):

- CLEVR v1.0 (set prediction): ``images/<split>/*.png`` and
  ``scenes/CLEVR_<split>_scenes.json``. Preprocessing as the official code:
  bilinear resize of the whole 480x320 image to ``resolution`` (no crop), keep
  scenes with at most ``max_objects`` objects, labels as indices into the
  tensorflow_datasets ``clevr:3.1.0`` orderings.
- DeepMind's multi-object datasets (object discovery): GZIP-compressed TFRecord
  files of ``tf.train.Example``, read here without TensorFlow. Entity masks
  (0/255, entity 0 = background) become one instance map (0 = background,
  1..n = visible objects in entity order); clevr_with_masks gets the CLEVR6
  filter and the paper's crop ``[29:221, 64:256]`` + resize.

Reader choice. A TFRecord file is a sequence of frames
``uint64 length | masked crc32c(length) | data | masked crc32c(data)``. The
``tfrecord`` PyPI package reads that framing, but it ships as an sdist only,
never checks either CRC (it reads and discards them), and bundles an
``example_pb2`` generated for an old protobuf. The framing is four lines, so we
read it here and verify both CRCs with ``google-crc32c`` (Google's own,
C-accelerated wheels), and decode ``tf.train.Example`` with the ``protobuf``
runtime, building the five message types from descriptors in code (the
messages are TensorFlow's ``example.proto``/``feature.proto``; TensorFlow is
not needed). Both are imported lazily, so CLEVR conversion needs neither.

Output. Every writer fills ``OUT.partial`` in chunks, records after each chunk
how many source records it has consumed, and renames to ``OUT`` with
``complete=True`` only at the end; rerunning the same command on a leftover
``OUT.partial`` continues where it stopped.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from slotref import paper

# CLEVR labels are stored as indices into slotref.paper's vocabulary (the label
# orderings of tensorflow_datasets clevr:3.1.0, the official code's source).
CLEVR_MONITOR_SIZE = 512  # official code: AP is monitored on the first 512 training images

# DeepMind multi_object_datasets readers: image shape, entities incl. background,
# and the order the mask bytes are stored in ("EHW": [E, H, W, 1]; "HWE":
# [H, W, E, 1], which their multi_dsprites reader transposes with [2, 0, 1, 3]).
MULTI_OBJECT = {
    "tetrominoes": dict(image=(35, 35, 3), entities=4, mask_layout="EHW", name="tetrominoes"),
    "multi_dsprites": dict(image=(64, 64, 3), entities=6, mask_layout="HWE", name="multi-dsprites"),
    "multi_dsprites_colored_on_colored": dict(
        image=(64, 64, 3), entities=5, mask_layout="HWE", name="multi-dsprites-colored-on-colored"
    ),
    "clevr_with_masks": dict(image=(240, 320, 3), entities=11, mask_layout="EHW", name="clevr_with_masks"),
}
CLEVR6_MAX_OBJECTS = 6  # paper: CLEVR6 keeps scenes with at most 6 visible objects
CLEVR_WITH_MASKS_CROP = (slice(29, 221), slice(64, 256))  # paper / official code

FORMAT_VERSION = 1
COORD_LIMIT = 10.0  # |x|, |y|, |z| of a CLEVR object (the scenes span about -3..3); as the HDF5 reader
MAX_IMAGE_PIXELS = 4096 * 4096  # a CLEVR image is 480x320: anything far larger is refused unread
MAX_RECORD_BYTES = 2**28  # one TFRecord record; clevr_with_masks records are about 3 MB
EXAMPLES_PER_CHUNK = 64  # examples buffered between HDF5 writes (bounds memory)


class ConvertError(ValueError):
    """Bad converter input; the message is one line naming the file and record."""


# ----------------------------------------------------------------------------
# HDF5 writer: OUT.partial, chunked appends, resumable, renamed when complete.


class _Writer:
    """Append-only writer of one schema file with resume bookkeeping.

    ``state`` (records consumed etc.) is stored as file attributes after every
    flushed chunk, so an interrupted run leaves a consistent ``OUT.partial``.
    """

    def __init__(self, out, *, name, height, width, config, masks, max_objects=None,
                 chunk=EXAMPLES_PER_CHUNK):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.chunk = chunk
        self.masks = masks
        self.max_objects = max_objects
        self.buffer = []
        self.bar = None
        config_json = json.dumps(config, sort_keys=True)
        if self.out.exists():
            raise ConvertError(f"{self.out}: already exists; delete it or choose another --out")
        if self.partial.exists():
            try:
                self.f = h5py.File(self.partial, "r+")
            except OSError as e:  # e.g. killed in the middle of an HDF5 write
                raise ConvertError(f"{self.partial}: unreadable ({e}); delete it to start over") from None
            if self.f.attrs.get("config") != config_json or self.f.attrs.get("complete"):
                self.f.close()
                raise ConvertError(
                    f"{self.partial}: left by a conversion with other options; delete it to start over"
                )
            n = int(self.f.attrs["num_examples"])
            for ds in self._datasets():
                ds.resize(n, axis=0)  # drop rows written after the last recorded chunk
            self.state = json.loads(self.f.attrs["state"])
            return
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.partial, "w")
        a = self.f.attrs
        a["format"] = "slotref-dataset"
        a["format_version"] = FORMAT_VERSION
        a["name"] = name
        a["complete"] = False
        a["num_examples"] = 0
        a["height"], a["width"] = height, width
        a["source"] = "converted"
        a["config"] = config_json
        c = min(chunk, 16)
        self.f.create_dataset("images", (0, height, width, 3), np.uint8,
                              maxshape=(None, height, width, 3), chunks=(c, height, width, 3))
        self.f.create_dataset("num_objects", (0,), np.int32, maxshape=(None,), chunks=(1024,))
        if masks:
            self.f.create_dataset("masks", (0, height, width), np.uint8,
                                  maxshape=(None, height, width), chunks=(c, height, width))
        if max_objects is not None:
            a["max_objects"] = max_objects
            m = max_objects
            self.f.create_dataset("objects/coords", (0, m, 3), np.float32,
                                  maxshape=(None, m, 3), chunks=(256, m, 3))
            for key in ("size", "material", "shape", "color"):
                self.f.create_dataset(f"objects/{key}", (0, m), np.int8,
                                      maxshape=(None, m), chunks=(256, m))
        self.state = {"records_consumed": 0}
        a["state"] = json.dumps(self.state)
        self.f.flush()

    def _datasets(self):
        names = ["images", "num_objects"]
        if "masks" in self.f:
            names.append("masks")
        if "objects" in self.f:
            names += [f"objects/{k}" for k in ("coords", "size", "material", "shape", "color")]
        return [self.f[k] for k in names]

    @property
    def num_examples(self):
        return int(self.f.attrs["num_examples"]) + len(self.buffer)

    def add(self, example, **state):
        """Buffer one example (dict of arrays); flush a full chunk with ``state``."""
        self.buffer.append(example)
        if len(self.buffer) >= self.chunk:
            self.commit(**state)

    def commit(self, **state):
        """Write the buffer, then record ``state`` (order matters for resume)."""
        n0 = int(self.f.attrs["num_examples"])
        n1 = n0 + len(self.buffer)
        if self.buffer:
            keys = ["images", "num_objects"] + (["masks"] if self.masks else [])
            if self.max_objects is not None:
                keys += [f"objects/{k}" for k in ("coords", "size", "material", "shape", "color")]
            for key in keys:
                ds = self.f[key]
                ds.resize(n1, axis=0)
                ds[n0:n1] = np.stack([ex[key] for ex in self.buffer])
            self.buffer = []
        self.state.update(state)
        self.f.attrs["num_examples"] = n1
        self.f.attrs["state"] = json.dumps(self.state)
        self.f.flush()

    def finish(self, **state):
        self.commit(**state)
        self.f.attrs["complete"] = True  # last, after every example is on disk
        self.f.flush()
        self.f.close()
        os.replace(self.partial, self.out)

    def close(self):
        if self.bar is not None:
            self.bar.close()  # ends the bar's line before any error message
        if self.f.id.valid:
            self.f.close()


def _finished(out, config):
    """Summary of an existing complete ``out`` made with ``config``, else None.

    Makes rerunning a finished command a no-op instead of an error.
    """
    out = Path(out)
    if not out.exists():
        return None
    try:
        with h5py.File(out, "r") as f:
            same = bool(f.attrs.get("complete")) and f.attrs.get("config") == json.dumps(config, sort_keys=True)
            if same:
                state = json.loads(f.attrs["state"])
                return dict(out=str(out), num_examples=int(f.attrs["num_examples"]),
                            records=state["records_consumed"])
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------
# CLEVR v1.0


def _resize(array, resolution, resample):
    """Resize an HxW(x3) uint8 array to resolution x resolution with Pillow."""
    return np.asarray(Image.fromarray(array).resize((resolution, resolution), resample))


def _load_png(path, resolution):
    """CLEVR image -> uint8 [resolution, resolution, 3]: alpha dropped, bilinear resize.

    The size in the image's header is checked before its pixels are decoded.
    """
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # Pillow's own limit, far above ours
        raise ConvertError(f"{path}: image has more than the {MAX_IMAGE_PIXELS:,} pixels allowed ({e}); "
                           f"replace it with the dataset's own image") from None
    with im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ConvertError(f"{path}: image is {width}x{height}, more than the {MAX_IMAGE_PIXELS:,} pixels "
                               f"allowed (CLEVR's are 480x320); replace it with the dataset's own image")
        rgb = im.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _clevr_labels(objects, max_objects, where):
    """CLEVR scene objects -> padded coords (float32 [M, 3]) and label indices (int8 [M])."""
    coords = np.zeros((max_objects, 3), np.float32)
    orderings = {key: names for key, _, names in paper.ATTRIBUTES}
    labels = {k: np.full(max_objects, -1, np.int8) for k in orderings}
    for j, obj in enumerate(objects):
        try:
            xyz = np.asarray(obj["3d_coords"], np.float64)
            if xyz.shape != (3,):
                raise ConvertError(f"{where}, object {j}: 3d_coords is {obj['3d_coords']!r}, expected 3 numbers; "
                                   f"fix the scenes file")
            if not (np.isfinite(xyz).all() and (np.abs(xyz) <= COORD_LIMIT).all()):
                raise ConvertError(f"{where}, object {j}: 3d_coords {xyz.tolist()} is not finite or outside "
                                   f"-{COORD_LIMIT:g}..{COORD_LIMIT:g}; fix the scenes file or drop the scene")
            coords[j] = xyz
            for key, names in orderings.items():
                if obj[key] not in names:
                    raise ConvertError(f"{where}, object {j}: unknown {key} {obj[key]!r}")
                labels[key][j] = names.index(obj[key])
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, ConvertError):
                raise
            raise ConvertError(f"{where}, object {j}: bad object ({type(e).__name__}: {e})") from None
    return coords, labels


def _clevr_scenes(src, split):
    """Load and check CLEVR's scenes file against images/<split>; scenes sorted by index."""
    src = Path(src)
    scenes_path = src / "scenes" / f"CLEVR_{split}_scenes.json"
    image_dir = src / "images" / split
    if not scenes_path.is_file():
        raise ConvertError(f"{scenes_path}: no scenes file for split {split!r} (CLEVR's test split has none)")
    if not image_dir.is_dir():
        raise ConvertError(f"{image_dir}: no image directory for split {split!r}")
    try:
        with open(scenes_path) as fh:
            # The whole JSON is parsed once (about 1 GB of Python objects for
            # CLEVR's 70K training scenes); only the fields we need are kept.
            scenes = json.load(fh)["scenes"]
        if not isinstance(scenes, list):
            raise TypeError(f"'scenes' is a {type(scenes).__name__}, expected a list")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{scenes_path}: not a CLEVR scenes file ({type(e).__name__}: {e})") from None
    kept = []
    for i, scene in enumerate(scenes):
        try:
            kept.append((int(scene["image_index"]), str(scene["image_filename"]), scene["objects"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{scenes_path}: scene {i}: missing field ({type(e).__name__}: {e})") from None
        if scene.get("split", split) != split:
            raise ConvertError(f"{scenes_path}: scene {i}: split {scene['split']!r}, expected {split!r}")
    del scenes
    if not kept:
        raise ConvertError(f"{scenes_path}: holds no scenes; use CLEVR's own scenes file for split {split!r}")
    kept.sort(key=lambda s: s[0])
    on_disk = {p for p in os.listdir(image_dir) if p.endswith(".png")}
    named = set()
    for index, filename, _ in kept:
        if filename not in on_disk:
            raise ConvertError(
                f"{scenes_path}: scene {index}: image {filename} not found in {image_dir}"
            )
        named.add(filename)
    if len(named) != len(kept):
        raise ConvertError(f"{scenes_path}: scenes name the same image twice")
    extra = sorted(on_disk - named)
    if extra:
        raise ConvertError(
            f"{scenes_path}: does not match {image_dir}: {len(extra)} images have no scene (first {extra[0]})"
        )
    return scenes_path, image_dir, kept


def convert_clevr(src, split, out, *, resolution=128, max_objects=10, part="all",
                  monitor_size=CLEVR_MONITOR_SIZE, chunk=EXAMPLES_PER_CHUNK, progress=True):
    """CLEVR v1.0 ``split`` -> set-prediction HDF5 file ``out``; returns a summary dict.

    ``part`` selects by image index as the official code does: "monitor" is the
    first ``monitor_size`` training images, "train" the rest, "all" everything.
    """
    if part != "all" and split != "train":
        raise ConvertError(f"part {part!r} splits CLEVR's training images; use --split train")
    scenes_path, image_dir, scenes = _clevr_scenes(src, split)
    if part == "monitor":
        scenes = [s for s in scenes if s[0] < monitor_size]
    elif part == "train":
        scenes = [s for s in scenes if s[0] >= monitor_size]
    config = dict(converter="clevr", src=str(Path(src).resolve()), split=split, resolution=resolution,
                  max_objects=max_objects, part=part, monitor_size=monitor_size)
    done = _finished(out, config)
    if done:
        return done
    writer = _Writer(out, name="clevr", height=resolution, width=resolution, config=config,
                     masks=False, max_objects=max_objects, chunk=chunk)
    try:
        start = writer.state["records_consumed"]
        bar = tqdm(total=len(scenes), initial=start, unit="scene", disable=not progress,
                   desc=f"CLEVR {split}")
        writer.bar = bar
        for r in range(start, len(scenes)):
            index, filename, objects = scenes[r]
            bar.update(1)
            if len(objects) > max_objects:
                continue
            where = f"{scenes_path}: scene {index} ({filename})"
            coords, labels = _clevr_labels(objects, max_objects, where)
            try:
                image = _load_png(image_dir / filename, resolution)
            except (OSError, ValueError, SyntaxError) as e:
                if isinstance(e, ConvertError):
                    raise
                raise ConvertError(f"{image_dir / filename}: scene {index}: unreadable image ({e})") from None
            example = {"images": image, "num_objects": np.int32(len(objects)), "objects/coords": coords}
            example.update({f"objects/{k}": v for k, v in labels.items()})
            writer.add(example, records_consumed=r + 1)
        bar.close()
        n = writer.num_examples
        if n == 0:
            raise ConvertError(f"{scenes_path}: no scene of part {part!r} has at most {max_objects} objects; "
                               f"raise --max-objects or choose another --part")
        writer.finish(records_consumed=len(scenes))
    finally:
        writer.close()
    return dict(out=str(out), num_examples=n, records=len(scenes))


# ----------------------------------------------------------------------------
# TFRecord framing and tf.train.Example


def _masked_crc(data):
    """TFRecord's masked CRC-32C: rotate right by 15 and add a constant."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path, start=0):
    """Yield (record index, payload bytes) of a TFRecord file, verifying both CRCs.

    GZIP-compressed and plain files are both accepted (by the gzip magic).
    Records before ``start`` are framed and checked but not returned.
    Memory: one record at a time.
    """
    path = str(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    size = os.path.getsize(path)
    opener = gzip.open if gzipped else open
    index = 0
    try:
        with opener(path, "rb") as fh:
            while True:
                header = fh.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise ConvertError(f"{path}: record {index}: truncated header")
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if _masked_crc(header[:8]) != length_crc:
                    raise ConvertError(f"{path}: record {index}: bad length CRC (corrupt file)")
                # Checked before reading: a damaged header must not become a huge allocation.
                if length > MAX_RECORD_BYTES:
                    raise ConvertError(f"{path}: record {index}: header claims {length:,} bytes, more than the "
                                       f"{MAX_RECORD_BYTES:,} a record may have (corrupt file?); use the original file")
                if not gzipped and length + 4 > size - fh.tell():
                    raise ConvertError(f"{path}: record {index}: truncated (header claims {length:,} bytes, the file "
                                       f"holds {size - fh.tell():,} more); use the original file")
                data = fh.read(length)
                footer = fh.read(4)
                if len(data) < length or len(footer) < 4:
                    raise ConvertError(f"{path}: record {index}: truncated (file ends inside the record)")
                if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                    raise ConvertError(f"{path}: record {index}: bad data CRC (corrupt file)")
                if index >= start:
                    yield index, data
                index += 1
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ConvertError(f"{path}: record {index}: unreadable gzip stream ({e})") from None


_EXAMPLE_CLASS = None


def _example_class():
    """tf.train.Example as a protobuf message class, built from descriptors.

    Same field numbers as TensorFlow's core/example/{feature,example}.proto, in
    a private descriptor pool so it cannot clash with an installed TensorFlow.
    """
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is not None:
        return _EXAMPLE_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="slotref_tf_example.proto", package="tensorflow",
                                             syntax="proto3")

    def message(name, fields, nested=()):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
    feature = message("Feature", [
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0),
    ])
    feature.oneof_decl.add(name="kind")
    features = message("Features", [
        ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None),
    ])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.Example")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        _EXAMPLE_CLASS = message_factory.GetMessageClass(descriptor)
    else:
        _EXAMPLE_CLASS = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return _EXAMPLE_CLASS


def parse_example(data):
    """Serialized tf.train.Example -> {key: bytes | float32 array | int64 array}.

    A bytes feature is returned as the concatenation of its values: DeepMind's
    files store images and masks as one 1-byte string per element (their
    readers use ``FixedLenFeature(shape, tf.string)`` then ``decode_raw``).
    """
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError as e:
        raise ConvertError(f"not a tf.train.Example ({e})") from None
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = b"".join(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, np.int64)
        else:
            out[key] = None
    return out


# ----------------------------------------------------------------------------
# DeepMind multi-object datasets


def instance_map(masks, visibility):
    """Entity masks -> one instance map.

    masks: uint8 [E, H, W], 0/255, entity 0 the background, the entities
    partitioning the image. visibility: [E]. Returns uint8 [H, W]: 0 for the
    background (and any invisible entity), 1..n for the visible objects in
    entity order, and n.
    """
    owner = np.argmax(masks, axis=0)  # Shape: [H, W]; all-zero pixels go to entity 0
    visible = np.asarray(visibility)[1:] > 0.5
    lut = np.zeros(len(masks), np.uint8)
    lut[1:][visible] = np.arange(1, visible.sum() + 1)
    return lut[owner], int(visible.sum())


def _decode_multi_object(features, spec, where):
    """Checked image (uint8 [H, W, 3]), masks (uint8 [E, H, W]) and visibility [E]."""
    h, w, c = spec["image"]
    e = spec["entities"]
    for key in ("image", "mask", "visibility"):
        if key not in features or features[key] is None:
            raise ConvertError(f"{where}: no feature {key!r} (features: {', '.join(sorted(features))})")
    image, mask, vis = features["image"], features["mask"], features["visibility"]
    if not isinstance(image, bytes) or len(image) != h * w * c:
        raise ConvertError(f"{where}: image has {len(image)} values, expected {h}x{w}x{c}")
    if not isinstance(mask, bytes) or len(mask) != e * h * w:
        raise ConvertError(f"{where}: mask has {len(mask)} values, expected {e}x{h}x{w}x1")
    if isinstance(vis, bytes) or len(vis) != e:
        raise ConvertError(f"{where}: visibility is not {e} floats")
    image = np.frombuffer(image, np.uint8).reshape(h, w, c)
    if spec["mask_layout"] == "HWE":
        masks = np.frombuffer(mask, np.uint8).reshape(h, w, e).transpose(2, 0, 1)
    else:
        masks = np.frombuffer(mask, np.uint8).reshape(e, h, w)
    return image, masks, vis


def convert_multi_object(src, dataset, out, *, skip=0, limit=None, max_examples=None, resolution=128,
                         chunk=EXAMPLES_PER_CHUNK, progress=True):
    """One DeepMind multi-object TFRecord file -> object-discovery HDF5 file.

    ``skip`` and ``limit`` count records of the file (the paper's "first 70K /
    60K samples"), before any filter; ``max_examples`` stops after that many
    written examples. clevr_with_masks keeps CLEVR6 scenes only and is cropped
    and resized to ``resolution``; the other datasets keep their native size.
    Returns a summary: examples written and the index after the last record read.
    """
    if dataset not in MULTI_OBJECT:
        raise ConvertError(f"unknown dataset {dataset!r}; one of {', '.join(MULTI_OBJECT)}")
    spec = MULTI_OBJECT[dataset]
    src = Path(src)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file")
    is_clevr = dataset == "clevr_with_masks"
    h, w = (resolution, resolution) if is_clevr else spec["image"][:2]
    config = dict(converter="multi-object", src=str(src.resolve()), dataset=dataset, skip=skip,
                  limit=limit, max_examples=max_examples, resolution=h if is_clevr else None)
    done = _finished(out, config)
    if done:
        return done
    writer = _Writer(out, name=spec["name"], height=h, width=w, config=config, masks=True, chunk=chunk)
    stop = None if limit is None else skip + limit  # first record index not to read
    try:
        records = max(skip, writer.state["records_consumed"])
        writer.bar = bar = tqdm(total=limit, initial=records - skip, unit="record",
                                disable=not progress, desc=dataset)
        # Records before `records` are framed and CRC-checked, not decoded.
        for index, data in read_tfrecords(src, start=records):
            if (stop is not None and index >= stop) or (
                    max_examples is not None and writer.num_examples >= max_examples):
                break
            records = index + 1
            bar.update(1)
            where = f"{src}: record {index}"
            try:
                features = parse_example(data)
            except ConvertError as e:
                raise ConvertError(f"{where}: {e}") from None
            image, masks, vis = _decode_multi_object(features, spec, where)
            ids, n = instance_map(masks, vis)
            if is_clevr:
                if n > CLEVR6_MAX_OBJECTS:
                    continue
                image = _resize(np.ascontiguousarray(image[CLEVR_WITH_MASKS_CROP]), resolution, Image.BILINEAR)
                ids = _resize(np.ascontiguousarray(ids[CLEVR_WITH_MASKS_CROP]), resolution, Image.NEAREST)
            writer.add({"images": image, "masks": ids, "num_objects": np.int32(n)}, records_consumed=records)
        if writer.num_examples == 0:
            raise ConvertError(f"{src}: no examples in records {skip}..{records} (file has fewer records?)")
        n_written = writer.num_examples
        writer.finish(records_consumed=records)
    finally:
        writer.close()
    return dict(out=str(out), num_examples=n_written, records=records)
