"""Checkpoints kept beside ``checkpoint.h5`` on request (``TrainConfig.keep_checkpoints``, ``train
--keep-checkpoints``):

- ``last`` (the default): none, ``checkpoint.h5`` alone holds the run;
- ``every:N``: ``checkpoint-STEP.h5`` every N steps, copies of ``checkpoint.h5`` as it was at STEP;
- ``best``: ``checkpoint-best.h5``, the checkpoint of the evaluation with the best headline metric
  (``TrainConfig.headline``: AP_inf for set prediction, FG-ARI for discovery).

Each is written atomically, as ``checkpoint.h5`` is, and reads as it does (``slotref.load_model``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import h5py

from slotref import io
from slotref.training.config import TrainConfig, keep_every

BEST_NAME = "checkpoint-best.h5"


def step_name(step: int) -> str:
    """The file name of the checkpoint kept at ``step`` (``every:N``)."""
    return f"checkpoint-{step}.h5"


def keeps_step(config: TrainConfig, step: int) -> bool:
    """Whether ``every:N`` keeps the checkpoint of ``step`` (so ``checkpoint.h5`` is written at it)."""
    every = keep_every(config.keep_checkpoints)
    return every is not None and step % every == 0


def copy_checkpoint(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` atomically (``io.atomic_path``): ``target`` is whole or as it was."""
    with io.atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def improves(value, best: float) -> bool:
    """A finite headline ``value`` above ``best`` (a NaN FG-ARI of a batch without foreground never wins)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > best


def best_so_far(run_dir: Path, config: TrainConfig) -> float:
    """The headline metric of the run's ``checkpoint-best.h5`` (its step's last evaluation in
    ``metrics.jsonl``); -inf without one, so a resumed run's next evaluation is kept."""
    path, log = Path(run_dir) / BEST_NAME, Path(run_dir) / "metrics.jsonl"
    if config.keep_checkpoints != "best" or not path.is_file() or not log.is_file():
        return -math.inf
    try:
        with h5py.File(path, "r") as f:
            step = int(f.attrs["step"])
        records = io.read_jsonl(log)
    except (OSError, KeyError, TypeError, ValueError, io.FileError):
        return -math.inf
    values = [r["eval"].get(config.headline) for r in records
              if r.get("step") == step and isinstance(r.get("eval"), dict)]
    return values[-1] if values and improves(values[-1], -math.inf) else -math.inf
