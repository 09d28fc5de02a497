"""Running an experiment: each configuration trained once per seed, probed, tabulated.

Each configuration is trained with ``slotref.training.train`` into
``<out>/<configuration>-seed<k>/`` (an ordinary run directory: ``python cli.py
eval`` and ``viz`` read it), then probed; the cells of the seeds become
"mean ± std" next to the paper's number where the paper prints one, in
``<out>/results.md`` and ``<out>/results.json`` (``slotref.experiments.report``).

Rerunning is cheap: a run whose checkpoint reached its steps is not retrained,
an interrupted run resumes from its checkpoint, and evaluations are cached in
the run directory (``evaluations.json``, keyed by data, K and T, and dropped
when the checkpoint's step changes). A run directory that holds another
configuration (another ``--steps``, ``--preset``...) is an error, never mixed
into a table: choose another ``--out``.

Seeds vary the model: initialisation, data order and slot noise. The data are
the same for every seed (generated once with seed ``DATA_SEED``), as the
paper's seeds share CLEVR; test-only files (more objects) use ``TEST_DATA_SEED``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py

from slotref.data import generators
from slotref.training.launch import world
from slotref.experiments.plans import Configuration, EvalData, ExperimentError, Options, compose, configurations
from slotref.experiments.report import json_safe, render_markdown, summarise
from slotref.io import LockError
from slotref.training import data as run_data
from slotref.training import evaluation, loop
from slotref.training.config import DivergenceError, TrainConfig
from slotref.training.presets import fast_dev_run, preset_config, scale_budget  # noqa: F401 (scale_budget: re-exported)
from slotref.training.resolve import resolve_config

DATA_SEED = 0
TEST_DATA_SEED = 1000
EVALUATIONS_FILE = "evaluations.json"


# --------------------------------------------------------------------------
# Budgets and run configurations.

def run_config(configuration: Configuration, opts: Options, seed: int) -> TrainConfig:
    """The TrainConfig of one run, resolved as ``train`` resolves its options (``training.resolve``):
    preset -> budget -> overrides -> the configuration's transform -> seed and device."""
    flags = {"--seed": seed, "--device": opts.device, **({"--steps": opts.steps} if opts.steps else {})}
    transforms = [t for t in (opts.overrides, configuration.transform) if t is not None]
    config, _ = resolve_config(configuration.task, configuration.dataset, opts.preset, flags=flags,
                               transform=compose(*transforms))
    return config


def pin_dataset(config: TrainConfig, progress: bool = True) -> TrainConfig:
    """The same built-in data for every seed: generated (once) with ``DATA_SEED``, named by its file."""
    if config.dataset.endswith((".h5", ".hdf5")):
        return config
    path = run_data.resolve_dataset(replace(config, seed=DATA_SEED), progress=progress)
    return replace(config, dataset=str(path))


def held_out_file(config: TrainConfig, data: EvalData) -> Path:
    """A test-only file of ``eval_size`` scenes at the run's resolution (made once, in the data directory)."""
    return run_data.resolve_dataset(replace(
        config, dataset=data.generator, data_size=config.eval_size, data_resolution=config.model.resolution[0],
        data_min_objects=data.min_objects, data_max_objects=data.max_objects, seed=TEST_DATA_SEED))


def smoke_overrides(config: TrainConfig, steps: int = 2) -> TrainConfig:
    """A tiny model on tiny data (``train --fast-dev-run``'s: 48 scenes, ``steps`` steps); numbers mean nothing."""
    return replace(fast_dev_run(config, steps=steps, data_size=48), eval_size=8)


# --------------------------------------------------------------------------
# Training (resumable) and evaluation (cached).

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / "checkpoint.h5"
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        return int(f.attrs["step"])


