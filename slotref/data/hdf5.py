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
LABEL_VOCABULARY = {key: len(names) for key, _, names in paper.ATTRIBUTES}


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
    from slotref.io import fsync_dir, fsync_file

    fsync_file(partial)  # on disk before it takes the final name
    os.replace(partial, out_path)
    fsync_dir(os.path.dirname(os.path.abspath(out_path)))
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
# Validation
# --------------------------------------------------------------------------

# Schema limits. Anything beyond them is refused before a byte of data is read.
MAX_SIDE = 4096  # image height and width
MAX_OBJECTS = 255  # objects per scene: mask ids are uint8
COORD_LIMIT = 10.0  # |x|, |y|, |z| of an object: CLEVR scenes span about -3..3
MAX_COMPRESSION = 1100  # logical / stored bytes: deflate cannot do better than about 1032
READ_ROWS_BYTES = 2**24  # rows read per step while checking labels and counts
REQUIRED_ATTRS = ("format", "format_version", "name", "complete", "num_examples", "height", "width")
INTEGER_ATTRS = ("format_version", "num_examples", "num_written", "height", "width", "max_objects")
STRING_ATTRS = ("format", "name", "source", "config")
SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``validate_dataset`` found: the file's declared sizes and fields."""

    path: str
    name: str
    num_examples: int
    height: int
    width: int
    max_objects: int | None  # set-prediction files only
    has_masks: bool
    has_objects: bool
    meta: dict


def _error(path, field_name, problem, todo):
    """``DatasetError`` with the one-line message ``<file>: <field>: <problem>; <what to do>``."""
    text = f"{path}: {field_name}: {problem}; {todo}"
    return DatasetError(" ".join(text.split()))


def is_dataset_path(name) -> bool:
    """Whether ``name`` names an HDF5 dataset file (``.h5`` or ``.hdf5``) rather than a built-in dataset."""
    return os.fspath(name).lower().endswith(SUFFIXES)


def dataset_name(path) -> str:
    """The ``name`` attribute of a dataset file (e.g. ``tetrominoes``); ``DatasetError`` if unreadable."""
    meta = _read_attrs(os.fspath(path))
    name = meta.get("name")
    if not isinstance(name, str):
        raise _error(path, "name", f"attribute is {name!r}, expected a string",
                     "rewrite the file with `data make` or `data convert`")
    return name


