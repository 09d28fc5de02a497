"""Have the slots bound? Slot Attention's iterations watched one at a time, and the warning a run prints.

Slot Attention binds when its slots compete for the inputs and each settles on a part of the scene.
For each iteration t = 1..T of a batch (means over its scenes; ``docs/binding.md``):

- ``entropy``: the attention's entropy over the K slots, normalised by log K, averaged over the
  inputs: 1 when every input is split evenly between the slots, 0 when each goes to one slot;
- ``slot_cosine``: the mean cosine similarity of two different slots of a scene (1: copies);
- ``slot_change``: ||s_t - s_{t-1}|| / ||s_{t-1}|| over a scene's slots (K x D): how far iteration t
  moves them; small at the last iteration when the iteration has settled.

``GradientNorms`` measures the gradient of the loss with respect to the Slot Attention module and the
encoder; ``binding_warning`` is the warning of a run whose slots have not bound (``BINDING_LEVELS``).
The model runs on the run's backend; the numbers are host NumPy.
"""

from __future__ import annotations

import numpy as np

from slotref.backend import to_host
from slotref.models import encoder
from slotref.slot_attention import sample_initial_slots, slot_attention
from slotref.training.data import eval_noise, preprocess
from slotref.training.logs import last_iteration
from slotref.training.presets import DISCOVERY_CPU_RESTART_UNBOUND

BINDING_EXAMPLES = 64    # the first validation scenes each evaluation watches
DIAGNOSTICS = ("entropy", "slot_cosine", "slot_change")
# The evaluation batch each task draws its slot noise in (tasks.py): the same scene gets the same noise.
EVAL_BATCH = {"setpred": 64, "discovery": 32}

# When a run's slots count as not bound, read at the last iteration of an evaluation after WARN_AFTER of
# its steps and at least WARN_FROM_STEP steps (a healthy run may not have bound before; a fast dev run
# never has): diagnostic -> (level it exceeds, its name in the warning, what it means). A bound run of the
# Tetrominoes CPU preset has entropy 0.15-0.4 and cosine 0.2-0.3 (docs/binding.md, docs/results.md).
BINDING_LEVELS = {"entropy": (0.9, "attention entropy", "even attention"),
                  "slot_cosine": (0.95, "slot cosine", "near-identical slots"),
                  "slot_change": (0.5, "slot change at the last iteration", "the iteration has not settled")}
# Slots that still move at the last iteration may have bound: a Tetrominoes run with Glorot initialisers
# had FG-ARI 75%, entropy 0.14 and slot change 1.3 at step 1,500 (docs/binding.md). The slot change is
# reported beside these signs of unbound slots, never alone.
UNBOUND_SIGNS = ("entropy", "slot_cosine")
WARN_AFTER = 0.2
WARN_FROM_STEP = 500
TRY = {"setpred": "--grad last (the gradient of the last iteration alone); the cpu preset's curriculum "
                  "(slotref docs curriculum); more --steps; another --seed; a lower --lr",
       "discovery": f"new initial weights (--restart-unbound {DISCOVERY_CPU_RESTART_UNBOUND}, another --seed or "
                    "--init); more --steps or --warmup-steps; --grad last (the gradient of the last iteration "
                    "alone); a lower --lr"}


def attention_entropy(attention) -> np.ndarray:
    """Attention (B, N, K) -> (B,): the entropy over slots, / log K, mean over the N inputs."""
    a = np.asarray(attention, np.float64)
    # Normalised over slots (a no-op for Algorithm 1; Figure 10's softmax runs over the inputs).
    a = a / np.maximum(a.sum(-1, keepdims=True), 1e-300)
    a = np.clip(a, 1e-12, 1.0)
    return (-(a * np.log(a)).sum(-1)).mean(-1) / np.log(max(a.shape[-1], 2))


def slot_cosine(slots) -> np.ndarray:
    """Slots (B, K, D) -> (B,): the mean cosine similarity over pairs of different slots (1 for K = 1)."""
    s = np.asarray(slots, np.float64)
    unit = s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-12)
    cos = unit @ unit.transpose(0, 2, 1)                               # (B, K, K)
    k = s.shape[1]
    return cos[:, ~np.eye(k, dtype=bool)].mean(axis=1) if k > 1 else np.ones(len(s))


def slot_change(slots, slots_prev) -> np.ndarray:
    """Slots after and before an iteration, (B, K, D) each -> (B,): ||s_t - s_{t-1}|| / ||s_{t-1}||."""
    new, old = np.asarray(slots, np.float64), np.asarray(slots_prev, np.float64)
    b = len(new)
    return np.linalg.norm((new - old).reshape(b, -1), axis=1) / np.maximum(
        np.linalg.norm(old.reshape(b, -1), axis=1), 1e-12)


def iterate_slots(params: dict, images, noise, config, num_iterations: int):
    """Slot Attention one iteration at a time: the slots [(B, K, D)] * (T + 1) from the initial ones on, and
    the attention of each iteration [(B, N, K)] * T, on the host. Each call of Algorithm 1 starts from the
    slots the previous one returned: the same computation as one call with T iterations.

    params, config: the model's (``ModelConfig``); images (B, H, W, 3); noise (B, K, D)."""
    inputs = encoder(params["encoder"], images, config)                        # (B, N, D_in)
    slots = sample_initial_slots(params["slot_attention"], noise)              # (B, K, D)
    history, attention = [to_host(slots)], []
    for _ in range(num_iterations):
        slots, attn = slot_attention(params["slot_attention"], inputs, slots, 1, config.slot_attention,
                                     return_attention=True)                    # (B, K, D), (B, 1, N, K)
        history.append(to_host(slots))
        attention.append(to_host(attn)[:, 0])
    return history, attention


