"""How a run's configuration is decided, in one place.

``resolve_config`` turns what the user gave (task, dataset, preset, a config file, options) into a
``TrainConfig`` and the notes ``train`` prints; ``resume_config`` does the same for a run that goes on,
under the one resume policy ``RESUME_MAY_CHANGE``. The order is fixed:

1. the preset of the task and dataset (``presets.preset_config``), or a config file: the preset of its
   task, preset and dataset, scaled to its ``steps`` as ``--steps`` scales it, then the file's keys;
2. a user's HDF5 file fits the model (``presets.fit_to_file``);
3. ``--steps`` scales the budget (``presets.scale_budget``), or ``--fast-dev-run`` shrinks it all;
4. each option sets its field (``OPTION_FIELDS``), ``--soft-kmeans`` before the other switches;
5. a preset's curriculum the model cannot follow is dropped (with a note), any other is checked.

Every value is checked as it arrives (``TrainConfig`` checks its fields; ``training.config``), so
a bad one is a one-line ``OptionError`` naming the option or the file and the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

from slotref.io import LOCK_NAME
from slotref.slot_attention import ABLATIONS, SlotAttentionConfig
from slotref.training.config import (ConfigError, TrainConfig, TrainingError, check_value, config_from_dict,
                                     read_json, read_run_config)
from slotref.training.curriculum import Curriculum, fits, run_plan
from slotref.training.presets import fast_dev_run, fit_to_file, preset_config, scale_budget

# The options of ``train`` that set one field (nested fields as ``model.num_slots``), in the order they apply.
OPTION_FIELDS = {
    "--num-slots": "model.num_slots", "--num-iters": "model.num_iterations", "--model": "model.model",
    "--init": "model.init", "--soft-kmeans": "model.slot_attention.projections",
    **{"--" + name.replace("_", "-"): f"model.slot_attention.{name}" for name in ABLATIONS},
    "--position-embedding": "model.position_embedding",
    "--batch-size": "batch_size", "--lr": "learning_rate", "--device": "device", "--data-size": "data_size",
    "--warmup-steps": "warmup_steps", "--decay-steps": "decay_steps",
    "--restart-unbound": "restart_unbound", "--curriculum": "curriculum",  # the redraw off before a curriculum
    "--coord-weight": "coord_weight", "--matching-coord-weight": "matching_coord_weight", "--ema": "ema",
    "--eval-iters": "eval_iterations", "--seed": "seed", "--data-dir": "data_dir", "--steps": "steps",
    "--keep-checkpoints": "keep_checkpoints", "--grad": "grad",
}
# The one resume policy: the fields a resumed run may change (how long it runs, where, how often it
# reports, which checkpoints it keeps). Every other field is the run's own; an option that would change one is refused.
RESUME_MAY_CHANGE = ("steps", "device", "log_every", "eval_every", "checkpoint_every", "data_dir", "keep_checkpoints")


class OptionError(ValueError):
    """A refused value, one line; ``option``: the option (``--seed``) or ``--config`` it came from."""

    def __init__(self, option: str | None, message: str):
        super().__init__(message)
        self.option = option


def get_field(config, path: str):
    """The value of a nested field (``model.slot_attention.aggregation``)."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def set_field(config, path: str, value):
    """``config`` with a nested field set; a new training T also sets T at test time to it (a preset's
    test-time T goes with its own training T)."""
    if path == "model.num_iterations" and value != config.model.num_iterations:
        config = replace(config, eval_iterations=None)
    name, _, rest = path.partition(".")
    return replace(config, **{name: set_field(getattr(config, name), rest, value) if rest else value})


def soft_kmeans(config: TrainConfig) -> TrainConfig:
    """Appendix B's soft k-means: identity k, q, v, no GRU, no LayerNorm (``SlotAttentionConfig.soft_kmeans``).

    Identity projections compare inputs with slots directly, so the inputs must be as wide as the
    slots: the per-location MLP is widened to the slot size (Tetrominoes and Multi-dSprites have
    32-wide inputs and 64-wide slots)."""
    sa = config.model.slot_attention
    d = sa.slot_size
    sa = SlotAttentionConfig.soft_kmeans(input_size=d, slot_size=d, mlp_hidden_size=sa.mlp_hidden_size,
                                         epsilon=sa.epsilon)
    return replace(config, model=replace(config.model, mlp_size=d, slot_attention=sa))


