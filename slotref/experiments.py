"""The paper's experiments as commands: configurations x seeds, trained, evaluated, tabulated.

    python cli.py experiment table3 --steps 500 --seeds 3     # AP, Slot Attention vs Slot MLP
    python cli.py experiment ablations --task setpred --config setpred-no-gru

An experiment is a list of *configurations*: a task's preset (``preset_config``)
changed by one transform of its ``TrainConfig`` (``--model slot-mlp``, an
appendix B switch, a training set with at most 6 objects...), and the *probes*
that evaluate it: which data, K and T, and which metric lands in which cell of
which table. Each configuration is trained once per seed with
``slotref.train.train`` into ``<out>/<configuration>-seed<k>/`` (an ordinary run
directory: ``python cli.py eval`` and ``viz`` read it), then probed; the cells
of the seeds become "mean ± std" next to the paper's number where the paper
prints one, in ``<out>/results.md`` and ``<out>/results.json``.

Rerunning a command is cheap: a run whose checkpoint reached its steps is not
retrained, an interrupted run resumes from its checkpoint, and evaluations are
cached in the run directory (``evaluations.json``, keyed by data, K and T, and
dropped when the checkpoint's step changes). A run directory that holds another
configuration (another ``--steps``, ``--preset``...) is an error, never mixed
into a table: choose another ``--out``.

Seeds vary the model: initialisation, data order and slot noise. The data are
the same for every seed (generated once with seed ``DATA_SEED``), as the
paper's seeds share CLEVR; test-only files (more objects) use ``TEST_DATA_SEED``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import click
import h5py
import numpy as np

import slotref.train as training
from slotref import backend
from slotref.data import generators
from slotref.slot_attention import SlotAttentionConfig
from slotref.train import TrainConfig, TrainingError, preset_config

# --------------------------------------------------------------------------
# The paper's numbers (in %, mean ± std over 5 seeds).

# Table 1: FG-ARI of object discovery. Slot Attention's Tetrominoes number
# excludes one outlier seed of five ("stripes", section 4.1); we exclude none.
PAPER_TABLE1 = {
    ("Slot Attention", "clevr6-shapes"): (98.8, 0.3),
    ("Slot Attention", "multi-dsprites"): (91.3, 0.3),
    ("Slot Attention", "tetrominoes"): (99.5, 0.2),
    ("Slot MLP", "clevr6-shapes"): (60.4, 6.6),
    ("Slot MLP", "multi-dsprites"): (60.3, 1.8),
    ("Slot MLP", "tetrominoes"): (25.1, 34.3),
}
# Table 3: AP of set prediction on CLEVR10 (K = 10, T = 3).
PAPER_TABLE3 = {
    "Slot Attention": {"AP_inf": (94.3, 1.1), "AP_1": (86.7, 1.4), "AP_0.5": (56.0, 3.6),
                       "AP_0.25": (10.8, 1.7), "AP_0.125": (0.9, 0.2)},
    "Slot MLP": {"AP_inf": (19.8, 1.6), "AP_1": (1.4, 0.3), "AP_0.5": (0.3, 0.2),
                 "AP_0.25": (0.0, 0.0), "AP_0.125": (0.0, 0.0)},
}
# Appendix B, "Soft k-means": FG-ARI on CLEVR6.
PAPER_SOFT_KMEANS_CLEVR6 = (75.5, 3.8)

AP_COLUMNS = {"AP_inf": "ap_inf", "AP_1": "ap_1", "AP_0.5": "ap_0.5", "AP_0.25": "ap_0.25", "AP_0.125": "ap_0.125"}
FG_ARI_COLUMN = {"FG-ARI": "fg_ari"}
DISCOVERY_DATASETS = ("tetrominoes", "multi-dsprites", "clevr6-shapes")
MODELS = (("slot-attention", "Slot Attention"), ("slot-mlp", "Slot MLP"))
TEST_ITERATIONS = (3, 4, 5, 6, 7)   # Figures 2 (right) and 5 (centre): trained with T = 3
OBJECT_COUNTS = (6, 7, 8, 9, 10)    # Figure 5 (right): exactly N objects, K = N slots
CLEVR10_SLOTS = 11                  # Figure 2: K = 7 at training, 11 on CLEVR10
DATA_SEED = 0
TEST_DATA_SEED = 1000
SEEDS = {"cpu": 3, "paper": 5}      # the paper reports 5 seeds; 3 keeps a CPU run affordable
EVALUATIONS_FILE = "evaluations.json"


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (unknown configuration, a run directory of another run); one line."""


