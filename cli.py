#!/usr/bin/env python
"""slotref command line: train, eval, viz, bench, data, info, selfcheck.

    python cli.py train --task setpred          # the main job, on built-in data
    python cli.py eval runs/setpred-...         # AP / FG-ARI of a run
    python cli.py --help                        # everything else
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click



def _paper_ap(threshold: str):
    """Table 3 of the paper: Slot Attention's AP on CLEVR10 (mean, std over 5 seeds)."""
    from slotref.experiments import PAPER_TABLE3
    return PAPER_TABLE3["Slot Attention"][f"AP_{threshold}"]


def _paper_fg_ari(dataset: str):
    """Table 1 of the paper: Slot Attention's FG-ARI, or None for other datasets."""
    from slotref.experiments import PAPER_TABLE1
    return PAPER_TABLE1.get(("Slot Attention", dataset))


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """slotref: a readable, tested reference implementation of Slot Attention."""


# --------------------------------------------------------------------------

@cli.command()
def info():
    """Versions, BLAS, the default device and CuPy/GPU status."""
    import importlib.metadata
    import platform

    import autograd
    import h5py
    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info

    from slotref import __version__, backend

    click.echo(f"slotref {__version__} (Python {platform.python_version()}, {platform.machine()})")
    click.echo(f"numpy {np.__version__}, scipy {scipy.__version__}, autograd {autograd.__version__ if hasattr(autograd, '__version__') else '1.9.x'}, "
               f"h5py {h5py.__version__}, click {importlib.metadata.version('click')}")
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            click.echo(f"BLAS: {pool.get('internal_api')} {pool.get('version')} ({pool.get('threading_layer')}, "
                       f"{pool.get('num_threads')} threads, {pool.get('architecture')})")
    import os
    click.echo(f"default device: {os.environ.get(backend.DEVICE_ENV) or 'cpu'} (set {backend.DEVICE_ENV} or --device)")
    click.echo(f"GPU: {backend.gpu_status()}")


# --------------------------------------------------------------------------

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


@cli.command()
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default="setpred", show_default=True)
@click.option("--dataset", default=None,
              help="Built-in generator (clevr-shapes; tetrominoes, multi-dsprites, clevr6-shapes) or an HDF5 file.")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="cpu: minutes on a laptop; paper: Table 11 (for GPUs).")
