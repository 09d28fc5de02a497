"""The resumable writer of dataset files, used by ``data make`` and ``data convert``.

A file is written as ``OUT.partial`` and renamed to ``OUT`` only when whole,
so a file at ``OUT`` is always complete. While it is written it has the
attributes of a finished file with ``complete=False``, every dataset of
``schema.fields`` resizable along its first axis, and:

- ``num_written``: the examples committed so far. ``commit`` writes the rows
  first, then ``num_written`` (and ``state``), then flushes: a crash loses at
  most the rows since the last commit, and resuming drops any row past
  ``num_written``.
- ``state``: JSON the caller needs to continue (a converter's records
  consumed); only where the caller keeps one.
- ``num_examples``: the number of examples the file will hold when the caller
  knows it in advance (``total``), else the same as ``num_written``.

``finish`` commits, sets ``num_examples`` to the rows written, sets
``complete=True`` last, closes the file, reopens and checks it
(``validate_dataset`` and a read of its first and last rows) and only then
renames ``OUT.partial`` to ``OUT``, replacing any file there. Every write
goes through ``slotref.hdf5_write``: a failed write (a full disk) is a
one-line ``WriteError`` and ``OUT.partial`` is removed, as it cannot be
trusted; an interruption (Ctrl-C) leaves it to be resumed.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from slotref.data import schema
from slotref.hdf5_write import H5Writing
from slotref.io import (WriteError, check_replaceable, drop_unless_regular, fsync_dir, fsync_file, shown,
                        sibling_name, write_error)

IMAGE_CHUNK_PIXELS = 2**16  # image rows per HDF5 chunk: about 200 KB of RGB
ROW_CHUNK = 1024  # rows per HDF5 chunk of the small per-example fields
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": False}  # images and masks


def partial_path(out):
    """``OUT.partial``, shortened with a hash where the name would pass the file system's limit."""
    return os.fspath(sibling_name(out, ".partial"))


def partial_status(out, *, name, config, total=None):
    """What ``OUT.partial`` is: "missing", "resumable", "other" (another name, config or total)
    or "unreadable" (not an HDF5 file, e.g. killed while writing its metadata)."""
    partial = partial_path(out)
    if not os.path.exists(partial):
        return "missing"
    attrs = _attrs(partial)
    if attrs is None:
        return "unreadable"
    same = (attrs.get("format") == schema.FORMAT and attrs.get("name") == name
            and attrs.get("config") == config_text(config) and "num_written" in attrs
            and (total is None or attrs.get("num_examples") == total))
    return "resumable" if same else "other"


def config_text(config):
    """The ``config`` attribute: the options as JSON with sorted keys."""
    return json.dumps(config, sort_keys=True)


def finished_attrs(out, config):
    """The attributes of a complete file at ``out`` written with ``config``, else None."""
    attrs = _attrs(out) if os.path.exists(out) else None
    return attrs if attrs and attrs.get("complete") and attrs.get("config") == config_text(config) else None


def _attrs(path):
    """The attributes of an HDF5 file as plain values, or None if it cannot be read (or is no regular file)."""
    if not os.path.isfile(path):  # a FIFO is never opened: the read would block
        return None
    try:
        with h5py.File(path, "r") as f:
            return {key: schema.plain(f.attrs[key]) for key in f.attrs}
    except (OSError, KeyError, TypeError, ValueError):
        return None


