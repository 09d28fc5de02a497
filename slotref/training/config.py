"""What defines a run (``TrainConfig``) and the errors a run stops with."""

from __future__ import annotations

import dataclasses
import json
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
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        d = dict(d)
        m = dict(d.pop("model"))
        sa = SlotAttentionConfig(**m.pop("slot_attention"))
        for key in ("resolution", "encoder_strides", "decoder_init_resolution"):
            m[key] = tuple(m[key])
        return TrainConfig(model=ModelConfig(slot_attention=sa, **m), **d)
