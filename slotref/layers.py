"""Hand-written layers: pure functions over parameter dicts.

Each layer is a pair ``init_<layer>(rng, ...) -> params`` (NumPy arrays on the
host, float64; ``Backend.tree_asarray`` casts and moves them) and
``<layer>(params, x)``. Layout: sets are ``(batch, set, features)``, images NHWC.

Initialisation follows the reference framework (TF/Keras, which the official
code uses): Glorot-uniform kernels, zero biases, an orthogonal GRU recurrent
kernel, LayerNorm scale 1 and offset 0.

Where autograd would trace many small operations (LayerNorm, softmax, Huber)
or has no gradient at all (convolutions, ``slotref.convolution``), the layer is
an autograd primitive with its VJP written next to it; ``tests/spec/test_layers.py``
checks each VJP against finite differences and against a plainly traced version.

A function marked ``@replaceable`` may be replaced by a registered fast kernel
with the same outputs and gradients (``slotref.dispatch``, ``docs/kernels.md``;
``SLOTREF_KERNELS=reference`` runs this file as written).
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive

from slotref import backend
from slotref.backend import relu, sigmoid, xp_of
from slotref.convolution import conv2d_same, conv_transpose2d_same
from slotref.dispatch import replaceable

# Keras' LayerNormalization default, as in the official implementation.
LAYER_NORM_EPS = 1e-3


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------
# Initialisers (host NumPy, float64).

def glorot_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Keras' Orthogonal initialiser for a 2-D kernel."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # make the decomposition unique
    # C order, as a checkpoint reloads it: BLAS rounds F-ordered operands differently (exact resume).
    return np.ascontiguousarray(q if rows >= cols else q.T)


# --------------------------------------------------------------------------
# Dense layers.

def init_linear(rng, d_in: int, d_out: int, bias: bool = True) -> dict:
    params = {"w": glorot_uniform(rng, (d_in, d_out), d_in, d_out)}
    if bias:
        params["b"] = np.zeros(d_out)
    return params


def linear(params: dict, x):
    """x @ w (+ b). x: (..., d_in) -> (..., d_out)."""
    w = params["w"]
    _check(x.ndim >= 1 and x.shape[-1] == w.shape[0],
           f"linear expects input (..., {w.shape[0]}), got shape {tuple(x.shape)}")
    # One (rows, d_in) @ (d_in, d_out) GEMM: a batched matmul's weight gradient
    # would be B small products and a sum.
    y = (x.reshape(-1, w.shape[0]) @ w).reshape(x.shape[:-1] + (w.shape[1],))
    return y + params["b"] if "b" in params else y


def init_mlp(rng, sizes: list[int]) -> list:
    """An MLP with layer widths ``sizes`` (input first), ReLU between layers."""
    return [init_linear(rng, a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def mlp(params: list, x):
    """Linear layers with ReLU between them, none after the last."""
    for i, layer in enumerate(params):
        x = linear(layer, x)
        if i < len(params) - 1:
            x = relu(x)
    return x


# --------------------------------------------------------------------------
# LayerNorm (Ba et al. 2016), normalising over the last axis.

@primitive
def normalize(x, eps=LAYER_NORM_EPS):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xp = xp_of(x)
    mu = xp.mean(x, axis=-1, keepdims=True)
    centred = x - mu
    var = xp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / xp.sqrt(var + eps)


def _normalize_vjp(ans, x, eps=LAYER_NORM_EPS):
    # y = (x - mu) / sigma  =>  dx = (g - mean(g) - y * mean(g * y)) / sigma.
    xp = xp_of(x)
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    inv_sigma = 1 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + eps)

    def vjp(g):
        g_mean = xp.mean(g, axis=-1, keepdims=True)
        gy_mean = xp.mean(g * ans, axis=-1, keepdims=True)
        return (g - g_mean - ans * gy_mean) * inv_sigma
    return vjp


defvjp(normalize, _normalize_vjp)
normalize = replaceable(normalize)   # marked once its gradient is defined, as softmax and huber below


def init_layer_norm(d: int) -> dict:
    return {"scale": np.ones(d), "offset": np.zeros(d)}


def layer_norm(params: dict, x, eps: float = LAYER_NORM_EPS):
    """LayerNorm over the last axis with learned scale and offset."""
    _check(x.shape[-1] == params["scale"].shape[0],
           f"layer_norm expects input (..., {params['scale'].shape[0]}), got shape {tuple(x.shape)}")
    return normalize(x, eps) * params["scale"] + params["offset"]


# --------------------------------------------------------------------------
# Softmax and Huber.

@primitive
def softmax(x, axis=-1):
    xp = xp_of(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


defvjp(softmax, lambda ans, x, axis=-1: lambda g: ans * (g - xp_of(g).sum(g * ans, axis=axis, keepdims=True)))
softmax = replaceable(softmax)


@primitive
def huber(x, delta=1.0):
    """Elementwise Huber loss of a residual: x^2/2 inside |x| <= delta, linear outside."""
    xp = xp_of(x)
    a = xp.abs(x)
    quad = xp.minimum(a, delta)
    return 0.5 * quad * quad + delta * (a - quad)


defvjp(huber, lambda ans, x, delta=1.0: lambda g: g * xp_of(x).clip(x, -delta, delta))
huber = replaceable(huber)


# --------------------------------------------------------------------------
# GRU cell, reset-after form (Keras default GRUCell, cuDNN, PyTorch):
#   z = s(W_iz x + b_iz + W_hz h + b_hz)
#   r = s(W_ir x + b_ir + W_hr h + b_hr)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
#   h' = (1 - z) * n + z * h
# The three gates' kernels are stored side by side in Keras' order [z, r, n].

def init_gru(rng, d_input: int, d_hidden: int) -> dict:
    return {
        "w_input": glorot_uniform(rng, (d_input, 3 * d_hidden), d_input, 3 * d_hidden),
        "w_hidden": orthogonal(rng, (d_hidden, 3 * d_hidden)),
        "b_input": np.zeros(3 * d_hidden),
        "b_hidden": np.zeros(3 * d_hidden),
    }


def gru_cell(params: dict, x, h):
    """One GRU step. x: (..., d_input), h: (..., d_hidden) -> h' (..., d_hidden)."""
    d = params["w_hidden"].shape[0]
    _check(h.shape[-1] == d and x.shape[-1] == params["w_input"].shape[0],
           f"gru_cell expects x (..., {params['w_input'].shape[0]}) and h (..., {d}), "
           f"got {tuple(x.shape)} and {tuple(h.shape)}")
    gates_x = x @ params["w_input"] + params["b_input"]   # (..., 3d)
    gates_h = h @ params["w_hidden"] + params["b_hidden"]  # (..., 3d)
    return gru_gates(gates_x, gates_h, h)


