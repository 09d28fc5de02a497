"""``experiment``: train and evaluate one of the paper's experiments over seeds."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from slotref.experiments.plans import EXPERIMENTS, SEEDS, ExperimentError, Options
from slotref.cli.common import DatasetChoice, fail
from slotref.paper import DISCOVERY_DATASETS


# Why an experiment does not relaunch itself on one rank per core as `train --procs auto` does: NumPy's
# threads already keep the cores busy (two ranks gain little on two cores: docs/experiments.md), and
# each configuration has its own batch to share out; under a hand-typed mpiexec every run does use the ranks.
CORES_NOTE = ("note: training and evaluating in one process, on NumPy's threads; `mpiexec -n N` before the "
              "command shares every run among N ranks (slotref docs experiments)")


@click.command()
@click.argument("name", type=click.Choice(list(EXPERIMENTS)))
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Train seeds 0..N-1 of every configuration (default: 3 with --preset cpu, 5 with paper).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps per run (default: the preset's); warm-up, decay, evaluation and checkpoint "
                   "intervals scale with it.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: $SLOTREF_DEVICE or cpu.")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="cpu: the small problems of `train --preset cpu`; paper: Table 11 (for GPUs).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory of the runs and results.{md,json} (default runs/experiments/NAME).")
@click.option("--task", "tasks", type=click.Choice(["setpred", "discovery"]), multiple=True,
              help="iterations, more-objects, ablations: only this task (default both).")
@click.option("--dataset", type=DatasetChoice(DISCOVERY_DATASETS), default=None,
              help="Discovery dataset of iterations and ablations (default tetrominoes); table1: only this one.")
@click.option("--config", "only", multiple=True,
              help="Run only these configurations (repeatable; --list shows them, with the optional ablations).")
@click.option("--list", "list_only", is_flag=True, help="List the configurations and exit.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--smoke", is_flag=True, hidden=True,
              help="A tiny model on tiny data, to check the pipeline in seconds (numbers mean nothing).")
def experiment(name, seeds, steps, device, preset, out, tasks, dataset, only, list_only, quiet, smoke):
    """Train and evaluate one of the paper's experiments over seeds; writes a table next to the paper's numbers.

    \b
    table1        FG-ARI, Slot Attention vs Slot MLP, 3 discovery datasets (Table 1)
    table3        AP at five thresholds, Slot Attention vs Slot MLP (Table 3)
    iterations    trained with T = 3, tested with T = 3..7 (Figures 2 right, 5 centre)
    more-objects  trained on <= 6 objects, tested on N = 6..10 with K = N; CLEVR10 with K = 11 (Figures 5, 2)
    ablations     the appendix B switches against the default (Figures 7-19)

    Rerunning resumes: finished runs are not retrained, interrupted ones continue.
    """
    from slotref import backend
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.experiments.runner import command_line, run_experiment, smoke_overrides
    from slotref.training import TrainingError, launch

    device = (device or os.environ.get(backend.DEVICE_ENV) or "cpu").lower()
    opts = Options(preset=preset, steps=steps, seeds=seeds or SEEDS[preset], device=device,
                   tasks=tuple(tasks) or ("setpred", "discovery"), dataset=dataset,
                   overrides=functools.partial(smoke_overrides, steps=steps or 2) if smoke else None)
    command = command_line(name, opts, tuple(only), out) + (" --smoke" if smoke else "")
    if out is None:
        out = Path("runs") / ("experiments-smoke" if smoke else "experiments") / name
    try:
        if list_only:
            all_configs, _ = EXPERIMENTS[name].plan(opts)
            for c in (c for c in all_configs if c.task in opts.tasks):
                click.echo(f"{c.name:32s} {c.task:9s} {c.dataset:15s} {'' if c.default else '(optional)'}")
            return
        if launch.launched_size() <= 1:
            click.echo(CORES_NOTE)
        run_experiment(name, opts, out, tuple(only), progress=not quiet, echo=click.echo, command=command)
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; rerun the same command to resume", err=True)
        raise SystemExit(130)
    except (ExperimentError, TrainingError, DatasetError, BackendError, ValueError) as err:
        fail(err)
