"""The slotref HDF5 dataset schema (``docs/datasets.md, "The schema"``): names, fields, limits.

One file per split. Attributes ``format``, ``format_version``, ``name``,
``complete``, ``num_examples``, ``height``, ``width``, ``source``, ``config``
(JSON of the options), ``max_objects`` (set-prediction files) and the
writer's bookkeeping ``num_written`` (and ``state`` for converted files).
Datasets are listed by ``fields``.
"""

from __future__ import annotations

import numpy as np

from slotref import paper

FORMAT = "slotref-dataset"
FORMAT_VERSION = 1
OBJECT_FIELDS = ("coords", "size", "material", "shape", "color")
LABEL_VOCABULARY = {key: len(names) for key, _, names in paper.ATTRIBUTES}
COORD_LIMIT = 10.0  # |x|, |y|, |z| of an object: CLEVR scenes span about -3..3


def fields(height, width, masks, max_objects=None):
    """The datasets of a file as {name: (shape of one example, dtype)}, in writing order.

    ``masks``: whether the file has instance masks; ``max_objects``: the
    object rows of a set-prediction file (None: no ``objects/*``).
    """
    out = {"images": ((height, width, 3), np.uint8), "num_objects": ((), np.int32)}
    if masks:
        out["masks"] = ((height, width), np.uint8)
    if max_objects is not None:
        out["objects/coords"] = ((max_objects, 3), np.float32)
        out.update({f"objects/{key}": ((max_objects,), np.int8) for key in OBJECT_FIELDS[1:]})
    return out


def plain(value):
    """An HDF5 attribute as a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
