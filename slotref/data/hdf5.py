"""Write and read the slotref HDF5 dataset schema (``docs/datasets.md, "The schema"``).

Writers never leave a file at the final path that is not whole: they write
``OUT.partial``, record after every chunk how many examples are in it (the
``num_written`` attribute), resume a matching ``.partial`` after an
interruption, and set ``complete=True`` and rename to ``OUT`` only at the end.

The reader checks the file against the schema and raises ``DatasetError`` (a
one-line message naming the file) for anything it cannot use.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import h5py
import numpy as np
from tqdm import tqdm

from slotref import paper
from slotref.data import generators

FORMAT = "slotref-dataset"
FORMAT_VERSION = 1
OBJECT_FIELDS = ("coords", "size", "material", "shape", "color")


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the problem."""


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


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def generator_config(name, seed, resolution=None, **options):
    """The full option set of a generated file (the ``config`` attribute)."""
    spec = generators.get_spec(name)
    zoom = generators.resolve_zoom(spec, options.pop("zoom", None))
    resolution, min_objects, max_objects = generators.resolve_options(spec, resolution, **options)
    config = {"generator": name, "seed": int(seed), "resolution": resolution,
              "min_objects": min_objects, "max_objects": max_objects}
    if zoom != 1.0:  # absent at 1: files made before the option keep their config
        config["zoom"] = zoom
    return config


def write_dataset(name, out_path, n, seed, resolution=None, chunk=256, progress=True, workers=None, **options):
    """Generate ``n`` examples of generator ``name`` into ``out_path``; returns the path.

    Resumes ``out_path + ".partial"`` when it was started with the same name,
    options and ``n``; starts it afresh otherwise. ``workers`` processes
    render chunks while this one writes (default: up to 2; 1 renders inline).
    Every example depends only on (seed, index), so the file's contents do not
    depend on ``chunk`` or ``workers``.
    """
    out_path = os.fspath(out_path)
    if n < 1:
        raise ValueError(f"{out_path}: n must be at least 1, got {n}")
    spec = generators.get_spec(name)
    config = generator_config(name, seed, resolution, **options)
    partial = out_path + ".partial"
    done = _resumable_count(partial, name, config, n)
    if done is None:
        _create(partial, spec, config, n)
        done = 0
    elif progress:
        print(f"resuming {partial} at example {done} of {n}", file=sys.stderr)

    with h5py.File(partial, "r+") as f, tqdm(total=n, initial=done, unit="img", desc=name,
                                             disable=not progress, dynamic_ncols=True) as bar:
        for start, arrays in _rendered_chunks(name, config, done, n, chunk, workers):
            count = len(arrays["images"])
            for key, value in arrays.items():
                f[key][start : start + count] = value
            done = start + count
            f.attrs["num_written"] = done  # after the data: a crash re-does at most one chunk
            f.flush()
            bar.update(count)
        f.attrs["complete"] = True
        f.flush()
    os.replace(partial, out_path)
    return out_path


def _rendered_chunks(name, config, done, n, chunk, workers):
    """Yield (start, arrays) for the chunks from ``done`` to ``n``, in order."""
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    starts = list(range(done, n, chunk))
    options = dict(min_objects=config["min_objects"], max_objects=config["max_objects"], zoom=config.get("zoom"))
    args = [(name, config["seed"], s, min(chunk, n - s), config["resolution"]) for s in starts]
    if workers <= 1 or len(starts) < 3:
        for s, a in zip(starts, args):
            yield s, generators.render(*a, **options)
        return
    with ProcessPoolExecutor(workers) as pool:
        queue = deque()
        for s, a in zip(starts, args):
            queue.append((s, pool.submit(generators.render, *a, **options)))
            if len(queue) > workers:  # keep the workers busy, memory bounded
                s0, future = queue.popleft()
                yield s0, future.result()
        while queue:
            s0, future = queue.popleft()
            yield s0, future.result()