@replaceable
def gru_gates(gates_x, gates_h, h):
    """h' from the gates' pre-activations (..., 3d), in the order [z, r, n], and the state h (..., d)."""
    d = h.shape[-1]
    z_x, r_x, n_x = (backend.index(gates_x, (Ellipsis, slice(i * d, (i + 1) * d))) for i in range(3))
    z_h, r_h, n_h = (backend.index(gates_h, (Ellipsis, slice(i * d, (i + 1) * d))) for i in range(3))
    z = sigmoid(z_x + z_h)
    r = sigmoid(r_x + r_h)
    n = anp.tanh(n_x + r * n_h)  # autograd.numpy: CuPy's own tanh cannot take a traced value
    return (1 - z) * n + z * h


# --------------------------------------------------------------------------
# Convolutions with bias: NHWC, SAME padding; the convolution itself is
# ``slotref.convolution``.

def init_conv2d(rng, kernel: int, c_in: int, c_out: int) -> dict:
    fan_in, fan_out = kernel * kernel * c_in, kernel * kernel * c_out
    return {"w": glorot_uniform(rng, (kernel, kernel, c_in, c_out), fan_in, fan_out),
            "b": np.zeros(c_out)}


def init_conv_transpose2d(rng, kernel: int, c_in: int, c_out: int) -> dict:
    # Keras stores transposed kernels as (kh, kw, out, in); fans as Keras computes them.
    fan_in, fan_out = kernel * kernel * c_out, kernel * kernel * c_in
    return {"w": glorot_uniform(rng, (kernel, kernel, c_out, c_in), fan_in, fan_out),
            "b": np.zeros(c_out)}