def binding_per_example(params: dict, images, noise, config, num_iterations: int) -> dict | None:
    """{diagnostic: (B, T)} for each scene of a batch (``iterate_slots``); None for the Slot MLP."""
    if config.model != "slot-attention":
        return None
    slots, attention = iterate_slots(params, images, noise, config, num_iterations)
    t = range(num_iterations)
    rows = {"entropy": [attention_entropy(attention[i]) for i in t],
            "slot_cosine": [slot_cosine(slots[i + 1]) for i in t],
            "slot_change": [slot_change(slots[i + 1], slots[i]) for i in t]}
    return {k: np.stack(v, axis=1).reshape(len(slots[0]), num_iterations) for k, v in rows.items()}


def summarise(rows: dict | None) -> dict | None:
    """Means over scenes of ``binding_per_example``'s rows: {diagnostic: [T numbers]}."""
    if rows is None:
        return None
    return {k: [round(float(x), 4) for x in rows[k].mean(axis=0)] for k in DIAGNOSTICS}


def evaluate_binding(be, params: dict, config, split, examples: int = BINDING_EXAMPLES) -> dict | None:
    """The diagnostics of each iteration on the first ``examples`` scenes of ``split``, with the
    evaluation's slot noise, K and T. ``config``: the run's ``TrainConfig``. None for the Slot MLP."""
    n = min(examples, len(split))
    if config.model.model != "slot-attention" or n == 0:
        return None
    k, t, step = config.model.num_slots, config.test_iterations, EVAL_BATCH.get(config.task, examples)
    parts = []
    for lo in range(0, n, step):
        images = preprocess(be, split.images[lo:min(lo + step, n)])
        noise = eval_noise(be, config, images.shape[0], k, lo)
        parts.append(binding_per_example(params, images, noise, config.model, t))
    return summarise({key: np.concatenate([p[key] for p in parts]) for key in DIAGNOSTICS})


def unbound(binding: dict | None) -> list[str]:
    """The diagnostics (``BINDING_LEVELS``'s keys) above their level at the last iteration."""
    last = last_iteration(binding or {})
    return [key for key, (level, _, _) in BINDING_LEVELS.items() if last.get(key, 0.0) > level]


def binding_signs(binding: dict | None) -> list[str]:
    """The signs of unbound slots at the last iteration: 'attention entropy 0.97 > 0.9 (even attention)'."""
    last = last_iteration(binding or {})
    return [f"{name} {_above(last[key], level)} > {level} ({meaning})"
            for key, (level, name, meaning) in BINDING_LEVELS.items() if key in unbound(binding)]


def _above(value: float, level: float) -> str:
    """``value`` (above ``level``) with two decimals, or as many more as show it above: 0.951, not 0.95."""
    digits = 2
    while float(f"{value:.{digits}f}") <= level and digits < 6:
        digits += 1
    return f"{value:.{digits}f}"


def binding_warning(binding: dict | None, step: int, steps: int, task: str, warned=None):
    """(the warning line or None, the signs now warned of) for the diagnostics ``binding`` of an
    evaluation (``evaluate_binding``; None: the Slot MLP) at ``step`` of a run of ``steps``: from
    ``WARN_AFTER`` of the run and ``WARN_FROM_STEP`` on, when one of ``UNBOUND_SIGNS`` shows; said once,
    and again only when the kinds of sign change (``warned``: what the previous call returned)."""
    late = step >= max(WARN_AFTER * steps, WARN_FROM_STEP)
    kinds = unbound(binding) if late else []
    if not set(kinds) & set(UNBOUND_SIGNS) or kinds == warned:
        return None, warned
    line = (f"warning: slots have not bound by step {step}: {'; '.join(binding_signs(binding))}. "
            f"Try: {TRY.get(task, TRY['setpred'])} (slotref docs binding; said once, again only if the signs "
            "change)")
    return line, kinds


class GradientNorms:
    """The L2 norm of the loss's gradient with respect to each part of the model (``PARTS``), averaged
    over the steps since the last ``mean``. ``add`` costs a dot product per part on the gradient's
    device and no host sync; ``mean`` reads the averages (every ``log_every`` steps).

    ``layout``: the parameters' ``FlatLayout``. A part's leaves are consecutive in the layout (a
    top-level key of the tree), so each is one span of each dtype's buffer."""

    PARTS = ("slot_attention", "encoder")

    def __init__(self, layout):
        self.layout, self.spans = layout, {}
        for part in self.PARTS:
            mine = [s for s in layout.slots if s.path.startswith(part + "/")]
            if mine:
                dtypes = {s.dtype for s in mine}
                self.spans[part] = {d: (min(s.offset for s in mine if s.dtype == d),
                                        max(s.offset + s.size for s in mine if s.dtype == d)) for d in dtypes}
        self.sums, self.count = {}, 0

    def add(self, grads):
        """Count one step's gradient (a tree or a ``FlatTree`` in ``layout``); returns it as a
        ``FlatTree``, which Adam takes without flattening it again."""
        from slotref.flat import FlatTree

        flat = grads if isinstance(grads, FlatTree) else self.layout.flatten(grads)
        for part, spans in self.spans.items():
            squares = sum(flat.buffers[d][lo:hi] @ flat.buffers[d][lo:hi] for d, (lo, hi) in spans.items())
            norm = squares ** 0.5                                        # 0-d, on the gradient's device
            self.sums[part] = norm if part not in self.sums else self.sums[part] + norm
        self.count += 1
        return flat

    def mean(self) -> dict:
        """{"grad_norm_<part>": the mean norm since the last call} (host floats); starts a new average."""
        out = {f"grad_norm_{part}": float(to_host(total)) / self.count for part, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return out
