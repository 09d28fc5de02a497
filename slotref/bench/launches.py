"""What a step launches: array-library calls on NumPy, device time on CuPy.

On a GPU a small model's step time is set by how many kernels it launches,
not by its FLOPs. Two measurements, one per array module (``launches``):

- ``count_calls(fn, *args)`` runs ``fn`` on NumPy with every input array
  wrapped so that each ufunc call (``a + b``, ``np.exp``, ``x.sum()``, matmul)
  and each NumPy function (``np.mean``, ``np.concatenate``) is counted once,
  by name, including those autograd makes in the backward pass. Calls made
  inside a counted call are not counted again (``np.mean`` is one call, not a
  sum and a divide). Indexing, array methods such as ``copy``/``astype`` and
  array creation are not counted. On a GPU each counted call is about one
  kernel launch, so the count is a launch proxy measured without a GPU.
- ``device_time(fn, *args, xp=cupy)`` brackets ``fn`` with CUDA events and
  returns the device milliseconds between them (one host sync, at the end).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from slotref.backend import register_array_type

_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


class CallCounts(Counter):
    """{call name: count}; ``total`` is the launch proxy."""

    @property
    def total(self) -> int:
        return sum(self.values())


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, CountingArray) else x


def _counted(x):
    if isinstance(x, np.ndarray) and not isinstance(x, CountingArray):
        return x.view(CountingArray)
    if isinstance(x, (tuple, list)):
        return type(x)(_counted(v) for v in x)
    return x


class CountingArray(np.ndarray):
    """A NumPy array that records the ufuncs and NumPy functions applied to it."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        with _recording(name) as call:
            result = call.result = getattr(ufunc, method)(*(_plain(x) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _counted(result)

    def __array_function__(self, func, types, args, kwargs):
        with _recording(func.__name__) as call:
            plain_types = tuple(np.ndarray if t is CountingArray else t for t in types)
            result = call.result = super().__array_function__(func, plain_types, args, kwargs)
        return _counted(result)


def _makes_array(result) -> bool:
    if isinstance(result, (tuple, list)):
        return any(_makes_array(r) for r in result)
    return isinstance(result, (np.ndarray, np.generic))


class _recording:
    """Count ``name`` once its call returned an array, unless inside another counted call.

    Calls that only read metadata (``np.shape``, ``np.result_type``) return no array and are not counted.
    """

    def __init__(self, name):
        self.name, self.result = name, None

    def __enter__(self):
        self.outer = _depth() == 0
        _state.depth = _depth() + 1
        return self

    def __exit__(self, *exc):
        _state.depth -= 1
        counts = getattr(_state, "counts", None)
        if counts is not None and self.outer and _makes_array(self.result):
            counts[self.name] += 1


register_array_type(CountingArray, np)   # autograd traces it like any host array


def _map_arrays(tree, fn):
    if isinstance(tree, dict):
        return {k: _map_arrays(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(v, fn) for v in tree)
    return fn(tree) if isinstance(tree, np.ndarray) else tree


def counting(tree: Any) -> Any:
    """``tree`` (nested dicts/lists/tuples of NumPy arrays) with every array a counted view (no copy)."""
    return _map_arrays(tree, lambda a: a.view(CountingArray))


def count_calls(fn: Callable, *args, **kwargs) -> tuple[Any, CallCounts]:
    """(fn(*args, **kwargs), the calls it made on its NumPy inputs and everything computed from them)."""
    previous = getattr(_state, "counts", None)
    _state.counts = counts = CallCounts()
    try:
        result = fn(*counting(args), **counting(kwargs))
    finally:
        _state.counts = previous
    return _map_arrays(result, lambda a: a.view(np.ndarray)), counts


def device_time(fn: Callable, *args, xp: Any, **kwargs) -> tuple[Any, float]:
    """(fn(...), device milliseconds between CUDA events recorded before and after it)."""
    start, end = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    result = fn(*args, **kwargs)
    end.record()
    end.synchronize()
    return result, float(xp.cuda.get_elapsed_time(start, end))


@dataclass(frozen=True)
class Launches:
    wall_ms: float
    calls: CallCounts | None      # NumPy: the launch proxy
    device_ms: float | None       # CuPy: CUDA-event time

    def summary(self, top: int = 8) -> str:
        parts = [f"wall {self.wall_ms:.2f} ms"]
        if self.device_ms is not None:
            parts.append(f"device {self.device_ms:.2f} ms")
        if self.calls is not None:
            common = ", ".join(f"{name} {n}" for name, n in self.calls.most_common(top))
            parts.append(f"{self.calls.total} array calls ({common})")
        return "; ".join(parts)


def launches(fn: Callable, *args, xp: Any = np, **kwargs) -> tuple[Any, Launches]:
    """Run ``fn(*args)`` once: counted calls on NumPy, CUDA-event time on CuPy."""
    t0 = time.perf_counter()
    if getattr(xp, "__name__", "") == "cupy":
        result, device_ms = device_time(fn, *args, xp=xp, **kwargs)
        return result, Launches((time.perf_counter() - t0) * 1e3, None, device_ms)
    result, calls = count_calls(fn, *args, **kwargs)
    return result, Launches((time.perf_counter() - t0) * 1e3, calls, None)
