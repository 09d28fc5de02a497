"""The named presets of a task ('cpu', 'paper') and fitting a preset to a user's file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from slotref import paper
from slotref.models import discovery_config, setpred_config
from slotref.training.config import TrainConfig

# The discovery CPU presets draw the initial weights with PyTorch's defaults (models.ModelConfig.init)
# and draw them again when the slots have not bound 1,500 steps into a draw (training.restart): on
# Tetrominoes, whether the slots bind is settled by the draw (docs/binding.md, docs/results.md).
DISCOVERY_CPU_INIT = "torch"
DISCOVERY_CPU_RESTART_UNBOUND = 1_500
# The discovery CPU presets' Slot Attention: T = 5 iterations, trained with the last iteration's gradient
# alone (train --grad last, training/implicit.py). On Tetrominoes, seeds 0-2 reached 73.5 / 93.4 / 75.8%
# FG-ARI at step 5,500 of batch 16 against 62.8 / 81.3 / 62.3% with T = 3 and the gradient through every
# iteration (docs/notes/binding-search.md). The backward pass runs through one iteration whatever T,
# so the two extra iterations cost only their forward pass.
DISCOVERY_CPU_ITERATIONS = 5
DISCOVERY_CPU_GRAD = "last"
# T at test time of the discovery CPU presets (trained with T = 5): on Tetrominoes T = 7 raised the FG-ARI
# of every seed (docs/results.md).
DISCOVERY_CPU_TEST_ITERATIONS = 7
# The discovery CPU presets' batch and steps: batch 8, what 45 minutes of two ranks on 2 cores train on
# Tetrominoes (docs/results.md gives the measured minutes). Half the batch of batch 16's 6,500 steps, at
# the same learning rate: on Tetrominoes, seeds 0-2 ended at 98.6, 94.6 and 93.3% FG-ARI, each on its
# first draw, against 75.8, 96.8 and 79.5% (0.85x the images; docs/results.md).
DISCOVERY_CPU_BATCH = 8
DISCOVERY_CPU_STEPS = 11_000

# Camera zoom of the set-prediction CPU preset's built-in data (data make --zoom).
CPU_SETPRED_ZOOM = 3.0
# The set-prediction CPU preset's training stages (slotref/training/curriculum.py, docs/curriculum.md).
# One slot on one-object scenes, then K = 3 on the two- and three-object scenes;
# from step 7,000, once the attributes are learned, K = 3 on every scene with the
# coordinates weighing twice in the loss but not in the matching.
CPU_SETPRED_CURRICULUM = ("slots=1,objects=1:1000; slots=3,objects=2-3,reset_adam,warmup=500:6000; "
                          "slots=3,coord_weight=2,matching_coord_weight=1")
# T at test time of the set-prediction CPU preset (trained with T = 3): as the
# paper's Figure 22, more iterations at test time help most on the scenes with
# the most objects (docs/results.md).
CPU_SETPRED_TEST_ITERATIONS = 5
# The set-prediction CPU preset's gradient through Slot Attention (train --grad, training/implicit.py):
# the last iteration's alone. With the same schedule, seed 0 reached AP_inf 83.5% / AP_1 55.6% at step
# 5,000 against 55.8% / 21.4% with the gradient through every iteration (docs/notes/binding-search.md).
CPU_SETPRED_GRAD = "last"
# The CPU preset's zoomed view holds at most 4 objects; experiments with more
# (up to 10) train and test on unzoomed 64x64 scenes.
LARGE_SCENES = {"data_zoom": 1.0, "data_resolution": 64}


def preset_config(task: str, dataset: str | None = None, preset: str | None = None) -> TrainConfig:
    """The named preset: 'cpu' (the default; minutes on a 2-core CPU) or 'paper' (Table 11, for GPUs)."""
    preset = preset or "cpu"
    if task == "setpred":
        dataset = dataset or "clevr-shapes"
        if preset == "paper":
            return TrainConfig(task=task, dataset=dataset, preset=preset, model=setpred_config())
        if preset == "cpu":
            # A smaller problem than CLEVR10 (the full task shows nothing in 30
            # CPU minutes): 32x32 scenes with 1-3 objects seen through a camera
            # zoomed 3x (objects about 20% of the image), 3 slots, batch 16; the
            # paper's architecture otherwise unchanged. At 64x64 without zoom,
            # 5,000 steps leave colour and AP at chance (docs/results.md).
            # Beyond the paper, a training schedule (docs/curriculum.md): the
            # curriculum CPU_SETPRED_CURRICULUM first trains one slot on
            # one-object scenes for 1,000 steps, then K = 3 on the two- and
            # three-object scenes with a fresh Adam state and a new warm-up,
            # and from step 7,000 K = 3 on every scene with the coordinates
            # weighing twice in the loss (not in the matching); the learning
            # rate halves every 6,250 steps (the paper: every 100,000), and
            # evaluation reads an average of the parameters over about the
            # last 1,000 steps (ema 0.999) with T = 5 iterations (trained with
            # T = 3, as the paper's Figure 22); the gradient is the last iteration's
            # (CPU_SETPRED_GRAD, implicit differentiation); 12,500 steps, about 15 minutes of
            # 2 cores on two single-threaded ranks (train --procs auto). 1,024 validation scenes of 21,000: AP_inf
            # on 256 varies by 3-4 points from one draw to another.
            return TrainConfig(task=task, dataset=dataset, preset=preset, steps=12_500, batch_size=16,
                               warmup_steps=500, decay_steps=6_250, ema=0.999, eval_every=1_000, eval_size=1_024,
                               checkpoint_every=500, max_objects=3, data_size=21_000, data_resolution=32,
                               data_min_objects=1, data_max_objects=3, data_zoom=CPU_SETPRED_ZOOM,
                               curriculum=CPU_SETPRED_CURRICULUM, eval_iterations=CPU_SETPRED_TEST_ITERATIONS,
                               grad=CPU_SETPRED_GRAD,
                               model=setpred_config(32, num_slots=3))
    elif task == "discovery":
        dataset = dataset or "tetrominoes"
        arch = discovery_architecture(dataset)
        res = paper.DISCOVERY_ARCHITECTURES[arch].resolution
        if preset == "paper":
            hp = paper.HYPERPARAMETERS["discovery"]
            return TrainConfig(task=task, dataset=dataset, preset=preset, steps=hp.steps, batch_size=hp.batch_size,
                               warmup_steps=hp.warmup_steps, decay_steps=hp.decay_steps, eval_every=5_000,
                               eval_size=320, checkpoint_every=5_000,
                               data_size=70_000 if arch == "clevr6-shapes" else 60_000,
                               data_resolution=res, model=discovery_config(arch))
        if preset == "cpu":
            # Twice the paper's learning rate: in a sweep of the Tetrominoes preset on a GPU
            # (docs/results.md, "The sweep behind the preset") batch 16 at 8e-4 reached the highest
            # FG-ARI at the step counts an hour of two CPU cores allowed; with T = 5 and the last
            # iteration's gradient, batch 8 at the same rate learns faster still (DISCOVERY_CPU_BATCH).
            # New initial weights when the slots have not bound after 1,500 steps
            # (DISCOVERY_CPU_RESTART_UNBOUND); evaluations read the parameters averaged over
            # about the last 1,000 steps (ema 0.999); seeds 0-2: docs/results.md.
            return TrainConfig(task=task, dataset=dataset, preset=preset, steps=DISCOVERY_CPU_STEPS,
                               batch_size=DISCOVERY_CPU_BATCH, learning_rate=2 * paper.LEARNING_RATE,
                               warmup_steps=500, decay_steps=9_000, ema=0.999, eval_every=500, eval_size=256,
                               checkpoint_every=250, data_size=20_000,
                               data_resolution=res, restart_unbound=DISCOVERY_CPU_RESTART_UNBOUND,
                               grad=DISCOVERY_CPU_GRAD, eval_iterations=DISCOVERY_CPU_TEST_ITERATIONS,
                               model=discovery_config(arch, init=DISCOVERY_CPU_INIT,
                                                      num_iterations=DISCOVERY_CPU_ITERATIONS))
    else:
        raise ValueError(f"unknown task {task!r}: expected setpred or discovery")
    raise ValueError(f"unknown preset {preset!r}: expected cpu or paper")


def discovery_architecture(dataset: str) -> str:
    """Which discovery architecture a dataset name or file calls for (a file by its ``name``
    attribute; ``paper.discovery_architecture`` reads the name); CLEVR6's for any other dataset (the
    built-in clevr-shapes, say). The one lookup of the training side: presets, the fast dev run."""
    from slotref.data import hdf5

    name = hdf5.dataset_name(dataset) if hdf5.is_dataset_path(dataset) and Path(dataset).exists() else dataset
    return paper.discovery_architecture(name) or "clevr6-shapes"


def fit_to_file(config: TrainConfig, keep_slots: bool = False) -> tuple[TrainConfig, list[str]]:
    """Set prediction on a user's HDF5 file: the model takes the file's image size
    (the encoder and Slot Attention work at any size), one target row per
    object of its largest scene, and at least that many slots (``keep_slots``:
    the slots the user asked for; too few then fail at the loss with a clear
    error). Returns the config and one note per change. Discovery is left
    alone: its decoders produce one size (load_file says so)."""
    from slotref.data import hdf5

    if config.task != "setpred" or not hdf5.is_dataset_path(config.dataset) \
            or not Path(config.dataset).exists():
        return config, []
    first = hdf5.load_dataset(config.dataset, limit=1)           # checks the schema
    h, w = first.images.shape[1:3]
    most = int(first.meta.get("max_objects") or config.max_objects)
    notes = []
    if (h, w) != tuple(config.model.resolution):
        notes.append(f"the model takes the file's {h}x{w} images (the preset's are "
                     f"{config.model.resolution[0]}x{config.model.resolution[1]})")
        config = replace(config, data_resolution=h, model=replace(config.model, resolution=(h, w)))
    if most != config.max_objects:
        k = config.model.num_slots if keep_slots else max(config.model.num_slots, most)
        rows = f"{most} object" + ("s" if most != 1 else "")
        notes.append(f"scenes hold up to {rows}: one target row per object"
                     + ("" if keep_slots else f", K = {k} slots"))
        config = replace(config, max_objects=most, model=replace(config.model, num_slots=k))
    if config.curriculum:  # the preset's stages are chosen for its built-in scenes
        notes.append("trained without the preset's curriculum, chosen for its built-in scenes "
                     "(--curriculum sets one)")
        config = replace(config, curriculum="")
    return config, notes


# A scaled run evaluates and saves a checkpoint at most every this many steps (and at its end; it
# also saves on Ctrl-C or SIGTERM): scaled down as the rest, the cpu presets' intervals would
# evaluate every 2-3 steps and save every step of a 30-step run.
MIN_EVAL_EVERY = 50
MIN_CHECKPOINT_EVERY = 50
# A scaled run's validation split holds at most a quarter of the scenes the run trains on, and at least
# this many: a 30-step run (480 training scenes) evaluates 128 scenes, not the presets' 1,024 or 256, and
# ``experiment iterations`` evaluates it five times.
MIN_EVAL_SIZE = 128


def scale_budget(config: TrainConfig, steps: int | None) -> TrainConfig:
    """``config`` trained for ``steps``: warm-up, decay, evaluation and checkpoint intervals, the
    curriculum's stages and the parameter average's span scale with it (``train --steps``,
    ``experiment --steps`` and a config file's ``steps``).

    The intervals have a floor and a cap, so that a short run spends its time training: it evaluates
    at most every ``MIN_EVAL_EVERY`` steps and, between two evaluations, trains on at least as many
    examples as an evaluation reads (a training example costs about three forward passes); it saves a
    checkpoint at most every ``MIN_CHECKPOINT_EVERY`` steps; neither interval exceeds the run, whose
    last step always evaluates the whole validation split and saves, as a full run's does. The validation
    split holds at most a quarter of the scenes the run trains on (at least ``MIN_EVAL_SIZE``)."""
    if steps is None or steps == config.steps:
        return config
    f = steps / config.steps
    at_least_one = lambda n: max(1, round(n * f))  # noqa: E731
    config = replace(config, eval_size=min(config.eval_size, max(MIN_EVAL_SIZE, steps * config.batch_size // 4)))
    return replace(config, steps=steps, warmup_steps=round(config.warmup_steps * f),
                   decay_steps=at_least_one(config.decay_steps),
                   eval_every=min(steps, max(at_least_one(config.eval_every), _eval_floor(config))),
                   checkpoint_every=min(steps, max(at_least_one(config.checkpoint_every), MIN_CHECKPOINT_EVERY)),
                   curriculum=_scaled_curriculum(config.curriculum, f), ema=_scaled_ema(config.ema, f))


def _eval_floor(config: TrainConfig) -> int:
    """The fewest steps between two evaluations of a scaled run: ``MIN_EVAL_EVERY``, or more to train on as
    many examples as one evaluation reads (its validation split: ``eval_size`` examples, at most a tenth
    of the data; ``training.data``)."""
    examples = min(config.eval_size, config.data_size // 10)
    return max(MIN_EVAL_EVERY, -(-examples // config.batch_size))


def _scaled_ema(decay: float, factor: float) -> float:
    """The decay whose average spans ``factor`` times as many steps (1 / (1 - decay)), at least 2."""
    return decay and round(1 - min(0.5, (1 - decay) / factor), 12)


def _scaled_curriculum(text: str, factor: float) -> str:
    from slotref.training.curriculum import Curriculum

    return str(Curriculum.parse(text).scaled(factor)) if text else ""


FAST_DEV_RUN_STEPS = 4
FAST_DEV_RUN_DATA_SIZE = 64


def fast_dev_run(config: TrainConfig, steps: int | None = None, data_size: int | None = None) -> TrainConfig:
    """A tiny version of ``config``: a narrow model (8 channels) at 32x32 (Tetrominoes 35x35) on
    ``data_size`` built-in scenes (default 64), batch 4, ``steps`` steps (default 4), one evaluation on
    8 held-out scenes and one checkpoint; a curriculum keeps its stages and a parameter average its span,
    scaled to ``steps``. It checks
    the whole pipeline in seconds; its numbers mean nothing. A user's HDF5 file keeps the preset's
    architecture fitted to the file."""
    steps = steps or FAST_DEV_RUN_STEPS
    budget = dict(steps=steps, warmup_steps=1, decay_steps=100, eval_every=steps, checkpoint_every=steps,
                  log_every=1, batch_size=4, eval_size=max(1, min(8, (data_size or FAST_DEV_RUN_DATA_SIZE) // 10)),
                  curriculum=_scaled_curriculum(config.curriculum, steps / config.steps),
                  ema=_scaled_ema(config.ema, steps / config.steps))
    if config.dataset.endswith((".h5", ".hdf5")):
        return replace(config, **budget)
    m = config.model
    res = 35 if discovery_architecture(config.dataset) == "tetrominoes" else 32  # the full decoder at 35x35
    sa = replace(m.slot_attention, input_size=8, slot_size=8, mlp_hidden_size=16)
    model = replace(m, resolution=(res, res), encoder_channels=8, mlp_size=8, head_hidden=8, decoder_channels=8,
                    decoder_init_resolution=(2, 2), slot_attention=sa)
    return replace(config, model=model, data_resolution=res, data_size=data_size or FAST_DEV_RUN_DATA_SIZE,
                   **budget)
