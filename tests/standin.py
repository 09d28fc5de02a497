"""A stand-in device array: GPU-readiness tests on a machine without a GPU.

``StandinArray`` wraps a NumPy array and follows CuPy's interoperability rules,
so code that runs on it will not make hidden host arrays on a real GPU:

- ``__array__`` raises ``TypeError`` (CuPy: "Implicit conversion to a NumPy
  array is not allowed"); so do ``float()``, ``int()`` and ``bool()`` (CuPy
  allows those with a device sync; model code has no business syncing, and
  ``slotref.backend.to_float`` is the explicit way);
- ufuncs and NumPy functions dispatch through ``__array_ufunc__`` and
  ``__array_function__``: the stand-in unwraps its own type, runs NumPy and
  wraps the result, and raises ``TypeError`` on a ``numpy.ndarray`` operand;
  ``__array_function__`` only answers for functions that live in NumPy's
  public namespace (CuPy only answers for the names it implements);
- an autograd ``Box`` operand is left to autograd (``NotImplemented``), as
  CuPy does, so ``device_array + box`` traces;
- reductions return 0-d stand-in arrays, never NumPy scalars;
- CuPy's smaller quirks that have bitten: ``order=None`` raises (autograd's
  reshape VJP passed it), ``np.add.at`` through the protocol takes device
  index arrays only, and ``standin_xp.<function>(box)`` raises (CuPy's own
  functions cannot take autograd boxes; ``autograd.numpy`` can).

``standin_xp`` is the module-like twin of ``cupy``: ``standin_xp.zeros``,
``.pad``, ``.lib.stride_tricks.as_strided``, ``.random.default_rng(seed)``,
``.add.at`` ... run NumPy and return stand-in arrays. ``standin_xp.asarray``
of host data is the explicit host-to-device copy.

``STATS`` counts, with the source line of each event:

- ``conversions``: device-to-host attempts (they also raise);
- ``host_operands``: host arrays handed to device code (NumPy operands, which
  raise, and NumPy index arrays or assigned values, which CuPy copies to the
  device silently and the stand-in counts);
- ``explicit_transfers``: ``standin_xp.asarray(host data)``;
- ``float64_created``: every float64 device array created, and ``upcasts``,
  those among them made from float32 inputs.

``assert_same_on_standin`` runs a loss and its gradient on NumPy and on the
stand-in and checks all of the above; model-level tests reuse it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
import types
from dataclasses import dataclass, field

import autograd
import numpy as np
from autograd import value_and_grad
from autograd.tracer import Box
from numpy.lib.mixins import NDArrayOperatorsMixin

from slotref import backend

# --------------------------------------------------------------------------
# Event counters.

_HERE = os.path.abspath(__file__)
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))
_AUTOGRAD_DIR = os.path.dirname(os.path.abspath(autograd.__file__))


def _where() -> str:
    """The first caller outside this file and NumPy, and, if that is autograd, the code that called it."""
    frames = [f for f in traceback.extract_stack()[:-2]
              if os.path.abspath(f.filename) != _HERE and not f.filename.startswith(_NUMPY_DIR)]
    if not frames:
        return "?"

    def name(frame):
        return f"{os.path.basename(frame.filename)}:{frame.lineno} ({frame.name})"

    inner = frames[-1]
    caller = next((f for f in reversed(frames) if not f.filename.startswith(_AUTOGRAD_DIR)), inner)
    return name(inner) if caller is inner else f"{name(inner)} via {name(caller)}"


@dataclass
class StandinStats:
    conversions: list = field(default_factory=list)
    host_operands: list = field(default_factory=list)
    explicit_transfers: list = field(default_factory=list)
    float64_created: list = field(default_factory=list)
    upcasts: list = field(default_factory=list)

    def reset(self) -> None:
        for value in vars(self).values():
            value.clear()

    def record(self, kind: str, what: str) -> None:
        events = getattr(self, kind)
        if len(events) < 1000:
            events.append(f"{what} at {_where()}")

    def report(self, kinds=None) -> str:
        kinds = kinds or list(vars(self))
        lines = []
        for kind in kinds:
            events = getattr(self, kind)
            if events:
                lines.append(f"{kind}: {len(events)}")
                lines += [f"    {e}" for e in dict.fromkeys(events)][:20]
        return "\n".join(lines) or "no events"


STATS = StandinStats()


class DeviceConversionError(TypeError):
    """Raised where CuPy would refuse an implicit host/device conversion."""


# --------------------------------------------------------------------------
# Wrapping and unwrapping.

_SCALARS = (bool, int, float, complex, np.generic)


def _note_creation(arr: np.ndarray, source_dtypes) -> None:
    if arr.dtype == np.float64:
        STATS.record("float64_created", f"float64 array {arr.shape}")
        if any(d == np.float32 for d in source_dtypes):
            STATS.record("upcasts", f"float32 -> float64 array {arr.shape}")


def _wrap(result, source_dtypes=(), fresh=True):
    """NumPy results as stand-in arrays (NumPy scalars become 0-d arrays)."""
    if isinstance(result, StandinArray):
        return result
    if isinstance(result, np.ndarray):
        if fresh:
            _note_creation(result, source_dtypes)
        return StandinArray._from(result)
    if isinstance(result, np.generic) and isinstance(result, (np.number, np.bool_)):
        arr = np.asarray(result)
        _note_creation(arr, source_dtypes)
        return StandinArray._from(arr)
    if isinstance(result, tuple) and not hasattr(result, "_fields"):
        return tuple(_wrap(r, source_dtypes, fresh) for r in result)
    if isinstance(result, list):
        return [_wrap(r, source_dtypes, fresh) for r in result]
    return result


def _unwrap(obj, dtypes: list, what: str, host_ok: bool = False):
    """Replace stand-in arrays by their NumPy arrays; refuse host arrays and boxes."""
    if isinstance(obj, StandinArray):
        dtypes.append(obj._a.dtype)
        return obj._a
    if isinstance(obj, np.ndarray):
        if host_ok:
            return obj
        STATS.record("host_operands", f"numpy.ndarray {obj.shape} passed to {what}")
        raise DeviceConversionError(
            f"{what}: a numpy.ndarray operand on the device path (CuPy refuses implicit "
            "host-to-device conversion; move it with the backend's asarray)")
    if isinstance(obj, Box):
        raise TypeError(f"{what} got an autograd Box: call autograd.numpy or a backend primitive "
                        "instead of the raw array module on traced values")
    if isinstance(obj, np.generic):
        dtypes.append(obj.dtype)
        return obj
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_unwrap(o, dtypes, what, host_ok) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, dtypes, what, host_ok) for k, v in obj.items()}
    return obj


def _unwrap_index(idx, what):
    """Index expressions: device index arrays unwrap; host ones are counted (CuPy copies them)."""
    if isinstance(idx, StandinArray):
        return idx._a
    if isinstance(idx, np.ndarray):
        STATS.record("host_operands", f"numpy index array {idx.shape} in {what}")
        return idx
    if isinstance(idx, Box):
        raise TypeError(f"{what} got an autograd Box as an index")
    if isinstance(idx, tuple):
        return tuple(_unwrap_index(i, what) for i in idx)
    if isinstance(idx, list):
        return [_unwrap_index(i, what) for i in idx]
    return idx


def _check_order(kwargs, what):
    """CuPy reads ``order`` as a string: ``order=None`` (which NumPy takes as 'C') raises."""
    if "order" in kwargs and kwargs["order"] is None:
        raise TypeError(f"{what}: order=None is refused by CuPy (object of type 'NoneType' has no len())")


def _public_numpy_function(func) -> bool:
    """CuPy dispatches ``__array_function__`` only to functions it has by the same path."""
    try:
        module = functools.reduce(getattr, func.__module__.split(".")[1:], np)
        return getattr(module, func.__name__) is func
    except AttributeError:
        return False


# --------------------------------------------------------------------------
# The array type.

class StandinArray(NDArrayOperatorsMixin):
    """A device array stand-in (see the module docstring). Make one with ``standin_xp``."""

    __slots__ = ("_a",)

    def __init__(self, *args, **kwargs):
        raise TypeError("create stand-in arrays with standin_xp (e.g. standin_xp.asarray)")

    @classmethod
    def _from(cls, arr: np.ndarray) -> "StandinArray":
        obj = object.__new__(cls)
        obj._a = arr
        return obj

    # --- interoperability protocols -------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method not in ("__call__", "reduce", "accumulate", "reduceat", "outer", "at"):
            return NotImplemented
        out = kwargs.get("out", ())
        out = tuple(o for o in (out if isinstance(out, tuple) else (out,)) if o is not None)
        for x in inputs + out:
            if not isinstance(x, (StandinArray, np.ndarray) + _SCALARS):
                return NotImplemented  # an autograd Box: let it trace
        what = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        dtypes: list = []
        if method == "at":
            target, idx, *rest = inputs
            if not all(isinstance(i, StandinArray) for i in (idx if isinstance(idx, tuple) else (idx,))):
                raise DeviceConversionError(
                    f"{what}: CuPy's ufunc.at through NumPy takes device index arrays only, got {idx!r}")
            getattr(ufunc, method)(_unwrap(target, dtypes, what), _unwrap_index(idx, what),
                                   *_unwrap(tuple(rest), dtypes, what))
            return None
        args = _unwrap(inputs, dtypes, what)
        kwargs = _unwrap(kwargs, dtypes, what)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _wrap(result, dtypes)

    def __array_function__(self, func, types_, args, kwargs):
        if not all(issubclass(t, (StandinArray, np.ndarray)) for t in types_):
            return NotImplemented
        if not _public_numpy_function(func):
            return NotImplemented
        what = f"numpy.{func.__name__}"
        _check_order(kwargs, what)
        dtypes: list = []
        result = func(*_unwrap(args, dtypes, what), **_unwrap(kwargs, dtypes, what))
        return _wrap(result, dtypes)

    def __array__(self, dtype=None, copy=None):
        STATS.record("conversions", f"__array__ of {self.shape}")
        raise DeviceConversionError(
            "Implicit conversion to a NumPy array is not allowed (stand-in device array); "
            "use .get() or slotref.backend.to_host")

    def _refuse_scalar(self, kind):
        STATS.record("conversions", f"{kind}() of {self.shape}")
        raise DeviceConversionError(
            f"{kind}() of a stand-in device array: a hidden device sync; use slotref.backend.to_float")

    def __float__(self):
        self._refuse_scalar("float")

    def __int__(self):
        self._refuse_scalar("int")

    def __complex__(self):
        self._refuse_scalar("complex")

    def __bool__(self):
        self._refuse_scalar("bool")

    def __index__(self):
        self._refuse_scalar("index")

    # --- explicit transfer -------------------------------------------------
    def get(self) -> np.ndarray:
        """A NumPy copy on the host (as ``cupy.ndarray.get``)."""
        return self._a.copy()

    # --- attributes ----------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StandinArray._from(self._a.T))
    device = "standin"

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"StandinArray({self._a!r})"

    # --- views and copies ----------------------------------------------------
    def reshape(self, *shape, **kwargs):
        _check_order(kwargs, "StandinArray.reshape")
        return StandinArray._from(self._a.reshape(*shape, **kwargs))

    def transpose(self, *axes):
        return StandinArray._from(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return StandinArray._from(self._a.swapaxes(a, b))

    def ravel(self):
        return _wrap(self._a.ravel(), fresh=False)

    def squeeze(self, axis=None):
        return StandinArray._from(self._a.squeeze(axis))

    def astype(self, dtype, copy=True):
        result = self._a.astype(dtype, copy=copy)
        return _wrap(result, [self._a.dtype], fresh=result is not self._a)

    def copy(self):
        return _wrap(self._a.copy(), [self._a.dtype])

    def __getitem__(self, idx):
        return _wrap(self._a[_unwrap_index(idx, "__getitem__")], fresh=False)

    def __setitem__(self, idx, value):
        if isinstance(value, np.ndarray):
            STATS.record("host_operands", f"numpy.ndarray {value.shape} assigned into a device array")
        elif isinstance(value, Box):
            raise TypeError("cannot assign an autograd Box into a device array")
        self._a[_unwrap_index(idx, "__setitem__")] = value._a if isinstance(value, StandinArray) else value


def _reduction_method(name):
    def method(self, *args, **kwargs):
        dtypes: list = [self._a.dtype]
        what = f"StandinArray.{name}"
        return _wrap(getattr(self._a, name)(*_unwrap(args, dtypes, what), **_unwrap(kwargs, dtypes, what)),
                     dtypes)
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "prod", "var", "std", "any", "all",
              "argmax", "argmin", "clip", "dot", "cumsum", "fill"):
    setattr(StandinArray, _name, _reduction_method(_name))


# --------------------------------------------------------------------------
# The module-like twin of ``cupy``.

class _FunctionProxy:
    def __init__(self, func, path):
        self._func = func
        self._path = path
        functools.update_wrapper(self, func)

    def __call__(self, *args, **kwargs):
        _check_order(kwargs, self._path)
        dtypes: list = []
        args = _unwrap(args, dtypes, self._path)
        kwargs = _unwrap(kwargs, dtypes, self._path)
        return _wrap(self._func(*args, **kwargs), dtypes)


class _UfuncProxy(_FunctionProxy):
    def __getattr__(self, name):
        attr = getattr(self._func, name)
        if name in ("reduce", "accumulate", "reduceat", "outer"):
            return _FunctionProxy(attr, f"{self._path}.{name}")
        if name == "at":
            return self._at
        return attr

    def _at(self, target, idx, *values):
        what = f"{self._path}.at"
        dtypes: list = []
        self._func.at(_unwrap(target, dtypes, what), _unwrap_index(idx, what), *_unwrap(values, dtypes, what))


def _asarray(obj, dtype=None, copy=None, order=None):
    """Host data -> stand-in array: the explicit host-to-device copy."""
    if isinstance(obj, StandinArray):
        result = obj._a if dtype is None else obj._a.astype(dtype, copy=False)
        return _wrap(result, [obj.dtype], fresh=result is not obj._a)
    if isinstance(obj, Box):
        raise TypeError("standin_xp.asarray got an autograd Box")
    STATS.record("explicit_transfers", f"asarray of host {type(obj).__name__}")
    dtypes: list = []
    host = _unwrap(obj, dtypes, "standin_xp.asarray", host_ok=True)
    return _wrap(np.array(host, dtype=dtype, order=order or "K", copy=True), dtypes)


def _array(obj, dtype=None, copy=True, order=None):
    result = _asarray(obj, dtype=dtype, order=order)
    return result.copy() if isinstance(obj, StandinArray) and result is obj else result


def _asnumpy(obj):
    return obj.get() if isinstance(obj, StandinArray) else np.asarray(obj)


class _Generator:
    """A NumPy ``Generator`` whose draws are stand-in arrays (as ``cupy.random.Generator``)."""

    def __init__(self, gen: np.random.Generator):
        self._gen = gen

    def __getattr__(self, name):
        return _FunctionProxy(getattr(self._gen, name), f"Generator.{name}")


class _Module:
    """``standin_xp`` and its submodules: NumPy's names, returning stand-in arrays."""

    def __init__(self, np_module, path, overrides=None):
        self._np = np_module
        self._path = path
        self._overrides = overrides or {}

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        target = getattr(self._np, name)
        path = f"{self._path}.{name}"
        if isinstance(target, types.ModuleType):
            return _Module(target, path)
        if isinstance(target, np.ufunc):
            return _UfuncProxy(target, path)
        if callable(target) and not isinstance(target, type):
            return _FunctionProxy(target, path)
        return target  # dtypes, constants

    def __repr__(self):
        return f"<stand-in array module {self._path}>"


