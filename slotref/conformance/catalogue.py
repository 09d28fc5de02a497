"""Known porting slips of Algorithm 1, each as the reference walk with one line changed.

Each ``Slip`` names the line of Algorithm 1 it breaks, says how to fix it
(``hint``), and can be replayed: ``ops`` is the reference ``walk`` with the
slipped line replaced, so the diagnosis recognises a port by computing what the
slip would have produced on the same case. Where a slip depends on values the
port chose (biases of its own), ``signature`` recognises it from the
difference to the reference instead.

The slips are the ones reported in the issue trackers of public ports
(learnable mu and sigma without gradient, biased projections, the GRU's gate
order, LayerNorm's epsilon) and those the algorithm invites (the softmax axis,
where the epsilon goes, the 1/sqrt(D)). The model-level slip, symmetric instead
of SAME padding, is replayed by ``slotref.conformance.model_checks``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from slotref import backend
from slotref.conformance.walk import REFERENCE, Ops, _gru
from slotref.layers import layer_norm, mlp, normalize, softmax

TORCH_LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class Slip:
    name: str
    line: int                        # the line of Algorithm 1 it breaks
    hint: str                        # what to change
    ops: Ops | None = None           # the walk with the slip; None: recognised by ``signature``
    signature: Callable | None = None  # (port value, reference value) -> bool, at the first differing quantity
    signature_at: tuple = ()         # the quantities where ``signature`` applies
    extra_iterations: int = 0        # the loop ran T + extra_iterations times
    gradient_only: bool = False      # the forward pass is right; only gradients differ


def _with(**lines) -> Ops:
    return replace(REFERENCE, **lines)


def _layer_norm_eps(eps):
    return dict(norm_inputs=lambda p, x: layer_norm(p["norm_inputs"], x, eps),
                norm_slots=lambda p, s: layer_norm(p["norm_slots"], s, eps),
                residual_mlp=lambda p, s: s + mlp(p["mlp"], layer_norm(p["norm_mlp"], s, eps)))


def _transposed(name):
    def project(p, x):
        w = p[name]["w"]
        if w.shape[0] != w.shape[1]:
            raise ValueError("a transposed non-square kernel cannot be applied")
        return x @ w.T
    return project


def _gru_gates(order):
    """The GRU with its fused kernels' and biases' gate blocks read in another order."""
    def gru(p, slots_prev, updates):
        d = p["gru"]["w_hidden"].shape[0]
        blocks = [slice(i * d, (i + 1) * d) for i in order]
        permuted = {k: anp.concatenate([v[..., b] for b in blocks], axis=-1) for k, v in p["gru"].items()}
        return _gru({"gru": permuted}, slots_prev, updates)
    return gru


def _gru_reset_before(p, slots_prev, updates):
    """Keras' reset_after=False GRU: r multiplies h before the recurrent kernel."""
    g, d = p["gru"], p["gru"]["w_hidden"].shape[0]
    x, h = updates, slots_prev
    gx = x @ g["w_input"] + g["b_input"]
    z = backend.sigmoid(gx[..., :d] + h @ g["w_hidden"][:, :d] + g["b_hidden"][:d])
    r = backend.sigmoid(gx[..., d:2 * d] + h @ g["w_hidden"][:, d:2 * d] + g["b_hidden"][d:2 * d])
    n = anp.tanh(gx[..., 2 * d:] + (r * h) @ g["w_hidden"][:, 2 * d:] + g["b_hidden"][2 * d:])
    return (1 - z) * n + z * h


def _gru_biases_summed(p, slots_prev, updates):
    g = dict(p["gru"], b_input=p["gru"]["b_input"] + p["gru"]["b_hidden"], b_hidden=0 * p["gru"]["b_hidden"])
    return _gru({"gru": g}, slots_prev, updates)


def _constant_offset(port, ref):
    """The port adds one vector to every row: a bias the reference does not have."""
    diff = np.asarray(port, np.float64) - ref
    rows = diff.reshape(-1, diff.shape[-1])
    return bool(np.ptp(rows, axis=0).max() <= 1e-3 * np.abs(rows).max())


