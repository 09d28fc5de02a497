"""Checkpoints: HDF5 files readable with plain h5py (params/<path>, adam/m/<path>,
adam/v/<path>, average/<path> for a run that keeps a parameter average, and
attributes: step, task, config, dataset fingerprint), written atomically.

Two pairs of functions read and write the one format:

- ``load_model``/``save_model``, for users of the Python API: a run's
  ``checkpoint.h5`` (or its run directory) is all a model needs::

      config, params = slotref.load_model("runs/setpred-.../checkpoint.h5")
      predictions = slotref.set_prediction(params, images, noise, config.model)

- ``save_training_state``/``load_training_state``, for the training loop:
  the parameters, Adam's state, the step and the dataset's fingerprint.

``params`` are the parameters training goes on from; a run with ``ema`` > 0
evaluates, and reports, the average (``load_training_state(..., model=True)``).

A checkpoint is checked like a dataset before anything in it is used: its
format, task and step; its stored config (every key known, every value of
its type and within ``config.LIMITS``); and every leaf a finite numeric
array of the model's shape. Errors are one line:
``<file>: <field>: <problem>; <what to do>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from slotref import __version__
from slotref.backend import get_backend, host_rng, to_host, tree_leaves
from slotref.hdf5_write import written
from slotref.io import FileError, atomic_path, regular_file
from slotref.models import init_model
from slotref.optim import Adam
from slotref.training.config import TrainConfig, TrainingError, config_from_stored

CHECKPOINT_FORMAT = "slotref-checkpoint"
TASKS = ("setpred", "discovery")


def save_training_state(path: Path, params, adam_state, step: int, config: TrainConfig, fingerprint: str,
                        average=None, draw: tuple[int, int] = (0, 0)) -> None:
    """Write atomically: a temporary file, fsynced, renamed over the old checkpoint, the folder fsynced.

    ``average``: the parameter average (a tree shaped like ``params``) of a run with ``ema`` > 0;
    ``draw``: (number, first step) of the initial weights ``params`` grew from (``training.restart``).
    A write that fails (a full disk) is one ``WriteError``; the new file is read back and checked
    before it replaces the old one, which stays as it was on any failure.
    """
    with atomic_path(path) as tmp:
        with written(tmp, name=path, verify=lambda p: _verify(p, path, params, average)) as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = 1
            f.attrs["slotref_version"] = __version__
            f.attrs["step"] = step
            f.attrs["task"] = config.task
            f.attrs["config"] = config.to_json()
            f.attrs["dataset_fingerprint"] = fingerprint
            f.attrs["adam_t"] = adam_state["t"]
            f.attrs["draw"], f.attrs["draw_start"] = draw
            groups = [("params", params), ("adam/m", adam_state["m"]), ("adam/v", adam_state["v"])]
            if average is not None:
                groups.append(("average", average))
            for group, tree in groups:
                for name, leaf in tree_leaves(tree):
                    f.create_dataset(f"{group}/{name}", data=to_host(leaf))


def _verify(tmp, path, params, average) -> None:
    """Read the just-written checkpoint ``tmp`` back as ``load_training_state`` will; ``WriteError`` if not."""
    from slotref.io import WriteError

    try:
        with _open(Path(tmp)) as f:
            _check_header(Path(tmp), f)
            for group, tree in [("params", params)] + ([("average", average)] if average is not None else []):
                for name, leaf in tree_leaves(tree):
                    if f[f"{group}/{name}"].shape != tuple(leaf.shape):
                        raise ValueError(f"{group}/{name} has another shape")
                    f[f"{group}/{name}"][()]
    except (TrainingError, OSError, RuntimeError, KeyError, ValueError) as err:
        raise WriteError(f"{path}: the checkpoint written does not read back ({str(err).splitlines()[0]}); "
                         f"the previous one is kept, check the disk") from None


def _error(path, field, problem, todo="train a new run or use another checkpoint") -> TrainingError:
    return TrainingError(" ".join(f"{path}: {field}: {problem}; {todo}".split()))


def _open(path: Path):
    try:
        regular_file(path, "file")  # a FIFO or a device is never opened: its read would block or not end
    except FileError as err:
        problem = str(err).split(": file: ", 1)[-1].split(";")[0]
        raise _error(path, "file", problem, "check the run directory") from None
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as err:
        raise _error(path, "file", f"not a readable HDF5 file (truncated or corrupt?): {str(err).splitlines()[0]}",
                     "resume from an intact copy or train a new run") from None


def _integer_attr(path, f, key, low=0):
    value = f.attrs.get(key)
    if value is None:
        raise _error(path, key, "attribute missing")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise _error(path, key, f"attribute is {value!r:.60}, expected an integer >= {low}")
    return int(value)


def _string_attr(path, f, key):
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise _error(path, key, f"attribute is {value!r:.60}, expected a string")
    return value


def _check_header(path: Path, f) -> tuple[TrainConfig, int]:
    if f.attrs.get("format") != CHECKPOINT_FORMAT:
        raise _error(path, "format", f"is {f.attrs.get('format')!r:.60}, not {CHECKPOINT_FORMAT!r}: not a slotref "
                     "checkpoint", "point at a run directory written by `train`")
    version = _integer_attr(path, f, "format_version", low=1)
    if version != 1:
        raise _error(path, "format_version", f"is {version}; this slotref reads version 1", "upgrade slotref")
    task = _string_attr(path, f, "task")
    if task not in TASKS:
        raise _error(path, "task", f"is {task!r:.60}, expected one of {', '.join(TASKS)}")
    step = _integer_attr(path, f, "step")
    _integer_attr(path, f, "adam_t")
    _string_attr(path, f, "dataset_fingerprint")
    text = _string_attr(path, f, "config")
    try:
        stored = json.loads(text)
    except ValueError as err:
        raise _error(path, "config", f"not JSON ({err})") from None
    config = config_from_stored(stored, path)
    if config.task != task:
        raise _error(path, "task", f"is {task!r} but its config says {config.task!r}")
    return config, step


def read_checkpoint_config(path: Path) -> TrainConfig:
    """The checked config stored in a checkpoint (TrainingError, one line, if anything is wrong)."""
    path = Path(path)
    with _open(path) as f:
        return _check_header(path, f)[0]


def load_training_state(path: Path, be, template_params, config: TrainConfig, model: bool = False):
    """(params, adam_state, step, fingerprint), checked leaf by leaf against ``template_params``.

    ``adam_state`` holds the parameter average as ``"average"`` (None for a run without one) and the
    draw of the initial weights as ``"draw"``: (number, first step), (0, 0) in a checkpoint without one.
    ``model``: ``params`` are the parameters the run evaluates, its average where it keeps one.
    """
    path = Path(path)

    def fill(f, group, template):
        def walk(tree, prefix):
            if isinstance(tree, dict):
                return {k: walk(v, f"{prefix}{k}/") for k, v in tree.items()}
            if isinstance(tree, list):
                return [walk(v, f"{prefix}{i}/") for i, v in enumerate(tree)]
            name = f"{group}/{prefix.rstrip('/')}"
            item = f.get(name, getlink=True)
            if item is None:
                raise _error(path, name, "missing: the checkpoint does not match the model")
            if not isinstance(item, h5py.HardLink) or not isinstance(f[name], h5py.Dataset):
                raise _error(path, name, "is not an array (a group or a link)")
            ds = f[name]
            if ds.external or ds.is_virtual:  # as datasets: every byte of a checkpoint lives in the file
                where = "external storage (its bytes live in another file)" if ds.external else \
                    "virtual storage (its bytes live in other datasets)"
                raise _error(path, name, f"has {where}", "store the data in the checkpoint itself")
            if ds.dtype.kind not in "fiu":
                raise _error(path, name, f"has dtype {ds.dtype}, expected numbers")
            if ds.shape != tree.shape:
                raise _error(path, name, f"has shape {ds.shape}, expected {tree.shape}: the checkpoint does not "
                             "match the model")
            data = ds[()]
            if not np.isfinite(data).all():
                raise _error(path, name, "holds NaN or infinite values", "resume from an earlier checkpoint "
                             "or train a new run")
            return be.asarray(data)
        return walk(template, "")

    f = _open(path)
    try:
        with f:
            stored, step = _check_header(path, f)
            if stored.task != config.task:
                raise TrainingError(f"checkpoint {path} is a {stored.task} run, not {config.task}")
            params = fill(f, "params", template_params)
            state = {"m": fill(f, "adam/m", template_params), "v": fill(f, "adam/v", template_params),
                     "t": int(f.attrs["adam_t"]), "average": None,
                     "draw": tuple(_integer_attr(path, f, key) if key in f.attrs else 0
                                   for key in ("draw", "draw_start"))}
            if state["draw"][1] > step:
                raise _error(path, "draw_start", f"attribute is {state['draw'][1]}, after the checkpoint's step {step}")
            if stored.ema > 0:
                state["average"] = fill(f, "average", template_params)
                if model:
                    params = state["average"]
            return params, state, step, _string_attr(path, f, "dataset_fingerprint")
    except TrainingError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:  # damage seen only when read
        raise _error(path, "data", f"cannot be read (truncated or corrupt?): {str(err).splitlines()[0]}",
                     "resume from an intact copy or train a new run") from None


# --------------------------------------------------------------------------
# The model alone, for users of the Python API.

def _checkpoint_path(path) -> Path:
    """A .h5/.hdf5 file as given; anything else is a run directory holding checkpoint.h5."""
    path = Path(path)
    return path if path.suffix in (".h5", ".hdf5") and not path.is_dir() else path / "checkpoint.h5"


def load_model(path, device: str | None = None, dtype=None) -> tuple[TrainConfig, dict]:
    """(config, params) of a checkpoint file (.h5) or a run directory.

    ``params`` are the model the run evaluates (its parameter average for a run with ``ema`` > 0), on
    ``device`` ('cpu': NumPy, 'gpu': CuPy; default $SLOTREF_DEVICE or cpu) in ``dtype`` (default: the
    run's, float32). ``config.model`` is what the model functions take.
    Raises TrainingError (one line) for a file that is not a slotref checkpoint.
    """
    path = _checkpoint_path(path)
    if not path.exists():
        raise TrainingError(f"no checkpoint at {path}")
    config = read_checkpoint_config(path)
    be = get_backend(device, dtype or config.dtype)
    template = init_model(host_rng(config.seed, 0), config.model)
    params, _, _, _ = load_training_state(path, be, template, config, model=True)
    return config, params


def save_model(path, config: TrainConfig, params: dict, step: int = 0, adam_state: dict | None = None) -> None:
    """Write ``params`` (and Adam's state, zeros when None) to ``path`` (a .h5 file, or a run directory's
    checkpoint.h5) as a checkpoint ``load_model``, ``slotref eval`` and ``slotref viz`` read.

    ``config``: a ``TrainConfig`` whose ``model`` built ``params`` (``slotref.TrainConfig(task=...,
    model=...)``); with ``config.ema`` > 0, ``params`` are also the average.
    """
    path = _checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = adam_state if adam_state is not None else Adam().init(params)
    save_training_state(path, params, state, step, config, fingerprint="",
                        average=params if config.ema > 0 else None)
