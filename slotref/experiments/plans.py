"""What each of the paper's experiments trains and how it is probed.

An experiment is a list of *configurations*: a task's preset (``preset_config``)
changed by one transform of its ``TrainConfig`` (``--model slot-mlp``, an
appendix B switch, a training set with at most 6 objects...), and the *probes*
that evaluate it: which data, K and T, and which metric lands in which cell of
which table (``parts``). A transform sets fields as ``train``'s options do
(``training.resolve``). This module imports no array library: the command line
lists the experiments without loading a model.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from slotref.experiments.parts import (OBJECT_COUNTS, TEST_ITERATIONS, Configuration, EvalData, Experiment,  # noqa: F401
                                      ExperimentError, Options, Probe, Table)
from slotref.paper import DISCOVERY_DATASETS, PAPER_SOFT_KMEANS_CLEVR6, PAPER_TABLE1, PAPER_TABLE3

if TYPE_CHECKING:
    from slotref.training.config import TrainConfig

AP_COLUMNS = {"AP_inf": "ap_inf", "AP_1": "ap_1", "AP_0.5": "ap_0.5", "AP_0.25": "ap_0.25", "AP_0.125": "ap_0.125"}
FG_ARI_COLUMN = {"FG-ARI": "fg_ari"}
MODELS = (("slot-attention", "Slot Attention"), ("slot-mlp", "Slot MLP"))
CLEVR10_SLOTS = 11                  # Figure 2: K = 7 at training, 11 on CLEVR10
SEEDS = {"cpu": 3, "paper": 5}      # the paper reports 5 seeds; 3 keeps a CPU run affordable


# --------------------------------------------------------------------------
# TrainConfig transforms.

def identity(config: TrainConfig) -> TrainConfig:
    return config


def with_model(**fields) -> Callable[[TrainConfig], TrainConfig]:
    """A transform setting ``ModelConfig`` fields (``model="slot-mlp"``, ``position_embedding=False``), as
    ``train``'s options set them (``training.resolve.set_field``: another training T also sets T at test time)."""
    return _setting("model.", fields)


def with_slot_attention(**fields) -> Callable[[TrainConfig], TrainConfig]:
    """A transform setting ``SlotAttentionConfig`` fields: the appendix B switches."""
    return _setting("model.slot_attention.", fields)


def _setting(prefix: str, fields: dict) -> Callable[[TrainConfig], TrainConfig]:
    def transform(config):
        from slotref.training.resolve import set_field

        return functools.reduce(lambda c, item: set_field(c, prefix + item[0], item[1]), fields.items(), config)
    return transform


def with_train(**fields) -> Callable[[TrainConfig], TrainConfig]:
    """A transform setting ``TrainConfig`` fields (``decay_steps=10**15``)."""
    return _setting("", fields)


def compose(*transforms) -> Callable[[TrainConfig], TrainConfig]:
    return lambda config: functools.reduce(lambda c, t: t(c), transforms, config)


def soft_kmeans(config: TrainConfig) -> TrainConfig:
    """Appendix B's soft k-means, as ``train --soft-kmeans`` (``training.resolve.soft_kmeans``)."""
    from slotref.training.resolve import soft_kmeans as rule

    return rule(config)


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
                                              f"cpu preset is a smaller problem ({_cpu_setpred_problem()}).")
    return configs, [Table("ap", "AP (%) of set prediction, Slot Attention vs Slot MLP (Table 3)", "model",
                           tuple(label for _, label in MODELS), tuple(AP_COLUMNS), paper, note)]


def _cpu_setpred_problem() -> str:
    from slotref.training.presets import preset_config

    c = preset_config("setpred", preset="cpu")
    zoom = f", camera zoomed {c.data_zoom:g}x" if c.data_zoom != 1 else ""
    return (f"{c.data_resolution}x{c.data_resolution}{zoom}, {c.data_min_objects}-{c.data_max_objects} objects, "
            f"K = {c.model.num_slots}")


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
        # use the unzoomed 64x64 scenes (presets.LARGE_SCENES), and test with
        # the T they train with, as the figure.
        from slotref.training.presets import LARGE_SCENES

        trained = compose(with_train(data_max_objects=6, max_objects=6, eval_iterations=None, **LARGE_SCENES),
                          with_model(num_slots=6, num_iterations=3, resolution=(LARGE_SCENES["data_resolution"],) * 2))
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
        # Figure 12's default trains with T = 3, the paper's; the discovery CPU presets run 5.
        configs += [Configuration(f"{ds}-{name}", "discovery", ds, compose(with_model(num_iterations=3), transform),
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


