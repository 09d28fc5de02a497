"""Checks of a dataset file against the schema, before any of it is trusted.

``validate_dataset`` reads the structure first (attributes, dataset shapes,
dtypes, storage), no data, then the contents in pieces of at most
``READ_ROWS_BYTES``. Every problem is a ``DatasetError`` with the one-line
message ``<file>: <field>: <problem>; <what to do>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from slotref.data.errors import DatasetError
from slotref.data.schema import COORD_LIMIT, FORMAT, FORMAT_VERSION, LABEL_VOCABULARY, fields, plain

# Schema limits. Anything beyond them is refused before a byte of data is read.
MAX_SIDE = 4096  # image height and width
MAX_OBJECTS = 255  # objects per scene: mask ids are uint8
MAX_COMPRESSION = 1100  # logical / stored bytes: deflate cannot do better than about 1032
READ_ROWS_BYTES = 2**24  # rows read per step while checking labels and counts
REQUIRED_ATTRS = ("format", "format_version", "name", "complete", "num_examples", "height", "width")
INTEGER_ATTRS = ("format_version", "num_examples", "num_written", "height", "width", "max_objects")
STRING_ATTRS = ("format", "name", "source", "config")


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
    _check_file(path)
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


def _check_file(path):
    """A regular file at ``path``, checked before it is opened (a FIFO would block, a device never end)."""
    from slotref.data.writer import partial_path
    from slotref.paths import FileError, regular_file, shown

    if not os.path.lexists(path) and os.path.exists(partial_path(path)):
        raise _error(shown(path), "file", f"not there, but {shown(partial_path(path))} is: an interrupted "
                     "`data make` or `data convert`", "rerun it with the same options to resume")
    try:
        regular_file(path, "file")
    except FileError as err:
        problem = str(err).split(": file: ", 1)[-1].split(";")[0]
        raise _error(shown(path), "file", problem, "point at a dataset file") from None


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
    return plain(value)


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
        written, declared = meta.get("num_written", "?"), meta["num_examples"]
        of = "" if written == declared else f" of {declared}"  # a converter's total is known only at the end
        raise _error(path, "complete", f"incomplete ({written}{of} examples written)",
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
    has_objects = any(name.startswith("objects/") for name in datasets) or "objects" in f
    if has_objects and m is None:
        raise _error(path, "max_objects", "missing: the file has objects/ but no max_objects attribute",
                     "set it to the number of object rows")
    layout = fields(h, w, "masks" in datasets, m if has_objects else None)
    expected = {name: ((n,) + shape, None if name == "num_objects" else dtype)
                for name, (shape, dtype) in layout.items()}
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


def read_attrs(path):
    """The attributes of a dataset file as plain values; ``DatasetError`` if it cannot be read."""
    _check_file(path)
    with _open(path) as f:
        try:
            return {k: plain(f.attrs[k]) for k in f.attrs}
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise _error(path, "attributes", f"cannot be read (truncated or corrupt?): {e}",
                         "regenerate or reconvert the file") from None
