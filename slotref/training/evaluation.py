"""Evaluating a finished or interrupted run (``slotref eval``): AP at the five thresholds and per
object count (set prediction), or FG-ARI (discovery), with K and T at test time."""

from __future__ import annotations

from pathlib import Path


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
    from slotref.training.loop import load_run
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
