"""``import-tf``: a run directory from a checkpoint of the official TensorFlow code (no TensorFlow needed)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

from slotref.cli.common import fail
from slotref.training.config import LIMITS

DEFAULT_DATASETS = {"setpred": "clevr-shapes", "discovery": "clevr6-shapes"}


@click.command(name="import-tf")
@click.argument("checkpoint", type=click.Path(exists=False))
@click.option("--task", type=click.Choice(["setpred", "discovery"]), required=True,
              help="setpred: the official SlotAttentionClassifier; discovery: SlotAttentionAutoEncoder.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="The run directory to write (missing or empty).")
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None,
              help="K (not in the checkpoint; default: the official code's, 10 setpred, 7 discovery).")
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=3, show_default=True,
              help="T (not in the checkpoint).")
@click.option("--resolution", type=click.IntRange(8, 1024), default=128, show_default=True,
              help="Image side (not in the checkpoint: the official models take 128x128 images).")
@click.option("--dataset", default=None,
              help="The data the run evaluates on and fine-tunes on (an HDF5 file, e.g. from `data convert "
                   "clevr`; default: the built-in clevr-shapes or clevr6-shapes).")
@click.option("--steps", type=click.IntRange(1, LIMITS["steps"]), default=None,
              help="Fine-tuning length for `train --resume` (default: Table 11's; warm-up and decay scale with it).")
@click.option("--batch-size", type=click.IntRange(1, LIMITS["batch_size"]), default=None,
              help="Fine-tuning batch size (default: Table 11's).")
def import_tf(checkpoint, task, out, num_slots, num_iters, resolution, dataset, steps, batch_size):
    """Import CHECKPOINT, a TensorFlow 2 checkpoint of the official Slot Attention code (its prefix,
    e.g. ckpt-500, or the folder holding its `checkpoint` file), into a slotref run directory that
    `eval`, `viz`, `load_model` and `train --resume` (fine-tuning) read. See `slotref docs official-checkpoints`."""
    from slotref.data.tensorbundle import BundleError
    from slotref.official_checkpoints import load_official
    from slotref.training import TrainingError

    out = Path(out)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out}: exists and is not an empty folder; choose another --out")
        model, params, official = load_official(checkpoint, task, num_slots=num_slots, num_iterations=num_iters,
                                                resolution=resolution)
        config, notes = run_config(task, model, dataset or DEFAULT_DATASETS[task], steps, batch_size)
        write_run(out, config, params, _source(official, checkpoint))
    except (BundleError, TrainingError, ValueError, OSError) as err:
        fail(err)
    numbers = sum(int(v.size) for v in official.variables.values())
    left_out = ", ".join(f"{n} {kind}" for kind, n in sorted(official.ignored.items())) or "nothing"
    step = f" (global step {official.global_step})" if official.global_step is not None else ""
    click.echo(f"imported {len(official.variables)} variables ({numbers:,} numbers) of {official.index}{step}; "
               f"left out: {left_out}")
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {out}: K={model.num_slots}, T={model.num_iterations}, {resolution}x{resolution} images")
    data = "" if dataset else " --dataset FILE.h5"
    click.echo(f"next: slotref eval {out}{data}   |   slotref viz {out}{data}   |   slotref train --resume --out {out}")


def run_config(task, model, dataset, steps, batch_size):
    """(the run's TrainConfig, notes): the paper preset of ``task`` (Table 11) around the imported
    ``model``, fitted to a set-prediction file's image size and largest scene (K kept)."""
    from dataclasses import replace

    from slotref.training.presets import fit_to_file, preset_config, scale_budget

    config = replace(preset_config(task, dataset, "paper"), model=model, data_resolution=model.resolution[0])
    config, notes = fit_to_file(config, keep_slots=True)
    config = scale_budget(config, steps)
    return (replace(config, batch_size=batch_size) if batch_size else config), notes


def _source(official, given) -> dict:
    """Where the weights came from (``source.json`` of the run)."""
    return {"format": "tensorflow-checkpoint", "given": str(given), "index": str(Path(official.index).resolve()),
            "model_root": official.root, "global_step": official.global_step,
            "variables": sorted(official.variables), "left_out": official.ignored,
            "imported": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_run(out: Path, config, params, source: dict) -> None:
    """config.json, checkpoint.h5 (step 0) and source.json, written beside ``out`` and renamed into place,
    so that a failure leaves nothing."""
    from slotref import io
    from slotref.training.checkpoint import save_model

    tmp = out.with_name(out.name + ".import.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        io.write_text(tmp / "config.json", config.to_json())
        save_model(tmp / "checkpoint.h5", config, params)
        io.write_text(tmp / "source.json", json.dumps(source, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked before anything was read)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