SLIPS = (
    Slip("mu_sigma_without_gradient", 1,
         "slots_mu and slots_log_sigma receive no gradient: sample the initial slots as "
         "mu + exp(log_sigma) * noise from trainable parameters (not torch.normal(mu, sigma), "
         "a distribution's sample(), a buffer or a stop_gradient)",
         _with(init_slots=lambda p, noise: getval(p["slots_mu"]) + anp.exp(getval(p["slots_log_sigma"])) * noise),
         gradient_only=True),
    Slip("sigma_not_exponentiated", 1,
         "slots_log_sigma is a log: the initial slots are mu + exp(log_sigma) * noise",
         _with(init_slots=lambda p, noise: p["slots_mu"] + p["slots_log_sigma"] * noise)),
    Slip("layer_norm_epsilon", 3,
         "LayerNorm epsilon: the reference (Keras LayerNormalization) adds 1e-3 to the variance; "
         "PyTorch's nn.LayerNorm defaults to 1e-5: pass eps=1e-3 to all three",
         _with(**_layer_norm_eps(TORCH_LAYER_NORM_EPS))),
    Slip("layer_norm_without_scale_offset", 3,
         "LayerNorm has a learned scale and offset (norm_*/scale, norm_*/offset): load and apply them",
         _with(norm_inputs=lambda p, x: normalize(x))),
    Slip("projection_bias", 7,
         "the k, q and v projections have no bias (use_bias=False in the official code): "
         "nn.Linear(..., bias=False), or zero the biases",
         signature=_constant_offset, signature_at=("k", "q", "v")),
    Slip("linear_weight_not_transposed", 7,
         "nn.Linear stores its weight as (out, in) and computes x @ weight.T: "
         "load weight = w.T (slotref.conformance.layouts.to_torch_linear)",
         _with(project_q=_transposed("project_q"), project_k=_transposed("project_k"))),
    Slip("missing_inverse_sqrt_d", 7,
         "the logits are scaled by 1/sqrt(D), D the slot size: k . q^T / sqrt(D)",
         _with(logits=lambda k, q: k @ anp.swapaxes(q, 1, 2))),
    Slip("softmax_over_inputs", 7,
         "the softmax normalises over the slots (axis=-1 of (B, N, K): each input's attention "
         "sums to 1 over the K slots), not over the inputs; slots compete for inputs",
         _with(softmax=lambda logits: softmax(logits, axis=1))),
    Slip("epsilon_after_normalisation", 8,
         "add eps to the attention before the weighted mean's normalisation: "
         "w = (attn + eps) / sum_inputs(attn + eps), not attn / sum_inputs(attn) + eps",
         _with(weights=lambda attn, eps: attn / backend.sum(attn, axis=1, keepdims=True) + eps)),
    Slip("epsilon_in_denominator", 8,
         "add eps to the attention, then normalise: w = (attn + eps) / sum_inputs(attn + eps), "
         "not attn / (sum_inputs(attn) + eps) (appendix B's Figure 16 variant)",
         _with(weights=lambda attn, eps: attn / (backend.sum(attn, axis=1, keepdims=True) + eps))),
    Slip("weighted_sum_not_mean", 8,
         "the updates are a weighted mean: normalise attn + eps over the inputs (axis 1 of (B, N, K))",
         _with(weights=lambda attn, eps: attn + eps)),
    Slip("gru_gate_order", 9,
         "GRU gate order: slotref's and Keras' fused kernels are [z, r, n], PyTorch's weight_ih, "
         "weight_hh, bias_ih, bias_hh are [r, z, n]: convert with slotref.conformance.layouts.to_torch_gru_cell",
         _with(gru=_gru_gates((1, 0, 2)))),
    Slip("gru_reset_before", 9,
         "the GRU is the reset-after form (Keras reset_after=True, PyTorch, cuDNN): "
         "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), not tanh(W_in x + W_hn (r * h) + ...)",
         _with(gru=_gru_reset_before)),
    Slip("gru_biases_summed", 9,
         "keep the GRU's two biases apart: the n gate's recurrent bias sits inside r * (W_hn h + b_hn) "
         "(Keras' fused bias row 1, PyTorch's bias_hh; slotref.conformance.layouts.to_keras_gru_cell)",
         _with(gru=_gru_biases_summed)),
    Slip("gru_state_and_input_swapped", 9,
         "GRU(state=slots_prev, inputs=updates): the previous slots are the hidden state",
         _with(gru=lambda p, slots_prev, updates: _gru(p, updates, slots_prev))),
    Slip("mlp_without_layer_norm", 10,
         "the residual MLP reads LayerNorm(slots): slots + MLP(LayerNorm(slots))",
         _with(residual_mlp=lambda p, s: s + mlp(p["mlp"], s))),
    Slip("mlp_without_residual", 10,
         "line 10 is residual: slots + MLP(LayerNorm(slots))",
         _with(residual_mlp=lambda p, s: mlp(p["mlp"], layer_norm(p["norm_mlp"], s)))),
    Slip("slots_detached_between_iterations", 5,
         "gradients flow through every iteration: do not detach slots_prev (that is the "
         "implicit-differentiation variant, not the paper's module)",
         _with(hold=getval), gradient_only=True),
    Slip("one_iteration_too_many", 4,
         "Algorithm 1 prints 'for t = 0 ... T' but runs T iterations (the official code: range(T))",
         REFERENCE, extra_iterations=1),
)
BY_NAME = {slip.name: slip for slip in SLIPS}
