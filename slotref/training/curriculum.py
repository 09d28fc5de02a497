"""Training curricula: a run that starts with fewer slots and simpler scenes.

A curriculum is a string of stages separated by ``;``. Each stage is a list
of ``key=value`` pairs separated by commas, then ``:N``, its length in steps;
the last stage has no length and lasts to the end of the run::

    slots=1,objects=1:1000; slots=3,reset_adam,warmup=500

Keys (all optional; a key left out keeps the run's setting; docs/curriculum.md):

- ``slots``: K of the stage's forward passes; the last stage's K is the run's ``num_slots``.
- ``objects``: the scenes the stage draws from, ``2`` (at most 2) or ``1-2``; set prediction, at most K.
- ``lr``: the stage's base learning rate (``2e-4``) or a multiple of the run's (``0.5x``).
- ``warmup``: a linear warm-up of N steps from the stage's start; ``reset_adam``: a fresh Adam state there.
- ``coord_weight``, ``matching_coord_weight``: the coordinates' weight in the set prediction loss and
  in the Hungarian matching's cost during the stage (``training.setpred_loss``; the run's otherwise).
- ``grad``: ``all`` or ``last``, the stage's gradient through Slot Attention (``train --grad``).

Why it is sound: Slot Attention (Algorithm 1) runs with any K and no
parameter depends on K (the slots are drawn from one shared Gaussian), so the
parameters trained with K = 1 are those of the K = 3 model. A curriculum is
a training schedule beyond the paper, which trains with the final K
throughout.

Everything a step does is a function of (seed, step): the stage of a step
comes from the step alone, and the batch of a step from (seed, stage, step),
so a resumed run draws what the uninterrupted one would have, across stage
boundaries too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from slotref.training.config import LIMITS
from slotref.training.implicit import GRADS

KEYS = ("slots", "objects", "lr", "warmup", "reset_adam", "coord_weight", "matching_coord_weight", "grad")
MAX_SLOTS = LIMITS["model.num_slots"]


@dataclass(frozen=True)
class Stage:
    """One stage: its steps [start, start + length) (length None: to the end of the run)."""

    index: int
    start: int
    length: int | None = None
    slots: int | None = None
    min_objects: int | None = None
    max_objects: int | None = None
    lr: float | None = None            # a base learning rate ...
    lr_scale: float | None = None      # ... or a multiple of the run's
    warmup: int = 0
    reset_adam: bool = False
    coord_weight: float | None = None  # set prediction: the loss's coordinate weight
    matching_coord_weight: float | None = None  # ... and the matching's
    grad: str | None = None            # training.implicit.GRADS

    @property
    def end(self) -> float:
        return float("inf") if self.length is None else self.start + self.length

    def describe(self) -> str:
        """The stage as written in a curriculum (``Curriculum.parse`` reads it back)."""
        lo = self.min_objects or 1
        parts = [f"slots={self.slots}" if self.slots is not None else "",
                 "" if self.max_objects is None else f"objects={self.max_objects}" if lo == 1
                 else f"objects={lo}-{self.max_objects}",
                 f"lr={self.lr:g}" if self.lr is not None else "",
                 f"lr={self.lr_scale:g}x" if self.lr_scale is not None else "",
                 f"warmup={self.warmup}" if self.warmup else "", "reset_adam" if self.reset_adam else "",
                 *(f"{key}={getattr(self, key):g}" for key in ("coord_weight", "matching_coord_weight")
                   if getattr(self, key) is not None),
                 f"grad={self.grad}" if self.grad is not None else ""]
        return ",".join(filter(None, parts)) + ("" if self.length is None else f":{self.length}")


def _int(value: str, what: str, part: str, minimum: int, maximum: int = 10**15) -> int:
    n = int(value) if value.strip().lstrip("+-").isdigit() else None
    if n is None or not minimum <= n <= maximum:
        raise ValueError(f"curriculum stage {part!r}: {what} must be an integer in [{minimum}, {maximum}], "
                         f"got {value!r}")
    return n


def _positive(text: str, key: str, part: str) -> float:
    """The finite positive number ``text`` spells (ValueError naming the stage and ``key``)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise ValueError(f"curriculum stage {part!r}: {key} must be a positive number (an lr also a multiple "
                         f"such as 0.5x), got {text!r}")
    return number


