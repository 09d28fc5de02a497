"""What defines a run (``TrainConfig``) and the errors a run stops with."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from slotref import paper
from slotref.models import ModelConfig
from slotref.slot_attention import SlotAttentionConfig

_SETPRED = paper.HYPERPARAMETERS["setpred"]


class TrainingError(RuntimeError):
    """A run cannot go on (incompatible checkpoint, run directory or data); one line."""


class DivergenceError(TrainingError):
    """The loss or a parameter became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Defaults: the paper's set prediction (Table 11)."""

    task: str = "setpred"
    dataset: str = "clevr-shapes"      # a built-in generator name or an HDF5 file
    preset: str = "paper"
    steps: int = _SETPRED.steps
    batch_size: int = _SETPRED.batch_size
    learning_rate: float = paper.LEARNING_RATE
    warmup_steps: int = _SETPRED.warmup_steps
    decay_steps: int = _SETPRED.decay_steps
    seed: int = 0
    device: str | None = None          # None: $SLOTREF_DEVICE, else cpu
    dtype: str = "float32"
    eval_every: int = 1_000
    eval_size: int = 512               # the first examples of the file are held out, as the official code
    checkpoint_every: int = 1_000
    log_every: int = 10
    max_objects: int = 10              # target rows of set prediction
    # Built-in data made (and cached) when ``dataset`` names a generator.
    data_size: int = 70_000
    data_resolution: int = 128
    data_min_objects: int | None = None
    data_max_objects: int | None = None
    data_zoom: float = 1.0             # camera zoom of the CLEVR generators (objects zoom times larger)
    data_dir: str = "data"
    coord_weight: float = 1.0          # set prediction: weight of the coordinates in the loss (losses.pairwise_huber_cost)
    matching_coord_weight: float | None = None  # ... and in the matching's cost (None: coord_weight's)
    curriculum: str = ""               # training stages (slotref/curriculum.py); "" trains with num_slots throughout
    ema: float = 0.0                   # decay of the parameter average evaluation reads (optim.ParameterAverage); 0: none
    eval_iterations: int | None = None  # T of validation and the reported evaluation (None: model.num_iterations)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        w = self.coord_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf:
            raise ValueError(f"coord_weight must be a positive number, got {w!r}")
        w = self.matching_coord_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf):
            raise ValueError(f"matching_coord_weight must be a positive number or None, got {w!r}")
        e = self.ema
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < 1:
            raise ValueError(f"ema must be 0 (no parameter average) or a decay in (0, 1), got {e!r}")
        t = self.eval_iterations
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= LIMITS["eval_iterations"]):
            raise ValueError(f"eval_iterations must be None or an integer in [1, {LIMITS['eval_iterations']}], "
                             f"got {t!r}")

    @property
    def test_iterations(self) -> int:
        """T at test time: ``eval_iterations``, else the T the model trains with."""
        return self.model.num_iterations if self.eval_iterations is None else self.eval_iterations

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        d = dict(d)
        for key, default in ADDED_LATER.items():   # configs saved before the key existed
            d.setdefault(key, default)
        m = dict(d.pop("model"))
        sa = SlotAttentionConfig(**m.pop("slot_attention"))
        for key in ("resolution", "encoder_strides", "decoder_init_resolution"):
            m[key] = tuple(m[key])
        return TrainConfig(model=ModelConfig(slot_attention=sa, **m), **d)


# --------------------------------------------------------------------------
# Stored configs (config.json, a checkpoint's ``config`` attribute) are data:
# every key known, every value of its type and within sane limits, before
# anything is allocated or any file is touched.

# Largest sizes a stored config may ask for (inclusive); the paper's are far below.
LIMITS = {
    "steps": 10**8, "batch_size": 4096, "warmup_steps": 10**15, "decay_steps": 10**15, "eval_every": 10**8,
    "eval_size": 10**6, "eval_iterations": 100, "checkpoint_every": 10**8, "log_every": 10**8, "max_objects": 255,
    "data_size": 10**7, "data_resolution": 1024, "data_min_objects": 255, "data_max_objects": 255,
    "model.resolution": 1024, "model.encoder_channels": 4096, "model.encoder_kernel": 64, "model.mlp_size": 4096,
    "model.num_slots": 256, "model.num_iterations": 100, "model.head_hidden": 4096, "model.output_size": 4096,
    "model.decoder_channels": 4096, "model.decoder_init_resolution": 1024, "model.encoder_strides": 16,
    "model.slot_attention.input_size": 4096, "model.slot_attention.slot_size": 4096,
    "model.slot_attention.mlp_hidden_size": 16384, "model.slot_attention.num_train_slots": 256,
}
# Sizes that may be 0 (the others must be at least 1).
MAY_BE_ZERO = {"warmup_steps", "seed", "eval_size"}
# Keys added after runs were first saved: a stored config without one takes this value.
ADDED_LATER = {"curriculum": "", "coord_weight": 1.0, "matching_coord_weight": None, "ema": 0.0,
               "eval_iterations": None}


def config_from_stored(d, source) -> TrainConfig:
    """A ``TrainConfig`` from stored JSON ``d``; TrainingError ``<source>: config.<key>: <problem>; <todo>``."""
    import typing

    def bad(key, problem):
        return TrainingError(f"{source}: config.{key}: {problem}; the run directory is damaged or not slotref's "
                             f"(train a new run)")

    def check(cls, data, prefix):
        if not isinstance(data, dict):
            raise bad(prefix.rstrip(".") or "", f"is {type(data).__name__}, expected an object")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise bad(prefix + str(key), "unknown key")
        values = {}
        for name in names:
            key = prefix + name
            if name not in data and key in ADDED_LATER:
                values[name] = ADDED_LATER[key]
                continue
            if name not in data:
                raise bad(key, "missing")
            values[name] = value(hints[name], data[name], key)
        try:
            return cls(**values)
        except (ValueError, TypeError) as err:
            raise bad(prefix.rstrip(".") or "config", str(err).splitlines()[0]) from None

    def value(hint, v, key):
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            return check(hint, v, key + ".")
        if type(None) in args:                       # X | None
            if v is None:
                return None
            return value(next(a for a in args if a is not type(None)), v, key)
        if typing.get_origin(hint) is tuple:
            if not isinstance(v, list) or not v or len(v) > 8:
                raise bad(key, f"is {v!r}, expected a short list of integers")
            return tuple(number(int, x, key) for x in v)
        if hint in (int, float):
            return number(hint, v, key)
        if hint is bool:
            if not isinstance(v, bool):
                raise bad(key, f"is {v!r}, expected true or false")
            return v
        if hint is str:
            if not isinstance(v, str) or len(v) > 4096:
                raise bad(key, f"is {v!r:.60}, expected a string")
            return v
        raise bad(key, f"has an unsupported type {hint}")

    def number(kind, v, key):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise bad(key, f"is {v!r:.60}, expected {'an integer' if kind is int else 'a number'}")
        if kind is float:
            if not math.isfinite(v):
                raise bad(key, f"is {v}, expected a finite number")
            return float(v)
        name = key.removeprefix("config.")
        low = 0 if name in MAY_BE_ZERO or name.split(".")[-1] == "seed" else 1
        high = LIMITS.get(name)
        if name == "seed":
            high = 2**63 - 1
        if v < low or (high is not None and v > high):
            raise bad(key, f"{v} is outside the sane range [{low}, {high if high is not None else 'inf'}]")
        return v

    return check(TrainConfig, d, "")
