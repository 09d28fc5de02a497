"""Which gradient training takes through Slot Attention's iterations (``train --grad``).

- ``all`` (the paper's): backpropagation through all T iterations of Algorithm 1.
- ``last``: implicit differentiation in its first-order form (Chang, Griffiths and Levine, "Object
  Representations as Fixed Points", NeurIPS 2022). The iteration is read as a search for a fixed point
  slots* = f(slots*, inputs; theta); the slots entering the last iteration are treated as a constant,
  so the gradient is that of one application of f at (an approximation of) the fixed point, the
  Jacobian-free approximation of the implicit function theorem's. The forward values are the
  paper's, bit for bit; only the gradient changes. Backpropagation then runs through one iteration
  whatever T, so its cost and memory do not grow with T, and the gradient cannot explode through the
  iterations.

With ``last`` the initial slots' mu and log_sigma receive no gradient (the slots they start are a
constant of the last iteration), so they keep their initial values: the fixed point, not the start,
is what the rest of the model learns from.

The spec's ``slot_attention`` is untouched: this module wraps it, and the models take the wrapper
through their ``module`` argument (``models.infer_slots``).
"""

from __future__ import annotations

from autograd.tracer import getval

from slotref.backend import tree_map, xp_of
from slotref.slot_attention import SlotAttentionConfig, slot_attention

GRADS = ("all", "last")


def slot_attention_last_grad(params: dict, inputs, slots, num_iterations: int = 3,
                             config: SlotAttentionConfig = SlotAttentionConfig(), return_attention: bool = False):
    """``slot_attention`` with the gradient of the last iteration only (the module's docstring).

    Same signature and same values as ``slot_attention``: the first T - 1 iterations run on the
    values of the parameters, inputs and slots, outside autograd's trace; their slots enter the
    T-th iteration as a constant. inputs (B, N, D_inputs), slots (B, K, D) -> slots (B, K, D)
    [, attention (B, T, N, K)].
    """
    if num_iterations < 1:
        return slot_attention(params, inputs, slots, num_iterations, config, return_attention)
    constant = slot_attention(tree_map(getval, params), getval(inputs), getval(slots), num_iterations - 1,
                              config, return_attention)
    if not return_attention:
        return slot_attention(params, inputs, constant, 1, config)
    constant, early = constant                                           # (B, K, D), (B, T - 1, N, K)
    slots, last = slot_attention(params, inputs, constant, 1, config, return_attention=True)
    return slots, xp_of(last).concatenate([early, last], axis=1)         # (B, T, N, K)


def slot_attention_module(grad: str):
    """The function that runs Slot Attention in training for ``grad`` ('all' or 'last')."""
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    return slot_attention if grad == "all" else slot_attention_last_grad
