"""slotref's parameter layouts to and from PyTorch's and Keras' (pure NumPy; no framework imported).

slotref (``init_slot_attention``):

- a linear map is ``{"w": (d_in, d_out)}`` applied as ``x @ w`` (no bias for k, q, v);
- LayerNorm is ``{"scale": (d,), "offset": (d,)}``, epsilon 1e-3 (Keras' default);
- the GRU is ``{"w_input": (d_in, 3d), "w_hidden": (d, 3d), "b_input": (3d,), "b_hidden": (3d,)}``,
  gate blocks in the order [z, r, n] (Keras'), reset-after form.

PyTorch: ``nn.Linear.weight`` is (d_out, d_in) and applied as ``x @ weight.T``;
``nn.GRUCell`` keeps ``weight_ih`` (3d, d_in), ``weight_hh`` (3d, d), ``bias_ih``,
``bias_hh`` (3d,) with gate blocks [r, z, n]. Keras: ``Dense`` kernel (d_in, d_out);
``GRUCell(reset_after=True)`` weights [kernel (d_in, 3d), recurrent_kernel (d, 3d),
bias (2, 3d)] with gates [z, r, n] and the input and recurrent biases as the bias rows.
Each ``to_*`` has its inverse ``from_*`` (gradients come back through it).
"""

from __future__ import annotations

import numpy as np


def _blocks(x, order, axis=0):
    """x's three gate blocks along ``axis`` re-stacked in ``order``."""
    parts = np.split(np.asarray(x), 3, axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


# [z, r, n] <-> [r, z, n]: swapping the first two blocks is its own inverse.
_SWAP_Z_R = (1, 0, 2)


def to_torch_linear(p: dict) -> dict:
    """{"w"} -> nn.Linear's {"weight": (d_out, d_in)} (and "bias" if slotref has one)."""
    out = {"weight": np.asarray(p["w"]).T}
    if "b" in p:
        out["bias"] = np.asarray(p["b"])
    return out


def from_torch_linear(weight, bias=None) -> dict:
    out = {"w": np.asarray(weight).T}
    if bias is not None:
        out["b"] = np.asarray(bias)
    return out


def to_torch_layer_norm(p: dict) -> dict:
    """{"scale", "offset"} -> nn.LayerNorm's {"weight", "bias"} (construct it with eps=1e-3)."""
    return {"weight": np.asarray(p["scale"]), "bias": np.asarray(p["offset"])}


def from_torch_layer_norm(weight, bias) -> dict:
    return {"scale": np.asarray(weight), "offset": np.asarray(bias)}


def to_torch_gru_cell(p: dict) -> dict:
    """slotref's GRU -> nn.GRUCell's state dict: transposed, gate blocks [r, z, n]."""
    return {"weight_ih": _blocks(np.asarray(p["w_input"]).T, _SWAP_Z_R),
            "weight_hh": _blocks(np.asarray(p["w_hidden"]).T, _SWAP_Z_R),
            "bias_ih": _blocks(p["b_input"], _SWAP_Z_R),
            "bias_hh": _blocks(p["b_hidden"], _SWAP_Z_R)}


def from_torch_gru_cell(weight_ih, weight_hh, bias_ih, bias_hh) -> dict:
    return {"w_input": _blocks(weight_ih, _SWAP_Z_R).T, "w_hidden": _blocks(weight_hh, _SWAP_Z_R).T,
            "b_input": _blocks(bias_ih, _SWAP_Z_R), "b_hidden": _blocks(bias_hh, _SWAP_Z_R)}


def to_keras_gru_cell(p: dict) -> list:
    """slotref's GRU -> Keras GRUCell(reset_after=True).set_weights: [kernel, recurrent_kernel, bias (2, 3d)]."""
    return [np.asarray(p["w_input"]), np.asarray(p["w_hidden"]),
            np.stack([np.asarray(p["b_input"]), np.asarray(p["b_hidden"])])]


def from_keras_gru_cell(kernel, recurrent_kernel, bias) -> dict:
    bias = np.asarray(bias)
    return {"w_input": np.asarray(kernel), "w_hidden": np.asarray(recurrent_kernel),
            "b_input": bias[0], "b_hidden": bias[1]}


def to_keras_dense(p: dict) -> list:
    """{"w"[, "b"]} -> Dense.set_weights: [kernel (d_in, d_out)[, bias]]."""
    return [np.asarray(p["w"])] + ([np.asarray(p["b"])] if "b" in p else [])


def to_keras_layer_norm(p: dict) -> list:
    """{"scale", "offset"} -> LayerNormalization.set_weights: [gamma, beta]."""
    return [np.asarray(p["scale"]), np.asarray(p["offset"])]
