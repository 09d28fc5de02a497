"""``eval``: AP (set prediction) or FG-ARI (discovery) of a run, its binding diagnostics, or its validation
curve."""

from __future__ import annotations

import json
from pathlib import Path

import click

from slotref.cli.common import fail, kernels_option, result_table
from slotref.training.config import LIMITS


# Why eval does not relaunch itself on one rank per core as `train --procs auto` does: starting the ranks
# costs seconds that an evaluation of a few hundred examples does not win back, and NumPy's threads use
# the cores meanwhile; under a hand-typed mpiexec the examples are shared among the ranks.
CORES_NOTE = ("note: evaluated in one process, on NumPy's threads; `mpiexec -n N` before the command shares the "
              "examples among N ranks (slotref docs scale)")


@click.command(name="eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None,
              help="K at test time (default: as trained).")
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=None,
              help="T at test time (default: the run's, its train --eval-iters or else T of training).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--dataset", type=click.Path(dir_okay=False), default=None,
              help="Evaluate on every example of this HDF5 file (default: the run's validation split, "
                   "from its training file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--curve", is_flag=True, help="Print the run's validation curve (metrics.jsonl) as a Markdown table.")
@click.option("--positions", is_flag=True,
              help="Set prediction: also the position error of the model, of a fit from where each slot's "
                   "attention lies, and of a constant (training.diagnostics.position_readout).")
@click.option("--binding", is_flag=True,
              help="Also the binding diagnostics of each iteration (attention entropy, slot cosine, slot change) "
                   "on the first 64 scenes (slotref docs binding).")
@kernels_option
def evaluate(run_dir, num_slots, num_iters, device, dataset, as_json, curve, positions, binding):
    """AP at the five thresholds and per object count (set prediction), or FG-ARI (discovery)."""
    if curve:
        from slotref.io import LogError
        from slotref.training import TrainingError
        from slotref.training.logs import curve_table

        try:
            click.echo(curve_table(Path(run_dir)))
        except (LogError, OSError, TrainingError) as err:
            fail(err)
        except (KeyError, TypeError, ValueError) as err:
            fail(ValueError(f"{Path(run_dir) / 'metrics.jsonl'}: a record lacks or mistypes {err}; "
                            "not a log written by `train`"))
        return

    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.training import TrainingError, launch
    from slotref.training.evaluation import evaluate_run
    from slotref.training.logs import format_metric
    from slotref.training.resolve import OptionError

    try:
        config, result = evaluate_run(run_dir, num_slots, num_iters, device, dataset, positions, binding)
    except OptionError as err:
        raise click.UsageError(str(err))
    except (TrainingError, DatasetError, BackendError, ValueError, OSError) as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{run_dir}: step {result['step']}, K={result['num_slots']}, T={result['num_iters']}, {result['examples']} examples")
    if launch.launched_size() <= 1:
        click.echo(CORES_NOTE)
    if config.task == "setpred":
        click.echo(result_table("setpred", config, {k: v for k, v in result.items() if k.startswith("ap_") and
                                                     not isinstance(v, dict)}, result["num_iters"]))
        click.echo("matched objects: " + ", ".join(
            f"{k[4:]} accuracy {100 * result[k]:.1f}%" for k in result if k.startswith("acc_"))
            + f", median position error {result['median_distance']:.2f}")
        click.echo("AP by number of objects (Figures 21/22):")
        for n, row in result["ap_by_num_objects"].items():
            click.echo(f"  {n:>2} objects: " + "  ".join(f"AP_{t}={100 * a:5.1f}%" for t, a in row.items()))
        if positions:
            click.echo("position error of the matched objects on the second half of the examples (CLEVR units; "
                       "fit and mean made on the first half):")
            labels = {"model": "the model's prediction", "attention": "fit from the slot's attention",
                      "constant": "the mean position"}
            for name, row in result["positions"].items():
                click.echo(f"  {labels[name]:<30} median {row['median_distance']:.2f}, within 1: "
                           f"{100 * row['within_1']:.1f}%, within 0.5: {100 * row['within_0.5']:.1f}%")
    else:
        click.echo(result_table("discovery", config, result, result["num_iters"]))
        for k, v in result.items():
            if k not in ("step", "num_slots", "num_iters", "examples", "fg_ari", "binding"):
                click.echo(f"  {k}: {format_metric(k, v)}")
    if binding:
        echo_binding(result["binding"])


def echo_binding(diagnostics: dict | None) -> None:
    """The binding diagnostics as a table: a row per diagnostic, a column per iteration."""
    from slotref.training.binding import BINDING_EXAMPLES

    if diagnostics is None:
        click.echo("binding: none (the Slot MLP has no Slot Attention iterations)")
        return
    click.echo(f"binding, on the first {BINDING_EXAMPLES} scenes (slotref docs binding):")
    iterations = len(diagnostics["entropy"])
    click.echo(f"  {'iteration':<12}" + "".join(f"{t:>8}" for t in range(1, iterations + 1)))
    for key, values in diagnostics.items():
        click.echo(f"  {key:<12}" + "".join(f"{v:>8.3f}" for v in values))