def ensure_dataset(name, out_path, n, seed, resolution=None, **options):
    """Return ``out_path``, generating it first if it does not exist.

    An existing file must hold the same generator, options and ``n``;
    otherwise ``DatasetError`` (delete it or choose another path).
    """
    out_path = os.fspath(out_path)
    if not os.path.exists(out_path):
        return write_dataset(name, out_path, n, seed, resolution, **options)
    config = generator_config(name, seed, resolution, **options)
    meta = _read_attrs(out_path)
    have = (meta.get("name"), _json_or_none(meta.get("config")), meta.get("num_examples"))
    if have != (name, config, n):
        raise DatasetError(f"{out_path}: exists with other contents ({have[0]}, n={have[2]}, {have[1]}), "
                           f"not {name}, n={n}, {config}; delete it or choose another path")
    return out_path


def _create(path, spec, config, n):
    res, m = config["resolution"], config["max_objects"]
    rows = max(1, min(n, 2**16 // (res * res)))  # about 200 KB per image chunk
    with h5py.File(path, "w") as f:
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": spec.name, "complete": False,
            "num_examples": n, "num_written": 0, "height": res, "width": res, "source": "generator",
            "config": json.dumps(config, sort_keys=True),
        })
        compress = {"compression": "gzip", "compression_opts": 1, "shuffle": False}
        f.create_dataset("images", (n, res, res, 3), np.uint8, chunks=(rows, res, res, 3), **compress)
        f.create_dataset("masks", (n, res, res), np.uint8, chunks=(rows, res, res), **compress)
        f.create_dataset("num_objects", (n,), np.int32)
        if spec.set_prediction:
            f.attrs["max_objects"] = m
            f.create_dataset("objects/coords", (n, m, 3), np.float32, chunks=(min(n, 1024), m, 3))
            for key in OBJECT_FIELDS[1:]:
                f.create_dataset(f"objects/{key}", (n, m), np.int8, chunks=(min(n, 1024), m), fillvalue=-1)


def _resumable_count(partial, name, config, n):
    """Examples already in a matching ``.partial`` file, or None to start afresh."""
    if not os.path.exists(partial):
        return None
    try:
        with h5py.File(partial, "r") as f:
            attrs = dict(f.attrs)
    except OSError:  # killed while writing metadata: unreadable, start again
        return None
    same = (attrs.get("format") == FORMAT and attrs.get("name") == name
            and _json_or_none(attrs.get("config")) == config and attrs.get("num_examples") == n)
    return int(attrs.get("num_written", 0)) if same else None