def resolve_config(task: str | None = None, dataset: str | None = None, preset: str | None = None,
                   config_file: str | Path | None = None, flags: dict | None = None,
                   transform=None) -> tuple[TrainConfig, list[str]]:
    """The configuration of a new run and the notes to print.

    ``task``/``preset`` None: the config file's, else setpred/cpu; ``dataset`` None: the file's or the
    preset's. ``flags``: option -> value for every option given (``OPTION_FIELDS``, ``--fast-dev-run``);
    ``transform``: a change of the config after them (an experiment's configuration).
    OptionError (one line) for a value refused."""
    flags = dict(flags or {})
    notes: list[str] = []
    if config_file is not None:
        config = _from_file(Path(config_file), task, dataset, preset)
    else:
        config = _guarded(None, preset_config, task or "setpred", dataset, preset or "cpu")
    if dataset is not None or config_file is None:
        config, fitted = fit_to_file(config, keep_slots="--num-slots" in flags)
        notes += fitted
    steps, data_size = flags.pop("--steps", None), flags.get("--data-size")
    if data_size is not None and config.dataset.endswith((".h5", ".hdf5")):
        raise OptionError("--data-size", "only for built-in data, not for an HDF5 file")
    if flags.pop("--fast-dev-run", False):
        config = fast_dev_run(config, steps=steps, data_size=data_size)
    else:
        config = _guarded("--steps", scale_budget, config, steps)
    if flags.pop("--soft-kmeans", False):
        config = soft_kmeans(config)
    for option, path in OPTION_FIELDS.items():
        if option in flags:
            config = _guarded(option, set_field, config, path, flags[option])
    if transform is not None:
        config = _guarded(None, transform, config)
    source = "--curriculum" if "--curriculum" in flags else "--config" if config_file is not None else None
    _guarded(source, Curriculum.parse, config.curriculum)
    if source != "--curriculum" and not fits(config):  # a preset's stages need its K and shared slots
        notes.append(f"trained without the curriculum {config.curriculum!r}, which needs Slot Attention with "
                     "shared slots and K as its last stage (--curriculum sets one)")
        config = replace(config, curriculum="")
    if not config.curriculum and "--num-slots" in flags:
        source = "--num-slots"
    _guarded(source, run_plan, config)
    return config, notes


def resume_config(run_dir: Path, task: str | None = None, dataset: str | None = None, preset: str | None = None,
                  flags: dict | None = None) -> tuple[TrainConfig, list[str]]:
    """The stored configuration of ``run_dir`` with the options a resume may change, and the notes;
    an option that would change another field is an OptionError naming it and both values."""
    if not (Path(run_dir) / "config.json").exists():
        raise TrainingError(f"nothing to resume in {run_dir}: no config.json")
    saved = read_run_config(run_dir)
    given = {"--task": ("task", task), "--dataset": ("dataset", dataset), "--preset": ("preset", preset)}
    given.update({option: (OPTION_FIELDS[option], value) for option, value in (flags or {}).items()
                  if option in OPTION_FIELDS})
    config, notes = saved, []
    for option, (path, value) in given.items():
        old = get_field(saved, path)
        if value is None or (option == "--soft-kmeans" and not value):
            continue
        if option == "--soft-kmeans":
            value, old = True, old == "identity"
        if path in RESUME_MAY_CHANGE:
            if value != old:
                notes.append(f"resuming with {path} = {value} (was {old}); config.json records it")
                config = _guarded(option, replace, config, **{path: value})
        elif value != old and not (path == "dataset" and Path(str(value)).resolve() == Path(str(old)).resolve()):
            raise OptionError(None, f"{option} {value}: the run in {run_dir} was trained with {option} {old}; drop "
                                      f"{option} to resume it, or start a new run with another --out")
    return config, notes


def resumed(saved: TrainConfig, config: TrainConfig, run_dir: Path) -> TrainConfig:
    """``saved`` with the fields of ``config`` a resume may change (TrainingError for any other change)."""
    if saved.task != config.task:
        raise TrainingError(f"{run_dir} holds a {saved.task} run; cannot resume it as {config.task}")
    changed = [c for c in config_changes(saved, config) if c[0] not in RESUME_MAY_CHANGE]
    if changed:
        key, old, new = changed[0]
        raise TrainingError(f"{run_dir}: cannot resume with {key} = {new!r}: the run was trained with "
                            f"{old!r}; keep it, or start a new run with another --out")
    return replace(saved, **{k: getattr(config, k) for k in RESUME_MAY_CHANGE})