@click.option("--model", "model_name", type=click.Choice(["slot-attention", "slot-mlp"]), default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: $SLOTREF_DEVICE or cpu.")
@click.option("--steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--num-slots", type=int, default=None, help="K at training time.")
@click.option("--num-iters", type=int, default=None, help="T at training time.")
@click.option("--lr", type=float, default=None,
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
    from slotref.train import TrainingError, fit_to_file, preset_config, train as run_training

    run_dir = Path(out) if out else "RUN_DIR"
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
        if resume and steps is None and (run_dir / "config.json").exists():
            steps = json.loads((run_dir / "config.json").read_text())["steps"]  # continue to the saved goal
        config = replace(config, model=model, seed=seed,
                         **{k: v for k, v in (("steps", steps), ("batch_size", batch_size),
                                              ("learning_rate", lr), ("device", device)) if v is not None})
        config = _apply_ablations(config, ablations)
        click.echo(f"run directory: {run_dir}")
        result = run_training(config, run_dir, resume=resume, progress=not quiet)
        if not result:  # resumed a finished run
            from slotref.train import load_run
            cfg, be, params, task_obj, val, _ = load_run(run_dir)
            result = task_obj.evaluate(be, params, val)
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; continue with: python cli.py train --task {task} --out "
                   f"{run_dir} --resume\n", err=True)
        sys.exit(130)
    except (TrainingError, DatasetError, BackendError, ValueError) as err:
        _fail(err)
    click.echo(_result_table(task, config, result))
    click.echo(f"run directory: {run_dir}  (python cli.py eval {run_dir}; python cli.py viz {run_dir})")


def _result_table(task, config, result) -> str:
    if task == "setpred":
        names = ["inf", "1", "0.5", "0.25", "0.125"]
        lines = ["AP (%)                  " + "".join(f"{'AP_' + n:>13}" for n in names),
                 "slotref (this run)      " + "".join(f"{100 * result.get('ap_' + n, float('nan')):>13.1f}"
                                                      for n in names),
                 "paper, CLEVR10 (Table 3)" + "".join(f"{m:>7.1f} ± {s:<3.1f}" for m, s in
                                                      (_paper_ap(n) for n in names))]
        if config.preset != "paper":
            lines.append("(the cpu preset is a smaller problem than CLEVR10: see docs/results.md)")
        return "\n".join(lines)
    ari = 100 * result.get("fg_ari", float("nan"))
    paper = _paper_fg_ari(Path(config.dataset).stem)
    line = f"FG-ARI (%): slotref {ari:.1f}"
    if paper:
        line += f"; paper (Table 1) {paper[0]:.1f} ± {paper[1]:.1f}"
    return line


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--num-slots", type=int, default=None, help="K at test time (default: as trained).")
@click.option("--num-iters", type=int, default=None, help="T at test time (default: as trained).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--dataset", default=None, help="Evaluate on this HDF5 file instead of the run's validation split.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--curve", is_flag=True, help="Print the run's validation curve (metrics.jsonl) as a Markdown table.")
def evaluate(run_dir, num_slots, num_iters, device, dataset, as_json, curve):
    """AP at the five thresholds and per object count (set prediction), or FG-ARI (discovery)."""
    if curve:
        click.echo(_curve_table(Path(run_dir)))
        return

    from slotref import metrics
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError
    from slotref.train import TrainingError, load_file, load_run, threshold_name

    try:
        config, be, params, task, val, step = load_run(run_dir, device)
        if dataset:
            val, _ = load_file(Path(dataset), config, any_object_count=True)
        if config.model.model == "slot-mlp" and num_slots not in (None, config.model.num_slots):
            raise click.ClickException("the Slot MLP baseline has a fixed number of slots")
        result = {"step": step, "num_slots": num_slots or config.model.num_slots,
                  "num_iters": num_iters or config.model.num_iterations, "examples": len(val)}
        if config.task == "setpred":
            preds, attn = task.predict(be, params, val, num_slots, num_iters)
            result.update(task.scores(preds, val.targets))
            by_n = metrics.ap_by_num_objects(preds, val.targets)
            result["ap_by_num_objects"] = {str(n): {threshold_name(t): a for t, a in row.items()}
                                           for n, row in by_n.items()}
        else:
            result.update(task.evaluate(be, params, val, num_slots, num_iters))
    except (TrainingError, DatasetError, BackendError, ValueError) as err:
        _fail(err)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{run_dir}: step {step}, K={result['num_slots']}, T={result['num_iters']}, {result['examples']} examples")
    if config.task == "setpred":
        click.echo(_result_table("setpred", config, {k: v for k, v in result.items() if k.startswith("ap_") and
                                                     not isinstance(v, dict)}))
        click.echo("matched objects: " + ", ".join(
            f"{k[4:]} accuracy {100 * result[k]:.1f}%" for k in result if k.startswith("acc_"))
            + f", median position error {result['median_distance']:.2f}")
        click.echo("AP (%) by number of objects (Figures 21/22):")
        for n, row in result["ap_by_num_objects"].items():
            click.echo(f"  {n:>2} objects: " + "  ".join(f"AP_{t}={100 * a:5.1f}" for t, a in row.items()))
    else:
        for k, v in result.items():
            if k not in ("step", "num_slots", "num_iters", "examples"):
                click.echo(f"  {k}: {v}")


def _curve_table(run_dir: Path) -> str:
    """The evaluations logged during training: step, minutes of training, metrics (%)."""
    import numpy as np

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise click.ClickException(f"{run_dir}: no metrics.jsonl (is it a run directory?)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "eval" in r]
    if not evals:
        return f"{run_dir}: no evaluation logged yet"
    # Minutes of training: the time between consecutive log lines, leaving out
    # pauses (an interrupted and resumed run), i.e. gaps over 10x the median.
    times = np.array([r["time"] for r in records])
    gaps = np.diff(times, prepend=times[0])
    gaps[gaps > 10 * np.median(gaps[1:] if len(gaps) > 1 else gaps)] = 0.0
    elapsed = np.cumsum(gaps) / 60
    keys = [k for k, v in evals[0]["eval"].items() if isinstance(v, float)]
    lines = ["| step | minutes | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for i, r in enumerate(records):
        if "eval" not in r:
            continue
        values = " | ".join(f"{100 * r['eval'][k]:.1f}" if k.startswith(("ap_", "fg_ari", "acc_")) else f"{r['eval'][k]:.3f}"
                            for k in keys)
        lines.append(f"| {r['step']} | {elapsed[i]:.1f} | {values} |")
    return "\n".join(lines)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG file (default RUN_DIR/viz.png).")
@click.option("--num-images", type=int, default=4, show_default=True)
@click.option("--num-slots", type=int, default=None)
@click.option("--num-iters", type=int, default=None)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
def viz(run_dir, out, num_images, num_slots, num_iters, device):
    """Draw a run's validation images with attention, masks and predictions (Figure 3 / Table 2 style)."""
    from slotref import viz as viz_module
    from slotref.train import TrainingError, load_run

    try:
        config, be, params, task, val, step = load_run(run_dir, device)
        path = Path(out) if out else Path(run_dir) / "viz.png"
        viz_module.draw_run(path, config, be, params, task, val.take(slice(0, num_images)), num_slots, num_iters)
    except (TrainingError, ValueError) as err:
        _fail(err)
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--what", type=click.Choice(["layers", "module", "step", "data", "all"]), default="step",
              show_default=True)
@click.option("--task", type=click.Choice(["setpred", "discovery"]), default=None,
              help="Benchmark the training step of one task (default: both).")
@click.option("--dataset", default=None, help="Discovery dataset: tetrominoes, multi-dsprites, clevr6-shapes.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--resolution", type=int, default=None)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--profile", is_flag=True, help="Per-layer time, FLOPs and GFLOP/s of the training step.")
def bench(what, task, dataset, device, batch_size, resolution, repeats, profile):
    """Speed: layers, the Slot Attention module, the full training step, data generation."""
    from slotref import bench as bench_module

    if task is not None or dataset is not None:
        what = "step"
    bench_module.run(what=what, task=task, dataset=dataset, device=device, batch_size=batch_size,
                     resolution=resolution, repeats=repeats, profile=profile, echo=click.echo)


@cli.command()
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True)
def selfcheck(device):
    """Gradient checks of every layer on DEVICE and agreement with NumPy."""
    from slotref.backend import BackendError
    from slotref.selfcheck import run_selfcheck

    try:
        ok = run_selfcheck(device, out=click.echo)
    except BackendError as err:
        _fail(err)
    if not ok:
        sys.exit(1)


def _mount_data_commands():
    from slotref.data.commands import data
    try:
        from slotref.data.convert import convert
        data.add_command(convert)
    except ImportError:
        pass
    cli.add_command(data)


def _mount_experiment_command():
    from slotref.experiments import experiment
    cli.add_command(experiment)


_mount_data_commands()
_mount_experiment_command()

if __name__ == "__main__":
    cli()
