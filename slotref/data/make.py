"""Generated dataset files (``data make``): render the built-in generators into the schema.

Files are written by ``slotref.data.writer``: ``OUT.partial`` in chunks,
renamed to ``OUT`` when complete. Example i depends only on (seed, i), so a
file's contents do not depend on the chunking, the worker count or where it
was resumed.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from slotref.data import generators
from slotref.data.errors import DatasetError
from slotref.data.validate import read_attrs
from slotref.data.writer import Writer, partial_status


def generator_config(name, seed, resolution=None, **options):
    """The full option set of a generated file (the ``config`` attribute)."""
    spec = generators.get_spec(name)
    zoom = generators.resolve_zoom(spec, options.pop("zoom", None))
    resolution, min_objects, max_objects = generators.resolve_options(spec, resolution, **options)
    config = {"generator": name, "seed": int(seed), "resolution": resolution,
              "min_objects": min_objects, "max_objects": max_objects}
    if zoom != 1.0:  # absent at the default: a zoom-1 file has the config of a file without the option
        config["zoom"] = zoom
    return config


def write_dataset(name, out_path, n, seed, resolution=None, chunk=256, progress=True, workers=None, **options):
    """Generate ``n`` examples of generator ``name`` into ``out_path``; returns the path.

    Resumes ``out_path + ".partial"`` when it was started with the same name,
    options and ``n``; starts it afresh otherwise. ``chunk`` examples are
    rendered and committed at a time; ``workers`` processes render chunks
    while this one writes (default: up to 2; 1 renders inline).
    """
    out_path = os.fspath(out_path)
    if n < 1:
        raise ValueError(f"{out_path}: n must be at least 1, got {n}")
    spec = generators.get_spec(name)
    config = generator_config(name, seed, resolution, **options)
    if partial_status(out_path, name=name, config=config, total=n) == "other" and progress:
        print(f"{out_path}.partial was started with other options; starting afresh", file=sys.stderr)
    res = config["resolution"]
    with Writer(out_path, name=name, height=res, width=res, source="generator", config=config, masks=True,
                max_objects=config["max_objects"] if spec.set_prediction else None, total=n) as writer:
        done = writer.num_written
        if writer.resumed and progress:
            print(f"resuming {writer.partial} at example {done} of {n}", file=sys.stderr)
        with tqdm(total=n, initial=done, unit="img", desc=name, disable=not progress, dynamic_ncols=True) as bar:
            for arrays in _rendered_chunks(name, config, done, n, chunk, workers):
                writer.extend(arrays)
                bar.update(len(arrays["images"]))
        return writer.finish()


def _rendered_chunks(name, config, done, n, chunk, workers):
    """Yield the rendered chunks of examples ``done .. n-1``, in order."""
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    options = dict(min_objects=config["min_objects"], max_objects=config["max_objects"], zoom=config.get("zoom"))
    args = [(name, config["seed"], s, min(chunk, n - s), config["resolution"]) for s in range(done, n, chunk)]
    if workers <= 1 or len(args) < 3:
        for a in args:
            yield generators.render(*a, **options)
        return
    with ProcessPoolExecutor(workers) as pool:
        queue = deque()
        for a in args:
            queue.append(pool.submit(generators.render, *a, **options))
            if len(queue) > workers:  # keep the workers busy, memory bounded
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def ensure_dataset(name, out_path, n, seed, resolution=None, progress=True, **options):
    """Return ``out_path``, generating it first if it does not exist.

    An existing file must hold the same generator, options and ``n``;
    otherwise ``DatasetError`` (delete it or choose another path).
    """
    out_path = os.fspath(out_path)
    if not os.path.exists(out_path):
        return write_dataset(name, out_path, n, seed, resolution, progress=progress, **options)
    config = generator_config(name, seed, resolution, **options)
    meta = read_attrs(out_path)
    have = (meta.get("name"), _json_or_none(meta.get("config")), meta.get("num_examples"))
    if have != (name, config, n):
        raise DatasetError(f"{out_path}: exists with other contents ({have[0]}, n={have[2]}, {have[1]}), "
                           f"not {name}, n={n}, {config}; delete it or choose another path")
    return out_path


def _json_or_none(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None
