"""Checkpoints: HDF5 files readable with plain h5py (params/<path>, adam/m/<path>,
adam/v/<path>, and attributes: step, task, config, dataset fingerprint), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from slotref import __version__
from slotref.backend import to_host, tree_leaves
from slotref.training.config import TrainConfig, TrainingError

CHECKPOINT_FORMAT = "slotref-checkpoint"

def save_checkpoint(path: Path, params, adam_state, step: int, config: TrainConfig, fingerprint: str) -> None:
    """Write atomically: a temporary file, flushed, then renamed over the old checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = CHECKPOINT_FORMAT
        f.attrs["format_version"] = 1
        f.attrs["slotref_version"] = __version__
        f.attrs["step"] = step
        f.attrs["task"] = config.task
        f.attrs["config"] = config.to_json()
        f.attrs["dataset_fingerprint"] = fingerprint
        f.attrs["adam_t"] = adam_state["t"]
        for group, tree in (("params", params), ("adam/m", adam_state["m"]), ("adam/v", adam_state["v"])):
            for name, leaf in tree_leaves(tree):
                f.create_dataset(f"{group}/{name}", data=to_host(leaf))
    os.replace(tmp, path)


def read_checkpoint_config(path: Path) -> TrainConfig:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise TrainingError(f"{path} is not a slotref checkpoint")
            return TrainConfig.from_dict(json.loads(f.attrs["config"]))
    except OSError as err:
        raise TrainingError(f"cannot read checkpoint {path}: {err}") from err


def load_checkpoint(path: Path, be, template_params, config: TrainConfig):
    """(params, adam_state, step, fingerprint), checked leaf by leaf against ``template_params``."""
    def fill(f, group, template):
        def walk(tree, prefix):
            if isinstance(tree, dict):
                return {k: walk(v, f"{prefix}{k}/") for k, v in tree.items()}
            if isinstance(tree, list):
                return [walk(v, f"{prefix}{i}/") for i, v in enumerate(tree)]
            name = f"{group}/{prefix.rstrip('/')}"
            if name not in f:
                raise TrainingError(f"checkpoint {path} does not match the model: {name} is missing")
            data = f[name][()]
            if data.shape != tree.shape:
                raise TrainingError(f"checkpoint {path} does not match the model: {name} has shape "
                                    f"{data.shape}, expected {tree.shape}")
            return be.asarray(data)
        return walk(template, "")

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise TrainingError(f"{path} is not a slotref checkpoint")
            if f.attrs["task"] != config.task:
                raise TrainingError(f"checkpoint {path} is a {f.attrs['task']} run, not {config.task}")
            params = fill(f, "params", template_params)
            state = {"m": fill(f, "adam/m", template_params), "v": fill(f, "adam/v", template_params),
                     "t": int(f.attrs["adam_t"])}
            return params, state, int(f.attrs["step"]), str(f.attrs["dataset_fingerprint"])
    except OSError as err:
        raise TrainingError(f"cannot read checkpoint {path}: {err}") from err
