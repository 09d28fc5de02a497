"""Adam over parameter trees, and the paper's learning-rate schedule (Table 11)."""

from __future__ import annotations

from dataclasses import dataclass

from slotref import paper
from slotref.backend import tree_leaves, tree_map, xp_of


@dataclass(frozen=True)
class Schedule:
    """lr(step) = base_lr * min(1, step / warmup_steps) * decay_rate ** (step / decay_steps).

    As the official code: linear warm-up from 0, then (multiplied throughout)
    exponential decay. Defaults: Table 11, set prediction (``slotref.paper``).
    """

    base_lr: float = paper.LEARNING_RATE
    warmup_steps: int = paper.HYPERPARAMETERS["setpred"].warmup_steps
    decay_steps: int = paper.HYPERPARAMETERS["setpred"].decay_steps
    decay_rate: float = paper.DECAY_RATE

    def __call__(self, step: int) -> float:
        warmup = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return self.base_lr * warmup * self.decay_rate ** (step / self.decay_steps)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1): beta1 0.9, beta2 0.999, eps 1e-8 (Table 11a)."""

    beta1: float = paper.ADAM_BETA1
    beta2: float = paper.ADAM_BETA2
    eps: float = paper.ADAM_EPSILON

    def init(self, params):
        """State: first and second moments shaped like the parameters, and the step count."""
        zeros = lambda p: xp_of(p).zeros_like(p)  # noqa: E731
        return {"m": tree_map(zeros, params), "v": tree_map(zeros, params), "t": 0}

    def update(self, params, grads, state, lr: float):
        """One step, in place on ``params`` and ``state`` (arrays are reused, never reallocated)."""
        state["t"] += 1
        t = state["t"]
        step_size = lr / (1 - self.beta1 ** t)
        v_correction = 1 / (1 - self.beta2 ** t)
        for (_, p), (_, g), (_, m), (_, v) in zip(tree_leaves(params), tree_leaves(grads),
                                                  tree_leaves(state["m"]), tree_leaves(state["v"])):
            xp = xp_of(p)
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * (g * g)
            p -= step_size * m / (xp.sqrt(v * v_correction) + self.eps)
        return params, state
