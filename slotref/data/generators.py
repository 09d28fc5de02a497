"""Procedural stand-ins for the paper's datasets (``docs/datasets.md``).

Every generator is deterministic per example: example ``i`` of seed ``s`` takes
all of its randomness from ``np.random.default_rng([s, i])`` (and
``[s, i, attempt]`` when a scene is re-sampled), so a file can be written in
any chunking, in parallel, or resumed, and holds the same pixels.

Rendering is vectorised NumPy over examples and pixels. ``render`` returns the
HDF5 schema's field layout (``docs/datasets.md, "The schema"``):

    images       uint8 (N, H, W, 3)       NHWC
    masks        uint8 (N, H, W)          0 = background, 1..n = objects
    num_objects  int32 (N,)
    objects/*    (clevr-shapes variants)  coords float32 (N, M, 3); size,
                                          material, shape, color int8 (N, M)

Object j of ``objects/*`` is mask id j + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from slotref.data.clevr_shapes import COLOR_RGB, MAX_ZOOM, SIZE_RADIUS, draw_clevr  # noqa: F401
from slotref.data.sprites import TETROMINO_COLORS, TETROMINO_SHAPES, draw_multi_dsprites, draw_tetrominoes  # noqa: F401

RENDER_BATCH_PIXELS = 2**19


@dataclass(frozen=True)
class GeneratorSpec:
    """One built-in dataset: its defaults and the function that draws it."""

    name: str
    draw: Callable  # (seed, indices, resolution, min_objects, max_objects) -> dict
    resolution: int  # default square resolution
    min_objects: int
    max_objects: int
    num_slots: int  # K used by the paper for this dataset
    set_prediction: bool  # writes objects/* (CLEVR labels)
    description: str


def render(name, seed, start, count, resolution=None, **options):
    """Examples ``start .. start+count-1`` of generator ``name`` as a dict of arrays.

    ``options``: ``min_objects``, ``max_objects`` (defaults from the spec) and,
    for the CLEVR generators, ``zoom`` (default 1).
    """
    spec = get_spec(name)
    zoom = resolve_zoom(spec, options.pop("zoom", None))
    resolution, min_objects, max_objects = resolve_options(spec, resolution, **options)
    extra = {} if zoom == 1.0 else {"zoom": zoom}
    indices = np.arange(start, start + count, dtype=np.int64)
    # Draw in pieces of about half a million pixels: bigger batches spill out
    # of the CPU caches and get slower per image.
    step = max(8, RENDER_BATCH_PIXELS // (resolution * resolution))
    parts = [spec.draw(int(seed), indices[i : i + step], resolution, min_objects, max_objects, **extra)
             for i in range(0, max(count, 1), step)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def get_spec(name):
    try:
        return GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(GENERATORS)}") from None


def resolve_zoom(spec, zoom=None) -> float:
    """The camera zoom of a generator's option set: 1 unless given; CLEVR generators only."""
    zoom = 1.0 if zoom is None else float(zoom)
    if zoom != 1.0 and spec.draw is not draw_clevr:
        raise ValueError(f"{spec.name}: zoom applies to the CLEVR generators only")
    if not 1.0 <= zoom <= MAX_ZOOM:
        raise ValueError(f"{spec.name}: zoom must be in [1, {MAX_ZOOM:g}], got {zoom:g}")
    return zoom


def resolve_options(spec, resolution=None, min_objects=None, max_objects=None):
    """Fill in defaults and check ranges; returns (resolution, min_objects, max_objects)."""
    resolution = spec.resolution if resolution is None else int(resolution)
    min_objects = spec.min_objects if min_objects is None else int(min_objects)
    max_objects = spec.max_objects if max_objects is None else int(max_objects)
    if not 8 <= resolution <= 1024:
        raise ValueError(f"{spec.name}: resolution must be in [8, 1024], got {resolution}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"{spec.name}: need 1 <= min_objects <= max_objects, got {min_objects}..{max_objects}")
    limit = _OBJECT_LIMITS[spec.name]
    if max_objects > limit:
        raise ValueError(f"{spec.name}: max_objects must be <= {limit}, got {max_objects}")
    return resolution, min_objects, max_objects


_OBJECT_LIMITS = {"clevr-shapes": 10, "clevr6-shapes": 10, "tetrominoes": 6, "multi-dsprites": 8}

GENERATORS = {
    spec.name: spec
    for spec in [
        GeneratorSpec("clevr-shapes", draw_clevr, 128, 3, 10, 10, True,
                      "CLEVR stand-in: 3-10 shaded cubes/spheres/cylinders on a plane, CLEVR labels"),
        GeneratorSpec("clevr6-shapes", draw_clevr, 128, 3, 6, 7, True,
                      "CLEVR6 stand-in: as clevr-shapes with 3-6 objects"),
        GeneratorSpec("tetrominoes", draw_tetrominoes, 35, 3, 3, 4, False,
                      "3 non-overlapping tetrominoes (17 shapes, 6 colours) on black"),
        GeneratorSpec("multi-dsprites", draw_multi_dsprites, 64, 2, 5, 6, False,
                      "2-5 coloured sprites (square, ellipse, heart) on a grey background"),
    ]
}
