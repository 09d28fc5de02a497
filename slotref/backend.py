"""The backend shim: the only module that knows NumPy from CuPy.

Everything else gets its array module (``xp``) from here: from a ``Backend``
(``get_backend("cpu" | "gpu")``) when it creates arrays, or from ``xp_of(x)``
when it already holds one.

autograd and device arrays
--------------------------
``autograd.numpy`` functions call NumPy functions, and NumPy hands calls on
CuPy arrays over to CuPy (``__array_ufunc__`` / ``__array_function__``), so a
forward pass runs on the device. What does not work out of the box in autograd
1.9.1: its vector spaces and the VJPs of reductions, slicing, concatenate,
einsum, ``where`` and ``dot`` make host arrays. Rather than patch autograd, model code uses
only the operations whose VJPs are device-agnostic (matmul, elementwise ufuncs,
reshape/transpose, broadcasting, integer indexing) plus the small primitives
defined here (``sum``, ``mean``, ``relu``, ``sigmoid``, ``index``) and the layer
primitives of ``layers.py``, ``convolution.py`` and ``slotref.kernels``, each with a hand-written
VJP that uses the array module of its input. Nothing private in autograd is patched, so an
autograd upgrade cannot silently break the device path, and the VJPs are
visible next to the forward code. The one registration autograd needs for a
new array type (``ArrayBox.register`` + a ``VSpace`` whose zeros/ones live on
the device) is public API (``register_array_type``).

A side effect on plain NumPy: autograd's own VJPs of mean/var/max/maximum
create float64 intermediates from float32 inputs under NumPy 2; ours keep the
input dtype, so a float32 training step stays float32 throughout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd.extend import VSpace, defvjp, primitive
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.numpy.numpy_vspaces import ArrayVSpace
from autograd.tracer import getval

DEVICE_ENV = "SLOTREF_DEVICE"
DEVICES = ("cpu", "gpu")


class BackendError(RuntimeError):
    """The requested device cannot be used (CuPy missing, no GPU visible)."""


# --------------------------------------------------------------------------
# Array types known to autograd and the array module each belongs to.

_ARRAY_MODULES: dict[type, Any] = {np.ndarray: np}


class DeviceArrayVSpace(ArrayVSpace):
    """autograd's vector space for arrays of a non-NumPy module.

    Same as autograd's ``ArrayVSpace`` but without ``np.asarray(value)`` (which
    a device array refuses) and with zeros/ones/randn made by the value's own
    array module, so gradient seeds and accumulators stay on the device.
    """

    def __init__(self, value):
        self.shape = value.shape
        self.dtype = value.dtype
        self.xp = _ARRAY_MODULES[type(value)]

    def zeros(self):
        return self.xp.zeros(self.shape, dtype=self.dtype)

    def ones(self):
        return self.xp.ones(self.shape, dtype=self.dtype)

    def standard_basis(self):
        for idxs in np.ndindex(*self.shape):
            vect = self.xp.zeros(self.shape, dtype=self.dtype)
            vect[idxs] = 1
            yield vect

    def randn(self):
        return self.xp.asarray(np.random.randn(*self.shape).astype(self.dtype))

    def _inner_prod(self, x, y):
        return self.xp.sum(self.xp.ravel(x) * self.xp.ravel(y))


def register_array_type(array_type: type, xp: Any) -> None:
    """Make ``array_type`` (e.g. ``cupy.ndarray``) differentiable by autograd.

    ``xp`` is its array module; ``xp_of`` returns it for such arrays.
    """
    if array_type in _ARRAY_MODULES:
        return
    _ARRAY_MODULES[array_type] = xp
    ArrayBox.register(array_type)
    VSpace.register(array_type, DeviceArrayVSpace)


def xp_of(x: Any) -> Any:
    """The array module (numpy, cupy, ...) of ``x``, looking through autograd boxes."""
    value = getval(x)
    return _ARRAY_MODULES.get(type(value), np)


def is_host_array(x: Any) -> bool:
    return isinstance(getval(x), np.ndarray)


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy (or view) of ``x``, wherever it lives."""
    value = getval(x)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return np.asarray(value)
    if hasattr(value, "get"):  # cupy.ndarray (and the test stand-in)
        return value.get()
    raise TypeError(f"cannot move {type(value).__name__} to the host")


def to_float(x: Any) -> float:
    """A Python float from a 0-d array on any device (a host sync on GPUs)."""
    return float(to_host(x))


# --------------------------------------------------------------------------
# Device selection and dtype policy.

@dataclass(frozen=True)
class Backend:
    """An array module and a float dtype.

    ``dtype`` is float32 for training and float64 for gradient checks.
    Parameters are initialised on the host (NumPy) and moved with ``asarray``,
    so a seed gives the same model on every device.
    """

    device: str
    xp: Any
    dtype: np.dtype

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """``x`` on this device; floating arrays are cast to the policy dtype."""
        x = getval(x)
        if dtype is None:
            source_dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
            dtype = self.dtype if np.issubdtype(source_dtype, np.floating) else None
        return self.xp.asarray(x, dtype=dtype)

    def tree_asarray(self, tree: Any) -> Any:
        """``asarray`` applied to every leaf of a nested dict/list parameter tree."""
        return tree_map(self.asarray, tree)

    def rng(self, seed: int, *keys: int) -> Any:
        """A generator on this device, seeded by ``(seed, *keys)``.

        Deriving a fresh generator per (seed, step) instead of carrying one
        along keeps resumed runs exact without saving generator state.
        """
        state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0]
        return self.xp.random.default_rng(int(state))


