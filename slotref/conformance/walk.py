"""Algorithm 1 walked one paper line at a time, recording every intermediate.

``walk`` makes the same spec calls as ``slotref.slot_attention`` (the same
``slotref.layers`` functions, in the same order, on the same operands), so its
final slots equal the module's bit for bit (``tests/conformance/test_conformance.py``);
what it adds is a record of each line's output under the names a port's trace
uses (``QUANTITIES``). Each line is one field of ``Ops``: a known porting slip
(``slotref.conformance.catalogue``) is the same walk with one field replaced.

Layout as the module: inputs (B, N, D_inputs), slots (B, K, D), attention
(B, N, K). Per-iteration quantities are recorded as lists of T arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import autograd
import autograd.numpy as anp

from slotref import backend
from slotref.layers import gru_cell, layer_norm, linear, mlp, softmax
from slotref.slot_attention import sample_initial_slots

# name -> (line of Algorithm 1, what it is). Execution order; the first four are computed once,
# the others once per iteration.
QUANTITIES = {
    "slots_init": (1, "initial slots mu + exp(log_sigma) * noise (B, K, D)"),
    "inputs_norm": (3, "LayerNorm(inputs) (B, N, D_inputs)"),
    "k": (7, "k(inputs) (B, N, D)"),
    "v": (8, "v(inputs) (B, N, D)"),
    "slots_norm": (6, "LayerNorm(slots) (B, K, D)"),
    "q": (7, "q(slots) (B, K, D)"),
    "logits": (7, "1/sqrt(D) k(inputs) . q(slots)^T (B, N, K)"),
    "attn": (7, "Softmax over slots (B, N, K)"),
    "attn_weights": (8, "attn + eps, normalised over inputs (B, N, K)"),
    "updates": (8, "WeightedMean: attn_weights^T v (B, K, D)"),
    "slots_gru": (9, "GRU(state=slots_prev, inputs=updates) (B, K, D)"),
    "slots": (10, "slots + MLP(LayerNorm(slots)) (B, K, D)"),
}
ONCE = ("slots_init", "inputs_norm", "k", "v")
PER_ITERATION = tuple(name for name in QUANTITIES if name not in ONCE)


@dataclass(frozen=True)
class Ops:
    """One callable per line of Algorithm 1 (the reference's unless replaced)."""

    init_slots: Callable      # line 1: (params, noise) -> slots
    norm_inputs: Callable     # line 3: (params, inputs) -> inputs
    project_k: Callable       # line 7: (params, inputs) -> k
    project_v: Callable       # line 8: (params, inputs) -> v
    hold: Callable            # line 5: slots -> slots_prev
    norm_slots: Callable      # line 6: (params, slots) -> slots
    project_q: Callable       # line 7: (params, slots) -> q
    logits: Callable          # line 7: (k, q) -> logits
    softmax: Callable         # line 7: logits -> attn
    weights: Callable         # line 8: (attn, epsilon) -> attn_weights
    aggregate: Callable       # line 8: (attn_weights, v) -> updates
    gru: Callable             # line 9: (params, slots_prev, updates) -> slots
    residual_mlp: Callable    # line 10: (params, slots) -> slots


def _gru(params, slots_prev, updates):
    b, k, d = updates.shape
    return gru_cell(params["gru"], updates.reshape(b * k, d), slots_prev.reshape(b * k, d)).reshape(b, k, d)


def _weights(attn, epsilon):
    attn = attn + epsilon
    return attn / backend.sum(attn, axis=1, keepdims=True)


REFERENCE = Ops(
    init_slots=sample_initial_slots,
    norm_inputs=lambda p, x: layer_norm(p["norm_inputs"], x),
    project_k=lambda p, x: linear(p["project_k"], x),
    project_v=lambda p, x: linear(p["project_v"], x),
    hold=lambda slots: slots,
    norm_slots=lambda p, s: layer_norm(p["norm_slots"], s),
    project_q=lambda p, s: linear(p["project_q"], s),
    logits=lambda k, q: q.shape[-1] ** -0.5 * (k @ anp.swapaxes(q, 1, 2)),
    softmax=lambda logits: softmax(logits, axis=2),
    weights=_weights,
    aggregate=lambda w, v: anp.swapaxes(w, 1, 2) @ v,
    gru=_gru,
    residual_mlp=lambda p, s: s + mlp(p["mlp"], layer_norm(p["norm_mlp"], s)),
)


def walk(params: dict, inputs, noise, num_iterations: int, epsilon: float, ops: Ops = REFERENCE,
         record: dict | None = None):
    """Algorithm 1 from the slot noise: inputs (B, N, D_in), noise (B, K, D) -> slots (B, K, D).

    ``record``, if given, receives every quantity of ``QUANTITIES`` (per-iteration ones as lists).
    """
    trace = {} if record is None else record
    for name in PER_ITERATION:
        trace[name] = []

    def keep(name, value):
        if name in PER_ITERATION:
            trace[name].append(value)
        else:
            trace[name] = value
        return value

    slots = keep("slots_init", ops.init_slots(params, noise))                   # line 1. (B, K, D)
    inputs = keep("inputs_norm", ops.norm_inputs(params, inputs))               # line 3. (B, N, D_in)
    k = keep("k", ops.project_k(params, inputs))                                # (B, N, D)
    v = keep("v", ops.project_v(params, inputs))                                # (B, N, D)
    for _ in range(num_iterations):                                             # line 4
        slots_prev = ops.hold(slots)                                            # line 5. (B, K, D)
        slots = keep("slots_norm", ops.norm_slots(params, slots))               # line 6. (B, K, D)
        q = keep("q", ops.project_q(params, slots))                             # line 7. (B, K, D)
        logits = keep("logits", ops.logits(k, q))                               # (B, N, K)
        attn = keep("attn", ops.softmax(logits))                                # (B, N, K)
        weights = keep("attn_weights", ops.weights(attn, epsilon))              # line 8. (B, N, K)
        updates = keep("updates", ops.aggregate(weights, v))                    # (B, K, D)
        slots = keep("slots_gru", ops.gru(params, slots_prev, updates))         # line 9. (B, K, D)
        slots = keep("slots", ops.residual_mlp(params, slots))                  # line 10. (B, K, D)
    return slots                                                                # line 11


# --------------------------------------------------------------------------
# slotref itself as an adapter (the protocol of ``slotref.conformance.checks``).

def reference_forward(params, inputs, noise, num_iterations, trace=False, epsilon=1e-8):
    """The adapter protocol's forward, by ``walk``: slots, or (slots, trace) with ``trace``."""
    record = {}
    slots = walk(params, inputs, noise, num_iterations, epsilon, record=record)
    return (slots, record) if trace else slots


def reference_grad(params, inputs, noise, num_iterations, probe, epsilon=1e-8):
    """Gradients of sum(slots * probe): (d_params, d_inputs)."""
    def scalar(p, x):
        return anp.sum(walk(p, x, noise, num_iterations, epsilon) * probe)
    return autograd.grad(scalar, (0, 1))(params, inputs)


reference_forward.grad = reference_grad
