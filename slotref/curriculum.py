"""Training curricula: a run that starts with fewer slots and simpler scenes.

A curriculum is a string of stages separated by ``;``. Each stage is a list
of ``key=value`` pairs separated by commas, then ``:N``, its length in steps;
the last stage has no length and lasts to the end of the run::

    slots=1,objects=1:1000; slots=3,reset_adam,warmup=500

Keys (all optional; a key left out keeps the run's setting):

- ``slots``: K, the number of slots of the stage's forward passes. The last
  stage's K must be the run's ``num_slots`` (evaluation always uses it).
- ``objects``: the training scenes the stage draws from: ``2`` (at most 2
  objects) or ``1-2`` (1 to 2 objects). Set prediction only; at most K.
- ``lr``: the base learning rate of the stage, a value (``2e-4``) or a
  multiple of the run's (``0.5x``). The run's warm-up and decay still apply.
- ``warmup``: a linear warm-up of N steps from the stage's start (a restart
  of the learning rate after a switch).
- ``reset_adam`` (or ``reset_adam=1``): a fresh Adam state at the stage's start.
- ``coord_weight``: the weight of the coordinates in the set prediction loss
  during the stage (``losses.pairwise_huber_cost``; the run's otherwise).
- ``matching_coord_weight``: their weight in the cost the Hungarian matching
  minimises during the stage (``losses.hungarian_huber_loss``; the run's
  otherwise, and by default ``coord_weight``'s).

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

from dataclasses import dataclass, replace

import numpy as np

from slotref.backend import host_rng

KEYS = ("slots", "objects", "lr", "warmup", "reset_adam", "coord_weight", "matching_coord_weight")
_ORDER_KEY = 7  # host_rng key of the batch orders of stages that draw from a subset of the scenes


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

    @property
    def end(self) -> float:
        return float("inf") if self.length is None else self.start + self.length

    def describe(self) -> str:
        parts = []
        if self.slots is not None:
            parts.append(f"slots={self.slots}")
        if self.max_objects is not None:
            lo = self.min_objects or 1
            parts.append(f"objects={self.max_objects}" if lo == 1 else f"objects={lo}-{self.max_objects}")
        if self.lr is not None:
            parts.append(f"lr={self.lr:g}")
        if self.lr_scale is not None:
            parts.append(f"lr={self.lr_scale:g}x")
        if self.warmup:
            parts.append(f"warmup={self.warmup}")
        if self.reset_adam:
            parts.append("reset_adam")
        if self.coord_weight is not None:
            parts.append(f"coord_weight={self.coord_weight:g}")
        if self.matching_coord_weight is not None:
            parts.append(f"matching_coord_weight={self.matching_coord_weight:g}")
        return ",".join(parts) + ("" if self.length is None else f":{self.length}")


def _int(value: str, what: str, part: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise ValueError(f"curriculum stage {part!r}: {what} must be an integer >= {minimum}, got {value!r}")
    return n


def _positive(text: str) -> float | None:
    """The finite positive number ``text`` spells, else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if 0 < number < float("inf") else None