def host_rng(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy generator seeded by ``(seed, *keys)`` (parameter init, data order)."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def _import_cupy():
    try:
        import cupy
    except ImportError as err:
        raise BackendError(
            "device 'gpu' needs CuPy: pip install cupy-cuda12x (or cupy-cuda13x, matching your CUDA)"
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # cupy raises CUDARuntimeError without a driver
        raise BackendError(f"device 'gpu': CuPy is installed but no CUDA GPU is usable ({err})") from err
    if count < 1:
        raise BackendError("device 'gpu': CuPy is installed but no CUDA GPU is visible")
    register_array_type(cupy.ndarray, cupy)
    return cupy


def get_backend(device: str | None = None, dtype: Any = "float32") -> Backend:
    """The backend for ``device`` ('cpu' or 'gpu'; default: $SLOTREF_DEVICE, else 'cpu')."""
    device = (device or os.environ.get(DEVICE_ENV) or "cpu").lower()
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise BackendError(f"dtype must be float32 or float64, got {dtype}")
    xp = np if device == "cpu" else _import_cupy()
    return Backend(device=device, xp=xp, dtype=dtype)


def gpu_status() -> str:
    """One line on CuPy and the GPU, for ``cli.py info``."""
    try:
        cupy = _import_cupy()
    except BackendError as err:
        return str(err)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"CuPy {cupy.__version__}, GPU 0: {name}"


# --------------------------------------------------------------------------
# Parameter trees (nested dicts/lists of arrays).

def tree_astype(tree: Any, dtype: Any = None) -> Any:
    """Every leaf of a host parameter tree as ``dtype`` (None: unchanged): what the ``dtype``
    argument of the init functions does."""
    if dtype is None:
        return tree
    dtype = np.dtype(dtype)
    return tree_map(lambda x: np.asarray(x, dtype=dtype), tree)


def tree_map(fn, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return fn(tree)


def tree_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) pairs, paths like 'slot_attention/gru/w_input'."""
    if isinstance(tree, dict):
        return [item for k in tree for item in tree_leaves(tree[k], f"{prefix}{k}/")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in tree_leaves(v, f"{prefix}{i}/")]
    return [(prefix.rstrip("/"), tree)]


# --------------------------------------------------------------------------
# Small primitives with device-agnostic VJPs (see the module docstring).

def _restore_reduced_axes(g, shape, axis, keepdims):
    """Reshape a reduction's cotangent so it broadcasts back to ``shape``."""
    if axis is None or keepdims:
        return g if axis is not None else g.reshape((1,) * len(shape))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % len(shape) for a in axes)
    return g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


@primitive
def sum(x, axis=None, keepdims=False):  # noqa: A001 - the paper's and NumPy's name
    """``x.sum(axis)`` keeping the dtype; its VJP broadcasts on x's device."""
    return xp_of(x).sum(x, axis=axis, keepdims=keepdims)


defvjp(sum, lambda ans, x, axis=None, keepdims=False: lambda g: xp_of(g).broadcast_to(
    _restore_reduced_axes(g, x.shape, axis, keepdims), x.shape))


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (a sum divided by a Python int, so float32 stays float32)."""
    shape = getval(x).shape
    axes = range(len(shape)) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    count = int(np.prod([shape[a] for a in axes]))
    return sum(x, axis=axis, keepdims=keepdims) / count


@primitive
def relu(x):
    """max(x, 0)."""
    return xp_of(x).maximum(x, 0)


defvjp(relu, lambda ans, x: lambda g: g * (ans > 0))


@primitive
def sigmoid(x):
    """1 / (1 + exp(-x)), computed through tanh so it cannot overflow."""
    return 0.5 * (xp_of(x).tanh(0.5 * x) + 1)


defvjp(sigmoid, lambda ans, x: lambda g: g * ans * (1 - ans))


@primitive
def index(x, idx):
    """``x[idx]`` for basic indices (slices, ints) whose VJP stays on x's device."""
    return x[idx]


def _index_vjp(ans, x, idx):
    def vjp(g):
        out = xp_of(g).zeros(x.shape, dtype=g.dtype)
        out[idx] = g
        return out
    return vjp


defvjp(index, _index_vjp)


# autograd 1.9.1's VJPs of reshape and ravel pass ``order=None`` on, which
# CuPy's reshape rejects (NumPy reads it as 'C'): the gradient of every
# ``x.reshape(...)`` on a traced device array failed. Same VJPs, order spelled out.
defvjp(anp.reshape, lambda ans, x, shape, order="C": lambda g: anp.reshape(g, anp.shape(x), order=order or "C"))
defvjp(anp.ravel, lambda ans, x, order="C": lambda g: anp.reshape(g, anp.shape(x), order=order or "C"))