def _parse_item(stage: Stage, key: str, has_value: bool, value: str, part: str) -> Stage:
    """``stage`` with one ``key=value`` of a stage's text applied."""
    if key == "reset_adam":
        if has_value and value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"curriculum stage {part!r}: reset_adam takes 1/0/true/false, got {value!r}")
        return replace(stage, reset_adam=not has_value or value.lower() in ("1", "true", "yes"))
    if not has_value or not value:
        raise ValueError(f"curriculum stage {part!r}: {key} needs a value ({key}=...)")
    if key == "grad":
        if value not in GRADS:
            raise ValueError(f"curriculum stage {part!r}: grad must be one of {', '.join(GRADS)}, got {value!r}")
        return replace(stage, grad=value)
    if key == "slots":
        return replace(stage, slots=_int(value, "slots", part, 1, MAX_SLOTS))
    if key == "warmup":
        return replace(stage, warmup=_int(value, "warmup", part, 0))
    if key == "objects":
        lo_text, dash, hi_text = value.partition("-")
        lo = _int(lo_text, "objects", part, 1, MAX_SLOTS) if dash else 1
        hi = _int(hi_text if dash else lo_text, "objects", part, 1, MAX_SLOTS)
        if lo > hi:
            raise ValueError(f"curriculum stage {part!r}: objects range {value!r} is empty")
        return replace(stage, min_objects=lo, max_objects=hi)
    if key == "lr" and value.endswith("x"):
        return replace(stage, lr_scale=_positive(value[:-1], key, part))
    return replace(stage, **{key: _positive(value, key, part)})  # lr, coord_weight, matching_coord_weight


def _parse_stage(text: str, index: int, start: int, last: bool) -> Stage:
    part = text.strip()
    body, sep, length_text = part.partition(":")
    if sep and last:
        raise ValueError(f"curriculum stage {part!r}: the last stage lasts to the end of the run; drop its ':N'")
    if not sep and not last:
        raise ValueError(f"curriculum stage {part!r}: every stage but the last needs a length ':N' (steps)")
    stage = Stage(index=index, start=start,
                  length=_int(length_text.strip(), "the length after ':'", part, 1) if sep else None)
    seen = set()
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, has_value, value = (s.strip() for s in item.partition("="))
        if key not in KEYS:
            raise ValueError(f"curriculum stage {part!r}: unknown key {key!r} (expected one of {', '.join(KEYS)})")
        if key in seen:
            raise ValueError(f"curriculum stage {part!r}: {key} given twice")
        seen.add(key)
        stage = _parse_item(stage, key, bool(has_value), value, part)
        if stage.slots is not None and stage.max_objects is not None and stage.max_objects > stage.slots:
            raise ValueError(f"curriculum stage {part!r}: objects={stage.max_objects} needs at least as many "
                             f"slots, got slots={stage.slots}")
    return stage