def ensure_trained(config: TrainConfig, run_dir: Path, progress: bool = True, echo=print, prefix: str = "") -> dict:
    """Train ``config`` into ``run_dir`` unless its checkpoint already reached ``config.steps``.

    Returns {"status": "finished earlier" | "trained" | "diverged", "step", "metrics" (the
    final evaluation when this call trained), "error" (diverged)}.
    """
    failed = run_dir / "diverged.txt"
    saved_path = run_dir / "config.json"
    if saved_path.exists():
        saved = _flat(json.loads(saved_path.read_text()))
        wanted = _flat(json.loads(config.to_json()))
        # The budget first: another --steps or --preset is the usual reason.
        first = ("steps", "preset", "batch_size", "dataset", "model.model")
        diff = sorted((k for k in set(saved) | set(wanted) if k != "device" and saved.get(k) != wanted.get(k)),
                      key=lambda k: (first.index(k) if k in first else len(first), k))
        if diff:
            k = diff[0]
            raise ExperimentError(f"{run_dir} holds another run ({k}: {saved.get(k)!r}, here {wanted.get(k)!r}); "
                                  f"choose another --out or delete it")
    if failed.exists():
        echo(f"{prefix}: diverged earlier ({failed.read_text().strip()}), not retrained")
        return {"status": "diverged", "step": _checkpoint_step(run_dir), "error": failed.read_text().strip()}
    step = _checkpoint_step(run_dir)
    if step is not None and step >= config.steps:
        echo(f"{prefix}: finished earlier (step {step}), not retrained")
        return {"status": "finished earlier", "step": step}
    resume = saved_path.exists()
    echo(f"{prefix}: " + (f"resuming at step {step or 0} of {config.steps}" if resume
                          else f"training {config.steps} steps") + f" in {run_dir}")
    try:
        metrics = loop.train(config, run_dir, resume=resume, progress=progress)
    except DivergenceError as err:
        message = str(err)
        if world().is_root:  # under mpiexec every rank trains and evaluates; rank 0 alone writes
            run_dir.mkdir(parents=True, exist_ok=True)
            failed.write_text(message + "\n")
        world().barrier()
        echo(f"{prefix}: diverged: {message}")
        return {"status": "diverged", "step": _checkpoint_step(run_dir), "error": message}
    return {"status": "trained", "step": config.steps, "metrics": metrics}


class RunEvaluations:
    """Evaluations of one trained run, cached in its ``evaluations.json`` for its checkpoint step.

    The model and its validation split are loaded on the first evaluation not
    in the cache.
    """

    def __init__(self, run_dir: Path, config: TrainConfig, step: int, device: str):
        self.run_dir, self.config, self.step, self.device = run_dir, config, step, device
        self.path = run_dir / EVALUATIONS_FILE
        self.cache = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("step") == step:
                self.cache = saved["results"]
        self._loaded = None

    def key(self, data: EvalData | None, num_slots: int | None, num_iterations: int | None) -> str:
        name = "validation" if data is None else held_out_file(self.config, data).name
        k = num_slots or self.config.model.num_slots
        t = self.config.test_iterations if num_iterations is None else num_iterations
        return f"{name} K={k} T={t}"

    def remember(self, key: str, metrics: dict) -> None:
        self.cache[key] = metrics
        if world().is_root:
            self.path.write_text(json.dumps({"step": self.step, "results": self.cache}, indent=1))
        world().barrier()

    def __call__(self, data: EvalData | None = None, num_slots: int | None = None,
                 num_iterations: int | None = None) -> dict:
        key = self.key(data, num_slots, num_iterations)
        if key not in self.cache:
            if self._loaded is None:
                config, be, params, task, val, _ = evaluation.load_run(self.run_dir, self.device)
                self._loaded = (config, be, params, task, val)
            config, be, params, task, val = self._loaded
            split = val if data is None else run_data.load_file(held_out_file(config, data), config,
                                                                any_object_count=True)[0]
            self.remember(key, task.evaluate(be, params, split, num_slots, num_iterations, world=world()))
        return self.cache[key]


# --------------------------------------------------------------------------
# The runner.

def command_line(name: str, opts: Options, only: tuple[str, ...] = (), out: str | Path | None = None) -> str:
    """The ``slotref experiment`` command that asks for ``opts`` (recorded with the results)."""
    words = ["slotref experiment", name, f"--preset {opts.preset}", f"--seeds {opts.seeds}"]
    if opts.steps is not None:
        words.append(f"--steps {opts.steps}")
    if set(opts.tasks) != {"setpred", "discovery"}:
        words += [f"--task {t}" for t in opts.tasks]
    if opts.dataset:
        words.append(f"--dataset {opts.dataset}")
    words += [f"--config {c}" for c in only]
    if out is not None:
        words.append(f"--out {out}")
    return " ".join(words)


