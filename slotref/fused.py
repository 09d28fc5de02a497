"""Fused kernels for the hot elementwise chains, each beside its NumPy twin.

On a GPU a small model is launch-bound: LayerNorm, softmax, the GRU gates,
Huber and the Adam update are chains of 5-15 tiny kernels each. Every chain
here exists twice:

- the **twin**: plain array-module expressions, the specification. It computes
  exactly what ``slotref/layers.py`` (and ``Adam.update``) compute, operation
  for operation, so it runs on NumPy, CuPy or any other array module, and
  ``tests/test_fused.py`` checks it against the layers;
- the **device kernel**: the same arithmetic as one to three CuPy kernels
  (``cupy.ElementwiseKernel`` / ``cupy.ReductionKernel``), compiled with
  ``--fmad=false`` so that products and sums round as the twin's do
  (``slotref/kernels/fused_cupy.py``). It is built on first use, only on CuPy.

``FUSED`` maps each name to its pair; ``lookup(name, xp)`` returns the one to
run (the device kernel on CuPy when ``SLOTREF_FUSED=1``, the twin otherwise);
``check_fused(xp)`` runs every device kernel against its twin on random inputs
(``selfcheck --device gpu``). Layouts: reductions are over the last axis
(softmax: over ``axis``); GRU gate matrices are (..., 3 * d) in Keras' order
[z, r, n] (reset-after form), the state (..., d).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from slotref import layers
from slotref.backend import to_float, xp_of
from slotref.kernels.fused_cupy import (build_adam_update, build_gru_gates, build_gru_gates_vjp, build_huber,
                                        build_huber_vjp, build_normalize, build_normalize_vjp, build_softmax,
                                        build_softmax_vjp)

LAYER_NORM_EPS = layers.LAYER_NORM_EPS

FUSED_ENV = "SLOTREF_FUSED"


# --------------------------------------------------------------------------
# Twins: the specification, as slotref/layers.py computes it.

def normalize(x, eps=LAYER_NORM_EPS):
    """(x - mean) / sqrt(var + eps) over the last axis (LayerNorm without scale and offset):
    the specification itself, ``layers.normalize``."""
    return layers.normalize(x, eps)


def normalize_vjp(g, x, y, eps=LAYER_NORM_EPS):
    """dL/dx of ``y = normalize(x)`` given g = dL/dy: (g - mean(g) - y * mean(g * y)) / sigma."""
    xp = xp_of(x)
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    inv_sigma = 1 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    g_mean = xp.mean(g, axis=-1, keepdims=True)
    gy_mean = xp.mean(g * y, axis=-1, keepdims=True)
    return (g - g_mean - y * gy_mean) * inv_sigma


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) over ``axis``."""
    xp = xp_of(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_vjp(g, y, axis=-1):
    """dL/dx of ``y = softmax(x)`` given g = dL/dy: y * (g - sum(g * y))."""
    return y * (g - xp_of(g).sum(g * y, axis=axis, keepdims=True))


def _sigmoid(a):
    # As slotref.backend.sigmoid: through tanh, so it cannot overflow.
    return 0.5 * (xp_of(a).tanh(0.5 * a) + 1)


def gru_gates(gates_x, gates_h, h):
    """h' of a reset-after GRU from its pre-activations.

    gates_x = x @ W_input + b_input, gates_h = h @ W_hidden + b_hidden, both (..., 3d):
    z = s(x_z + h_z), r = s(x_r + h_r), n = tanh(x_n + r * h_n), h' = (1 - z) * n + z * h.
    """
    xp = xp_of(h)
    d = h.shape[-1]
    z = _sigmoid(gates_x[..., :d] + gates_h[..., :d])
    r = _sigmoid(gates_x[..., d:2 * d] + gates_h[..., d:2 * d])
    n = xp.tanh(gates_x[..., 2 * d:] + r * gates_h[..., 2 * d:])
    return (1 - z) * n + z * h


def gru_gates_vjp(g, gates_x, gates_h, h):
    """(dL/dgates_x, dL/dgates_h, dL/dh through the z * h term) given g = dL/dh'."""
    xp = xp_of(h)
    d = h.shape[-1]
    z = _sigmoid(gates_x[..., :d] + gates_h[..., :d])
    r = _sigmoid(gates_x[..., d:2 * d] + gates_h[..., d:2 * d])
    h_n = gates_h[..., 2 * d:]
    n = xp.tanh(gates_x[..., 2 * d:] + r * h_n)
    d_z = g * (h - n)                     # h' = n + z * (h - n)
    d_n = g * (1 - z)
    d_h = g * z
    d_an = d_n * (1 - n * n)              # tanh' = 1 - n^2
    d_ar = d_an * h_n * r * (1 - r)       # s' = s (1 - s)
    d_az = d_z * z * (1 - z)
    d_gates_x = xp.concatenate([d_az, d_ar, d_an], axis=-1)
    d_gates_h = xp.concatenate([d_az, d_ar, d_an * r], axis=-1)
    return d_gates_x, d_gates_h, d_h


def huber(x, delta=1.0):
    """Elementwise Huber loss of a residual: x^2/2 inside |x| <= delta, linear outside."""
    xp = xp_of(x)
    a = xp.abs(x)
    quad = xp.minimum(a, delta)
    return 0.5 * quad * quad + delta * (a - quad)


def huber_vjp(g, x, delta=1.0):
    """dL/dx of ``huber(x)`` given g: g * clip(x, -delta, delta)."""
    return g * xp_of(x).clip(x, -delta, delta)


def adam_update(p, g, m, v, step_size, v_correction, beta1, beta2, eps):
    """One Adam step in place on p, m, v (any shapes, e.g. whole flat buffers).

    step_size = lr / (1 - beta1^t), v_correction = 1 / (1 - beta2^t):
    Algorithm 1 with the bias corrections folded in, as ``Adam.update``.
    """
    xp = xp_of(p)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    p -= step_size * m / (xp.sqrt(v * v_correction) + eps)


# --------------------------------------------------------------------------
# The registry, and the check of each device kernel against its twin.

def _example_normalize(rng, shape):
    return (rng.normal(size=shape),)


def _example_normalize_vjp(rng, shape):
    x = rng.normal(size=shape)
    return rng.normal(size=shape), x, normalize(x)


def _example_softmax_vjp(rng, shape):
    return rng.normal(size=shape), softmax(rng.normal(size=shape))


def _example_gru(rng, shape, vjp=False):
    d = shape[-1]
    gates = (rng.normal(size=shape[:-1] + (3 * d,)), rng.normal(size=shape[:-1] + (3 * d,)), rng.normal(size=shape))
    return ((rng.normal(size=shape),) if vjp else ()) + gates


def _example_huber(rng, shape, vjp=False):
    x = 2 * rng.normal(size=shape)
    return (rng.normal(size=shape), x) if vjp else (x,)


def _example_adam(rng, shape):
    n = int(np.prod(shape))
    return (rng.normal(size=n), rng.normal(size=n), 0.1 * rng.normal(size=n), rng.random(n), 1e-3, 1.5,
            0.9, 0.999, 1e-8)


@dataclass(frozen=True)
class Fused:
    """A chain's specification (``twin``), its CuPy kernel maker (``build``),
    random inputs for checking one against the other (``example(rng, shape)``,
    host float64), and which arguments it updates in place (Adam)."""

    twin: Callable
    build: Callable[[Any], Callable]
    example: Callable
    in_place: tuple[int, ...] = ()


FUSED: dict[str, Fused] = {
    "normalize": Fused(normalize, build_normalize, _example_normalize),
    "normalize_vjp": Fused(normalize_vjp, build_normalize_vjp, _example_normalize_vjp),
    "softmax": Fused(softmax, build_softmax, _example_normalize),
    "softmax_vjp": Fused(softmax_vjp, build_softmax_vjp, _example_softmax_vjp),
    "gru_gates": Fused(gru_gates, build_gru_gates, _example_gru),
    "gru_gates_vjp": Fused(gru_gates_vjp, build_gru_gates_vjp, lambda rng, shape: _example_gru(rng, shape, True)),
    "huber": Fused(huber, build_huber, _example_huber),
    "huber_vjp": Fused(huber_vjp, build_huber_vjp, lambda rng, shape: _example_huber(rng, shape, True)),
    "adam_update": Fused(adam_update, build_adam_update, _example_adam, in_place=(0, 2, 3)),
}

_built: dict[str, Callable] = {}


def is_cupy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") == "cupy"


def device_kernel(name: str, xp: Any) -> Callable | None:
    """The device kernel for ``name`` on array module ``xp`` (built on first use), or None off CuPy."""
    if not is_cupy(xp):
        return None
    if name not in _built:
        _built[name] = FUSED[name].build(xp)
    return _built[name]


def fused_enabled() -> bool:
    return os.environ.get(FUSED_ENV, "0") == "1"


def lookup(name: str, xp: Any, enabled: bool | None = None) -> Callable:
    """What to run for ``name`` on ``xp``: the device kernel on CuPy when enabled
    (``enabled``, default: $SLOTREF_FUSED == "1"), else the twin."""
    if name not in FUSED:
        raise KeyError(f"no fused chain named {name!r}; known: {', '.join(FUSED)}")
    if fused_enabled() if enabled is None else enabled:
        kernel = device_kernel(name, xp)
        if kernel is not None:
            return kernel
    return FUSED[name].twin


@dataclass(frozen=True)
class FusedCheck:
    name: str
    dtype: str
    max_error: float     # max |kernel - twin| / (atol + rtol * |twin|); <= 1 passes
    ok: bool


TOLERANCES = {"float64": (1e-12, 1e-14), "float32": (2e-5, 1e-6)}   # (rtol, atol)


def _outputs(op: Fused, fn: Callable, args: tuple) -> tuple:
    result = fn(*args)
    if op.in_place:
        return tuple(args[i] for i in op.in_place)
    return result if isinstance(result, tuple) else (result,)


def check_fused(xp: Any, kernels: dict[str, Callable] | None = None, shape=(3, 5, 16),
                dtypes=("float32", "float64"), seed: int = 0) -> list[FusedCheck]:
    """Run each device kernel and its twin on the same random inputs on ``xp``; one result per (name, dtype).

    ``kernels`` (name -> function) replaces the device kernels; without it,
    chains with no device kernel on ``xp`` (everything off CuPy) are left out.
    """
    results = []
    for name, op in FUSED.items():
        kernel = kernels.get(name) if kernels is not None else device_kernel(name, xp)
        if kernel is None:
            continue
        for dtype in dtypes:
            host = op.example(np.random.default_rng(seed), shape)
            args = tuple(xp.asarray(a, dtype=dtype) if isinstance(a, np.ndarray) else a for a in host)
            copies = tuple(a.copy() if hasattr(a, "shape") else a for a in args)
            expected = _outputs(op, op.twin, args)
            got = _outputs(op, kernel, copies)
            rtol, atol = TOLERANCES[dtype]
            error = 0.0
            for e, o in zip(expected, got):
                ratio = xp.abs(o - e) / (atol + rtol * xp.abs(e))
                worst = to_float(xp.max(ratio)) if ratio.size else 0.0
                error = max(error, worst) if np.isfinite(worst) else np.inf
            ok = len(expected) == len(got) and error <= 1.0 and all(o.dtype == e.dtype for e, o in zip(expected, got))
            results.append(FusedCheck(name, dtype, error, ok))
    return results
