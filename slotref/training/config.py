"""What defines a run (``TrainConfig``), the one set of checks every config goes through however it
arrives (built in Python, read from a config file or a stored run: ``check_value``, ``config_from_dict``),
and the errors a run stops with."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import stat
import typing
from dataclasses import dataclass, field
from pathlib import Path

from slotref import paper
from slotref.models import ModelConfig

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
    coord_weight: float = 1.0          # set prediction: weight of the coordinates in the loss (training.setpred_loss)
    matching_coord_weight: float | None = None  # ... and in the matching's cost (None: coord_weight's)
    curriculum: str = ""               # training stages (slotref/training/curriculum.py); "" trains with num_slots throughout
    ema: float = 0.0                   # decay of the parameter average evaluation reads (training.average.ParameterAverage); 0: none
    eval_iterations: int | None = None  # T of validation and the reported evaluation (None: model.num_iterations)
    keep_checkpoints: str = "last"     # beside checkpoint.h5: "last" (none), "best", "every:N" (training.kept)
    grad: str = "all"                  # gradient through Slot Attention's iterations: "all" (the paper's) or "last" (training.implicit)
    restart_unbound: int = 0           # new initial weights when the slots have not bound this many steps into a draw (training.restart); 0: never
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        w = self.coord_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf:
            raise ConfigError("coord_weight", f"must be a positive number, got {w!r}")
        w = self.matching_coord_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf):
            raise ConfigError("matching_coord_weight", f"must be a positive number or None, got {w!r}")
        e = self.ema
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < 1:
            raise ConfigError("ema", f"must be 0 (no parameter average) or a decay in (0, 1), got {e!r}")
        t = self.eval_iterations
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= LIMITS["eval_iterations"]):
            raise ConfigError("eval_iterations", f"must be None or an integer in [1, {LIMITS['eval_iterations']}], "
                                                 f"got {t!r}")
        keep_every(self.keep_checkpoints)
        if self.grad not in ("all", "last"):
            raise ConfigError("grad", f"must be 'all' (through every iteration, the paper's) or 'last' "
                                      f"(implicit differentiation), got {self.grad!r}")
        if self.restart_unbound and self.curriculum:
            raise ConfigError("restart_unbound", "does not combine with a curriculum, whose stages count from step 0 "
                                                 "(drop one: --restart-unbound 0 or --curriculum \"\")")
        for name, hint in _fields(TrainConfig):  # every field of its type and within LIMITS
            check_value(hint, getattr(self, name), name)
        lo, hi = self.data_min_objects, self.data_max_objects
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError("data_min_objects", f"is {lo}, more than data_max_objects ({hi})")
        self._check_builtin_dataset()

    def _check_builtin_dataset(self):
        """A built-in dataset must carry what the task needs (set prediction: object labels)."""
        from slotref.data.generators import GENERATORS

        spec = GENERATORS.get(self.dataset)
        if spec is not None and self.task == "setpred" and not spec.set_prediction:
            raise ConfigError("dataset", f"{self.dataset} has no object labels for set prediction; "
                                         "train it with --task discovery")

    @property
    def headline(self) -> str:
        """The metric a run is judged by (``--keep-checkpoints best``): AP_inf, or FG-ARI for discovery."""
        return "fg_ari" if self.task == "discovery" else "ap_inf"

    @property
    def test_iterations(self) -> int:
        """T at test time: ``eval_iterations``, else the T the model trains with."""
        return self.model.num_iterations if self.eval_iterations is None else self.eval_iterations

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        """A config from its JSON form (``to_json``), checked as ``config_from_dict``."""
        return config_from_dict(d)


# --------------------------------------------------------------------------
# One validation for every way a config arrives (flags, a config file, a stored
# run, ``TrainConfig(...)``): every key known, every value of its type and
# within sane limits, before anything is allocated or any file is touched.

class ConfigError(ValueError):
    """A refused config value, one line naming the field: ``<key> <problem>``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


# Largest sizes a config may ask for (inclusive); the paper's are far below.
LIMITS = {
    "steps": 10**8, "batch_size": 4096, "warmup_steps": 10**15, "decay_steps": 10**15, "eval_every": 10**8,
    "eval_size": 10**6, "eval_iterations": 100, "checkpoint_every": 10**8, "log_every": 10**8, "max_objects": 255,
    "data_size": 10**7, "data_resolution": 1024, "data_min_objects": 255, "data_max_objects": 255,
    "seed": 2**63 - 1, "restart_unbound": 10**8,
    "model.resolution": 1024, "model.encoder_channels": 4096, "model.encoder_kernel": 64, "model.mlp_size": 4096,
    "model.num_slots": 256, "model.num_iterations": 100, "model.head_hidden": 4096, "model.output_size": 4096,
    "model.decoder_channels": 4096, "model.decoder_init_resolution": 1024, "model.encoder_strides": 16,
    "model.slot_attention.input_size": 4096, "model.slot_attention.slot_size": 4096,
    "model.slot_attention.mlp_hidden_size": 16384, "model.slot_attention.num_train_slots": 256,
}
# Sizes that may be 0 (the others must be at least 1).
MAY_BE_ZERO = {"warmup_steps", "seed", "eval_size", "restart_unbound"}
# Ranges of the real-valued fields: (low, high, whether low itself is allowed); the others: any finite number.
FLOAT_RANGES = {"learning_rate": (0.0, 1.0, False), "data_zoom": (0.0, 16.0, False),
                "model.slot_attention.epsilon": (0.0, 1.0, True)}