def run_experiment(name: str, opts: Options, out: str | Path | None = None, only: tuple[str, ...] = (),
                   progress: bool = True, echo=print, command: str | None = None) -> dict:
    """Train, evaluate and tabulate experiment ``name``; writes ``out/results.{md,json}`` and returns the JSON.

    ``command`` is recorded with the results (default: ``command_line(name, opts, only)``).
    """
    command = command or command_line(name, opts, only)
    out = Path(out) if out is not None else Path("runs") / "experiments" / name
    configs, tables = configurations(name, opts, only)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    total = len(configs) * opts.seeds
    for i, (configuration, seed) in enumerate(((c, s) for c in configs for s in range(opts.seeds)), 1):
        prefix = f"{name} [{i}/{total}] {configuration.name} seed {seed}"
        config = pin_dataset(run_config(configuration, opts, seed), progress)
        run_dir = out / f"{configuration.name}-seed{seed}"
        try:
            state = ensure_trained(config, run_dir, progress, echo, prefix)
        except LockError:  # another process is training it: that process's share of the work
            echo(f"{prefix}: being trained by another process, left out of this table")
            state = {"status": "busy", "step": None}
        record = {"configuration": configuration.name, "seed": seed, "run_dir": str(run_dir),
                  "status": state["status"], "step": state["step"], "cells": []}
        if state["status"] == "diverged":
            record["error"] = state["error"]
        elif state["status"] != "busy":
            evaluations = RunEvaluations(run_dir, config, state["step"], opts.device)
            if state.get("metrics"):  # train()'s last evaluation: the validation split, K and T as trained
                evaluations.remember(evaluations.key(None, None, None), state["metrics"])
            for probe in configuration.probes:
                metrics = evaluations(probe.data, probe.num_slots, probe.num_iterations)
                for column, metric in probe.columns.items():
                    record["cells"].append({"table": probe.table, "row": probe.row, "column": column,
                                            "value": 100 * float(metrics[metric])})
            by_row = {}
            for c in record["cells"]:
                by_row.setdefault(c["row"], []).append(f"{c['column']} {c['value']:.1f}")
            echo(f"{prefix}: " + "; ".join(f"{row}: {', '.join(cells)}" for row, cells in by_row.items()))
        record["budget"] = describe_budget(configuration, config)
        runs.append(record)
    result = summarise(name, opts, configs, tables, runs, command)
    markdown = render_markdown(result)
    if world().is_root:
        (out / "results.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
        (out / "results.md").write_text(markdown)
    echo(markdown)
    echo(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return result


def describe_budget(configuration: Configuration, config: TrainConfig) -> str:
    """One line: the data, the model and the training budget of a configuration's runs."""
    m = config.model
    spec = generators.get_spec(configuration.dataset)
    _, lo, hi = generators.resolve_options(spec, config.data_resolution, config.data_min_objects,
                                           config.data_max_objects)
    what = "set prediction" if config.task == "setpred" else "object discovery"
    objects = f"{lo}" if lo == hi else f"{lo}-{hi}"
    zoom = f", camera zoom {config.data_zoom:g}" if config.data_zoom != 1.0 else ""
    tested = f" (tested with T = {config.test_iterations})" if config.test_iterations != m.num_iterations else ""
    return (f"{configuration.name}: {what} on {configuration.dataset} ({m.resolution[0]}x{m.resolution[1]}{zoom}, "
            f"{objects} objects, {config.data_size} scenes), {m.model}, K = {m.num_slots}, "
            f"T = {m.num_iterations}{tested}; "
            f"{config.steps} steps x batch {config.batch_size} (warm-up {config.warmup_steps}, decay steps "
            f"{config.decay_steps}); evaluated on {min(config.eval_size, config.data_size // 10)} held-out scenes")