# --------------------------------------------------------------------------
# What an experiment is made of.

@dataclass(frozen=True)
class EvalData:
    """A test-only file of built-in scenes at the run's resolution, ``eval_size`` of them."""

    generator: str
    min_objects: int | None = None     # None: the generator's default
    max_objects: int | None = None


@dataclass(frozen=True)
class Probe:
    """One evaluation of a trained run and where its numbers go.

    ``columns`` maps a table column to a metric of ``Task.evaluate`` (a
    fraction; tables hold percentages). ``data`` None is the run's held-out
    validation split; ``num_slots``/``num_iterations`` None are K/T as trained.
    """

    table: str
    row: str
    columns: dict[str, str]
    data: EvalData | None = None
    num_slots: int | None = None
    num_iterations: int | None = None


@dataclass(frozen=True)
class Configuration:
    """One trained configuration of an experiment (a row, or part of one, of its tables)."""

    name: str                                            # the run directories: <name>-seed<k>
    task: str                                            # setpred | discovery
    dataset: str                                         # a built-in generator
    transform: Callable[[TrainConfig], TrainConfig]      # applied to the preset
    probes: tuple[Probe, ...]
    default: bool = True                                 # run without --config naming it


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    row_header: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    paper: dict = field(default_factory=dict)            # (row, column) -> (mean, std)
    note: str = ""


@dataclass(frozen=True)
class Options:
    """The knobs of a command line, as the experiment plans see them."""

    preset: str = "cpu"
    steps: int | None = None                             # None: the preset's
    seeds: int = 3
    device: str = "cpu"
    tasks: tuple[str, ...] = ("setpred", "discovery")
    dataset: str | None = None                           # discovery dataset (iterations, ablations; table1 filter)
    test_iterations: tuple[int, ...] = TEST_ITERATIONS
    object_counts: tuple[int, ...] = OBJECT_COUNTS
    overrides: Callable[[TrainConfig], TrainConfig] | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    paper: str
    plan: Callable[[Options], tuple[list[Configuration], list[Table]]]


# --------------------------------------------------------------------------
# TrainConfig transforms.

def identity(config: TrainConfig) -> TrainConfig:
    return config


def with_model(**fields) -> Callable[[TrainConfig], TrainConfig]:
    """A transform setting ``ModelConfig`` fields (``model="slot-mlp"``, ``position_embedding=False``)."""
    def transform(config):
        return replace(config, model=replace(config.model, **fields))
    return transform


def with_slot_attention(**fields) -> Callable[[TrainConfig], TrainConfig]:
    """A transform setting ``SlotAttentionConfig`` fields: the appendix B switches."""
    def transform(config):
        sa = replace(config.model.slot_attention, **fields)
        return replace(config, model=replace(config.model, slot_attention=sa))
    return transform


def with_train(**fields) -> Callable[[TrainConfig], TrainConfig]:
    def transform(config):
        return replace(config, **fields)
    return transform


def compose(*transforms) -> Callable[[TrainConfig], TrainConfig]:
    return lambda config: functools.reduce(lambda c, t: t(c), transforms, config)


def soft_kmeans(config: TrainConfig) -> TrainConfig:
    """Appendix B: identity k, q, v, no GRU, no LayerNorm (``SlotAttentionConfig.soft_kmeans``).

    Identity projections compare inputs with slots directly, so the inputs must
    be as wide as the slots: the per-location MLP is widened to the slot size
    (Tetrominoes and Multi-dSprites have 32-wide inputs and 64-wide slots).
    """
    sa = config.model.slot_attention
    d = sa.slot_size
    sa = SlotAttentionConfig.soft_kmeans(input_size=d, slot_size=d, mlp_hidden_size=sa.mlp_hidden_size,
                                         epsilon=sa.epsilon)
    return replace(config, model=replace(config.model, mlp_size=d, slot_attention=sa))


