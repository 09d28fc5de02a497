"""Fused CuPy kernels for the hot elementwise chains: LayerNorm's normalisation,
softmax, Huber, the GRU gates (each with its VJP) and the Adam step.

On a GPU a small model is launch-bound: each of these chains is 5-15 tiny
kernels when written with array operations. Here each is one to three
``cupy.ElementwiseKernel`` / ``cupy.ReductionKernel`` calls, compiled with
``--fmad=false`` so that products and sums round one at a time, as NumPy's
do. Each registers against the specification function it replaces
(``layers.normalize``, ``layers.softmax``, ``layers.huber``,
``layers.gru_gates``, ``optim.adam_step``) with ``on="cupy"``: it runs only
when the call's first argument is a CuPy array and ``SLOTREF_KERNELS`` is
``fast``; on NumPy (and any other array module) the specification runs, so
CPU results and speed are those of the specification.

The kernels are built on first use, per array module (``_module_of``; the
tests substitute a CUDA emulator that compiles the sources for the CPU).
Reductions are over the last axis (softmax: over ``axis``); the GRU gate
matrices are (..., 3d) in the order [z, r, n], the state (..., d).
"""

from __future__ import annotations

from typing import Callable

from autograd.extend import defvjp, defvjp_argnums, primitive

from slotref import layers, optim
from slotref.backend import xp_of
from slotref.dispatch import implements
from slotref.layers import LAYER_NORM_EPS

# --------------------------------------------------------------------------
# Builders: each takes the cupy module and returns the chain as a function of
# CuPy arrays, with the signature of its specification (the VJPs: of the
# cotangent and the primal values).

_NO_FMA = ("--fmad=false",)   # round each product and sum, as NumPy does


def _row_mean(cp, name, map_expr, params):
    return cp.ReductionKernel(params, "T out", map_expr, "a + b",
                              "out = a / (_type_reduce)(_in_ind.size() / _out_ind.size())", "0",
                              name, options=_NO_FMA)


def build_normalize(cp):
    mean = _row_mean(cp, "slotref_mean", "x", "T x")
    centred_sq_mean = _row_mean(cp, "slotref_centred_sq_mean", "(x - mu) * (x - mu)", "T x, T mu")
    scale = cp.ElementwiseKernel("T x, T mu, T var, T eps", "T y", "y = (x - mu) / sqrt(var + eps)",
                                 "slotref_normalize", options=_NO_FMA)

    def run(x, eps=LAYER_NORM_EPS):
        mu = mean(x, axis=-1, keepdims=True)
        return scale(x, mu, centred_sq_mean(x, mu, axis=-1, keepdims=True), eps)
    return run


def build_normalize_vjp(cp):
    mean = _row_mean(cp, "slotref_mean", "x", "T x")
    centred_sq_mean = _row_mean(cp, "slotref_centred_sq_mean", "(x - mu) * (x - mu)", "T x, T mu")
    product_mean = _row_mean(cp, "slotref_product_mean", "g * y", "T g, T y")
    combine = cp.ElementwiseKernel(
        "T g, T y, T g_mean, T gy_mean, T var, T eps", "T dx",
        "dx = (g - g_mean - y * gy_mean) * ((T)1 / sqrt(var + eps))", "slotref_normalize_vjp", options=_NO_FMA)

    def run(g, x, y, eps=LAYER_NORM_EPS):
        mu = mean(x, axis=-1, keepdims=True)
        var = centred_sq_mean(x, mu, axis=-1, keepdims=True)
        return combine(g, y, mean(g, axis=-1, keepdims=True), product_mean(g, y, axis=-1, keepdims=True), var, eps)
    return run


def build_softmax(cp):
    exp_sum = cp.ReductionKernel("T x, T m", "T s", "exp(x - m)", "a + b", "s = a", "0",
                                 "slotref_exp_sum", options=_NO_FMA)
    divide = cp.ElementwiseKernel("T x, T m, T s", "T y", "y = exp(x - m) / s", "slotref_softmax",
                                  options=_NO_FMA)

    def run(x, axis=-1):
        m = x.max(axis=axis, keepdims=True)
        return divide(x, m, exp_sum(x, m, axis=axis, keepdims=True))
    return run


def build_softmax_vjp(cp):
    dot = cp.ReductionKernel("T g, T y", "T s", "g * y", "a + b", "s = a", "0", "slotref_dot",
                             options=_NO_FMA)
    combine = cp.ElementwiseKernel("T g, T y, T s", "T dx", "dx = y * (g - s)", "slotref_softmax_vjp",
                                   options=_NO_FMA)

    def run(g, y, axis=-1):
        return combine(g, y, dot(g, y, axis=axis, keepdims=True))
    return run


# Index i runs over the (..., d) state; gate k of row i / d sits at
# (i / d) * 3d + k * d + i % d of the (..., 3d) matrices.
_GRU_GATES_PROLOGUE = """
const ptrdiff_t base = (i / d) * 3 * d + i % d;
const T z = (T)0.5 * (tanh((T)0.5 * (gx[base] + gh[base])) + (T)1);
const T r = (T)0.5 * (tanh((T)0.5 * (gx[base + d] + gh[base + d])) + (T)1);
const T h_n = gh[base + 2 * d];
const T n = tanh(gx[base + 2 * d] + r * h_n);
"""


