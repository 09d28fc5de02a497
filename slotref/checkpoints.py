"""Checkpoints for users of the Python API: a run's ``checkpoint.h5`` is all a model needs.

    config, params = slotref.load_checkpoint("runs/setpred-.../checkpoint.h5")
    predictions = slotref.set_prediction(params, images, noise, config.model)

The file format (HDF5, readable with plain h5py) is ``slotref.training.checkpoint``'s.
"""

from __future__ import annotations

from pathlib import Path

from slotref.training.config import TrainConfig, TrainingError


def _checkpoint_path(path) -> Path:
    """A .h5/.hdf5 file as given; anything else is a run directory holding checkpoint.h5."""
    path = Path(path)
    return path if path.suffix in (".h5", ".hdf5") and not path.is_dir() else path / "checkpoint.h5"


def load_checkpoint(path, device: str | None = None, dtype=None) -> tuple[TrainConfig, dict]:
    """(config, params) of a checkpoint file (.h5) or a run directory.

    ``params`` are the model the run evaluates (its parameter average for a run with ``ema`` > 0), on
    ``device`` ('cpu': NumPy, 'gpu': CuPy; default $SLOTREF_DEVICE or cpu) in ``dtype`` (default: the
    run's, float32). ``config.model`` is what the model functions take.
    Raises TrainingError (one line) for a file that is not a slotref checkpoint.
    """
    from slotref.backend import get_backend, host_rng
    from slotref.models import init_model
    from slotref.training import checkpoint

    path = _checkpoint_path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    config = checkpoint.read_checkpoint_config(path)
    be = get_backend(device, dtype or config.dtype)
    template = init_model(host_rng(config.seed, 0), config.model)
    params, _, _, _ = checkpoint.load_checkpoint(path, be, template, config, model=True)
    return config, params


def save_checkpoint(path, config: TrainConfig, params: dict, step: int = 0, adam_state: dict | None = None) -> None:
    """Write ``params`` (and Adam's state, zeros when None) to ``path`` (a .h5 file, or a run directory's
    checkpoint.h5) as a checkpoint ``load_checkpoint``,
    ``slotref eval`` and ``slotref viz`` read. ``config``: a ``TrainConfig`` whose ``model`` built ``params``
    (``slotref.TrainConfig(task=..., model=...)``); with ``config.ema`` > 0, ``params`` are also the average."""
    from slotref.optim import Adam
    from slotref.training import checkpoint

    path = _checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = adam_state if adam_state is not None else Adam().init(params)
    checkpoint.save_checkpoint(path, params, state, step, config, fingerprint="",
                               average=params if config.ema > 0 else None)
