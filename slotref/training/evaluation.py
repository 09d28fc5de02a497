"""Loading a finished or interrupted run (``load_run``) and evaluating it (``slotref eval``): AP at the
five thresholds and per object count (set prediction), or FG-ARI (discovery), with K and T at test time."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from slotref import backend
from slotref.backend import get_backend, host_rng
from slotref.models import init_model
from slotref.training.checkpoint import load_training_state, read_checkpoint_config
from slotref.training.config import TrainingError
from slotref.training.data import load_file, load_splits, resolve_dataset
from slotref.training.launch import world
from slotref.training.tasks import make_task


def load_run(run_dir: str | Path, device: str | None = None, dataset: str | Path | None = None):
    """(config, backend, params, task, split, step) of a finished or interrupted run.

    ``split``: every example of ``dataset`` (an HDF5 file) when given; otherwise the run's validation
    split, read from its training file if that is still where it was (nothing is generated here).
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.h5"
    if not ckpt.exists():
        raise TrainingError(f"{run_dir}: no checkpoint.h5 (is it a run directory?)")
    config = read_checkpoint_config(ckpt)  # checked: known keys, types, sane sizes
    if device:
        config = replace(config, device=device)
    w = world()
    if w.size > 1 and (config.device or os.environ.get(backend.DEVICE_ENV) or "cpu").lower() == "gpu":
        w.use_device()  # this rank's GPU, before the backend is made
    be = get_backend(config.device, config.dtype)
    template = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model))
    params, _, step, _ = load_training_state(ckpt, be, template, config, model=True)
    if dataset is not None:
        if not os.path.lexists(dataset):  # what exists but is no regular file, the reader names (a FIFO, a device)
            raise TrainingError(f"dataset file {dataset} does not exist")
        split, _ = load_file(Path(dataset), config, any_object_count=True)
    else:
        path = resolve_dataset(config, create=False)
        if not path.is_file():
            height, width = config.model.resolution
            raise TrainingError(f"the run's training file {path} is not there: pass --dataset FILE.h5 "
                                f"({height}x{width} {config.task} data, e.g. from `slotref data make`)")
        _, split, _ = load_splits(path, config)
    return config, be, params, make_task(config), split, step




def evaluate_run(run_dir: str | Path, num_slots: int | None = None, num_iters: int | None = None,
                 device: str | None = None, dataset: str | Path | None = None,
                 positions: bool = False, binding: bool = False) -> tuple[object, dict]:
    """(config, result) of the run in ``run_dir`` on its validation split (or every example of ``dataset``).

    ``num_slots``/``num_iters`` None: K as trained, T the run's test-time T; ``positions``: set prediction
    also reports the position error of the model, of a fit from the attention and of a constant
    (``training.diagnostics.position_readout``); ``binding``: also the diagnostics of each iteration on the
    first scenes (``training.binding.evaluate_binding``, None for the Slot MLP). Under mpiexec the examples
    are shared out among the ranks.
    ValueError (one line) for what the run cannot do."""
    from slotref import metrics
    from slotref.training.diagnostics import position_readout
    from slotref.training.launch import world
    from slotref.training.resolve import OptionError
    from slotref.training.tasks import threshold_name

    config, be, params, task, val, step = load_run(run_dir, device, dataset)
    if config.model.model == "slot-mlp" and num_slots not in (None, config.model.num_slots):
        raise ValueError("the Slot MLP baseline has a fixed number of slots")
    if positions and config.task != "setpred":
        raise OptionError(None, "--positions is for set prediction runs")
    result = {"step": step, "num_slots": num_slots or config.model.num_slots,
              "num_iters": num_iters or config.test_iterations, "examples": len(val)}
    if binding:
        from dataclasses import replace

        from slotref.training.binding import evaluate_binding

        at = replace(config, eval_iterations=result["num_iters"],
                     model=replace(config.model, num_slots=result["num_slots"]))
        result["binding"] = evaluate_binding(be, params, at, val)
    if config.task != "setpred":
        result.update(task.evaluate(be, params, val, num_slots, num_iters, world=world()))
        return config, result
    preds, attn = task.predict(be, params, val, num_slots, num_iters, world=world())
    result.update(task.scores(preds, val.targets))
    by_n = metrics.ap_by_num_objects(preds, val.targets)
    result["ap_by_num_objects"] = {str(n): {threshold_name(t): a for t, a in row.items()} for n, row in by_n.items()}
    if positions:
        if attn is None:
            raise ValueError("--positions needs the attention, which one process gathers: run it without mpiexec")
        result["positions"] = position_readout(preds, val.targets, attn)
    return config, result
