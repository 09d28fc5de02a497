"""Converters from the paper's real datasets to slotref's HDF5 schema.

Two sources (docs/datasets.md, "The schema"):

- CLEVR v1.0 (set prediction): ``images/<split>/*.png`` and
  ``scenes/CLEVR_<split>_scenes.json``. Preprocessing as the official code:
  bilinear resize of the whole 480x320 image to ``resolution`` (no crop), keep
  scenes with at most ``max_objects`` objects, labels as indices into the
  tensorflow_datasets ``clevr:3.1.0`` orderings.
- DeepMind's multi-object datasets (object discovery): GZIP-compressed TFRecord
  files of ``tf.train.Example`` (``slotref.data.tfrecord``). Entity masks
  (0/255, entity 0 = background) become one instance map (0 = background,
  1..n = visible objects in entity order); clevr_with_masks gets the CLEVR6
  filter and the paper's crop ``[29:221, 64:256]`` + resize.

Output goes through ``slotref.data.writer``: ``OUT.partial`` in chunks, with
the source records consumed recorded after each chunk (attribute ``state``),
renamed to ``OUT`` when complete. Rerunning the same command continues a
leftover ``OUT.partial``; one left by other options is refused; rerunning a
finished command does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from slotref import paper
from slotref.data.errors import ConvertError
from slotref.data.schema import COORD_LIMIT
from slotref.paths import FileError, regular_file, shown
from slotref.data.tfrecord import MAX_RECORD_BYTES, _masked_crc, parse_example, read_tfrecords  # noqa: F401
from slotref.data.writer import Writer, finished_attrs, partial_path, partial_status

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
MAX_IMAGE_PIXELS = 4096 * 4096  # a CLEVR image is 480x320: anything far larger is refused unread
EXAMPLES_PER_CHUNK = 64  # examples buffered between HDF5 writes (bounds memory)


def _writer(out, config, **layout):
    """A ``Writer`` for ``out`` with a ``records_consumed`` state, or the summary of a finished ``out``.

    An ``OUT.partial`` left by other options, or unreadable, is refused: it
    may hold hours of conversion.
    """
    done = finished_attrs(out, config)
    if done is not None:
        return dict(out=str(out), num_examples=done["num_examples"],
                    records=json.loads(done["state"])["records_consumed"])
    if os.path.lexists(out):
        raise ConvertError(f"{shown(out)}: already exists; delete it or choose another --out")
    status = partial_status(out, name=layout["name"], config=config)
    if status == "unreadable":
        raise ConvertError(f"{shown(partial_path(out))}: unreadable (killed while writing?); delete it to start over")
    if status == "other":
        raise ConvertError(f"{shown(partial_path(out))}: left by a conversion with other options; "
                           "delete it to start over")
    return Writer(out, source="converted", config=config, state={"records_consumed": 0}, **layout)


# ----------------------------------------------------------------------------
# CLEVR v1.0


def _regular(path, what):
    """``ConvertError`` (one line) unless ``path`` is a regular file: a FIFO is never opened, it would block."""
    try:
        regular_file(path, what)
    except FileError as err:
        raise ConvertError(str(err)) from None


def _resize(array, resolution, resample):
    """Resize an HxW(x3) uint8 array to resolution x resolution with Pillow."""
    return np.asarray(Image.fromarray(array).resize((resolution, resolution), resample))


def _load_png(path, resolution):
    """CLEVR image -> uint8 [resolution, resolution, 3]: alpha dropped, bilinear resize.

    The size in the image's header is checked before its pixels are decoded.
    """
    _regular(path, "image")
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
    if not os.path.lexists(scenes_path):
        raise ConvertError(f"{scenes_path}: no scenes file for split {split!r} (CLEVR's test split has none)")
    _regular(scenes_path, "scenes file")
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
    writer = _writer(out, config, name="clevr", height=resolution, width=resolution, masks=False,
                     max_objects=max_objects, chunk=chunk)
    if isinstance(writer, dict):
        return writer
    start = writer.state["records_consumed"]
    with writer, tqdm(total=len(scenes), initial=start, unit="scene", disable=not progress,
                      desc=f"CLEVR {split}") as bar:
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
        n = writer.num_examples
        if n == 0:
            raise ConvertError(f"{scenes_path}: no scene of part {part!r} has at most {max_objects} objects; "
                               f"raise --max-objects or choose another --part")
        writer.finish(records_consumed=len(scenes))
    return dict(out=str(out), num_examples=n, records=len(scenes))


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
    _regular(src, "--src")
    is_clevr = dataset == "clevr_with_masks"
    h, w = (resolution, resolution) if is_clevr else spec["image"][:2]
    config = dict(converter="multi-object", src=str(src.resolve()), dataset=dataset, skip=skip,
                  limit=limit, max_examples=max_examples, resolution=h if is_clevr else None)
    writer = _writer(out, config, name=spec["name"], height=h, width=w, masks=True, chunk=chunk)
    if isinstance(writer, dict):
        return writer
    stop = None if limit is None else skip + limit  # first record index not to read
    records = max(skip, writer.state["records_consumed"])
    with writer, tqdm(total=limit, initial=records - skip, unit="record", disable=not progress,
                      desc=dataset) as bar:
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
    return dict(out=str(out), num_examples=n_written, records=records)
