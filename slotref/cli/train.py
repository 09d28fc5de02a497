"""``train``: train a model on built-in data or an HDF5 file, with the appendix B switches."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from slotref.cli.common import fail, result_table
from slotref.training.config import LIMITS

# Flags that define the model, the data or the optimisation: a resumed run keeps
# them (parameter name -> the option and its value in a saved TrainConfig).
# Every other flag (--steps, --device, --quiet) may change when resuming.
RESUME_FIXED = {
    "task": ("--task", lambda c: c.task),
    "dataset": ("--dataset", lambda c: c.dataset),
    "preset": ("--preset", lambda c: c.preset),
    "model_name": ("--model", lambda c: c.model.model),
    "batch_size": ("--batch-size", lambda c: c.batch_size),
    "num_slots": ("--num-slots", lambda c: c.model.num_slots),
    "num_iters": ("--num-iters", lambda c: c.model.num_iterations),
    "lr": ("--lr", lambda c: c.learning_rate),
    "init_scheme": ("--init", lambda c: c.model.init),
    "seed": ("--seed", lambda c: c.seed),
    "position_embedding": ("--position-embedding", lambda c: c.model.position_embedding),
    "soft_kmeans": ("--soft-kmeans", lambda c: c.model.slot_attention.projections == "identity"),
    **{name: ("--" + name.replace("_", "-"), lambda c, name=name: getattr(c.model.slot_attention, name))
       for name in ("aggregation", "softmax_axis", "slot_init", "update", "layer_norms", "residual_mlp",
                    "temperature", "epsilon_placement")},
}


def _resume_config(run_dir: Path, given: dict, steps, device):
    """The saved config of ``run_dir`` with the flags a resume may change; a flag that would change the
    model, the data or the optimisation is a one-line error naming it and both values."""
    from click.core import ParameterSource

    from slotref.training import TrainingError
    from slotref.training.loop import read_run_config

    if not (run_dir / "config.json").exists():
        raise TrainingError(f"nothing to resume in {run_dir}: no config.json")
    saved = read_run_config(run_dir)
    ctx = click.get_current_context()
    for name, (flag, stored) in RESUME_FIXED.items():
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        value, old = given[name], stored(saved)
        same = value == old or (name == "dataset" and Path(str(value)).resolve() == Path(str(old)).resolve())
        if not same and not (name == "soft_kmeans" and not value):
            raise click.UsageError(f"{flag} {value}: the run in {run_dir} was trained with {flag} {old}; "
                                   f"drop {flag} to resume it, or start a new run with another --out")
    changes = {"steps": steps, "device": device}
    for key, value in changes.items():
        if value is not None and value != getattr(saved, key):
            click.echo(f"note: resuming with {key} = {value} (was {getattr(saved, key)}); config.json records it")
    return replace(saved, **{k: v for k, v in changes.items() if v is not None})


def _ablation_options(fn):
    options = [
        click.option("--aggregation", type=click.Choice(["mean", "sum", "sum_layernorm"]), help="Figure 7 ablation."),
        click.option("--softmax-axis", type=click.Choice(["slots", "inputs"]), help="Figure 10 ablation."),
        click.option("--slot-init", type=click.Choice(["shared", "per_slot"]), help="Figure 9 ablation."),
        click.option("--update", type=click.Choice(["gru", "none"]), help="Figure 11 ablation."),
        click.option("--layer-norms/--no-layer-norms", default=None, help="Figure 13 ablation."),
        click.option("--residual-mlp/--no-residual-mlp", default=None, help="Figure 14 ablation."),
        click.option("--temperature", type=click.Choice(["sqrt_d", "one"]), help="Figure 15 ablation."),
        click.option("--epsilon-placement", type=click.Choice(["attention", "denominator"]), help="Figure 16 ablation."),
        click.option("--soft-kmeans", is_flag=True, help="Appendix B: identity k/q/v, no GRU, no LayerNorm."),
        click.option("--position-embedding/--no-position-embedding", default=None, help="Figure 8 ablation."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _apply_ablations(config, kw):
    from slotref.slot_attention import SlotAttentionConfig

    sa = config.model.slot_attention
    if kw.pop("soft_kmeans"):
        if config.model.mlp_size != sa.slot_size:
            raise click.ClickException("--soft-kmeans needs input features as wide as the slots")
        sa = SlotAttentionConfig.soft_kmeans(input_size=sa.input_size, slot_size=sa.slot_size)
    fields = ("aggregation", "softmax_axis", "slot_init", "update", "layer_norms", "residual_mlp",
              "temperature", "epsilon_placement")
    sa = replace(sa, **{f: kw.pop(f) for f in fields if kw.get(f) is not None})
    for f in fields:
        kw.pop(f, None)
    model = replace(config.model, slot_attention=sa)
    pe = kw.pop("position_embedding")
    if pe is not None:
        model = replace(model, position_embedding=pe)
    return replace(config, model=model)


@click.command()
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default="setpred", show_default=True)
@click.option("--dataset", default=None,
              help="Built-in generator (clevr-shapes; tetrominoes, multi-dsprites, clevr6-shapes) or an HDF5 file.")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="cpu: minutes on a laptop; paper: Table 11 (for GPUs).")
@click.option("--model", "model_name", type=click.Choice(["slot-attention", "slot-mlp"]), default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: $SLOTREF_DEVICE or cpu.")
@click.option("--steps", type=click.IntRange(1, LIMITS["steps"]), default=None)
@click.option("--batch-size", type=click.IntRange(1, LIMITS["batch_size"]), default=None)
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None, help="K at training time.")
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=None,
              help="T at training time.")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Base learning rate (default: the preset's; 4e-4 as the paper, 8e-4 in the discovery cpu presets).")
@click.option("--init", "init_scheme", type=click.Choice(["glorot", "torch"]), default=None,
              help="Initialisers: Glorot as the official code (default), or PyTorch's defaults.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/<task>-...).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_ablation_options
def train(task, dataset, preset, model_name, device, steps, batch_size, num_slots, num_iters, lr, init_scheme, seed,
          out, resume, quiet, **ablations):
    """Train a model; ends with the AP (set prediction) or FG-ARI (discovery) table."""
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.io import LockError
    from slotref.training import TrainingError, fit_to_file, preset_config, train as run_training

    run_dir = Path(out) if out else "RUN_DIR"
    given = dict(click.get_current_context().params)
    try:
        config = preset_config(task, dataset, preset)
        if not resume:
            config, notes = fit_to_file(config, keep_slots=num_slots is not None)
            for note in notes:
                click.echo(f"note: {note}")
        model = config.model
        if num_slots is not None:
            model = replace(model, num_slots=num_slots)
        if num_iters is not None:
            model = replace(model, num_iterations=num_iters)
        if model_name is not None:
            model = replace(model, model=model_name)
        if init_scheme is not None:
            model = replace(model, init=init_scheme)
        run_dir = Path(out) if out else Path("runs") / f"{task}-{Path(config.dataset).stem}-{preset}-seed{seed}"
        config = replace(config, model=model, seed=seed,
                         **{k: v for k, v in (("steps", steps), ("batch_size", batch_size),
                                              ("learning_rate", lr), ("device", device)) if v is not None})
        config = _apply_ablations(config, ablations)
        if resume:
            config = _resume_config(run_dir, given, given["steps"], device)
        click.echo(f"run directory: {run_dir}")
        result = run_training(config, run_dir, resume=resume, progress=not quiet)
        if not result:  # resumed a finished run
            from slotref.training import load_run
            cfg, be, params, task_obj, val, _ = load_run(run_dir)
            result = task_obj.evaluate(be, params, val)
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; continue with: python cli.py train --task {task} --out "
                   f"{run_dir} --resume\n", err=True)
        sys.exit(143 if "SIGTERM" in str(err) else 130)
    except (TrainingError, DatasetError, BackendError, ValueError, OSError, LockError) as err:
        fail(err)
    click.echo(result_table(task, config, result))
    click.echo(f"run directory: {run_dir}  (python cli.py eval {run_dir}; python cli.py viz {run_dir})")