def validate_dataset(path, task=None, masks=False) -> DatasetInfo:
    """Check a dataset file against the schema; returns its ``DatasetInfo``.

    Structure first, reading no data: attributes (present, scalar, of the
    right type and range), required datasets (shapes, dtypes), no links,
    external or virtual storage, and stored bytes that can hold the declared
    sizes. Then contents, read in pieces of at most 16 MB: ``num_objects``
    within ``[0, max_objects]``, every real object's labels within their
    vocabulary and its coordinates finite and within ``COORD_LIMIT``.
    ``task`` ("setpred" or "discovery") also requires that task's fields;
    ``masks=True`` also checks every mask id against ``num_objects`` (reads
    all masks). Raises ``DatasetError`` with a one-line message.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".partial"):
        raise _error(path, "file", f"not there, but {path}.partial is: an interrupted `data make`",
                     "rerun it with the same options to resume")
    if not os.path.exists(path):
        raise _error(path, "file", "no such file", "check the path")
    f = _open(path)
    try:
        with f:
            info = _check_structure(path, f)
            _check_task(info, task)
            _check_contents(path, f, info, masks)
    except DatasetError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # damage seen only when read
        raise _error(path, "data", f"cannot be read (truncated or corrupt?): {e}",
                     "regenerate or reconvert the file") from None
    return info


def _open(path):
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as e:
        raise _error(path, "file", f"not a readable HDF5 file (truncated or corrupt?): {e}",
                     "regenerate or reconvert it") from None


def _check_task(info, task):
    if task == "setpred" and not info.has_objects:
        raise _error(info.path, "objects", "no per-object properties (objects/*), needed for set prediction",
                     "use a set-prediction file (clevr-shapes, `data convert clevr`)")
    if task == "discovery" and not info.has_masks:
        raise _error(info.path, "masks", "no instance masks, needed to evaluate object discovery (FG-ARI)",
                     "use an object-discovery file (`data make`, `data convert multi-object`)")


def _walk(path, group, prefix="", depth=0):
    """Every dataset under ``group`` as (name, dataset); refuses links and non-local storage."""
    if depth > 4:
        raise _error(path, prefix.rstrip("/"), "groups nested too deep for the schema", "rewrite the file")
    for key in group:
        name = prefix + key
        link = group.get(key, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            raise _error(path, name, f"is a {type(link).__name__} (data stored elsewhere)",
                         "store the data in the file itself")
        item = group.get(key)
        if isinstance(item, h5py.Group):
            yield from _walk(path, item, name + "/", depth + 1)
        elif isinstance(item, h5py.Dataset):
            if item.external:
                raise _error(path, name, "has external storage (its bytes live in another file)",
                             "store the data in the file itself")
            if item.is_virtual:
                raise _error(path, name, "is a virtual dataset (its bytes live in other datasets)",
                             "store the data in the file itself")
            yield name, item


def _attribute(path, f, key):
    try:
        value = f.attrs[key]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise _error(path, key, f"attribute cannot be read ({e})", "rewrite the file") from None
    if isinstance(value, np.ndarray):
        raise _error(path, key, f"attribute is an array of shape {value.shape}, expected a scalar",
                     "store it as a single value")
    if key in INTEGER_ATTRS and (isinstance(value, (bool, np.bool_))
                                 or not isinstance(value, (int, np.integer))):
        raise _error(path, key, f"attribute is {value!r} ({type(value).__name__}), expected an integer",
                     "store it as an integer")
    if key in STRING_ATTRS and isinstance(value, bytes):
        value = value.decode(errors="replace")
    if key in STRING_ATTRS and not isinstance(value, str):
        raise _error(path, key, f"attribute is {value!r}, expected a string", "store it as a string")
    if key == "complete" and not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise _error(path, key, f"attribute is {value!r}, expected a boolean", "store it as True or False")
    return _plain(value)


def _check_structure(path, f):
    datasets = dict(_walk(path, f))
    meta = {key: _attribute(path, f, key) for key in f.attrs}
    missing = [k for k in REQUIRED_ATTRS if k not in meta]
    if meta.get("format") != FORMAT:
        raise _error(path, "format", f"not a slotref dataset (format attribute is {meta.get('format')!r}, "
                     f"expected {FORMAT!r})", "make it with `data make` or `data convert`")
    if missing:
        raise _error(path, missing[0], f"missing attribute(s) {', '.join(missing)}",
                     "regenerate or reconvert the file")
    if meta["format_version"] != FORMAT_VERSION:
        raise _error(path, "format_version", f"unsupported format_version {meta['format_version']!r}",
                     f"this slotref reads version {FORMAT_VERSION}")
    if not meta["complete"]:
        raise _error(path, "complete", f"incomplete ({meta.get('num_written', '?')} of "
                     f"{meta['num_examples']} examples written)",
                     "rerun `data make` or `data convert` with the same options to resume it")
    n, h, w = meta["num_examples"], meta["height"], meta["width"]
    if n < 1:
        raise _error(path, "num_examples", f"is {n}: the file holds no examples", "regenerate it with --n >= 1")
    for key, value in (("height", h), ("width", w)):
        if not 1 <= value <= MAX_SIDE:
            raise _error(path, key, f"is {value}, outside 1..{MAX_SIDE}", "resize the images")
    m = meta.get("max_objects")
    if m is not None and not 1 <= m <= MAX_OBJECTS:
        raise _error(path, "max_objects", f"is {m}, outside 1..{MAX_OBJECTS}",
                     "rewrite the file with at most 255 objects per scene")
    expected = {"images": ((n, h, w, 3), np.uint8), "num_objects": ((n,), None)}
    if "masks" in datasets:
        expected["masks"] = ((n, h, w), np.uint8)
    has_objects = any(name.startswith("objects/") for name in datasets) or "objects" in f
    if has_objects:
        if m is None:
            raise _error(path, "max_objects", "missing: the file has objects/ but no max_objects attribute",
                         "set it to the number of object rows")
        expected["objects/coords"] = ((n, m, 3), np.float32)
        expected.update({f"objects/{key}": ((n, m), np.int8) for key in OBJECT_FIELDS[1:]})
    for name, (shape, dtype) in expected.items():
        if name not in datasets:
            raise _error(path, name, f"missing required dataset {name!r}", "regenerate or reconvert the file")
        ds = datasets[name]
        if ds.shape != shape:
            raise _error(path, name, f"{name} has shape {ds.shape}, expected {shape}",
                         "the attributes num_examples/height/width/max_objects must match the data")
        if dtype is None and ds.dtype.kind not in "iu":
            raise _error(path, name, f"has dtype {ds.dtype}, expected an integer type", "store integers")
        if dtype is not None and ds.dtype != dtype:
            raise _error(path, name, f"has dtype {ds.dtype}, expected {np.dtype(dtype)}",
                         "regenerate or reconvert the file")
        _check_stored(path, name, ds)
    return DatasetInfo(path, meta["name"], n, h, w, m, "masks" in datasets, has_objects, meta)


def _check_stored(path, name, ds):
    """The bytes on disk must be able to hold the declared shape: no unwritten rows, no bombs."""
    logical = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if ds.chunks is None:
        if stored < logical:
            raise _error(path, name, f"declares {logical:,} bytes but stores {stored:,}",
                         "the file is damaged or its sizes are wrong; regenerate it")
        return
    per_axis = [-(-size // chunk) for size, chunk in zip(ds.shape, ds.chunks)]
    needed = int(np.prod(per_axis, dtype=object))
    have = ds.id.get_num_chunks()
    if have < needed:
        raise _error(path, name, f"declares {ds.shape[0]:,} rows but only {have:,} of its {needed:,} "
                     "chunks hold data", "the file is damaged or its sizes are wrong; regenerate it")
    if stored * MAX_COMPRESSION < logical:
        raise _error(path, name, f"declares {logical:,} bytes but stores only {stored:,} "
                     "(more than any supported compression gives)",
                     "the file is damaged or its sizes are wrong; regenerate it")


def _row_blocks(n, row_bytes):
    step = max(1, READ_ROWS_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _check_contents(path, f, info, masks=False):
    n, m = info.num_examples, info.max_objects
    limit = MAX_OBJECTS if m is None else m
    counts = f["num_objects"]
    for a, b in _row_blocks(n, 8):
        block = counts[a:b]
        bad = np.nonzero((block < 0) | (block > limit))[0]
        if len(bad):
            i = a + bad[0]
            raise _error(path, "num_objects", f"example {i} has {block[bad[0]]} objects, outside 0..{limit}"
                         + (" (max_objects)" if m is not None else ""),
                         "fix the counts or raise max_objects")
    if info.has_objects:
        for a, b in _row_blocks(n, m * 16):
            real = np.arange(m)[None, :] < counts[a:b][:, None]
            coords = f["objects/coords"][a:b]
            finite = np.isfinite(coords).all(axis=-1)
            for bad, problem in ((~finite, "is not finite"),
                                 (real & ~(np.abs(np.where(finite[..., None], coords, 0)) <= COORD_LIMIT).all(-1),
                                  f"is outside -{COORD_LIMIT:g}..{COORD_LIMIT:g}")):
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    raise _error(path, "objects/coords", f"example {a + i}, object {j}: {coords[i, j].tolist()} "
                                 f"{problem}", "fix the coordinates (CLEVR scene units) or drop the scene")
            for key, size in LABEL_VOCABULARY.items():
                labels = f[f"objects/{key}"][a:b]
                bad = real & ((labels < 0) | (labels >= size))
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    raise _error(path, f"objects/{key}", f"example {a + i}, object {j}: label {labels[i, j]} "
                                 f"is outside 0..{size - 1}", f"use indices into the {size} {key} names")
    if masks and info.has_masks:
        for a, b in _row_blocks(n, info.height * info.width):
            highest = f["masks"][a:b].reshape(b - a, -1).max(axis=1)
            bad = np.nonzero(highest > counts[a:b])[0]
            if len(bad):
                i = bad[0]
                raise _error(path, "masks", f"example {a + i} has mask id {highest[i]} but num_objects "
                             f"{counts[a + i]}", "fix num_objects or the masks")


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _plain(value):
    """An HDF5 attribute as a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_attrs(path):
    if not os.path.exists(path):
        raise _error(path, "file", "no such file", "check the path")
    with _open(path) as f:
        try:
            return {k: _plain(f.attrs[k]) for k in f.attrs}
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise _error(path, "attributes", f"cannot be read (truncated or corrupt?): {e}",
                         "regenerate or reconvert the file") from None


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
    meta = _read_attrs(path)
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