def build_gru_gates(cp):
    kernel = cp.ElementwiseKernel("raw T gx, raw T gh, T h, int64 d", "T out",
                                  _GRU_GATES_PROLOGUE + "out = ((T)1 - z) * n + z * h;",
                                  "slotref_gru_gates", options=_NO_FMA)

    def run(gates_x, gates_h, h):
        c = cp.ascontiguousarray
        return kernel(c(gates_x), c(gates_h), c(h), h.shape[-1])
    return run


def build_gru_gates_vjp(cp):
    kernel = cp.ElementwiseKernel(
        "T g, raw T gx, raw T gh, T h, int64 d", "raw T dgx, raw T dgh, T dh",
        _GRU_GATES_PROLOGUE + """
        const T d_z = g * (h - n);
        const T d_n = g * ((T)1 - z);
        dh = g * z;
        const T d_an = d_n * ((T)1 - n * n);
        const T d_ar = d_an * h_n * r * ((T)1 - r);
        const T d_az = d_z * z * ((T)1 - z);
        dgx[base] = d_az; dgx[base + d] = d_ar; dgx[base + 2 * d] = d_an;
        dgh[base] = d_az; dgh[base + d] = d_ar; dgh[base + 2 * d] = d_an * r;
        """, "slotref_gru_gates_vjp", options=_NO_FMA)

    def run(g, gates_x, gates_h, h):
        c = cp.ascontiguousarray
        d_gates_x, d_gates_h = cp.empty_like(c(gates_x)), cp.empty_like(c(gates_h))
        d_h = cp.empty_like(c(h))
        kernel(c(g), c(gates_x), c(gates_h), c(h), h.shape[-1], d_gates_x, d_gates_h, d_h)
        return d_gates_x, d_gates_h, d_h
    return run


def build_huber(cp):
    # NaN in, NaN out, as NumPy's minimum: the comparison is false for NaN.
    kernel = cp.ElementwiseKernel("T x, T delta", "T y", """
        const T a = x < (T)0 ? -x : x;
        const T quad = a > delta ? delta : a;
        y = (T)0.5 * quad * quad + delta * (a - quad);
        """, "slotref_huber", options=_NO_FMA)
    return lambda x, delta=1.0: kernel(x, delta)


def build_huber_vjp(cp):
    kernel = cp.ElementwiseKernel("T g, T x, T delta", "T dx",
                                  "dx = g * (x < -delta ? -delta : (x > delta ? delta : x));",
                                  "slotref_huber_vjp", options=_NO_FMA)
    return lambda g, x, delta=1.0: kernel(g, x, delta)


def build_adam_update(cp):
    kernel = cp.ElementwiseKernel(
        "T g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T v_correction, T eps",
        "T p, T m, T v", """
        m = m * beta1 + one_minus_beta1 * g;
        v = v * beta2 + one_minus_beta2 * (g * g);
        p = p - step_size * m / (sqrt(v * v_correction) + eps);
        """, "slotref_adam_update", options=_NO_FMA)

    def run(p, g, m, v, step_size, v_correction, beta1, beta2, eps):
        kernel(g, beta1, 1 - beta1, beta2, 1 - beta2, step_size, v_correction, eps, p, m, v)
    return run


# --------------------------------------------------------------------------
# The kernels registered against the specification: autograd primitives whose
# VJPs are the fused VJP kernels above.

_module_of = xp_of                          # the CuPy module of an array (the tests substitute an emulator)
_built: dict[tuple[int, Callable], Callable] = {}


def _kernel(build: Callable, x) -> Callable:
    """``build``'s kernel for the array module of ``x``, compiled on first use."""
    cp = _module_of(x)
    key = (id(cp), build)
    if key not in _built:
        _built[key] = build(cp)
    return _built[key]


@implements(layers.normalize, on="cupy", measured=False)
@primitive
def normalize(x, eps=LAYER_NORM_EPS):
    return _kernel(build_normalize, x)(x, eps)


defvjp(normalize, lambda ans, x, eps=LAYER_NORM_EPS: lambda g: _kernel(build_normalize_vjp, x)(g, x, ans, eps))


@implements(layers.softmax, on="cupy", measured=False)
@primitive
def softmax(x, axis=-1):
    return _kernel(build_softmax, x)(x, axis)


defvjp(softmax, lambda ans, x, axis=-1: lambda g: _kernel(build_softmax_vjp, x)(g, ans, axis))


@implements(layers.huber, on="cupy", measured=False)
@primitive
def huber(x, delta=1.0):
    return _kernel(build_huber, x)(x, delta)


defvjp(huber, lambda ans, x, delta=1.0: lambda g: _kernel(build_huber_vjp, x)(g, x, delta))


@implements(layers.gru_gates, on="cupy", measured=False)
@primitive
def gru_gates(gates_x, gates_h, h):
    return _kernel(build_gru_gates, h)(gates_x, gates_h, h)


def _gru_gates_vjp(argnums, ans, args, kwargs):
    def vjp(g):
        grads = _kernel(build_gru_gates_vjp, args[2])(g, *args)   # (d gates_x, d gates_h, d h)
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(gru_gates, _gru_gates_vjp)


@implements(optim.adam_step, on="cupy", measured=False)
def adam_step(p, g, m, v, step_size, v_correction, beta1, beta2, eps):
    _kernel(build_adam_update, p)(p, g, m, v, step_size, v_correction, beta1, beta2, eps)
