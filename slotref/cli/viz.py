"""``viz``: pictures of a run's validation images (Figure 3 / Table 2 style), or of its binding
diagnostics over training (``--binding``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from slotref.cli.common import fail
from slotref.paths import shown
from slotref.training.config import LIMITS


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Picture file, .png, .pdf, .svg or .jpg (default RUN_DIR/viz.png, or RUN_DIR/binding.png with "
                   "--binding, replaced); an existing --out needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--num-images", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None)
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--dataset", type=click.Path(dir_okay=False), default=None,
              help="Draw the first images of this HDF5 file (default: the run's validation split, "
                   "from its training file).")
@click.option("--binding", is_flag=True,
              help="Draw the binding diagnostics logged at each evaluation (attention entropy, slot cosine and "
                   "slot change per iteration) and the gradient norms over the training steps, from "
                   "metrics.jsonl (slotref docs binding); no checkpoint or data needed.")
def viz(run_dir, out, overwrite, num_images, num_slots, num_iters, device, dataset, binding):
    """Draw a run's validation images: discovery as Figure 3 (reconstruction, masks, slots, attention); set
    prediction with each slot's attention over the image and the object it was matched with, its distance,
    and the matching seen from above. With --binding: how its slots bound over training."""
    from slotref import viz as viz_module
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.training import TrainingError, load_run

    if out and os.path.lexists(out) and not overwrite:
        fail(ValueError(f"{shown(out)}: exists; pass --overwrite to replace it or choose another --out"))
    if binding:
        _draw_binding(run_dir, out)
        return
    try:
        if out:
            viz_module.picture_format(out)  # an unknown suffix is refused before the run is loaded
        config, be, params, task, val, step = load_run(run_dir, device, dataset)
        path = Path(out) if out else Path(run_dir) / "viz.png"
        viz_module.draw_run(path, config, be, params, task, val.take(slice(0, num_images)), num_slots, num_iters,
                            title=f"{shown(Path(run_dir).resolve().name)}, step {step}")
    except (TrainingError, DatasetError, BackendError, ValueError, OSError) as err:
        fail(ValueError(shown(str(err))))
    click.echo(f"wrote {shown(path)}")


def _draw_binding(run_dir, out):
    from slotref import viz as viz_module
    from slotref.io import LogError, read_jsonl

    path = Path(out) if out else Path(run_dir) / "binding.png"
    try:
        viz_module.picture_format(path)  # an unknown suffix is refused before the log is read
        log = Path(run_dir) / "metrics.jsonl"
        if not log.exists():
            raise ValueError(f"{run_dir}: no metrics.jsonl (is it a run directory?)")
        viz_module.draw_binding(path, read_jsonl(log), title=shown(Path(run_dir).resolve().name))
    except (LogError, ValueError, OSError) as err:
        fail(ValueError(shown(str(err))))
    except (KeyError, TypeError) as err:
        fail(ValueError(f"{shown(str(log))}: a record lacks or mistypes {err}; not a log written by `train`"))
    click.echo(f"wrote {shown(path)}")
