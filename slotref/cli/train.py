"""``train``: train a model on built-in data or an HDF5 file, with the appendix B switches.

The options are parsed here and handed to ``slotref.training.resolve``, which decides the configuration,
the resume policy and how many ranks to start."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from slotref.cli.common import PRESET_COSTS, dataset_name, fail, kernels_option, result_table
from slotref.paths import shown
from slotref.slot_attention import ABLATIONS
from slotref.training.config import LIMITS


def _ablation_options(fn):
    """One option per appendix B switch of ``SlotAttentionConfig``, then soft k-means and the position embedding."""
    flag = {name: "--" + name.replace("_", "-") for name in [*ABLATIONS, "position_embedding"]}
    options = [click.option(f"{flag[name]}/--no-{flag[name][2:]}" if values is bool else flag[name], default=None,
                            type=None if values is bool else click.Choice(values), help=f"{figure} ablation.")
               for name, (figure, values) in {**ABLATIONS, "position_embedding": ("Figure 8", bool)}.items()]
    options.insert(-1, click.option("--soft-kmeans", is_flag=True, help="Appendix B: identity k/q/v, no GRU, no "
                                    "LayerNorm (the per-location MLP widened to the slot size)."))
    for option in reversed(options):
        fn = option(fn)
    return fn


def _procs_option(ctx, param, value):
    if value == "auto" or value is None:
        return "auto"
    if not str(value).isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: a number of processes (1, 2, ...) or auto")
    return int(value)


def _explicit(ctx, name) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


@click.command()
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default="setpred", show_default=True)
@click.option("--dataset", default=None, callback=dataset_name,
              help="Built-in generator (clevr-shapes; tetrominoes, multi-dsprites, clevr6-shapes) or an HDF5 file.")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True, help=PRESET_COSTS + ".")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from a saved configuration (a run's config.json, or any JSON in that shape, keys left "
                   "out taking the preset's values, scaled to its steps); the flags given override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration (JSON) and exit.")
@click.option("--fast-dev-run", is_flag=True,
              help="A tiny model on 64 built-in scenes for 4 steps, one evaluation, a checkpoint and the result "
                   "table, in seconds: checks the pipeline, the numbers mean nothing.")
@click.option("--model", type=click.Choice(["slot-attention", "slot-mlp"]), default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: $SLOTREF_DEVICE or cpu.")
@click.option("--steps", type=click.IntRange(1, LIMITS["steps"]), default=None,
              help="Training steps; warm-up, decay, evaluation and checkpoint intervals scale with it.")
@click.option("--batch-size", type=click.IntRange(1, LIMITS["batch_size"]), default=None)
@click.option("--num-slots", type=click.IntRange(1, LIMITS["model.num_slots"]), default=None, help="K at training time.")
@click.option("--num-iters", type=click.IntRange(1, LIMITS["model.num_iterations"]), default=None,
              help="T at training time.")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Base learning rate (default: the preset's; 4e-4 as the paper, 8e-4 in the discovery cpu presets).")
@click.option("--init", type=click.Choice(["glorot", "torch"]), default=None,
              help="Initialisers: Glorot as the official code (default), or PyTorch's defaults.")
@click.option("--warmup-steps", type=click.IntRange(0, LIMITS["warmup_steps"]), default=None,
              help="Learning-rate warm-up in steps (default: the preset's, scaled with --steps).")
@click.option("--decay-steps", type=click.IntRange(1, LIMITS["decay_steps"]), default=None,
              help="The learning rate halves every this many steps (default: the preset's, scaled with --steps).")
@click.option("--curriculum", default=None,
              help='Training stages beyond the paper, such as "slots=1,objects=1:1000; slots=3,reset_adam,warmup=500" '
                   '(slotref docs curriculum); "" for none. Default: the preset\'s, dropped for a model that cannot follow it.')
@click.option("--coord-weight", type=click.FloatRange(0, 1e6, min_open=True), default=None,
              help="Set prediction: weight of the coordinates in the Huber loss (default 1, the paper's; "
                   "slotref docs curriculum).")
@click.option("--matching-coord-weight", type=click.FloatRange(0, 1e6, min_open=True), default=None,
              help="Set prediction: their weight in the cost the Hungarian matching minimises (default: "
                   "--coord-weight's; slotref docs curriculum).")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Evaluate an exponential moving average of the parameters with this decay, restarted at each "
                   "curriculum stage; 0: the parameters themselves (default: the preset's).")
@click.option("--grad", type=click.Choice(["all", "last"]), default=None,
              help="Gradient through Slot Attention's iterations: all (the paper's, default) or last "
                   "(implicit differentiation: the slots entering the last iteration are a constant; "
                   "slotref docs binding).")
@click.option("--restart-unbound", type=click.IntRange(0, LIMITS["restart_unbound"]), default=None, metavar="STEPS",
              help="Draw new initial weights (a fresh Adam state, the learning-rate schedule from that step) when "
                   "the slots have not bound STEPS steps into a draw, at most twice; 0: never (default: the "
                   "preset's; slotref docs binding).")
@click.option("--eval-iters", type=click.IntRange(1, LIMITS["eval_iterations"]), default=None,
              help="T at test time (validation and the reported evaluation). Default: the preset's (5 in the "
                   "setpred cpu preset), or T of training when --num-iters is given.")
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
@click.option("--keep-checkpoints", default=None, metavar="last|best|every:N",
              help="Checkpoints kept beside checkpoint.h5 (the last): best, checkpoint-best.h5 at the best "
                   "validation AP_inf (FG-ARI for discovery); every:N, checkpoint-STEP.h5 every N steps. "
                   "Default: last, none kept.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--procs", default="auto", show_default=True, envvar="SLOTREF_PROCS", callback=_procs_option,
              help="Train on N local processes, one BLAS thread each (mpiexec -n N, data parallel, slotref docs scale). "
                   "auto: on the CPU, one per core up to one per 4 examples of the batch, when mpi4py and "
                   "mpiexec are installed; 1: this process alone.")
@_ablation_options
@kernels_option
@click.pass_context
def train(ctx, task, dataset, preset, config_file, print_config, fast_dev_run, out, resume, logger, quiet, procs,
          **_):
    """Train a model; ends with the AP (set prediction) or FG-ARI (discovery) table.

    \b
    slotref train --task setpred --fast-dev-run     # the whole pipeline in seconds
    slotref train --task setpred                    # the cpu preset, ~15 min on 2 cores
    slotref train --config runs/RUN/config.json --seed 1
    """
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.io import LockError
    from slotref.training import TrainingError, launch, load_run, resolve, train as run_training

    flags = {p.opts[0]: ctx.params[p.name] for p in ctx.command.params
             if p.opts[0] in resolve.OPTION_FIELDS and _explicit(ctx, p.name)}
    flags.update({"--fast-dev-run": True} if fast_dev_run else {})
    task, preset = (task if _explicit(ctx, "task") else None), (preset if _explicit(ctx, "preset") else None)
    run_dir, config = Path(out) if out else "RUN_DIR", None
    try:
        if config_file and resume:
            raise resolve.OptionError("--config", "a resumed run keeps its own config.json; drop --config")
        if not (resume and out):
            config, notes = resolve.resolve_config(task, dataset, preset, config_file, flags)
            run_dir = Path(out) if out else resolve.default_run_dir(config, fast_dev_run)
        if resume:
            config, notes = resolve.resume_config(run_dir, task, dataset, preset, flags)
        if print_config:
            click.echo(config.to_json())
            return
        typed = sys.argv[1:] == ctx.meta.get("slotref.argv")  # not a CliRunner call
        ranks, launch_notes = resolve.ranks_to_launch(procs, config, typed, fast_dev_run)
        if ranks > 1:  # every rank parses this same command; rank 0 prints the notes
            sys.exit(launch.relaunch(ranks, run_dir))  # the ranks' exit status, 1 if one died
        for note in notes + launch_notes:
            click.echo(f"note: {note}")
        click.echo(f"run directory: {shown(run_dir)}")
        result = run_training(config, run_dir, resume=resume, progress=not quiet,
                              tensorboard=logger == "tensorboard", echo=click.echo, command=_command_line(ctx))
        if not result:  # resumed a finished run
            _, be, params, task_obj, val, _ = load_run(run_dir)
            result = task_obj.evaluate(be, params, val)
    except resolve.OptionError as err:
        raise click.BadParameter(str(err), param_hint=err.option) if err.option else click.UsageError(str(err))
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; continue with: slotref train --task {getattr(config, 'task', 'setpred')} --out "
                   f"{run_dir} --resume\n", err=True)
        sys.exit(143 if "SIGTERM" in str(err) else 130)
    except (TrainingError, DatasetError, BackendError, ValueError, OSError, LockError) as err:
        fail(err)
    closing = [result_table(config.task, config, result)]
    if fast_dev_run:
        closing.append("(fast dev run: a tiny model for a few steps; the numbers mean nothing)")
    closing.append(shown(f"run directory: {run_dir}  (slotref eval {run_dir}; slotref viz {run_dir})"))
    click.echo("\n".join(closing))
    if launch.world().is_root:  # the run's console.log ends as the terminal does
        from slotref.training.logs import RunLog

        RunLog(run_dir).console("\n".join(closing))


def _command_line(ctx) -> list[str]:
    """The command as typed: ``python cli.py ...`` from a checkout, else ``slotref ...``."""
    root = ctx.find_root().info_name
    prog = ["python", "cli.py"] if root == "cli.py" else ["slotref"]
    return prog + ctx.meta.get("slotref.argv", sys.argv[1:])
