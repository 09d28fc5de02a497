"""``train``: train a model on built-in data or an HDF5 file, with the appendix B switches."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from slotref.cli.common import PRESET_COSTS, dataset_name, fail, kernels_option, result_table
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
    "warmup_steps": ("--warmup-steps", lambda c: c.warmup_steps),
    "decay_steps": ("--decay-steps", lambda c: c.decay_steps),
    "curriculum": ("--curriculum", lambda c: c.curriculum),
    "coord_weight": ("--coord-weight", lambda c: c.coord_weight),
    "matching_coord_weight": ("--matching-coord-weight", lambda c: c.matching_coord_weight),
    "ema": ("--ema", lambda c: c.ema),
    "eval_iters": ("--eval-iters", lambda c: c.eval_iterations),
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


def _procs_option(ctx, param, value):
    if value == "auto" or value is None:
        return "auto"
    if not str(value).isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: a number of processes (1, 2, ...) or auto")
    return int(value)


def _ranks_to_launch(procs, config, resume_dir, fast_dev_run) -> int:
    """How many ranks ``train`` should start under mpiexec (1: run in this process).

    ``resume_dir``: the run to resume, whose stored batch size and device count.
    """
    from slotref import distributed
    from slotref.backend import DEVICE_ENV
    from slotref.training.loop import read_run_config

    if distributed.launched_size() > 1 or os.environ.get(distributed.MPI_ENV) == "1":
        return 1  # already a rank
    if resume_dir is not None and (resume_dir / "config.json").exists():
        config = read_run_config(resume_dir)
    if procs == "auto":
        typed = sys.argv[1:] == click.get_current_context().meta.get("slotref.argv")  # not a CliRunner call
        device = config.device or os.environ.get(DEVICE_ENV) or "cpu"
        if not typed or device != "cpu" or fast_dev_run or not distributed.can_launch():
            return 1
        n = distributed.auto_procs(config.batch_size, distributed.usable_cores())
        error = distributed.launch_error(n) if n > 1 else None
        if error:
            click.echo(f"note: training in one process: mpiexec -n {n} could not start ranks here ({error})")
            return 1
        return n
    if procs > 1 and not distributed.can_launch():
        raise click.BadParameter("needs mpi4py and mpiexec: pip install 'slotref[mpi]'", param_hint="--procs")
    if config.batch_size % procs:
        raise click.BadParameter(f"{procs}: the batch of {config.batch_size} does not divide among {procs} "
                                 "processes; choose a divisor of it", param_hint="--procs")
    return procs


def _explicit(ctx, name) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


@click.command()
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default="setpred", show_default=True)
@click.option("--dataset", default=None, callback=dataset_name,
              help="Built-in generator (clevr-shapes; tetrominoes, multi-dsprites, clevr6-shapes) or an HDF5 file.")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help=PRESET_COSTS + ".")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from a saved configuration (a run's config.json, or any JSON in that shape, "
                   "keys left out taking the preset's values); the flags given override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration (JSON) and exit.")
@click.option("--fast-dev-run", is_flag=True,
              help="A tiny model on 64 built-in scenes for 4 steps, one evaluation, a checkpoint and the "
                   "result table, in seconds: checks the pipeline, the numbers mean nothing.")
@click.option("--model", "model_name", type=click.Choice(["slot-attention", "slot-mlp"]), default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: $SLOTREF_DEVICE or cpu.")
@click.option("--steps", type=click.IntRange(1, LIMITS["steps"]), default=None,
              help="Training steps; warm-up, decay, evaluation and checkpoint intervals scale with it "
                   "(as experiment --steps).")
@click.option("--batch-size", type=click.IntRange(1, LIMITS["batch_size"]), default=None)
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None, help="K at training time.")
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=None,
              help="T at training time.")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Base learning rate (default: the preset's; 4e-4 as the paper, 8e-4 in the discovery cpu presets).")
@click.option("--init", "init_scheme", type=click.Choice(["glorot", "torch"]), default=None,
              help="Initialisers: Glorot as the official code (default), or PyTorch's defaults.")
@click.option("--warmup-steps", type=click.IntRange(0, LIMITS["warmup_steps"]), default=None,
              help="Learning-rate warm-up in steps (default: the preset's, scaled with --steps).")
@click.option("--decay-steps", type=click.IntRange(1, LIMITS["decay_steps"]), default=None,
              help="The learning rate halves every this many steps (default: the preset's, scaled with --steps).")
@click.option("--curriculum", default=None,
              help='A training schedule beyond the paper (which trains with the final K throughout): stages '
                   'such as "slots=1,objects=1:1000; slots=3,reset_adam,warmup=500", see docs/curriculum.md. '
                   '"" for none; default: the preset\'s (the setpred cpu preset has one; dropped for the '
                   'Slot MLP, per-slot initialisation or another K).')
@click.option("--coord-weight", type=click.FloatRange(0, 1e6, min_open=True), default=None,
              help="Set prediction: weight of the coordinates in the Huber loss (default 1, the paper's). W = the "
                   "camera zoom weighs them as the paper does unzoomed scenes; it costs attribute accuracy "
                   "(docs/curriculum.md).")
@click.option("--matching-coord-weight", type=click.FloatRange(0, 1e6, min_open=True), default=None,
              help="Set prediction: weight of the coordinates in the cost the Hungarian matching minimises "
                   "(default: --coord-weight's). 1 with --coord-weight W: slots are paired with objects as the "
                   "paper's loss pairs them, and W changes only what each pair learns (docs/curriculum.md).")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Evaluate (and report) an exponential moving average of the parameters with this decay, "
                   "restarted at each curriculum stage; 0: the parameters themselves (default: the preset's; "
                   "docs/curriculum.md).")
@click.option("--eval-iters", type=click.IntRange(1, LIMITS["eval_iterations"]), default=None,
              help="T at test time: the iterations of validation and of the reported evaluation (the paper's "
                   "Figures 5 and 22 test models trained with T = 3 at more). Default: the preset's (5 in the "
                   "setpred cpu preset; T of training when --num-iters is given).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-size", type=click.IntRange(min=1), default=None,
              help="Built-in data: number of scenes of the generated file (default: the preset's).")
@click.option("--data-dir", type=click.Path(file_okay=False), default="data", show_default=True,
              envvar="SLOTREF_DATA_DIR", show_envvar=True, help="Where built-in data is made and cached.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default runs/<task>-<dataset>-<preset>-seed<seed> in the current directory).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--logger", type=click.Choice(["csv", "tensorboard"]), default="csv", show_default=True,
              help="csv: metrics.jsonl, train.csv, eval.csv in the run directory; tensorboard: also "
                   "TensorBoard event files (needs tensorboardX).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--procs", default="auto", show_default=True, envvar="SLOTREF_PROCS", callback=_procs_option,
              help="Train on N local processes, one BLAS thread each (mpiexec -n N, data parallel: they train "
                   "as one process, docs/scale.md). auto: on the CPU, one per core up to one per 4 examples "
                   "of the batch, when mpi4py and mpiexec are installed; 1: this process alone.")
@_ablation_options
@kernels_option
@click.pass_context
def train(ctx, task, dataset, preset, config_file, print_config, fast_dev_run, model_name, device, steps,
          batch_size, num_slots, num_iters, lr, init_scheme, warmup_steps, decay_steps, curriculum, coord_weight,
          matching_coord_weight, ema, eval_iters, seed, data_size, data_dir, out, resume, logger, quiet, procs,
          **ablations):
    """Train a model; ends with the AP (set prediction) or FG-ARI (discovery) table.

    \b
    slotref train --task setpred --fast-dev-run     # the whole pipeline in seconds
    slotref train --task setpred                    # the cpu preset, ~23 min on 2 cores
    slotref train --config runs/RUN/config.json --seed 1
    """
    from slotref import distributed
    from slotref.backend import BackendError
    from slotref.curriculum import fits
    from slotref.data.hdf5 import DatasetError
    from slotref.io import LockError
    from slotref.training import TrainingError, fit_to_file, preset_config, train as run_training
    from slotref.training.presets import fast_dev_run as tiny, scale_budget

    run_dir = Path(out) if out else "RUN_DIR"
    given = dict(click.get_current_context().params)
    notes = []
    try:
        if config_file:
            config = _config_from_file(ctx, config_file, task, dataset, preset)
            task, preset = config.task, config.preset
        else:
            config = preset_config(task, dataset, preset)
        if not resume and (dataset is not None or not config_file):
            config, fitted = fit_to_file(config, keep_slots=num_slots is not None)
            notes += fitted
        is_file = config.dataset.endswith((".h5", ".hdf5"))
        if data_size is not None and is_file:
            raise click.BadParameter("only for built-in data, not for an HDF5 file", param_hint="--data-size")
        if fast_dev_run:
            config = tiny(config, steps=steps, data_size=data_size)
        else:
            config = scale_budget(config, steps)
        model = config.model
        if num_slots is not None:
            model = replace(model, num_slots=num_slots)
        if num_iters is not None:
            model = replace(model, num_iterations=num_iters)
            config = replace(config, eval_iterations=None)  # the preset's test-time T goes with its training T
        if model_name is not None:
            model = replace(model, model=model_name)
        if init_scheme is not None:
            model = replace(model, init=init_scheme)
        changes = {k: v for k, v in (("batch_size", batch_size), ("learning_rate", lr), ("device", device),
                                     ("data_size", data_size), ("warmup_steps", warmup_steps),
                                     ("decay_steps", decay_steps), ("curriculum", curriculum),
                                     ("coord_weight", coord_weight), ("matching_coord_weight", matching_coord_weight),
                                     ("ema", ema), ("eval_iterations", eval_iters)) if v is not None}
        if not config_file or _explicit(ctx, "seed"):
            changes["seed"] = seed
        if not config_file or _explicit(ctx, "data_dir"):
            changes["data_dir"] = data_dir
        config = replace(config, model=model, **changes)
        config = _apply_ablations(config, ablations)
        if curriculum is None and not fits(config):  # the preset's stages need its K and shared slots
            if not print_config:
                notes.append(f"trained without the curriculum {config.curriculum!r}, which needs Slot "
                             "Attention with shared slots and K as its last stage (--curriculum sets one)")
            config = replace(config, curriculum="")
        if print_config:
            click.echo(config.to_json())
            return
        label = "fast-dev-run" if fast_dev_run else config.preset
        run_dir = Path(out) if out else _fresh(Path("runs") / f"{task}-{Path(config.dataset).stem}-{label}"
                                                                  f"-seed{config.seed}", fast_dev_run)
        ranks = _ranks_to_launch(procs, config, run_dir if resume else None, fast_dev_run)
        if ranks > 1:  # every rank parses this same command; rank 0 prints the notes
            distributed.relaunch(ranks)
        if distributed.launched_size() > 1:
            notes.append(f"training on {distributed.launched_size()} processes (mpiexec, data parallel: they "
                         "train as one process, docs/scale.md; --procs 1 runs one)")
        for note in notes:
            click.echo(f"note: {note}")
        if resume:
            config = _resume_config(run_dir, given, given["steps"], device)
        click.echo(f"run directory: {run_dir}")
        result = run_training(config, run_dir, resume=resume, progress=not quiet,
                              tensorboard=logger == "tensorboard", echo=click.echo, command=_command_line(ctx))
        if not result:  # resumed a finished run
            from slotref.training import load_run
            cfg, be, params, task_obj, val, _ = load_run(run_dir)
            result = task_obj.evaluate(be, params, val)
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; continue with: slotref train --task {task} --out "
                   f"{run_dir} --resume\n", err=True)
        sys.exit(143 if "SIGTERM" in str(err) else 130)
    except (TrainingError, DatasetError, BackendError, ValueError, OSError, LockError) as err:
        fail(err)
    click.echo(result_table(task, config, result))
    if fast_dev_run:
        click.echo("(fast dev run: a tiny model for a few steps; the numbers mean nothing)")
    click.echo(f"run directory: {run_dir}  (slotref eval {run_dir}; slotref viz {run_dir})")


def _command_line(ctx) -> list[str]:
    """The command as typed: ``python cli.py ...`` from a checkout, else ``slotref ...``."""
    root = ctx.find_root().info_name
    prog = ["python", "cli.py"] if root == "cli.py" else ["slotref"]
    return prog + ctx.meta.get("slotref.argv", sys.argv[1:])


def _fresh(path: Path, numbered: bool) -> Path:
    """``path``, or with ``numbered`` the first of path, path-2, path-3, ... that holds no run."""
    if not numbered:
        return path
    candidate, i = path, 1
    while (candidate / "checkpoint.h5").exists() or (candidate / "config.json").exists():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def _config_from_file(ctx, path, task, dataset, preset):
    """A TrainConfig from JSON: the preset of its task/preset/dataset, updated with the file's keys."""
    import dataclasses

    from slotref.training import TrainConfig, preset_config

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise click.BadParameter(f"{path}: not a JSON file ({str(err).splitlines()[0]})", param_hint="--config")
    if not isinstance(saved, dict):
        raise click.BadParameter(f"{path}: expected a JSON object", param_hint="--config")
    for flag, value in (("task", task), ("preset", preset)):
        if _explicit(ctx, flag) and saved.get(flag, value) != value:
            raise click.BadParameter(f"{path} has {flag} {saved[flag]!r}; leave --{flag} out or edit the file",
                                     param_hint=f"--{flag}")
        saved.setdefault(flag, value)
    base = dataclasses.asdict(preset_config(saved["task"], saved.get("dataset"), saved["preset"]))
    unknown = sorted(set(saved) - set(base)) + sorted(f"model.{k}" for k in set(saved.get("model", {})) -
                                                       set(base["model"]))
    if unknown:
        raise click.BadParameter(f"{path}: unknown key {unknown[0]}", param_hint="--config")
    model = {**base["model"], **saved.get("model", {})}
    model["slot_attention"] = {**base["model"]["slot_attention"], **saved.get("model", {}).get("slot_attention", {})}
    merged = {**base, **saved, "model": model}
    if dataset is not None:
        merged["dataset"] = dataset
    try:
        return TrainConfig.from_dict(merged)
    except (TypeError, ValueError) as err:
        raise click.BadParameter(f"{path}: {err}", param_hint="--config")
