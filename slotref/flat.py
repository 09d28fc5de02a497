"""Flat parameter buffers: a parameter tree laid out in one contiguous array per dtype.

A model's parameters are a nested dict/list of arrays (``backend.tree_leaves``
order: dict keys in insertion order, list items in order). ``FlatTree`` copies
the leaves, in that order, into one 1-D buffer per dtype and rebuilds the same
tree with every leaf a view into its buffer
(``buffer[offset:offset + size].reshape(shape)``). Model code keeps seeing the
plain tree (``flat.tree``); whole-buffer code (Adam, an allreduce) sees
``flat.buffers``; writing either changes both.

A gradient tree of the same structure becomes a ``FlatTree`` with
``layout.flatten(grads)``: one concatenate per dtype. Flattening happens
outside ``autograd.grad`` (on plain arrays, never on traced boxes), on any
array module (NumPy, CuPy, the test stand-in device).

Cost: one copy of the parameters when the layout is made; one concatenate
(a copy of the gradient) per flatten. What it saves: on a GPU, whole-buffer
code launches a handful of kernels instead of a handful per leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slotref.backend import tree_leaves, tree_map, xp_of


@dataclass(frozen=True)
class Slot:
    """Where one leaf lives: its path, shape, the dtype of its buffer and its span in it."""

    path: str
    shape: tuple
    dtype: str
    offset: int
    size: int


class FlatLayout:
    """The placement of a tree's leaves in one buffer per dtype.

    Made from a template tree (arrays, or anything with ``shape`` and
    ``dtype``); any tree with the same structure, shapes and dtypes fits it.
    """

    def __init__(self, template: Any):
        self.template = tree_map(lambda _: None, template)  # the structure alone
        self.slots: list[Slot] = []
        self.sizes: dict[str, int] = {}
        for path, leaf in tree_leaves(template):
            dtype = np.dtype(leaf.dtype).name
            size = int(np.prod(leaf.shape, dtype=np.int64))
            offset = self.sizes.get(dtype, 0)
            self.slots.append(Slot(path, tuple(leaf.shape), dtype, offset, size))
            self.sizes[dtype] = offset + size

    def __len__(self) -> int:
        return len(self.slots)

    def _check(self, tree: Any, what: str) -> list:
        leaves = tree_leaves(tree)
        if len(leaves) != len(self.slots):
            raise ValueError(f"{what} has {len(leaves)} leaves, the flat layout {len(self.slots)}: "
                             f"flatten only trees shaped like the parameters")
        for (path, leaf), slot in zip(leaves, self.slots):
            if path != slot.path or tuple(leaf.shape) != slot.shape:
                raise ValueError(f"{what} leaf {path} {tuple(leaf.shape)} does not fit the flat layout's "
                                 f"{slot.path} {slot.shape}: flatten only trees shaped like the parameters")
        return [leaf for _, leaf in leaves]

    def views(self, buffers: dict) -> Any:
        """The tree whose leaves are views into ``buffers`` (no copy)."""
        leaves = iter(buffers[s.dtype][s.offset:s.offset + s.size].reshape(s.shape) for s in self.slots)
        return tree_map(lambda _: next(leaves), self.template)

    def wrap(self, buffers: dict) -> "FlatTree":
        """A ``FlatTree`` over existing buffers (e.g. an allreduced gradient)."""
        for dtype, size in self.sizes.items():
            if dtype not in buffers or tuple(buffers[dtype].shape) != (size,):
                raise ValueError(f"flat buffers do not fit the layout: need a 1-D {dtype} buffer of {size}")
        return FlatTree(self, buffers, self.views(buffers))

    def zeros(self, xp: Any) -> "FlatTree":
        """Zero buffers (one per dtype) on array module ``xp``, e.g. Adam's moments."""
        return self.wrap({dtype: xp.zeros(size, dtype=dtype) for dtype, size in self.sizes.items()})

    def copy_in(self, tree: Any, xp: Any | None = None) -> "FlatTree":
        """New buffers holding a copy of ``tree``'s values (one write per leaf)."""
        leaves = self._check(tree, "tree")
        xp = xp or (xp_of(leaves[0]) if leaves else np)
        flat = self.wrap({dtype: xp.empty(size, dtype=dtype) for dtype, size in self.sizes.items()})
        for (_, view), leaf in zip(tree_leaves(flat.tree), leaves):
            view[...] = leaf
        return flat

    def flatten(self, tree: Any) -> "FlatTree":
        """``tree`` (e.g. a gradient) as flat buffers: one concatenate per dtype.

        Leaves are cast to the layout's dtype where they differ (a float64
        gradient of float32 parameters), as an in-place update would cast them.
        """
        leaves = self._check(tree, "gradient tree")
        buffers = {}
        for dtype in self.sizes:
            parts = [leaf.reshape(-1) for leaf, s in zip(leaves, self.slots) if s.dtype == dtype]
            xp = xp_of(parts[0])
            buf = xp.concatenate(parts) if len(parts) > 1 else parts[0].copy()
            buffers[dtype] = buf if buf.dtype == dtype else buf.astype(dtype)
        return self.wrap(buffers)


class FlatTree:
    """A parameter-shaped tree whose leaves are views into flat buffers.

    ``tree``: the nested dict/list of arrays (what models and checkpoints use);
    ``buffers``: {dtype name: 1-D array}; ``layout``: where each leaf lives.
    """

    def __init__(self, layout: FlatLayout, buffers: dict, tree: Any):
        self.layout, self.buffers, self.tree = layout, buffers, tree

    @classmethod
    def from_tree(cls, tree: Any, xp: Any | None = None) -> "FlatTree":
        """Copy ``tree`` into new flat buffers; ``flat.tree`` then replaces it."""
        return FlatLayout(tree).copy_in(tree, xp)

    def to_tree(self) -> Any:
        """The parameter tree (views into the buffers: what a checkpoint stores)."""
        return self.tree

    def assign(self, tree: Any) -> "FlatTree":
        """Overwrite the values with those of a same-shaped tree (e.g. read from a checkpoint)."""
        for (_, view), leaf in zip(tree_leaves(self.tree), self.layout._check(tree, "tree")):
            view[...] = leaf
        return self

    @property
    def xp(self) -> Any:
        return xp_of(next(iter(self.buffers.values()))) if self.buffers else np


def flatten_like(params: Any, tree: Any) -> FlatTree:
    """``tree`` flattened in the layout of ``params`` (a ``FlatTree`` or a plain tree)."""
    layout = params.layout if isinstance(params, FlatTree) else FlatLayout(params)
    return layout.flatten(tree)