@dataclass(frozen=True)
class Curriculum:
    """Parsed stages; ``Curriculum.parse("")`` is the plain schedule (one stage, nothing changed)."""

    stages: tuple[Stage, ...]

    @staticmethod
    def parse(text: str) -> "Curriculum":
        parts = [p for p in (text or "").split(";")]
        if not (text or "").strip():
            return Curriculum((Stage(index=0, start=0),))
        if any(not p.strip() for p in parts):
            raise ValueError(f"curriculum {text!r}: empty stage (two ';' in a row or a trailing ';')")
        stages, start = [], 0
        for i, p in enumerate(parts):
            stage = _parse_stage(p, i, start, last=i == len(parts) - 1)
            stages.append(stage)
            start = stage.end
        return Curriculum(tuple(stages))

    def __str__(self) -> str:
        return "; ".join(s.describe() for s in self.stages)

    @property
    def plain(self) -> bool:
        return len(self.stages) == 1 and self.stages[0] == Stage(index=0, start=0)

    def scaled(self, factor: float) -> "Curriculum":
        """The same stages for a run ``factor`` times as long (lengths and warm-ups scaled, at least 1 step)."""
        stages, start = [], 0
        for s in self.stages:
            length = None if s.length is None else max(1, round(s.length * factor))
            warmup = max(1, round(s.warmup * factor)) if s.warmup else 0
            stages.append(replace(s, start=start, length=length, warmup=warmup))
            start = stages[-1].end
        return Curriculum(tuple(stages))

    def stage_at(self, step: int) -> Stage:
        """The stage of ``step`` (0-based), a function of the step alone."""
        for stage in self.stages:
            if step < stage.end:
                return stage
        return self.stages[-1]

    def check(self, num_slots: int, max_objects: int | None, slot_init: str = "shared",
              model: str = "slot-attention") -> None:
        """Errors (one line) for a curriculum the run cannot follow."""
        last = self.stages[-1]
        if last.slots is not None and last.slots != num_slots:
            raise ValueError(f"curriculum: the last stage has slots={last.slots} but the run evaluates with "
                             f"num_slots={num_slots}; make them equal")
        if any(s.slots not in (None, num_slots) for s in self.stages) and \
                (slot_init != "shared" or model != "slot-attention"):
            raise ValueError("curriculum: changing slots needs Slot Attention with shared slot initialisation "
                             "(per-slot parameters and the Slot MLP fix K)")
        for s in self.stages:
            k = s.slots or num_slots
            if max_objects is None:
                for key, value in (("objects", s.max_objects), ("coord_weight", s.coord_weight),
                                   ("matching_coord_weight", s.matching_coord_weight)):
                    if value is not None:
                        raise ValueError(f"curriculum stage {s.describe()!r}: {key}= needs set prediction targets")
            elif max_objects > k and self.plain:
                raise ValueError(f"num_slots is {k}, fewer than the {max_objects} objects of the largest scenes "
                                 "(max_objects): one slot per object, raise the slots")
            elif (s.max_objects or max_objects) > k:
                raise ValueError(f"curriculum stage {s.describe()!r}: scenes with up to "
                                 f"{s.max_objects or max_objects} objects need as many slots; "
                                 f"add objects=<={k} or raise slots")

    # --- what a step uses -------------------------------------------------

    def slots(self, step: int, num_slots: int) -> int:
        return self.stage_at(step).slots or num_slots

    def setting(self, step: int, key: str, run_value):
        """A stage's ``coord_weight``, ``matching_coord_weight`` or ``grad`` at ``step``: the stage's, else
        the run's (``run_value``)."""
        value = getattr(self.stage_at(step), key)
        return run_value if value is None else value

    def loss_settings(self, step: int, config) -> tuple:
        """The loss's extra arguments at ``step``: set prediction's coordinate weights (loss, matching), then
        the gradient option."""
        keys = ("coord_weight", "matching_coord_weight", "grad") if config.task == "setpred" else ("grad",)
        return tuple(self.setting(step, key, getattr(config, key)) for key in keys)

    def resets_adam(self, step: int) -> bool:
        """True at the first step of a stage with ``reset_adam``."""
        stage = self.stage_at(step)
        return stage.reset_adam and step == stage.start

    def starts_stage(self, step: int) -> bool:
        """True at the first step of a stage (step 0 included): a parameter average starts there."""
        return step == self.stage_at(step).start

    def learning_rate(self, step: int, schedule) -> float:
        """The run's schedule (warm-up and decay from step 0), rescaled and re-warmed per stage."""
        stage = self.stage_at(step)
        lr = schedule(step)
        if stage.lr is not None:
            lr *= stage.lr / schedule.base_lr
        if stage.lr_scale is not None:
            lr *= stage.lr_scale
        if stage.warmup:
            lr *= min(1.0, (step - stage.start) / stage.warmup)
        return lr

    def batch_order(self, plain_order, num_objects: np.ndarray | None, batch_size: int, seed: int):
        """The example indices of each step (``training.data.StageBatchOrder``)."""
        from slotref.training.data import StageBatchOrder

        return StageBatchOrder(self, plain_order, num_objects, batch_size, seed)

    def targets(self, targets, step: int, num_slots: int):
        """Set prediction targets cut to the stage's K rows (its scenes have at most K objects)."""
        k = self.slots(step, num_slots)
        return targets if targets is None or targets.shape[1] <= k else targets[:, :k]


def follows(config) -> bool:
    """Whether a model can change K during training: Slot Attention with shared slot initialisation
    (the Slot MLP and per-slot initialisation have parameters per slot)."""
    return config.model.model == "slot-attention" and config.model.slot_attention.slot_init == "shared"


def run_plan(config) -> Curriculum:
    """The curriculum of a ``TrainConfig``, checked against its model and task (ValueError, one line)."""
    plan = Curriculum.parse(config.curriculum)
    plan.check(config.model.num_slots, config.max_objects if config.task == "setpred" else None,
               config.model.slot_attention.slot_init, config.model.model)
    return plan


def fits(config) -> bool:
    """Whether ``config`` can follow its curriculum: a model that ``follows`` one, and ``run_plan`` accepts
    it (a preset's stages name the preset's K; a run with another K, or more objects, cannot follow them)."""
    if not config.curriculum:
        return True
    if not follows(config):
        return False
    try:
        run_plan(config)
    except ValueError:
        return False
    return True