def _json_or_none(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _plain(value):
    """An HDF5 attribute as a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_attrs(path):
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from None


def _check_header(path, meta):
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a slotref dataset (format attribute is {meta.get('format')!r}, "
                           f"expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: unsupported format_version {meta.get('format_version')!r} "
                           f"(this slotref reads {FORMAT_VERSION})")
    if not meta.get("complete", False):
        raise DatasetError(f"{path}: incomplete ({meta.get('num_written', '?')} of "
                           f"{meta.get('num_examples', '?')} examples written); rerun `data make` with the "
                           f"same options to resume it")
    missing = [k for k in ("num_examples", "height", "width", "name") if k not in meta]
    if missing:
        raise DatasetError(f"{path}: missing attribute(s) {', '.join(missing)}")


def load_dataset(path, limit=None, start=0):
    """Read examples ``start .. start+limit-1`` (all by default) into memory, checking the schema."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".partial"):
        raise DatasetError(f"{path}: not there, but {path}.partial is: an interrupted `data make`; "
                           f"rerun it with the same options to resume")
    meta = _read_attrs(path)
    _check_header(path, meta)
    n, h, w = int(meta["num_examples"]), int(meta["height"]), int(meta["width"])
    if not 0 <= start <= n:
        raise DatasetError(f"{path}: start {start} is outside the {n} examples")
    stop = n if limit is None else min(n, start + int(limit))
    try:
        with h5py.File(path, "r") as f:
            for key in ("images", "num_objects"):
                if key not in f:
                    raise DatasetError(f"{path}: missing required dataset {key!r}")
            _check_shape(path, f["images"], (n, h, w, 3), np.uint8)
            _check_shape(path, f["num_objects"], (n,), None)
            images = f["images"][start:stop]
            num_objects = f["num_objects"][start:stop].astype(np.int32)
            masks = None
            if "masks" in f:
                _check_shape(path, f["masks"], (n, h, w), np.uint8)
                masks = f["masks"][start:stop]
            objects = None
            if "objects" in f:
                m = meta.get("max_objects")
                if m is None:
                    raise DatasetError(f"{path}: has objects/ but no max_objects attribute")
                objects = {}
                for key in OBJECT_FIELDS:
                    if key not in f["objects"]:
                        raise DatasetError(f"{path}: missing required dataset 'objects/{key}'")
                    shape = (n, m, 3) if key == "coords" else (n, m)
                    _check_shape(path, f["objects"][key], shape, np.float32 if key == "coords" else np.int8)
                    objects[key] = f["objects"][key][start:stop]
    except OSError as e:  # a damaged chunk shows up only when it is read
        raise DatasetError(f"{path}: cannot read the data (truncated or corrupt?): {e}") from None
    if masks is not None and len(masks):
        highest = masks.reshape(len(masks), -1).max(axis=1)
        bad = np.nonzero(highest > num_objects)[0]
        if len(bad):
            raise DatasetError(f"{path}: example {start + bad[0]} has mask id {highest[bad[0]]} "
                               f"but num_objects {num_objects[bad[0]]}")
    digest = hashlib.sha256(json.dumps({"attrs": meta, "start": start, "num_examples": stop - start},
                                       sort_keys=True, default=str).encode()).hexdigest()
    return Dataset(images, masks, num_objects, objects, meta, path, digest)


def _check_shape(path, dataset, shape, dtype):
    if dataset.shape != tuple(shape):
        raise DatasetError(f"{path}: {dataset.name.lstrip('/')} has shape {dataset.shape}, expected {tuple(shape)}")
    if dtype is not None and dataset.dtype != dtype:
        raise DatasetError(f"{path}: {dataset.name.lstrip('/')} has dtype {dataset.dtype}, expected {np.dtype(dtype)}")


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
    """A human-readable dump of a dataset file: attributes, fields, object counts."""
    path = os.fspath(path)
    meta = _read_attrs(path)
    lines = [f"{path}"]
    lines += [f"  {key} = {value}" for key, value in sorted(meta.items())]
    try:
        with h5py.File(path, "r") as f:
            lines.append("  datasets:")

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    extra = f", chunks {item.chunks}" if item.chunks else ""
                    extra += f", {item.compression}" if item.compression else ""
                    lines.append(f"    {name:18s} {str(item.dtype):8s} {item.shape}{extra}")

            f.visititems(visit)
            if "num_objects" in f:
                counts = f["num_objects"][: int(meta.get("num_written", meta.get("num_examples", 0)))]
                values, freq = np.unique(counts, return_counts=True)
                lines.append("  objects per example: " + ", ".join(f"{v}: {c}" for v, c in zip(values, freq)))
            if "objects/shape" in f and "num_objects" in f:
                lines.append("  object attributes:")
                for key, _, names in paper.ATTRIBUTES:
                    index = f["objects"][key][:]
                    freq = np.bincount(index[index >= 0].astype(int), minlength=len(names))
                    lines.append(f"    {key:9s} " + ", ".join(f"{nm} {c}" for nm, c in zip(names, freq)))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the data (truncated or corrupt?): {e}") from None
    status = "complete" if meta.get("complete") else "INCOMPLETE"
    lines.append(f"  status: {status}")
    return "\n".join(lines)