class Writer:
    """Append examples to ``OUT.partial`` in chunks; resume a matching one; rename when finished.

    A resumable ``OUT.partial`` (``partial_status``) is continued from its
    ``num_written``; anything else there is replaced. ``state`` is the
    caller's initial resume state (None: the file keeps none); on resume
    ``self.state`` is the one last committed. ``chunk``: examples buffered by
    ``add`` between commits. Use as a context manager: leaving it closes the file.
    """

    def __init__(self, out, *, name, height, width, source, config, masks, max_objects=None,
                 total=None, state=None, chunk=64):
        self.out = os.fspath(out)
        check_replaceable(self.out)  # a FIFO or a device at OUT is refused before any example is made
        self.partial = partial_path(self.out)
        drop_unless_regular(self.partial)  # a link there would be written through, then renamed to OUT
        self.chunk = chunk
        self.buffer = []
        self.fields = schema.fields(height, width, masks, max_objects)
        self.total = total
        if partial_status(self.out, name=name, config=config, total=total) == "resumable":
            self.h5 = H5Writing(self.partial, "r+", name=self.out)
            self.f = self.h5.f
            self.num_written = int(self.f.attrs["num_written"])
            for key in self.fields:
                self.f[key].resize(self.num_written, axis=0)  # rows written after the last commit
            self.state = json.loads(self.f.attrs["state"]) if "state" in self.f.attrs else None
            self.resumed = True
            return
        try:
            os.makedirs(os.path.dirname(self.partial) or ".", exist_ok=True)
        except OSError as err:
            raise write_error(self.out, err) from None
        self.h5 = H5Writing(self.partial, "w", name=self.out)
        self.f = self.h5.f
        self.f.attrs.update({
            "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION, "name": name, "complete": False,
            "num_examples": 0 if total is None else total, "num_written": 0, "height": height, "width": width,
            "source": source, "config": config_text(config),
        })
        if max_objects is not None:
            self.f.attrs["max_objects"] = max_objects
        rows = max(1, IMAGE_CHUNK_PIXELS // (height * width))
        for key, (shape, dtype) in self.fields.items():
            image = key in ("images", "masks")
            chunk_rows = rows if image else ROW_CHUNK
            if total is not None:
                chunk_rows = min(chunk_rows, total)
            self.f.create_dataset(key, (0,) + shape, dtype, maxshape=(None,) + shape,
                                  chunks=(chunk_rows,) + shape,
                                  fillvalue=-1 if np.dtype(dtype) == np.int8 else 0,
                                  **(COMPRESSION if image else {}))
        self.state = None if state is None else dict(state)
        if state is not None:
            self.f.attrs["state"] = json.dumps(state)
        self.f.flush()
        self.num_written = 0
        self.resumed = False

    @property
    def num_examples(self):
        """Examples committed and buffered."""
        return self.num_written + len(self.buffer)

    def add(self, example, **state):
        """Buffer one example ({field: array}); commit with ``state`` once ``chunk`` are buffered."""
        self.buffer.append(example)
        if len(self.buffer) >= self.chunk:
            self.commit(**state)

    def extend(self, arrays, **state):
        """Write a batch ({field: array with the examples first}) and commit with ``state``."""
        self._write_buffer()
        self._write({key: arrays[key] for key in self.fields})
        self.commit(**state)

    def commit(self, **state):
        """Write the buffered examples, then record ``num_written`` and ``state``, then flush."""
        self._write_buffer()
        if state:
            self.state.update(state)
            self.f.attrs["state"] = json.dumps(self.state)
        self.f.attrs["num_written"] = self.num_written
        if self.total is None:
            self.f.attrs["num_examples"] = self.num_written
        self.f.flush()
        self.h5.check()

    def _write_buffer(self):
        if self.buffer:
            self._write({key: np.stack([ex[key] for ex in self.buffer]) for key in self.fields})
            self.buffer = []

    def _write(self, arrays):
        start, stop = self.num_written, self.num_written + len(arrays["images"])
        for key, value in arrays.items():
            self.f[key].resize(stop, axis=0)
            self.f[key][start:stop] = value
            self.h5.check()  # stop at the first failed write, before HDF5 reads back what it dropped
        self.num_written = stop

    def finish(self, **state):
        """Commit, mark the file complete and rename it to ``OUT``; returns ``OUT``."""
        self.commit(**state)
        if self.total is not None and self.num_written != self.total:
            raise RuntimeError(f"{self.partial}: {self.num_written} examples written, {self.total} declared")
        self.f.attrs["num_examples"] = self.num_written
        self.f.attrs["complete"] = True  # last, after every example is on disk
        self.h5.close()  # raises any write that failed, even one HDF5 reported only to stderr
        verify_written(self.partial, self.out)
        try:
            fsync_file(self.partial)  # on disk before it takes the final name
            os.replace(self.partial, self.out)  # the old OUT (--overwrite) goes only now
        except OSError as err:
            raise write_error(self.out, err) from None
        fsync_dir(os.path.dirname(os.path.abspath(self.out)))
        return self.out

    def close(self):
        """Close the file; a write that failed makes ``OUT.partial`` worthless: it is removed."""
        try:
            self.h5.close()
        except WriteError:
            self._remove_partial()
            raise

    def _remove_partial(self):
        try:
            os.unlink(self.partial)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, WriteError) or self.h5.sink.error is not None:
            self.h5.abandon()  # a write failed: what is on disk cannot be trusted
        else:
            self.close()  # finished, interrupted or bad input: a resumable OUT.partial stays
        return False


def verify_written(path, out):
    """Reopen the just-written ``path`` and check it as a reader will (``validate_dataset``), reading
    its first and last rows too; on failure it is removed and ``WriteError`` names ``out``."""
    from slotref.data.validate import validate_dataset

    try:
        info = validate_dataset(path)
        with h5py.File(path, "r") as f:
            for key in info_fields(f):
                f[key][:1], f[key][-1:]
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        try:
            os.unlink(path)
        except OSError:
            pass
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WriteError(f"{shown(out)}: the file written does not read back ({text}); nothing was replaced, "
                         "check the disk and write it again") from None
    return info


def info_fields(f):
    """The names of every dataset in open file ``f``."""
    names = []
    f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names
