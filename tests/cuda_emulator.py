"""Run CuPy ElementwiseKernel / ReductionKernel sources on the CPU.

``emulated_cupy()`` is a module-like object with ``ElementwiseKernel`` and
``ReductionKernel`` that translate a kernel's parameter lists and C code into
a C++ loop, compile it with g++ (``-ffp-contract=off``, as ``--fmad=false``
asks of nvcc), and run it on NumPy arrays. ``cupy_kernels_on_numpy()`` makes
the kernels of ``slotref/kernels/fused_cupy.py`` (registered for CuPy arrays
only) apply to NumPy arrays through it, so that they are compiled and checked
against their specification functions on a machine without a GPU. Covered: ``T`` and concrete scalar/array types,
``raw`` arrays indexed linearly (C-contiguous), broadcasting of non-raw
arguments, reductions over one axis with ``_in_ind.size()`` / ``_out_ind.size()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
import types

import numpy as np

_CTYPES = {"float32": "float", "float64": "double", "int64": "long long", "int32": "int"}
_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"slotref_cuda_emulator_{os.getuid()}")
_libraries: dict[str, ctypes.CDLL] = {}

PRELUDE = """
#include <cmath>
#include <cstddef>
using std::sqrt; using std::tanh; using std::exp; using std::fabs;
struct _Ind { ptrdiff_t n; ptrdiff_t size() const { return n; } };
"""


def available() -> bool:
    return shutil.which("g++") is not None


def _compile(source: str) -> ctypes.CDLL:
    key = hashlib.sha1(source.encode()).hexdigest()[:16]
    if key in _libraries:
        return _libraries[key]
    os.makedirs(_CACHE_DIR, exist_ok=True)
    lib_path = os.path.join(_CACHE_DIR, f"k{key}.so")
    if not os.path.exists(lib_path):
        src_path = os.path.join(_CACHE_DIR, f"k{key}.cpp")
        with open(src_path, "w") as f:
            f.write(source)
        tmp = lib_path + f".{os.getpid()}.tmp"
        subprocess.run(["g++", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", tmp, src_path],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, lib_path)
    _libraries[key] = ctypes.CDLL(lib_path)
    return _libraries[key]


def _parse(params: str):
    """'raw T gx, T h, int64 d' -> [(raw, type, name)]."""
    out = []
    for part in filter(None, (p.strip() for p in params.split(","))):
        words = part.split()
        raw = words[0] == "raw"
        typ, name = words[-2], words[-1]
        out.append((raw, typ, name))
    return out


def _resolve_t(params, args):
    for (raw, typ, _), arg in zip(params, args):
        if typ == "T" and isinstance(arg, np.ndarray):
            return arg.dtype.name
    raise TypeError("cannot infer T: no array argument typed T")


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", options=(), **_):
        self.ins, self.outs = _parse(in_params), _parse(out_params)
        self.operation, self.name = operation, name

    def __call__(self, *args):
        params = self.ins + self.outs
        t = _resolve_t(params, args)
        dtype_of = lambda typ: t if typ == "T" else typ  # noqa: E731
        given = list(args)
        shaped = [a for (raw, _, _), a in zip(params, given) if not raw and isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in shaped))
        outputs = []
        for k, (raw, typ, _) in enumerate(self.outs):
            if len(given) <= len(self.ins) + k:
                given.append(np.empty(shape, dtype=dtype_of(typ)))
            outputs.append(given[len(self.ins) + k])
        buffers, lines = [], []
        for k, ((raw, typ, name), arg) in enumerate(zip(params, given)):
            ctype = _CTYPES[dtype_of(typ)]
            is_out = k >= len(self.ins)
            if raw:
                assert arg.flags.c_contiguous, f"{name}: raw arguments must be C-contiguous here"
                buffers.append(arg)
                lines.append(f"{ctype}* {name} = ({ctype}*)args[{k}];")
            elif isinstance(arg, np.ndarray):
                if is_out:
                    assert arg.shape == shape and arg.flags.c_contiguous
                    buffers.append(arg)
                    lines.append(f"{ctype}& {name} = (({ctype}*)args[{k}])[i];")
                else:
                    buffers.append(np.ascontiguousarray(np.broadcast_to(arg, shape), dtype=dtype_of(typ)))
                    lines.append(f"const {ctype} {name} = (({ctype}*)args[{k}])[i];")
            else:
                buffers.append(np.asarray(arg, dtype=dtype_of(typ)).reshape(1))
                lines.append(f"const {ctype} {name} = *({ctype}*)args[{k}];")
        source = (PRELUDE + f"typedef {_CTYPES[t]} T;\n"
                  + 'extern "C" void run(ptrdiff_t n, void** args) {\n'
                  + "  for (ptrdiff_t i = 0; i < n; ++i) {\n    " + "\n    ".join(lines)
                  + "\n    " + self.operation + ";\n  }\n}\n")  # CuPy appends the semicolon
        _run(_compile(source), int(np.prod(shape)), buffers)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class ReductionKernel:
    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", options=(), **_):
        self.ins, self.outs = _parse(in_params), _parse(out_params)
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = identity

    def __call__(self, *args, axis, keepdims=False):
        t = _resolve_t(self.ins, args)
        shape = np.broadcast_shapes(*(a.shape for a in args if isinstance(a, np.ndarray)))
        axis = axis % len(shape)
        rows_shape = shape[:axis] + shape[axis + 1:]
        length = shape[axis]
        buffers, lines = [], []
        for k, ((_, typ, name), arg) in enumerate(zip(self.ins, args)):
            ctype = _CTYPES[t if typ == "T" else typ]
            moved = np.moveaxis(np.broadcast_to(arg, shape), axis, -1)
            buffers.append(np.ascontiguousarray(moved, dtype=t if typ == "T" else typ))
            lines.append(f"const {ctype} {name} = (({ctype}*)args[{k}])[r * len + j];")
        (_, otyp, oname), = self.outs
        out = np.empty(rows_shape, dtype=t if otyp == "T" else otyp)
        buffers.append(out)
        ctype = _CTYPES[t]
        source = (PRELUDE + f"typedef {ctype} T; typedef {ctype} _type_reduce;\n"
                  + 'extern "C" void run(ptrdiff_t rows, void** args) {\n'
                  + f"  const ptrdiff_t len = {length};\n"
                  + f"  const _Ind _in_ind{{rows * len}}, _out_ind{{rows}};\n"
                  + "  for (ptrdiff_t r = 0; r < rows; ++r) {\n"
                  + f"    _type_reduce a = ({self.identity});\n"
                  + "    for (ptrdiff_t j = 0; j < len; ++j) {\n      " + "\n      ".join(lines)
                  + f"\n      const _type_reduce b = ({self.map_expr});\n      a = ({self.reduce_expr});\n    }}\n"
                  + f"    {_CTYPES[out.dtype.name]}& {oname} = (({_CTYPES[out.dtype.name]}*)args[{len(args)}])[r];\n"
                  + f"    {self.post_map_expr};\n  }}\n}}\n")
        _run(_compile(source), int(np.prod(rows_shape)), buffers)
        return np.expand_dims(out, axis) if keepdims else out


def _run(lib, n, buffers):
    pointers = (ctypes.c_void_p * len(buffers))(*(b.ctypes.data for b in buffers))
    lib.run(ctypes.c_ssize_t(n), pointers)


def emulated_cupy():
    """A stand-in for the ``cupy`` module as far as slotref's kernel builders use it."""
    module = types.SimpleNamespace(ElementwiseKernel=ElementwiseKernel, ReductionKernel=ReductionKernel,
                                   ascontiguousarray=np.ascontiguousarray, empty_like=np.empty_like)
    module.__name__ = "cupy_emulated_on_cpu"
    return module


@contextlib.contextmanager
def cupy_kernels_on_numpy():
    """Inside the block, every fast kernel registered for CuPy arrays applies to NumPy arrays
    (when ``SLOTREF_KERNELS`` is fast), its CuPy kernels compiled for the CPU by ``emulated_cupy``."""
    from slotref import dispatch
    from slotref.kernels import fused_cupy

    dispatch.registered()                           # imports the kernel modules
    saved, module_of = dict(dispatch._fast), fused_cupy._module_of
    cp = emulated_cupy()
    fused_cupy._module_of = lambda x: cp
    for spec, entry in saved.items():
        if entry.on == "cupy":
            dispatch._fast[spec] = dataclasses.replace(entry, on=None)
    try:
        yield cp
    finally:
        dispatch._fast.clear()
        dispatch._fast.update(saved)
        fused_cupy._module_of = module_of