def _check_image(name, x, channels):
    _check(x.ndim == 4 and x.shape[-1] == channels,
           f"{name} expects NHWC input (B, H, W, {channels}), got shape {tuple(x.shape)}"
           + (" (NCHW?)" if x.ndim == 4 and x.shape[1] == channels else ""))


def conv2d(params: dict, x, stride: int = 1):
    """SAME convolution with bias. x: (B, H, W, Cin) -> (B, ceil(H/s), ceil(W/s), Cout)."""
    _check_image("conv2d", x, params["w"].shape[2])
    return conv2d_same(x, params["w"], stride) + params["b"]


def conv_transpose2d(params: dict, x, stride: int = 1):
    """SAME transposed convolution with bias. x: (B, H, W, Cin) -> (B, H*s, W*s, Cout)."""
    _check_image("conv_transpose2d", x, params["w"].shape[3])
    return conv_transpose2d_same(x, params["w"], stride) + params["b"]


# --------------------------------------------------------------------------
# Position embedding (appendix E.2) and the set <-> grid reshapes.

def build_grid(height: int, width: int, xp=np, dtype=np.float64):
    """(H, W, 4) ramps [y, x, 1 - y, 1 - x], each linear in [0, 1] across the image.

    Made by the array module ``xp``, so the device path creates no host array.
    """
    y, x = xp.meshgrid(xp.linspace(0.0, 1.0, height, dtype=dtype),
                       xp.linspace(0.0, 1.0, width, dtype=dtype), indexing="ij")
    grid = xp.stack([y, x], axis=-1)
    return xp.concatenate([grid, 1.0 - grid], axis=-1)


def init_soft_position_embed(rng, channels: int) -> dict:
    return init_linear(rng, 4, channels)


def soft_position_embed(params: dict, x):
    """Add a learned linear projection of the 4-ramp grid. x: (B, H, W, C)."""
    _check_image("soft_position_embed", x, params["w"].shape[1])
    grid = build_grid(x.shape[1], x.shape[2], xp_of(x), x.dtype)  # (H, W, 4)
    return x + linear(params, grid)


def spatial_flatten(x):
    """(B, H, W, C) -> (B, H*W, C): the feature map as a set of N = H*W inputs."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def spatial_broadcast(slots, resolution: tuple[int, int]):
    """(B, K, D) -> (B*K, H, W, D): each slot tiled over a grid (Watters et al. 2019)."""
    b, k, d = slots.shape
    xp = xp_of(slots)
    flat = slots.reshape(b * k, 1, 1, d)
    return flat * xp.ones((1, resolution[0], resolution[1], 1), dtype=flat.dtype)


def check_slots(name, slots):
    _check(slots.ndim == 3, f"{name} expects slots (B, K, D), got shape {tuple(slots.shape)}")


@replaceable
def broadcast_embed_conv_transpose2d(embed_params: dict, conv_params: dict, slots, resolution, stride: int = 1):
    """The spatial broadcast decoder's first three rows (Tables 6, 7): Spatial
    Broadcast, Position Embed, then the first transposed convolution.
    slots (B, K, D) -> (B*K, h*s, w*s, C) for ``resolution`` (h, w)."""
    check_slots("broadcast_embed_conv_transpose2d", slots)
    x = spatial_broadcast(slots, resolution)           # (B*K, h, w, D)
    x = soft_position_embed(embed_params, x)           # (B*K, h, w, D)
    return conv_transpose2d(conv_params, x, stride)    # (B*K, h*s, w*s, C)