def more_slots(config: TrainConfig) -> TrainConfig:
    """Figure 19: train with 4 slots more than needed (the paper: 6 -> 10 and 7 -> 11 on CLEVR6)."""
    return replace(config, model=replace(config.model, num_slots=config.model.num_slots + 4))


# The appendix B switches: (name, row label, transform, in the default set).
ABLATIONS = (
    ("default", "default (Algorithm 1)", identity, True),
    ("sum", "Fig. 7: weighted sum (line 8)", with_slot_attention(aggregation="sum"), True),
    ("sum-layernorm", "Fig. 7: weighted sum + LayerNorm", with_slot_attention(aggregation="sum_layernorm"), True),
    ("no-position-embedding", "Fig. 8: no position embedding", with_model(position_embedding=False), True),
    ("per-slot-init", "Fig. 9: per-slot mu, sigma", with_slot_attention(slot_init="per_slot"), True),
    # Footnote 2: with the softmax over inputs the weights already sum to one over
    # the inputs, and the paper aggregates with a weighted sum.
    ("softmax-inputs", "Fig. 10: softmax over inputs",
     with_slot_attention(softmax_axis="inputs", aggregation="sum"), True),
    ("no-gru", "Fig. 11: no GRU (slots = updates)", with_slot_attention(update="none"), True),
    ("train-iters-1", "Fig. 12: T = 1 at training", with_model(num_iterations=1), False),
    ("train-iters-2", "Fig. 12: T = 2 at training", with_model(num_iterations=2), False),
    ("train-iters-5", "Fig. 12: T = 5 at training", with_model(num_iterations=5), False),
    ("no-layernorm", "Fig. 13: no LayerNorms", with_slot_attention(layer_norms=False), True),
    ("no-residual-mlp", "Fig. 14: no residual MLP (line 10)", with_slot_attention(residual_mlp=False), True),
    ("temperature-one", "Fig. 15: softmax temperature 1", with_slot_attention(temperature="one"), True),
    ("epsilon-denominator", "Fig. 16: epsilon in the denominator",
     with_slot_attention(epsilon_placement="denominator"), True),
    # decay_rate ** (step / decay_steps) with decay_steps 1e15: a constant rate.
    ("no-decay", "Fig. 17: no learning-rate decay", with_train(decay_steps=10**15), True),
    ("no-warmup", "Fig. 18: no learning-rate warm-up", with_train(warmup_steps=0), True),
    ("more-slots", "Fig. 19: K + 4 slots at training", more_slots, False),
    ("soft-kmeans", "soft k-means (identity k/q/v, no GRU, no LayerNorm)", soft_kmeans, True),
)


# --------------------------------------------------------------------------
# The experiments.

def plan_table1(opts: Options):
    datasets = (opts.dataset,) if opts.dataset else DISCOVERY_DATASETS
    configs = [Configuration(f"{ds}-{model}", "discovery", ds, with_model(model=model),
                             (Probe("fg_ari", label, {ds: "fg_ari"}),))
               for ds in datasets for model, label in MODELS]
    table = Table("fg_ari", "FG-ARI (%) of object discovery, Slot Attention vs Slot MLP (Table 1)", "model",
                  tuple(label for _, label in MODELS), datasets, PAPER_TABLE1,
                  "The paper's Slot Attention Tetrominoes number excludes one outlier seed of five; ours exclude none.")
    return configs, [table]


def plan_table3(opts: Options):
    configs = [Configuration(model, "setpred", "clevr-shapes", with_model(model=model),
                             (Probe("ap", label, AP_COLUMNS),))
               for model, label in MODELS]
    paper = {(row, col): v for row, cols in PAPER_TABLE3.items() for col, v in cols.items()}
    note = "" if opts.preset == "paper" else ("The paper's numbers are CLEVR10 (3-10 objects, 128x128, K = 10); the "
                                              "cpu preset is a smaller problem (64x64, 1-3 objects, K = 3).")
    return configs, [Table("ap", "AP (%) of set prediction, Slot Attention vs Slot MLP (Table 3)", "model",
                           tuple(label for _, label in MODELS), tuple(AP_COLUMNS), paper, note)]