def check_new_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """A new run goes into a missing or empty folder, or restarts the same run that never saved a checkpoint."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: not a folder; choose another --out")
    if (run_dir / "checkpoint.h5").exists():
        raise TrainingError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    entries = [p.name for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if not entries:
        return
    if "config.json" not in entries:
        raise TrainingError(f"{run_dir}: not empty and not a slotref run (no config.json); choose another --out")
    changes = [c for c in config_changes(read_run_config(run_dir), config) if c[0] not in ("device", "keep_checkpoints")]
    if changes:
        key, old, new = changes[0]
        raise TrainingError(f"{run_dir}: holds another run ({key}: {old!r} there, {new!r} here); "
                            "choose another --out")


def config_changes(saved, config, prefix: str = "") -> list[tuple[str, object, object]]:
    """(field, saved value, new value) for every field that differs, nested fields as ``model.num_slots``."""
    out = []
    for f in dataclasses.fields(saved):
        a, b = getattr(saved, f.name), getattr(config, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += config_changes(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append((prefix + f.name, a, b))
    return out


def _guarded(option: str | None, fn, *args, **kwargs):
    """``fn(*args)``, a refused value (ValueError) raised as an OptionError naming ``option``."""
    try:
        return fn(*args, **kwargs)
    except OptionError:
        raise
    except ValueError as err:
        raise OptionError(option, str(err).splitlines()[0]) from None


def _from_file(path: Path, task: str | None, dataset: str | None, preset: str | None) -> TrainConfig:
    """A config file: the preset of its task/preset/dataset, scaled to its steps, updated with its keys."""
    def refuse(err):
        return OptionError("--config", f"{path}: {err}")

    try:
        saved = read_json(path)
    except ConfigError as err:  # names the file
        raise OptionError("--config", str(err)) from None
    try:
        if not isinstance(saved, dict):
            raise ConfigError("config", f"is {type(saved).__name__}, expected a JSON object")
        for key, kind in (("task", str), ("preset", str), ("dataset", str), ("steps", int)):
            if key in saved:
                check_value(kind, saved[key], key)
        model = saved.get("model", {})
        sa = model.get("slot_attention", {}) if isinstance(model, dict) else {}
        for key, value in (("model", model), ("model.slot_attention", sa)):
            if not isinstance(value, dict):
                raise ConfigError(key, f"is {type(value).__name__}, expected an object")
    except ConfigError as err:
        raise refuse(err) from None
    for flag, value in (("task", task), ("preset", preset)):
        if value is not None and saved.get(flag, value) != value:
            raise OptionError(f"--{flag}", f"{path} has {flag} {saved[flag]!r}; leave --{flag} out or edit the file")
    task, preset = saved.get("task", task or "setpred"), saved.get("preset", preset or "cpu")
    try:
        base = scale_budget(preset_config(task, dataset or saved.get("dataset"), preset), saved.get("steps"))
    except ValueError as err:
        raise refuse(err) from None
    base = dataclasses.asdict(base)
    model = {**base["model"], **saved.get("model", {}),
             "slot_attention": {**base["model"]["slot_attention"], **sa}}
    merged = {**base, **saved, "model": model}
    if dataset is not None:
        merged["dataset"] = dataset
    try:
        return config_from_dict(merged)
    except ConfigError as err:
        raise refuse(err) from None


def default_run_dir(config: TrainConfig, fast_dev_run: bool = False) -> Path:
    """runs/<task>-<dataset>-<preset>-seed<seed>; a fast dev run takes the first of it, -2, -3... holding no run."""
    label = "fast-dev-run" if fast_dev_run else config.preset
    path = candidate = Path("runs") / f"{config.task}-{Path(config.dataset).stem}-{label}-seed{config.seed}"
    i = 1
    while fast_dev_run and ((candidate / "checkpoint.h5").exists() or (candidate / "config.json").exists()):
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def ranks_to_launch(procs, config: TrainConfig, typed: bool, fast_dev_run: bool = False) -> tuple[int, list[str]]:
    """How many ranks ``train --procs`` starts under mpiexec (1: run in this process, or this is a rank),
    and the notes.

    ``procs``: a number or "auto" (on the CPU, one rank per core up to one per 4 examples of the batch,
    when mpiexec can start them); ``typed``: the command came from a terminal, not from Python."""
    import os

    from slotref.backend import DEVICE_ENV
    from slotref.training import launch

    if launch.launched_size() > 1 or os.environ.get(launch.MPI_ENV) == "1":  # already a rank
        n = launch.launched_size()
        return 1, [f"training on {n} processes (mpiexec, data parallel: they train as one process, "
                   "slotref docs scale; --procs 1 runs one)"] if n > 1 else []
    if procs == "auto":
        device = config.device or os.environ.get(DEVICE_ENV) or "cpu"
        if not typed or device != "cpu" or fast_dev_run or not launch.can_launch():
            return 1, []
        n = launch.auto_procs(config.batch_size, launch.usable_cores())
        error = launch.launch_error(n) if n > 1 else None
        if error:
            return 1, [f"training in one process: mpiexec -n {n} could not start ranks here ({error})"]
        return n, []
    launch.check_device(procs, config.device or os.environ.get(DEVICE_ENV))  # CuPy, before any rank starts
    if procs > 1 and not launch.can_launch():
        raise OptionError("--procs", "needs mpi4py and mpiexec: pip install 'slotref[mpi]'")
    if config.batch_size % procs:
        raise OptionError("--procs", f"{procs}: the batch of {config.batch_size} does not divide among {procs} "
                                     "processes; choose a divisor of it")
    return procs, []