standin_xp = _Module(np, "standin_xp", {
    "ndarray": StandinArray,
    "asarray": _asarray,
    "array": _array,
    "asnumpy": _asnumpy,
    "random": _Module(np.random, "standin_xp.random", {
        "default_rng": lambda seed=None: _Generator(np.random.default_rng(seed)),
    }),
    "__name__": "standin_xp",
})

backend.register_array_type(StandinArray, standin_xp)


def standin_backend(dtype=np.float32) -> backend.Backend:
    """A ``Backend`` on the stand-in device."""
    return backend.Backend(device="standin", xp=standin_xp, dtype=np.dtype(dtype))


@contextlib.contextmanager
def watch():
    """Reset ``STATS`` and yield it; read it after the block."""
    STATS.reset()
    yield STATS


# --------------------------------------------------------------------------
# The reusable check.

def _split_float_inputs(inputs):
    diff = [i for i, x in enumerate(inputs)
            if np.issubdtype(np.asarray(backend.to_host(x)).dtype, np.floating)]
    return diff


def _max_abs(a) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))


def _rel_err(a, b, floor=0.0) -> float:
    """max |a - b| / max |b|, the denominator at least ``floor``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)) / max(_max_abs(b), floor, 1e-30)


def assert_same_on_standin(loss_fn, params, *inputs, dtype=np.float32, rtol=None,
                           allow_explicit_transfers=False):
    """Run ``loss_fn(params, *inputs)`` and its gradient on NumPy and on the stand-in.

    ``params`` and ``inputs`` are host trees (any float dtype: both runs cast
    them to ``dtype``); the gradient is taken with respect to ``params`` and
    every floating-point input. Asserts that, on the stand-in device:

    - nothing was converted to the host or handed over from it (no
      ``__array__``, no NumPy operand, no ``asarray`` of host data unless
      ``allow_explicit_transfers``);
    - the loss and every gradient are stand-in arrays of ``dtype``;
    - for float32, no float64 array was created;
    - loss and gradients equal the NumPy run (relative to each array's largest
      entry: ``rtol`` defaults to 1e-10 for float64 and 1e-5 for float32).

    Returns ``(loss, grads)`` of the NumPy run, grads as ``(d params, d inputs)``.
    """
    dtype = np.dtype(dtype)
    rtol = rtol if rtol is not None else (1e-10 if dtype == np.float64 else 1e-5)
    diff = _split_float_inputs(inputs)

    def run(b):
        p = b.tree_asarray(params)
        xs = [b.asarray(x) for x in inputs]

        def objective(wrt):
            p_, diff_inputs = wrt
            all_inputs = list(xs)
            for i, x in zip(diff, diff_inputs):
                all_inputs[i] = x
            return loss_fn(p_, *all_inputs)

        with watch() as stats:
            loss, grads = value_and_grad(objective)((p, [xs[i] for i in diff]))
        return loss, grads, stats

    host_loss, host_grads, _ = run(backend.Backend("cpu", np, dtype))
    loss, grads, stats = run(standin_backend(dtype))

    kinds = ["conversions", "host_operands"] + ([] if allow_explicit_transfers else ["explicit_transfers"])
    if dtype == np.float32:
        kinds += ["float64_created"]
    bad = [k for k in kinds if getattr(stats, k)]
    assert not bad, "device path not clean:\n" + stats.report(bad)

    assert isinstance(loss, StandinArray), f"loss is {type(loss).__name__}, not a device array"
    assert loss.dtype == dtype, f"loss dtype {loss.dtype}, expected {dtype}"
    assert _rel_err(loss.get(), host_loss) <= rtol, f"loss {loss.get()} != NumPy's {host_loss}"
    leaves = backend.tree_leaves(grads)
    host_leaves = dict(backend.tree_leaves(host_grads))
    # Gradients that are zero up to rounding are compared at the scale of the whole gradient.
    floor = 1e-3 * max((_max_abs(g) for g in host_leaves.values()), default=0.0)
    for path, g in leaves:
        assert isinstance(g, StandinArray), f"gradient {path} is {type(g).__name__}, not a device array"
        assert g.dtype == dtype, f"gradient {path} has dtype {g.dtype}, expected {dtype}"
        err = _rel_err(g.get(), host_leaves[path], floor)
        assert err <= rtol, f"gradient {path} differs from NumPy's: relative error {err:.2e} > {rtol:.0e}"
    return host_loss, host_grads