def plan_iterations(opts: Options):
    rows = tuple(f"T = {t}" for t in opts.test_iterations)
    trained_t3 = with_model(num_iterations=3)
    configs, tables = [], []
    if "setpred" in opts.tasks:
        configs.append(Configuration("setpred", "setpred", "clevr-shapes", trained_t3,
                                     tuple(Probe("setpred", f"T = {t}", AP_COLUMNS, num_iterations=t)
                                           for t in opts.test_iterations)))
        tables.append(Table("setpred", "AP (%) of set prediction trained with T = 3, tested with T (Figure 5 centre)",
                            "test iterations", rows, tuple(AP_COLUMNS)))
    if "discovery" in opts.tasks:
        ds = opts.dataset or "tetrominoes"
        configs.append(Configuration(ds, "discovery", ds, trained_t3,
                                     tuple(Probe("discovery", f"T = {t}", FG_ARI_COLUMN, num_iterations=t)
                                           for t in opts.test_iterations)))
        tables.append(Table("discovery", f"FG-ARI (%) of object discovery on {ds} trained with T = 3, tested with T "
                                         "(Figure 2 right)", "test iterations", rows, tuple(FG_ARI_COLUMN)))
    return configs, tables


def plan_more_objects(opts: Options):
    configs, tables = [], []
    if "setpred" in opts.tasks:
        # Up to 10 objects do not fit the CPU preset's zoomed camera: these runs
        # use the unzoomed 64x64 scenes (train.LARGE_SCENES).
        trained = compose(with_train(data_max_objects=6, max_objects=6, **training.LARGE_SCENES),
                          with_model(num_slots=6, num_iterations=3,
                                     resolution=(training.LARGE_SCENES["data_resolution"],) * 2))
        rows = tuple(f"N = K = {n}" for n in opts.object_counts)
        probes = tuple(Probe("setpred", f"N = K = {n}", AP_COLUMNS, EvalData("clevr-shapes", n, n), num_slots=n)
                       for n in opts.object_counts)
        configs.append(Configuration("setpred-max6", "setpred", "clevr-shapes", trained, probes))
        tables.append(Table("setpred", "AP (%) of set prediction trained on scenes with at most 6 objects (K = 6), "
                                       "tested on scenes with exactly N objects and K = N slots (Figure 5 right)",
                            "test scenes", rows, tuple(AP_COLUMNS)))
    if "discovery" in opts.tasks:
        clevr6 = "CLEVR6-like (validation), K = 7 as trained"
        clevr10 = f"CLEVR10-like (3-10 objects), K = {CLEVR10_SLOTS}"
        columns = tuple(f"T = {t}" for t in opts.test_iterations)
        probes = []
        for t in opts.test_iterations:
            probes.append(Probe("discovery", clevr6, {f"T = {t}": "fg_ari"}, num_iterations=t))
            probes.append(Probe("discovery", clevr10, {f"T = {t}": "fg_ari"}, EvalData("clevr-shapes"),
                                num_slots=CLEVR10_SLOTS, num_iterations=t))
        configs.append(Configuration("clevr6-shapes", "discovery", "clevr6-shapes", with_model(num_iterations=3),
                                     tuple(probes)))
        tables.append(Table("discovery", "FG-ARI (%) of object discovery trained on clevr6-shapes (K = 7, T = 3), "
                                         f"tested on more objects with K = {CLEVR10_SLOTS} and with T iterations "
                                         "(Figure 2)", "test scenes", (clevr6, clevr10), columns,
                            {(clevr6, "T = 3"): PAPER_TABLE1[("Slot Attention", "clevr6-shapes")]},
                            "The paper plots this sweep (Figure 2 right); it prints only T = 3, K = 7 (Table 1)."))
    return configs, tables