def _parse_stage(text: str, index: int, start: int, last: bool) -> Stage:
    part = text.strip()
    body, sep, length_text = part.partition(":")
    length = None
    if sep:
        if last:
            raise ValueError(f"curriculum stage {part!r}: the last stage lasts to the end of the run; "
                             "drop its ':N'")
        length = _int(length_text.strip(), "the length after ':'", part, 1)
    elif not last:
        raise ValueError(f"curriculum stage {part!r}: every stage but the last needs a length ':N' (steps)")
    stage = Stage(index=index, start=start, length=length)
    seen = set()
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, has_value, value = (s.strip() for s in item.partition("="))
        if key not in KEYS:
            raise ValueError(f"curriculum stage {part!r}: unknown key {key!r} (expected one of {', '.join(KEYS)})")
        if key in seen:
            raise ValueError(f"curriculum stage {part!r}: {key} given twice")
        seen.add(key)
        if key == "reset_adam":
            if has_value and value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"curriculum stage {part!r}: reset_adam takes 1/0/true/false, got {value!r}")
            stage = replace(stage, reset_adam=not has_value or value.lower() in ("1", "true", "yes"))
            continue
        if not has_value or not value:
            raise ValueError(f"curriculum stage {part!r}: {key} needs a value ({key}=...)")
        if key == "slots":
            stage = replace(stage, slots=_int(value, "slots", part, 1))
        elif key == "warmup":
            stage = replace(stage, warmup=_int(value, "warmup", part, 0))
        elif key == "objects":
            lo_text, dash, hi_text = value.partition("-")
            lo = _int(lo_text, "objects", part, 1) if dash else 1
            hi = _int(hi_text if dash else lo_text, "objects", part, 1)
            if lo > hi:
                raise ValueError(f"curriculum stage {part!r}: objects range {value!r} is empty")
            stage = replace(stage, min_objects=lo, max_objects=hi)
        elif key in ("coord_weight", "matching_coord_weight"):
            number = _positive(value)
            if number is None:
                raise ValueError(f"curriculum stage {part!r}: {key} must be a positive number, got {value!r}")
            stage = replace(stage, **{key: number})
        elif key == "lr":
            scale = value.endswith("x")
            number = _positive(value[:-1] if scale else value)
            if number is None:
                raise ValueError(f"curriculum stage {part!r}: lr must be a positive value (2e-4) "
                                 f"or multiple (0.5x), got {value!r}")
            stage = replace(stage, lr_scale=number) if scale else replace(stage, lr=number)
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
            elif (s.max_objects or max_objects) > k:
                raise ValueError(f"curriculum stage {s.describe()!r}: scenes with up to "
                                 f"{s.max_objects or max_objects} objects need as many slots; "
                                 f"add objects=<={k} or raise slots")

    # --- what a step uses -------------------------------------------------

    def slots(self, step: int, num_slots: int) -> int:
        return self.stage_at(step).slots or num_slots

    def coord_weight(self, step: int, run_weight: float) -> float:
        """The set prediction loss's coordinate weight at ``step``: the stage's, else the run's."""
        weight = self.stage_at(step).coord_weight
        return run_weight if weight is None else weight

    def matching_coord_weight(self, step: int, run_weight: float | None) -> float | None:
        """The matching's coordinate weight at ``step``: the stage's, else the run's (None: the loss's)."""
        weight = self.stage_at(step).matching_coord_weight
        return run_weight if weight is None else weight

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
        return StageBatchOrder(self, plain_order, num_objects, batch_size, seed)

    def targets(self, targets, step: int, num_slots: int):
        """Set prediction targets cut to the stage's K rows (its scenes have at most K objects)."""
        k = self.slots(step, num_slots)
        return targets if targets is None or targets.shape[1] <= k else targets[:, :k]


class StageBatchOrder:
    """Example indices of step s. A stage that draws from every scene uses the run's plain
    order (a function of (seed, s)); a stage that draws from a subset permutes the subset
    epoch by epoch, seeded by (seed, stage, epoch), counting steps from the stage's start."""

    def __init__(self, curriculum: Curriculum, plain_order, num_objects, batch_size: int, seed: int):
        self.curriculum, self.plain_order, self.batch_size, self.seed = curriculum, plain_order, batch_size, seed
        self.subsets: dict[int, np.ndarray | None] = {}
        for s in curriculum.stages:
            if s.max_objects is None:
                self.subsets[s.index] = None
                continue
            n = np.asarray(num_objects)
            keep = np.flatnonzero((n >= (s.min_objects or 1)) & (n <= s.max_objects))
            if len(keep) < batch_size:
                raise ValueError(f"curriculum stage {s.describe()!r}: only {len(keep)} training scenes have "
                                 f"that many objects, fewer than one batch of {batch_size}")
            self.subsets[s.index] = None if len(keep) == len(n) else keep
        self._perm_key, self._perm = None, None

    def _permutation(self, stage: int, epoch: int, n: int) -> np.ndarray:
        if self._perm_key != (stage, epoch):  # one permutation at a time
            self._perm_key = (stage, epoch)
            self._perm = host_rng(self.seed, _ORDER_KEY, stage, epoch).permutation(n)
        return self._perm

    def __call__(self, step: int) -> np.ndarray:
        stage = self.curriculum.stage_at(step)
        subset = self.subsets[stage.index]
        if subset is None:
            return self.plain_order(step)
        positions = (step - stage.start) * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = positions // len(subset), positions % len(subset)
        return np.concatenate([subset[self._permutation(stage.index, int(e), len(subset))[offsets[epochs == e]]]
                               for e in np.unique(epochs)])


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


def num_objects(targets: np.ndarray | None) -> np.ndarray | None:
    """Objects per scene from set prediction targets (the last number of a row: 1 for a real object)."""
    return None if targets is None else (np.asarray(targets)[..., -1] > 0.5).sum(axis=1)
