"""Reading dataset files (``docs/datasets.md, "The schema"``) and preparing them for the models.

``load_dataset`` checks a file with ``validate_dataset`` and reads a range of
examples into memory; ``describe`` is ``data info``. The schema is
``slotref.data.schema``, the checks ``slotref.data.validate``, the writer
``slotref.data.writer`` and generated files ``slotref.data.make``; their
public names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from slotref import paper
from slotref.data.errors import DatasetError
from slotref.data.make import ensure_dataset, generator_config, write_dataset  # noqa: F401
from slotref.data.schema import FORMAT, FORMAT_VERSION, LABEL_VOCABULARY, OBJECT_FIELDS  # noqa: F401
from slotref.data.validate import (  # noqa: F401
    COORD_LIMIT, MAX_COMPRESSION, MAX_OBJECTS, MAX_SIDE, READ_ROWS_BYTES, DatasetInfo, _error, read_attrs,
    validate_dataset,
)

SUFFIXES = (".h5", ".hdf5")



@dataclass
class Dataset:
    """A loaded split. Layout as the schema: images uint8 (N, H, W, 3) NHWC."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray | None  # uint8 (N, H, W), 0 = background, 1..n objects
    num_objects: np.ndarray  # int32 (N,)
    objects: dict | None  # coords float32 (N, M, 3); size, material, shape, color int8 (N, M)
    meta: dict = field(default_factory=dict)  # the file's attributes
    path: str = ""
    fingerprint: str = ""  # sha256 of the attributes and the examples loaded

    def __len__(self):
        return len(self.images)


def is_dataset_path(name) -> bool:
    """Whether ``name`` names an HDF5 dataset file (``.h5`` or ``.hdf5``) rather than a built-in dataset."""
    return os.fspath(name).lower().endswith(SUFFIXES)


def dataset_name(path) -> str:
    """The ``name`` attribute of a dataset file (e.g. ``tetrominoes``); ``DatasetError`` if unreadable."""
    meta = read_attrs(os.fspath(path))
    name = meta.get("name")
    if not isinstance(name, str):
        raise _error(path, "name", f"attribute is {name!r}, expected a string",
                     "rewrite the file with `data make` or `data convert`")
    return name


