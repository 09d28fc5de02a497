"""Adam over parameter trees, and the paper's learning-rate schedule (Table 11).

``adam_step`` is Algorithm 1's update of one array. ``Adam.update`` runs it
leaf by leaf on a plain tree; on parameters held in flat buffers
(``slotref.flat.FlatTree``) it runs once over each whole buffer, a handful of
operations per step instead of a handful per leaf; every element goes through
the same operations in the same order, so the two paths agree bit for bit
(``tests/spec/test_optim.py``). ``adam_step`` is ``@replaceable`` by a fast kernel
(``docs/kernels.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from slotref import paper
from slotref.backend import tree_leaves, tree_map, xp_of
from slotref.dispatch import replaceable
from slotref.flat import FlatTree


@replaceable
def adam_step(p, g, m, v, step_size, v_correction, beta1, beta2, eps):
    """Algorithm 1's update in place on p, m, v (arrays of one shape: a leaf, or a whole flat buffer).

    step_size = lr / (1 - beta1^t), v_correction = 1 / (1 - beta2^t): the bias corrections folded in.
    """
    xp = xp_of(p)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    p -= step_size * m / (xp.sqrt(v * v_correction) + eps)


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
        """State: first and second moments shaped like the parameters, and the step count.

        For a ``FlatTree`` the moments are flat buffers too (``state["flat"]``),
        and ``state["m"]``/``state["v"]`` are parameter-shaped trees of views
        into them, so a checkpoint reads and stores the state as it does a
        per-leaf one.
        """
        if isinstance(params, FlatTree):
            m, v = params.layout.zeros(params.xp), params.layout.zeros(params.xp)
            return {"m": m.tree, "v": v.tree, "t": 0, "flat": {"m": m, "v": v}}
        zeros = lambda p: xp_of(p).zeros_like(p)  # noqa: E731
        return {"m": tree_map(zeros, params), "v": tree_map(zeros, params), "t": 0}

    @staticmethod
    def to_tree(state) -> dict:
        """The state as plain trees ({"m", "v", "t"}), as checkpoints store it (views, no copy)."""
        return {"m": state["m"], "v": state["v"], "t": state["t"]}

    @staticmethod
    def from_tree(state, params: FlatTree) -> dict:
        """A per-leaf state (e.g. read from a checkpoint) copied into flat buffers laid out as ``params``."""
        m, v = params.layout.copy_in(state["m"], params.xp), params.layout.copy_in(state["v"], params.xp)
        return {"m": m.tree, "v": v.tree, "t": int(state["t"]), "flat": {"m": m, "v": v}}

    def update(self, params, grads, state, lr: float):
        """One step, in place on ``params`` and ``state`` (arrays are reused, never reallocated).

        ``params`` a tree: Algorithm 1 leaf by leaf. ``params`` a ``FlatTree``:
        ``grads`` is a ``FlatTree`` of the same layout (e.g. an allreduced
        buffer) or a gradient tree (flattened here, one concatenate per dtype),
        and a per-leaf ``state`` is moved into flat buffers on the first step.
        """
        if isinstance(params, FlatTree):
            return self._update_flat(params, grads, state, lr)
        state["t"] += 1
        t = state["t"]
        step_size = lr / (1 - self.beta1 ** t)
        v_correction = 1 / (1 - self.beta2 ** t)
        for (_, p), (_, g), (_, m), (_, v) in zip(tree_leaves(params), tree_leaves(grads),
                                                  tree_leaves(state["m"]), tree_leaves(state["v"])):
            adam_step(p, g, m, v, step_size, v_correction, self.beta1, self.beta2, self.eps)
        return params, state

    def _update_flat(self, params: FlatTree, grads, state, lr: float):
        if not isinstance(grads, FlatTree):
            grads = params.layout.flatten(grads)
        elif grads.layout.slots != params.layout.slots:
            raise ValueError("Adam.update: the flat gradient's layout differs from the parameters'; "
                             "flatten the gradient with params.layout.flatten")
        if "flat" not in state:
            state.update(self.from_tree(state, params))
        state["t"] += 1
        t = state["t"]
        step_size = lr / (1 - self.beta1 ** t)
        v_correction = 1 / (1 - self.beta2 ** t)
        flat_m, flat_v = state["flat"]["m"].buffers, state["flat"]["v"].buffers
        for dtype, p in params.buffers.items():
            adam_step(p, grads.buffers[dtype], flat_m[dtype], flat_v[dtype],
                      step_size, v_correction, self.beta1, self.beta2, self.eps)
        return params, state