def plan_ablations(opts: Options):
    configs, tables = [], []
    rows = tuple(label for _, label, _, _ in ABLATIONS)
    if "setpred" in opts.tasks:
        configs += [Configuration(f"setpred-{name}", "setpred", "clevr-shapes", transform,
                                  (Probe("setpred", label, AP_COLUMNS),), default)
                    for name, label, transform, default in ABLATIONS]
        tables.append(Table("setpred", "AP (%) of set prediction: appendix B ablations (Figures 7-19, right)",
                            "configuration", rows, tuple(AP_COLUMNS)))
    if "discovery" in opts.tasks:
        ds = opts.dataset or "tetrominoes"
        configs += [Configuration(f"{ds}-{name}", "discovery", ds, transform,
                                  (Probe("discovery", label, FG_ARI_COLUMN),), default)
                    for name, label, transform, default in ABLATIONS]
        paper = {}
        if ds == "clevr6-shapes":
            paper = {(rows[0], "FG-ARI"): PAPER_TABLE1[("Slot Attention", "clevr6-shapes")],
                     (rows[-1], "FG-ARI"): PAPER_SOFT_KMEANS_CLEVR6}
        tables.append(Table("discovery", f"FG-ARI (%) of object discovery on {ds}: appendix B ablations "
                                         "(Figures 7-19, left)", "configuration", rows, tuple(FG_ARI_COLUMN), paper,
                            "The paper prints numbers only for CLEVR6: 98.8 ± 0.3 (default) and 75.5 ± 3.8 "
                            "(soft k-means); the figures plot the rest."))
    return configs, tables


EXPERIMENTS = {e.name: e for e in (
    Experiment("table1", "FG-ARI, Slot Attention vs Slot MLP, on each discovery dataset", "Table 1", plan_table1),
    Experiment("table3", "AP at five distance thresholds, Slot Attention vs Slot MLP", "Table 3", plan_table3),
    Experiment("iterations", "trained with T = 3, evaluated with T = 3..7", "Figures 2 (right) and 5 (centre)",
               plan_iterations),
    Experiment("more-objects", "trained on at most 6 objects, tested on more with more slots",
               "Figures 5 (right) and 2", plan_more_objects),
    Experiment("ablations", "each appendix B switch against the default", "Figures 7-19, appendix B",
               plan_ablations),
)}


def configurations(name: str, opts: Options, only: tuple[str, ...] = ()) -> tuple[list[Configuration], list[Table]]:
    """The configurations an experiment runs and its tables: those of ``opts.tasks``, then the default
    set, or exactly the configurations named in ``only``."""
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}: choose from {', '.join(EXPERIMENTS)}")
    configs, tables = EXPERIMENTS[name].plan(opts)
    configs = [c for c in configs if c.task in opts.tasks]
    if only:
        unknown = [c for c in only if c not in {cfg.name for cfg in configs}]
        if unknown:
            raise ExperimentError(f"{name} has no configuration {unknown[0]!r}; it has "
                                  f"{', '.join(cfg.name for cfg in configs)}")
        configs = [c for c in configs if c.name in only]
    else:
        configs = [c for c in configs if c.default]
    if not configs:
        raise ExperimentError(f"no configuration of {name} is left to run with these options")
    return configs, tables


# --------------------------------------------------------------------------
# Budgets and run configurations.

def scale_budget(config: TrainConfig, steps: int | None) -> TrainConfig:
    """``config`` trained for ``steps``: warm-up, decay, evaluation and checkpoint intervals scale with it."""
    if steps is None or steps == config.steps:
        return config
    f = steps / config.steps
    at_least_one = lambda n: max(1, round(n * f))  # noqa: E731
    return replace(config, steps=steps, warmup_steps=round(config.warmup_steps * f),
                   decay_steps=at_least_one(config.decay_steps), eval_every=at_least_one(config.eval_every),
                   checkpoint_every=at_least_one(config.checkpoint_every))


def run_config(configuration: Configuration, opts: Options, seed: int) -> TrainConfig:
    """The TrainConfig of one run: preset -> budget -> overrides -> the configuration's transform -> seed."""
    config = preset_config(configuration.task, configuration.dataset, opts.preset)
    config = scale_budget(config, opts.steps)
    if opts.overrides is not None:
        config = opts.overrides(config)
    config = configuration.transform(config)
    return replace(config, seed=seed, device=opts.device)


