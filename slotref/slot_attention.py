"""The Slot Attention module: Algorithm 1 of Locatello et al. (2020).

    Algorithm 1  Slot Attention module.
     1: Input: inputs in R^{N x D_inputs}, slots ~ N(mu, diag(sigma)) in R^{K x D_slots}
     2: Layer params: k, q, v: linear projections for attention; GRU; MLP; LayerNorm(x3)
     3: inputs = LayerNorm(inputs)
     4: for t = 0 ... T
     5:     slots_prev = slots
     6:     slots = LayerNorm(slots)
     7:     attn = Softmax(1/sqrt(D) k(inputs) . q(slots)^T, axis='slots')   # norm. over slots
     8:     updates = WeightedMean(weights=attn + eps, values=v(inputs))      # aggregate
     9:     slots = GRU(state=slots_prev, inputs=updates)                     # update
    10:     slots += MLP(LayerNorm(slots))                                   # optional residual MLP
    11: return slots

Line numbers are the paper's (appendix B refers to "Line 8" for the
aggregation). The paper prints the loop as ``for t = 0 ... T`` and runs it T
times; so do we.

Layout: inputs (B, N, D_inputs), slots (B, K, D), attention (B, N, K) with
inputs on axis 1 and slots on axis 2, as the official code.

K (number of slots) and T (iterations) are call arguments, never parameters:
a module trained with K = 7, T = 3 runs with K = 11, T = 5 unchanged.

The ablations of appendix B are fields of ``SlotAttentionConfig``; its
defaults are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from slotref import backend, paper
from slotref.backend import xp_of
from slotref.layers import gru_cell, init_gru, init_layer_norm, init_linear, init_mlp, layer_norm, linear, mlp, softmax

AGGREGATIONS = ("mean", "sum", "sum_layernorm")
SOFTMAX_AXES = ("slots", "inputs")
SLOT_INITS = ("shared", "per_slot")
UPDATES = ("gru", "none")
TEMPERATURES = ("sqrt_d", "one")
EPSILON_PLACEMENTS = ("attention", "denominator")
PROJECTIONS = ("linear", "identity")
# The appendix B switches of ``SlotAttentionConfig``: field -> (the paper's figure, its values; bool:
# a part switched off).
ABLATIONS = {"aggregation": ("Figure 7", AGGREGATIONS), "softmax_axis": ("Figure 10", SOFTMAX_AXES),
             "slot_init": ("Figure 9", SLOT_INITS), "update": ("Figure 11", UPDATES),
             "layer_norms": ("Figure 13", bool), "residual_mlp": ("Figure 14", bool),
             "temperature": ("Figure 15", TEMPERATURES), "epsilon_placement": ("Figure 16", EPSILON_PLACEMENTS)}


@dataclass(frozen=True)
class SlotAttentionConfig:
    """Slot Attention hyperparameters; defaults are the paper's (appendix E.1, B).

    Each ablation field names the paper's figure it reproduces.
    """

    input_size: int = 64          # D_inputs
    slot_size: int = paper.SLOT_SIZE  # D_slots = D (the attention dimension)
    mlp_hidden_size: int = 128    # residual MLP hidden width
    epsilon: float = paper.ATTENTION_EPSILON  # the offset of Algorithm 1, line 8
    aggregation: str = "mean"     # Figure 7: weighted "mean" | "sum" | "sum_layernorm"
    softmax_axis: str = "slots"   # Figure 10: normalise over "slots" | "inputs"
    slot_init: str = "shared"     # Figure 9: "shared" mu/sigma | "per_slot" mu/sigma
    num_train_slots: int = 7      # only for slot_init="per_slot": how many (mu, sigma) pairs
    update: str = "gru"           # Figure 11: "gru" | "none" (take the updates as the new slots)
    layer_norms: bool = True      # Figure 13: the three LayerNorms
    residual_mlp: bool = True     # Figure 14: line 10
    temperature: str = "sqrt_d"   # Figure 15: logits / sqrt(D) | / 1
    epsilon_placement: str = "attention"  # Figure 16: "attention" + eps | mean's "denominator" + eps
    projections: str = "linear"   # soft k-means: "identity" k, q, v

    def __post_init__(self):
        choices = [(name, values) for name, (_, values) in ABLATIONS.items() if values is not bool]
        for name, allowed in choices + [("projections", PROJECTIONS)]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"SlotAttentionConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.projections == "identity" and self.input_size != self.slot_size:
            raise ValueError("identity projections (soft k-means) need input_size == slot_size, "
                             f"got {self.input_size} and {self.slot_size}")

    @staticmethod
    def soft_kmeans(**overrides) -> "SlotAttentionConfig":
        """Appendix B's reduction to soft k-means with a dot-product score: identity
        k/q/v projections, no GRU (take line 8's output), no LayerNorm."""
        return replace(SlotAttentionConfig(projections="identity", update="none", layer_norms=False), **overrides)


def init_slot_attention(rng: np.random.Generator, config: SlotAttentionConfig = SlotAttentionConfig(),
                        dtype=None) -> dict:
    """Parameters of the module (host NumPy; float64, or ``dtype`` such as np.float32 to match
    float32 inputs). Keys follow Algorithm 1."""
    d_in, d = config.input_size, config.slot_size
    init_shape = (config.num_train_slots, d) if config.slot_init == "per_slot" else (d,)
    # Slot initialisation as the official code: mu and log_sigma Glorot-uniform.
    limit_mu = np.sqrt(6.0 / (1 + d))
    params = {
        "slots_mu": rng.uniform(-limit_mu, limit_mu, size=init_shape),
        "slots_log_sigma": rng.uniform(-limit_mu, limit_mu, size=init_shape),
    }
    if config.projections == "linear":
        params["project_q"] = init_linear(rng, d, d, bias=False)
        params["project_k"] = init_linear(rng, d_in, d, bias=False)
        params["project_v"] = init_linear(rng, d_in, d, bias=False)
    if config.layer_norms:
        params["norm_inputs"] = init_layer_norm(d_in)
        params["norm_slots"] = init_layer_norm(d)
        params["norm_mlp"] = init_layer_norm(d)
    if config.aggregation == "sum_layernorm":
        params["norm_updates"] = init_layer_norm(d)
    if config.update == "gru":
        params["gru"] = init_gru(rng, d, d)
    if config.residual_mlp:
        params["mlp"] = init_mlp(rng, [d, config.mlp_hidden_size, d])
    return backend.tree_astype(params, dtype)


def sample_initial_slots(params: dict, noise):
    """slots = mu + exp(log_sigma) * noise; noise (B, K, D) ~ N(0, 1) from the caller's generator."""
    mu, log_sigma = params["slots_mu"], params["slots_log_sigma"]
    if noise.ndim != 3 or noise.shape[-1] != mu.shape[-1]:
        raise ValueError(f"slot noise must be (B, K, {mu.shape[-1]}), got shape {tuple(noise.shape)}")
    if mu.ndim == 2 and noise.shape[1] != mu.shape[0]:
        raise ValueError(f"per-slot initialisation was trained with K = {mu.shape[0]} slots and "
                         f"cannot run with K = {noise.shape[1]}")
    return mu + anp.exp(log_sigma) * noise                            # (B, K, D)


def slot_noise(rng, batch: int, num_slots: int, slot_size: int, dtype) -> object:
    """N(0, 1) noise (B, K, D) for ``sample_initial_slots``, drawn by ``rng`` on its device."""
    return rng.standard_normal((batch, num_slots, slot_size), dtype=dtype)


def slot_attention(params: dict, inputs, slots, num_iterations: int = 3,
                   config: SlotAttentionConfig = SlotAttentionConfig(), return_attention: bool = False):
    """Run Algorithm 1 for ``num_iterations`` steps from the initial ``slots``.

    inputs: (B, N, D_inputs); slots: (B, K, D) initial slots.
    Returns slots (B, K, D), and with ``return_attention`` also the attention of
    every iteration (B, T, N, K), normalised over slots (for the default
    softmax axis; over inputs under that ablation).
    """
    _check_call(params, inputs, slots, num_iterations, config)
    attention_maps = []

    inputs = _norm(params, "norm_inputs", inputs, config)              # line 3. (B, N, D_in)
    k = _project(params, "project_k", inputs, config)                  # (B, N, D)
    v = _project(params, "project_v", inputs, config)                  # (B, N, D)

    for _ in range(num_iterations):                                    # line 4
        slots_prev = slots                                             # line 5. (B, K, D)
        slots = _norm(params, "norm_slots", slots, config)             # line 6. (B, K, D)
        attn = _attention(params, k, slots, config)                    # line 7. (B, N, K)
        attention_maps.append(attn)
        updates = _weighted_mean(params, attn, v, config)              # line 8. (B, K, D)
        slots = _update(params, slots_prev, updates, config)           # line 9. (B, K, D)
        slots = _residual_mlp(params, slots, config)                   # line 10. (B, K, D)

    if not return_attention:
        return slots                                                   # line 11. (B, K, D)
    empty = (inputs.shape[0], 0, inputs.shape[1], slots.shape[1])   # T = 0: (B, 0, N, K)
    return slots, _stack(attention_maps, xp_of(inputs), empty, getval(inputs).dtype)  # (B, T, N, K)


# --------------------------------------------------------------------------
# The lines of Algorithm 1, each with its appendix-B ablations.

def _norm(params, name, x, config):
    """LayerNorm (lines 3, 6, 10); Figure 13 removes all three."""
    return layer_norm(params[name], x) if config.layer_norms else x


def _project(params, name, x, config):
    """The k, q, v projections; identity for soft k-means."""
    return linear(params[name], x) if config.projections == "linear" else x


def _attention(params, k, slots, config):
    """Line 7: Softmax(1/sqrt(D) k(inputs) . q(slots)^T) over slots. Figure 10 normalises
    over inputs instead, Figure 15 drops the 1/sqrt(D). k: (B, N, D), slots: (B, K, D) -> (B, N, K)."""
    scale = config.slot_size ** -0.5 if config.temperature == "sqrt_d" else 1.0
    q = _project(params, "project_q", slots, config)                   # (B, K, D)
    logits = scale * (k @ anp.swapaxes(q, 1, 2))                       # (B, N, K)
    return softmax(logits, axis=2 if config.softmax_axis == "slots" else 1)


def _weighted_mean(params, attn, v, config):
    """Line 8: WeightedMean(weights=attn + eps, values=v(inputs)): (B, N, K), (B, N, D) -> (B, K, D).

    Figure 16 adds eps to the mean's denominator instead; Figure 7 takes the
    weighted sum, alone or followed by a LayerNorm.
    """
    if config.aggregation == "mean" and config.epsilon_placement == "attention":
        attn = attn + config.epsilon                                   # (B, N, K)
        attn = attn / backend.sum(attn, axis=1, keepdims=True)         # (B, N, K) normalised over inputs
    elif config.aggregation == "mean":
        attn = attn / (backend.sum(attn, axis=1, keepdims=True) + config.epsilon)  # (B, N, K)
    updates = anp.swapaxes(attn, 1, 2) @ v                             # (B, K, D)
    if config.aggregation == "sum_layernorm":
        updates = layer_norm(params["norm_updates"], updates)         # (B, K, D)
    return updates


def _update(params, slots_prev, updates, config):
    """Line 9: GRU(state=slots_prev, inputs=updates); Figure 11 takes the updates as the new slots."""
    if config.update == "none":
        return updates
    b, n_slots, d = updates.shape
    return gru_cell(params["gru"], updates.reshape(b * n_slots, d),
                    slots_prev.reshape(b * n_slots, d)).reshape(b, n_slots, d)


def _residual_mlp(params, slots, config):
    """Line 10: slots += MLP(LayerNorm(slots)); Figure 14 removes it."""
    if not config.residual_mlp:
        return slots
    return slots + mlp(params["mlp"], _norm(params, "norm_mlp", slots, config))


def _stack(maps, xp, empty_shape, dtype):
    """Per-iteration attention (B, N, K) stacked to (B, T, N, K); for reading (no gradient)."""
    if not maps:
        return xp.zeros(empty_shape, dtype=dtype)
    return xp.stack([getval(m) for m in maps], axis=1)


def _check_call(params, inputs, slots, num_iterations, config):
    if inputs.ndim != 3:
        raise ValueError(f"slot_attention expects inputs (B, N, {config.input_size}), got shape {tuple(inputs.shape)}")
    if inputs.shape[-1] != config.input_size:
        raise ValueError(f"slot_attention expects inputs (B, N, {config.input_size}), got shape {tuple(inputs.shape)}")
    if slots.ndim != 3 or slots.shape[0] != inputs.shape[0] or slots.shape[2] != config.slot_size:
        raise ValueError(f"slot_attention expects initial slots ({inputs.shape[0]}, K, {config.slot_size}), "
                         f"got shape {tuple(slots.shape)}")
    if slots.shape[1] < 1:
        raise ValueError(f"slot_attention needs K >= 1 slots, got {slots.shape[1]}")
    if not isinstance(num_iterations, (int, np.integer)) or num_iterations < 0:
        raise ValueError(f"slot_attention needs num_iterations T >= 0, got {num_iterations!r}")


class SlotAttention:
    """The module as one object, for users of PyTorch's or Flax's modules: the parameters (a plain
    tree, ``.params``, that the functions above and autograd take), the config and the generator of
    the slot noise. ``SlotAttention(config, rng)(inputs)`` is::

        slot_attention(params, inputs, sample_initial_slots(params, slot_noise(rng, B, K, D, dtype)), T, config)
    """

    def __init__(self, config: SlotAttentionConfig = SlotAttentionConfig(), rng: np.random.Generator | None = None,
                 dtype=np.float32):
        self.config = config
        self.rng = np.random.default_rng(0) if rng is None else rng
        self.params = init_slot_attention(self.rng, config, dtype=dtype)

    def __call__(self, inputs, num_slots: int | None = None, num_iterations: int = 3,
                 return_attention: bool = False):
        """inputs (B, N, D_inputs), host NumPy -> slots (B, K, D) [, attention (B, T, N, K)].

        K: ``num_slots``, default ``config.num_train_slots`` (7); T: ``num_iterations``. Each call draws
        new slot noise from the object's generator."""
        k = self.config.num_train_slots if num_slots is None else num_slots
        noise = slot_noise(self.rng, inputs.shape[0], k, self.config.slot_size, self.params["slots_mu"].dtype)
        slots = sample_initial_slots(self.params, noise)               # line 1. (B, K, D)
        return slot_attention(self.params, inputs, slots, num_iterations, self.config, return_attention)
