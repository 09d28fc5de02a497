"""``bench``: speed of the layers, the Slot Attention module, the training step, data generation, the allreduce."""

from __future__ import annotations

import click

from slotref.cli.common import DatasetChoice, kernels_option
from slotref.training.config import LIMITS


@click.command()
@click.option("--what", type=click.Choice(["layers", "module", "step", "data", "allreduce", "all"]), default="step",
              show_default=True)
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default=None,
              help="Benchmark the training step of one task (default: both).")
@click.option("--dataset", type=DatasetChoice(["tetrominoes", "multi-dsprites", "clevr6-shapes"]), default=None,
              help="Discovery dataset of --what step (default: all three).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--batch-size", type=click.IntRange(1, LIMITS["batch_size"]), default=None)
@click.option("--resolution", type=click.IntRange(8, LIMITS["model.resolution"]), default=None)
@click.option("--repeats", type=click.IntRange(1, 10_000), default=3, show_default=True)
@click.option("--profile", is_flag=True, help="Per-layer time, FLOPs and GFLOP/s of the training step.")
@kernels_option
def bench(what, task, dataset, device, batch_size, resolution, repeats, profile):
    """Speed: layers, the Slot Attention module, the full training step, data generation.

    Under mpiexec -n N: --what step times the data-parallel step (global batch --batch-size, each rank its
    slice plus the allreduce); --what allreduce times the gradient allreduce of the paper's models and prints
    the projected scaling to 8/64/512 GPUs (slotref docs scale).
    """
    try:
        _bench(what, task, dataset, device, batch_size, resolution, repeats, profile)
    except MemoryError as err:  # a batch or resolution this machine cannot hold
        why = str(err).splitlines()[0] if str(err) else "MemoryError"
        raise click.ClickException(f"bench: out of memory ({why}); lower --batch-size or --resolution") from None


def _bench(what, task, dataset, device, batch_size, resolution, repeats, profile):
    if what == "allreduce":
        from slotref.bench import allreduce
        from slotref.training.launch import world

        w = world()
        with w.fail_fast():
            rows = allreduce.time_allreduce(w, repeats=max(repeats, 20), device=device or "cpu")
        click.echo(w.describe())
        click.echo(allreduce.format_timing(rows))
        click.echo("\nprojected scaling of the paper presets (python -m slotref.bench.allreduce project):")
        click.echo(allreduce.format_projection(allreduce.project()))
        return

    if (task is not None or dataset is not None) and what != "step":
        raise click.UsageError(f"--task and --dataset choose configurations of --what step, not of --what {what}; "
                               "leave them out or pass --what step")
    from slotref.backend import get_backend

    be = get_backend(device, "float32")
    if what in ("layers", "all"):
        from slotref.bench.convolutions import bench_layers
        bench_layers(be, repeats, click.echo)
    if what in ("module", "all"):
        from slotref.bench.module import bench_module, format_bench_module
        click.echo(format_bench_module(bench_module(repeats=repeats)))
    if what in ("step", "all"):
        from slotref.bench.step import bench_step
        bench_step(be, task, dataset, batch_size, resolution, repeats, profile, click.echo)
    if what in ("data", "all"):
        from slotref.bench.step import bench_data
        bench_data(click.echo)
