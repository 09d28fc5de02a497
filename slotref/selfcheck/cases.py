"""The self-check's problems: a small instance of every layer and of the Slot Attention
module (``layer_cases``), and one synthetic training step of every task (``step_problem``)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from slotref import backend, layers
from slotref.backend import Backend, tree_map

sa = importlib.import_module("slotref.slot_attention")  # the module; slotref.slot_attention is its function


@dataclasses.dataclass
class Case:
    """``fn(params, *inputs) -> array``; params and inputs are host float64 trees."""

    name: str
    fn: Callable
    params: Any
    inputs: tuple
    kernel: bool = False            # reaches a registered fast kernel: compare it with the specification


def _conv_case(rng, kernel, stride, shape, c_out):
    b, h, w, c_in = shape
    return Case(f"conv2d k{kernel} s{stride} {h}x{w}", lambda p, x: layers.conv2d(p, x, stride),
                layers.init_conv2d(rng, kernel, c_in, c_out), (rng.standard_normal(shape),), kernel=True)


def _conv_t_case(rng, kernel, stride, shape, c_out):
    b, h, w, c_in = shape
    return Case(f"conv_transpose2d k{kernel} s{stride} {h}x{w}", lambda p, x: layers.conv_transpose2d(p, x, stride),
                layers.init_conv_transpose2d(rng, kernel, c_in, c_out), (rng.standard_normal(shape),), kernel=True)


def _broadcast_case(rng, kernel, stride, resolution, d, c_out):
    h, w = resolution
    return Case(f"broadcast_embed_conv_t k{kernel} s{stride} {h}x{w}",
                lambda p, slots: layers.broadcast_embed_conv_transpose2d(p[0], p[1], slots, resolution, stride),
                [layers.init_soft_position_embed(rng, d), layers.init_conv_transpose2d(rng, kernel, d, c_out)],
                (rng.standard_normal((2, 2, d)),), kernel=True)


def _randomize(rng, tree):
    """Non-trivial values for zero/one-initialised leaves (biases, LayerNorm scale/offset)."""
    return tree_map(lambda a: a + 0.3 * rng.standard_normal(np.shape(a)), tree)


def layer_cases(seed: int = 0) -> list[Case]:
    """Small instances of every layer and of the Slot Attention module."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    config = sa.SlotAttentionConfig(input_size=6, slot_size=5, mlp_hidden_size=8)

    def slot_attention(p, inputs, noise):
        slots = sa.sample_initial_slots(p, noise)
        return sa.slot_attention(p, inputs, slots, num_iterations=2, config=config)

    cases = [
        Case("linear", layers.linear, layers.init_linear(rng, 5, 4), (normal((2, 3, 5)),)),
        Case("mlp", layers.mlp, layers.init_mlp(rng, [5, 7, 3]), (normal((2, 3, 5)),)),
        Case("relu", lambda p, x: backend.relu(x), {}, (normal((3, 4)),)),
        Case("sigmoid", lambda p, x: backend.sigmoid(x), {}, (normal((3, 4)),)),
        Case("layer_norm", layers.layer_norm, layers.init_layer_norm(6), (normal((2, 3, 6)),), kernel=True),
        Case("softmax axis=1", lambda p, x: layers.softmax(x, axis=1), {}, (normal((2, 4, 3)),), kernel=True),
        Case("huber", lambda p, x: layers.huber(x), {}, (2.0 * normal((3, 5)),), kernel=True),
        Case("gru_cell", layers.gru_cell, layers.init_gru(rng, 5, 4), (normal((3, 5)), normal((3, 4))), kernel=True),
        _conv_case(rng, 3, 1, (2, 5, 6, 3), 4),
        _conv_case(rng, 5, 2, (1, 7, 8, 2), 3),
        _conv_case(rng, 1, 2, (1, 4, 5, 2), 2),
        _conv_t_case(rng, 5, 2, (1, 3, 4, 3), 2),
        _conv_t_case(rng, 3, 1, (2, 4, 5, 2), 3),
        _broadcast_case(rng, 5, 1, (3, 4), 3, 2),
        _broadcast_case(rng, 5, 2, (2, 3), 3, 2),
        Case("soft_position_embed", layers.soft_position_embed, layers.init_soft_position_embed(rng, 3),
             (normal((2, 5, 4, 3)),)),
        Case("spatial_broadcast+flatten",
             lambda p, slots: layers.spatial_flatten(layers.spatial_broadcast(slots, (3, 4))), {},
             (normal((2, 3, 5)),)),
        Case("slot_attention", slot_attention, sa.init_slot_attention(rng, config),
             (normal((2, 7, 6)), normal((2, 3, 5))), kernel=True),
    ]
    for case in cases:
        case.params = _randomize(rng, case.params)
    return cases


# (name, task, dataset, batch): the paper's configurations; ``small`` versions for CPUs.
STEP_CASES = [("setpred", "setpred", 128, 2), ("tetrominoes", "discovery", "tetrominoes", 2),
              ("multi-dsprites", "discovery", "multi-dsprites", 2), ("clevr6", "discovery", "clevr6", 1),
              ("slot-mlp setpred", "setpred", 128, 2), ("slot-mlp tetrominoes", "discovery", "tetrominoes", 2)]


def step_problem(name: str, task: str, dataset, batch: int, small: bool = False, seed: int = 0):
    """(loss(params), host float64 parameters) of one synthetic batch; ``small``: set prediction
    at 32x32 and the CLEVR6 decoder broadcast to 2x2 (32x32 images), batch 1."""
    from slotref.losses import hungarian_huber_loss, mse
    from slotref.models import autoencoder, discovery_config, init_model, set_prediction, setpred_config

    model = {"model": "slot-mlp"} if name.startswith("slot-mlp") else {}
    if task == "setpred":
        config = setpred_config(32 if small else dataset, **model)
    elif small and dataset == "clevr6":
        config = discovery_config(dataset, resolution=(32, 32), decoder_init_resolution=(2, 2), **model)
    else:
        config = discovery_config(dataset, **model)
    batch = 1 if small else batch
    rng = backend.host_rng(seed)
    # Off the zero biases (ReLU kinks), by less than _randomize: large weights saturate the deep models.
    params = tree_map(lambda a: a + 0.05 * rng.standard_normal(np.shape(a)), init_model(rng, config))
    images = rng.uniform(-1.0, 1.0, (batch, *config.resolution, 3))
    noise = rng.standard_normal((batch, config.num_slots, config.slot_attention.slot_size))
    targets = np.zeros((batch, config.num_slots, 19))
    targets[:, :3] = rng.uniform(0.0, 1.0, (batch, 3, 19))
    targets[:, :3, -1] = 1.0

    def loss(b: Backend):
        x, z, t = b.asarray(images), b.asarray(noise), b.asarray(targets)
        if task == "setpred":
            return lambda p: hungarian_huber_loss(set_prediction(p, x, z, config), t)
        return lambda p: mse(autoencoder(p, x, z, config)["recon_combined"], x)
    return loss, params