def pin_dataset(config: TrainConfig) -> TrainConfig:
    """The same built-in data for every seed: generated (once) with ``DATA_SEED``, named by its file."""
    if config.dataset.endswith((".h5", ".hdf5")):
        return config
    path = training.resolve_dataset(replace(config, seed=DATA_SEED))
    return replace(config, dataset=str(path))


def held_out_file(config: TrainConfig, data: EvalData) -> Path:
    """A test-only file of ``eval_size`` scenes at the run's resolution (made once, in the data directory)."""
    return training.resolve_dataset(replace(
        config, dataset=data.generator, data_size=config.eval_size, data_resolution=config.model.resolution[0],
        data_min_objects=data.min_objects, data_max_objects=data.max_objects, seed=TEST_DATA_SEED))


def smoke_overrides(config: TrainConfig, steps: int = 2) -> TrainConfig:
    """A tiny model on tiny data (32x32 or 35x35, 8 channels, 48 scenes, batch 4, ``steps`` steps).

    Checks an experiment end to end in seconds; its numbers mean nothing.
    """
    m = config.model
    res = 35 if config.dataset == "tetrominoes" else 32   # Tetrominoes: 5-pixel blocks at 35x35
    sa = replace(m.slot_attention, input_size=8, slot_size=8, mlp_hidden_size=16)
    model = replace(m, resolution=(res, res), encoder_channels=8, mlp_size=8, head_hidden=8, decoder_channels=8,
                    decoder_init_resolution=(2, 2), slot_attention=sa)
    return replace(config, model=model, data_resolution=res, data_size=48, eval_size=8, batch_size=4, steps=steps,
                   warmup_steps=1, decay_steps=100, eval_every=steps, checkpoint_every=steps, log_every=1)


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
        metrics = training.train(config, run_dir, resume=resume, progress=progress)
    except TrainingError as err:
        message = str(err)
        if "loss became" not in message and "not finite" not in message:
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        failed.write_text(message + "\n")
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
        t = self.config.model.num_iterations if num_iterations is None else num_iterations
        return f"{name} K={k} T={t}"

    def remember(self, key: str, metrics: dict) -> None:
        self.cache[key] = metrics
        self.path.write_text(json.dumps({"step": self.step, "results": self.cache}, indent=1))

    def __call__(self, data: EvalData | None = None, num_slots: int | None = None,
                 num_iterations: int | None = None) -> dict:
        key = self.key(data, num_slots, num_iterations)
        if key not in self.cache:
            if self._loaded is None:
                config, be, params, task, val, _ = training.load_run(self.run_dir, self.device)
                self._loaded = (config, be, params, task, val)
            config, be, params, task, val = self._loaded
            split = val if data is None else training.load_file(held_out_file(config, data), config,
                                                                any_object_count=True)[0]
            self.remember(key, task.evaluate(be, params, split, num_slots, num_iterations))
        return self.cache[key]


# --------------------------------------------------------------------------
# The runner.