def _available_memory():
    """Bytes of physical memory not in use (None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load_dataset(path, limit=None, start=0, task=None):
    """Read examples ``start .. start+limit-1`` (all by default) into memory.

    The file is checked first by ``validate_dataset`` (``task`` as there);
    a range that would not fit in free memory is refused before it is read.
    """
    path = os.fspath(path)
    info = validate_dataset(path, task)
    n, h, w, m = info.num_examples, info.height, info.width, info.max_objects
    if not 0 <= start <= n:
        raise _error(path, "start", f"{start} is outside the {n} examples", "choose a smaller start")
    stop = n if limit is None else min(n, start + int(limit))
    row = h * w * (3 + info.has_masks) + 4 + (m * (12 + 4 + paper.NUM_PROPERTIES * 4) if m else 0)
    need, free = (stop - start) * row, _available_memory()
    if free is not None and need > free:
        raise _error(path, "num_examples", f"{stop - start:,} examples need about {need / 2**30:.1f} GiB "
                     f"in memory, {free / 2**30:.1f} GiB is free", "use a smaller file or free memory")
    try:
        with h5py.File(path, "r") as f:
            images = f["images"][start:stop]
            num_objects = f["num_objects"][start:stop].astype(np.int32)
            masks = f["masks"][start:stop] if info.has_masks else None
            objects = None
            if info.has_objects:
                objects = {key: f[f"objects/{key}"][start:stop] for key in OBJECT_FIELDS}
    except (OSError, RuntimeError, ValueError) as e:  # a damaged chunk shows up only when it is read
        raise _error(path, "data", f"cannot be read (truncated or corrupt?): {e}",
                     "regenerate or reconvert the file") from None
    if masks is not None and len(masks):
        highest = masks.reshape(len(masks), -1).max(axis=1)
        bad = np.nonzero(highest > num_objects)[0]
        if len(bad):
            raise _error(path, "masks", f"example {start + bad[0]} has mask id {highest[bad[0]]} "
                         f"but num_objects {num_objects[bad[0]]}", "fix num_objects or the masks")
    meta = info.meta
    digest = hashlib.sha256(json.dumps({"attrs": meta, "start": start, "num_examples": stop - start},
                                       sort_keys=True, default=str).encode()).hexdigest()
    return Dataset(images, masks, num_objects, objects, meta, path, digest)




# --------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------


def set_prediction_targets(objects, num_objects, max_objects=10):
    """The 19-number targets, float32 (N, max_objects, 19), laid out as ``slotref.paper``:

    per object, [x, y, z] mapped from [-3, 3] to [0, 1], then one-hots of size
    (2), material (2), shape (3), color (8), then 1.0 for a real object; rows
    past ``num_objects`` are zero. A scene with more than ``max_objects``
    objects is an error.
    """
    num_objects = np.asarray(num_objects)
    if len(num_objects) and num_objects.max() > max_objects:
        count = int((num_objects > max_objects).sum())
        raise DatasetError(f"{count} scene(s) have more than max_objects={max_objects} objects; "
                           "pass a larger max_objects or a file of smaller scenes")
    n = len(num_objects)
    m = min(objects["coords"].shape[1], max_objects)
    real = np.arange(m)[None, :] < num_objects[:, None]  # (N, m)
    parts = [paper.coords_to_unit(np.asarray(objects["coords"][:, :m], np.float32))]
    for key, _, names in paper.ATTRIBUTES:
        index = np.asarray(objects[key][:, :m]).astype(np.int64)
        parts.append((index[..., None] == np.arange(len(names))).astype(np.float32))
    parts.append(np.ones((n, m, 1), np.float32))
    targets = np.zeros((n, max_objects, paper.NUM_PROPERTIES), np.float32)
    targets[:, :m] = np.concatenate(parts, axis=-1) * real[..., None]
    return targets


def images_to_float(images, dtype=np.float32, xp=np):
    """uint8 images to [-1, 1] in ``dtype``, as the official code (x / 255 - 0.5) * 2; with ``xp``
    (``backend.Backend.xp``) on that array library's device."""
    x = xp.asarray(images).astype(dtype)
    return x * (2.0 / 255.0) - 1.0


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


def describe(path):
    """A human-readable dump of a dataset file: attributes, fields, object counts, and the
    status ``validate_dataset`` gives (``complete``, or ``REJECTED: <why>``, as training would)."""
    path = os.fspath(path)
    meta = read_attrs(path)
    lines = [f"{path}"]
    lines += [f"  {key} = {_short(value)}" for key, value in sorted(meta.items())]
    try:
        info = validate_dataset(path, masks=True)
        status = "complete"
    except DatasetError as e:
        info, status = None, f"REJECTED: {e}"
    try:
        with h5py.File(path, "r") as f:
            lines.append("  datasets:")

            def visit(name, item):  # metadata only; visititems does not follow soft or external links
                if isinstance(item, h5py.Dataset):
                    extra = f", chunks {item.chunks}" if item.chunks else ""
                    extra += f", {item.compression}" if item.compression else ""
                    lines.append(f"    {name:18s} {str(item.dtype):8s} {item.shape}{extra}")

            f.visititems(visit)
            if info is not None:  # the data is read only once the sizes are known to be sane
                counts = f["num_objects"][:]
                values, freq = np.unique(counts, return_counts=True)
                lines.append("  objects per example: " + ", ".join(f"{v}: {c}" for v, c in zip(values, freq)))
                if info.has_objects:
                    lines.append("  object attributes:")
                    for key, _, names in paper.ATTRIBUTES:
                        index = f["objects"][key][:]
                        freq = np.bincount(index[index >= 0].astype(int), minlength=len(names))
                        lines.append(f"    {key:9s} " + ", ".join(f"{nm} {c}" for nm, c in zip(names, freq)))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        if info is not None:
            raise _error(path, "data", f"cannot be read (truncated or corrupt?): {e}",
                         "regenerate or reconvert the file") from None
    if info is None and not meta.get("complete", True):
        status = "INCOMPLETE: " + status[len("REJECTED: "):]
    lines.append(f"  status: {status}")
    return "\n".join(lines)


def _short(value, width=200):
    text = str(value)
    return text if len(text) <= width else text[:width] + f"... ({len(text)} characters)"