# Keys added after runs were first saved: a stored config without one takes this value.
ADDED_LATER = {"curriculum": "", "coord_weight": 1.0, "matching_coord_weight": None, "ema": 0.0,
               "eval_iterations": None, "keep_checkpoints": "last", "grad": "all",
               "restart_unbound": 0}


def keep_every(keep) -> int | None:
    """N of ``keep_checkpoints`` "every:N" (None for "last" and "best"); ConfigError for any other value."""
    if isinstance(keep, str) and keep in ("last", "best"):
        return None
    kind, _, n = keep.partition(":") if isinstance(keep, str) else ("", "", "")
    if kind != "every" or not (n.isascii() and n.isdigit()) or not 1 <= int(n) <= LIMITS["steps"]:
        raise ConfigError("keep_checkpoints", f"is {keep!r:.60}, expected last, best or every:N (N >= 1 steps)")
    return int(n)


@functools.cache
def _fields(cls) -> tuple[tuple[str, object], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def check_value(hint, v, key: str):
    """``v`` as a value of type ``hint`` for the field ``key`` (JSON lists as tuples, objects as dataclasses);
    ConfigError naming ``key`` when it is of another type or out of range."""
    if dataclasses.is_dataclass(hint):
        if isinstance(v, hint):  # a built config: its fields checked, nothing rebuilt
            for name, field_hint in _fields(hint):
                check_value(field_hint, getattr(v, name), f"{key}.{name}")
            return v
        return _from_dict(hint, v, key + ".")
    args = typing.get_args(hint)
    if type(None) in args:                       # X | None
        return None if v is None else check_value(next(a for a in args if a is not type(None)), v, key)
    if typing.get_origin(hint) is tuple:
        if not isinstance(v, (list, tuple)) or not v or len(v) > 8:
            raise ConfigError(key, f"is {v!r:.60}, expected a short list of integers")
        return tuple(_number(int, x, key) for x in v)
    if hint in (int, float):
        return _number(hint, v, key)
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(key, f"is {v!r:.60}, expected true or false")
        return v
    if hint is str:
        if not isinstance(v, str) or len(v) > 4096:
            raise ConfigError(key, f"is {v!r:.60}, expected a string")
        return v
    raise ConfigError(key, f"has an unsupported type {hint}")


def _number(kind, v, key: str):
    integral = isinstance(v, numbers.Integral)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (kind is int and not integral):
        raise ConfigError(key, f"is {v!r:.60}, expected {'an integer' if kind is int else 'a number'}")
    if kind is float:
        if not math.isfinite(v):
            raise ConfigError(key, f"is {v}, expected a finite number")
        low, high, closed = FLOAT_RANGES.get(key, (-math.inf, math.inf, True))
        if not (low <= v if closed else low < v) or v > high:
            raise ConfigError(key, f"is {v:g}, outside the range {'[' if closed else '('}{low:g}, {high:g}]")
        return float(v)
    low = 0 if key in MAY_BE_ZERO else 1
    high = LIMITS.get(key)
    if v < low or (high is not None and v > high):
        raise ConfigError(key, f"is {v}, outside the sane range [{low}, {high if high is not None else 'inf'}]")
    return int(v)


def _from_dict(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"is {type(data).__name__}, expected an object")
    names = [name for name, _ in _fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(prefix + str(key)[:60], "is not a known key")
    values = {}
    for name, hint in _fields(cls):
        key = prefix + name
        if name not in data and key in ADDED_LATER:
            values[name] = ADDED_LATER[key]
        elif name not in data:
            raise ConfigError(key, "is missing")
        else:
            values[name] = check_value(hint, data[name], key)
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(prefix + err.key, err.problem) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(prefix.rstrip(".") or "config", str(err).splitlines()[0]) from None


def config_from_dict(d) -> TrainConfig:
    """A ``TrainConfig`` from its JSON form ``d`` (every key present, or added later); ConfigError."""
    return _from_dict(TrainConfig, d, "")


def config_from_stored(d, source) -> TrainConfig:
    """A ``TrainConfig`` from stored JSON ``d``; TrainingError ``<source>: config.<key> <problem>; <todo>``."""
    try:
        return config_from_dict(d)
    except ConfigError as err:
        raise TrainingError(f"{source}: config.{err.key}: {err.problem}; the run directory is damaged or not "
                            "slotref's (train a new run)") from None


def read_json(path: Path, limit: int = 2**20):
    """The JSON value of a regular file of at most ``limit`` bytes (ConfigError naming the file: a FIFO, a
    device, a huge or deeply nested file is refused before it is read or parsed)."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), "is not a regular file")
        if info.st_size > limit:
            raise ConfigError(str(path), f"holds {info.st_size} bytes, more than a config's {limit}")
        return json.loads(path.read_bytes())
    except ConfigError:
        raise
    except OSError as err:
        raise ConfigError(str(path), f"cannot be read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise ConfigError(str(path), f"is not JSON ({str(err).splitlines()[0] or 'nested too deeply'})") from None


def read_run_config(run_dir: Path) -> TrainConfig:
    """The checked ``config.json`` of a run directory (TrainingError, one line)."""
    path = Path(run_dir) / "config.json"
    try:
        stored = read_json(path)
    except ConfigError as err:
        raise TrainingError(f"{path}: config: {err.problem}; not a slotref run (choose another --out)") from None
    return config_from_stored(stored, path)