def command_line(name: str, opts: Options, only: tuple[str, ...] = (), out: str | Path | None = None) -> str:
    """The ``cli.py experiment`` command that asks for ``opts`` (recorded with the results)."""
    words = ["python cli.py experiment", name, f"--preset {opts.preset}", f"--seeds {opts.seeds}"]
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
        config = pin_dataset(run_config(configuration, opts, seed))
        run_dir = out / f"{configuration.name}-seed{seed}"
        state = ensure_trained(config, run_dir, progress, echo, prefix)
        record = {"configuration": configuration.name, "seed": seed, "run_dir": str(run_dir),
                  "status": state["status"], "step": state["step"], "cells": []}
        if state["status"] == "diverged":
            record["error"] = state["error"]
        else:
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
    (out / "results.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    markdown = render_markdown(result)
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
    return (f"{configuration.name}: {what} on {configuration.dataset} ({m.resolution[0]}x{m.resolution[1]}{zoom}, "
            f"{objects} objects, {config.data_size} scenes), {m.model}, K = {m.num_slots}, T = {m.num_iterations}; "
            f"{config.steps} steps x batch {config.batch_size} (warm-up {config.warmup_steps}, decay steps "
            f"{config.decay_steps}); evaluated on {min(config.eval_size, config.data_size // 10)} held-out scenes")


def summarise(name: str, opts: Options, configs, tables, runs, command: str) -> dict:
    """mean ± std over seeds (NumPy's std, ddof 0) of every cell; seeds that diverged are counted, not averaged."""
    failed_rows = {}
    for run in runs:
        if run["status"] == "diverged":
            configuration = next(c for c in configs if c.name == run["configuration"])
            for probe in configuration.probes:
                for column in probe.columns:
                    failed_rows[(probe.table, probe.row, column)] = failed_rows.get((probe.table, probe.row,
                                                                                     column), 0) + 1
    out_tables = []
    for table in tables:
        rows = []
        for row in table.rows:
            cells = {}
            for column in table.columns:
                values = [c["value"] for r in runs for c in r["cells"]
                          if (c["table"], c["row"], c["column"]) == (table.key, row, column)]
                failed = failed_rows.get((table.key, row, column), 0)
                if values or failed:
                    cells[column] = {"mean": float(np.mean(values)) if values else None,
                                     "std": float(np.std(values)) if values else None,
                                     "n": len(values), "diverged": failed, "values": values}
            if cells:
                paper = {col: list(table.paper[(row, col)]) for col in table.columns if (row, col) in table.paper}
                rows.append({"row": row, "cells": cells, "paper": paper})
        if rows:
            columns = [c for c in table.columns if any(c in r["cells"] for r in rows)]
            out_tables.append({"key": table.key, "title": table.title, "row_header": table.row_header,
                               "columns": columns, "rows": rows, "note": table.note})
    experiment = EXPERIMENTS[name]
    return {"experiment": name, "summary": experiment.summary, "paper": experiment.paper, "command": command,
            "preset": opts.preset, "steps": opts.steps, "seeds": list(range(opts.seeds)), "device": opts.device,
            "budgets": sorted({r["budget"] for r in runs}), "unit": "%", "tables": out_tables, "runs": runs}


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return ""
    text = "—" if cell["mean"] is None else f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    if cell["diverged"]:
        text += f" ({cell['diverged']} of {cell['n'] + cell['diverged']} diverged)"
    return text


def render_markdown(result: dict) -> str:
    lines = [f"# {result['experiment']}: {result['summary']}", "",
             f"Paper: {result['paper']}. Command: `{result['command']}` (device {result['device']}).", "",
             f"Mean ± standard deviation over seeds {', '.join(map(str, result['seeds']))}, in %; a paper row "
             "follows each row the paper gives numbers for (5 seeds).", ""]
    lines += [f"- {b}" for b in result["budgets"]] + [""]
    for table in result["tables"]:
        cols = table["columns"]
        lines += [f"## {table['title']}", "",
                  "| " + " | ".join([table["row_header"]] + cols) + " |",
                  "|---" + "|---:" * len(cols) + "|"]
        for row in table["rows"]:
            lines.append("| " + " | ".join([row["row"]] + [_cell_text(row["cells"].get(c)) for c in cols]) + " |")
            if row["paper"]:
                lines.append("| " + " | ".join([f"{row['row']}, paper"] +
                                               [f"{row['paper'][c][0]:.1f} ± {row['paper'][c][1]:.1f}"
                                                if c in row["paper"] else "" for c in cols]) + " |")
        if table["note"]:
            lines += ["", table["note"]]
        lines.append("")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------
# The command (mounted in cli.py as ``experiment``).

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
@click.option("--dataset", type=click.Choice(DISCOVERY_DATASETS), default=None,
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
    from slotref.backend import BackendError
    from slotref.data.hdf5 import DatasetError

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
        run_experiment(name, opts, out, tuple(only), progress=not quiet, echo=click.echo, command=command)
    except KeyboardInterrupt as err:
        click.echo(f"\n{err or 'interrupted'}; rerun the same command to resume", err=True)
        raise SystemExit(130)
    except (ExperimentError, TrainingError, DatasetError, BackendError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)
