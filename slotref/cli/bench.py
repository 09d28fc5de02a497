"""``bench``: speed of the layers, the Slot Attention module, the training step, data generation."""

from __future__ import annotations

import click

from slotref.cli.common import DatasetChoice


@click.command()
@click.option("--what", type=click.Choice(["layers", "module", "step", "data", "all"]), default="step",
              show_default=True)
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default=None,
              help="Benchmark the training step of one task (default: both).")
@click.option("--dataset", type=DatasetChoice(["tetrominoes", "multi-dsprites", "clevr6-shapes"]), default=None,
              help="Discovery dataset of --what step (default: all three).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--resolution", type=int, default=None)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--profile", is_flag=True, help="Per-layer time, FLOPs and GFLOP/s of the training step.")
def bench(what, task, dataset, device, batch_size, resolution, repeats, profile):
    """Speed: layers, the Slot Attention module, the full training step, data generation."""
    from slotref import bench as bench_module

    if (task is not None or dataset is not None) and what != "step":
        raise click.UsageError(f"--task and --dataset choose configurations of --what step, not of --what {what}; "
                               "leave them out or pass --what step")
    bench_module.run(what=what, task=task, dataset=dataset, device=device, batch_size=batch_size,
                     resolution=resolution, repeats=repeats, profile=profile, echo=click.echo)
