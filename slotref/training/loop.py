"""The training loop, shared by both tasks, and loading a finished or interrupted run.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per
line), ``checkpoint.h5`` (``slotref.training.checkpoint``) and pictures.
``resume=True`` continues exactly: the data order and the slot noise of step s
depend only on (seed, s).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import autograd
from tqdm import tqdm

from slotref import backend, io
from slotref.backend import get_backend, host_rng, to_float, tree_leaves
from slotref.models import init_model
from slotref.optim import Adam, Schedule
from slotref.training.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from slotref.training.config import DivergenceError, TrainConfig, TrainingError, config_from_stored
from slotref.training.data import BatchOrder, load_splits, resolve_dataset, train_noise
from slotref.training.tasks import looks_collapsed, make_task

# Fields a resumed run may change: how long it runs, where, and how often it reports.
RESUME_MAY_CHANGE = ("steps", "device", "log_every", "eval_every", "checkpoint_every", "data_dir")
# Ranks other than 0 of an MPI job neither lock nor write the run directory.
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


def _append_jsonl(path: Path, record: dict) -> None:
    io.append_line(path, json.dumps(record))


def read_run_config(run_dir: Path) -> TrainConfig:
    """The checked ``config.json`` of a run directory (TrainingError, one line)."""
    path = Path(run_dir) / "config.json"
    try:
        stored = json.loads(path.read_text())
    except ValueError as err:
        raise TrainingError(f"{path}: config: not JSON ({str(err).splitlines()[0]}); not a slotref run "
                            "(choose another --out)") from None
    except OSError as err:
        raise TrainingError(f"{path}: config: cannot be read ({err.strerror or err})") from None
    return config_from_stored(stored, path)


def config_changes(saved: TrainConfig, config: TrainConfig, prefix: str = "") -> list[tuple[str, object, object]]:
    """(field, saved value, new value) for every field that differs, nested fields as ``model.num_slots``."""
    out = []
    for name in saved.__dataclass_fields__:
        a, b = getattr(saved, name), getattr(config, name)
        if hasattr(a, "__dataclass_fields__") and hasattr(b, "__dataclass_fields__"):
            out += config_changes(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append((prefix + name, a, b))
    return out


def _check_new_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """A new run goes into a missing or empty folder, or restarts the same run that never saved a checkpoint."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: not a folder; choose another --out")
    if (run_dir / "checkpoint.h5").exists():
        raise TrainingError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    entries = [p.name for p in run_dir.iterdir() if p.name != io.LOCK_NAME]
    if not entries:
        return
    if "config.json" not in entries:
        raise TrainingError(f"{run_dir}: not empty and not a slotref run (no config.json); choose another --out")
    changes = [c for c in config_changes(read_run_config(run_dir), config) if c[0] != "device"]
    if changes:
        key, old, new = changes[0]
        raise TrainingError(f"{run_dir}: holds another run ({key}: {old!r} there, {new!r} here); "
                            "choose another --out")


def _is_writer() -> bool:
    return next((os.environ[k] for k in RANK_ENV if os.environ.get(k, "").isdigit()), "0") == "0"


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_eval=None) -> dict:
    """Train ``config`` in ``run_dir`` (resuming from its checkpoint with ``resume``).

    Returns the last evaluation's metrics. Raises DivergenceError (a
    TrainingError) on a NaN loss or parameter, TrainingError with a one-line
    message on an incompatible run directory; KeyboardInterrupt
    saves a checkpoint first.
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.json").exists():
            raise TrainingError(f"nothing to resume in {run_dir}: no config.json")
        saved = read_run_config(run_dir)
        if saved.task != config.task:
            raise TrainingError(f"{run_dir} holds a {saved.task} run; cannot resume it as {config.task}")
        changed = [c for c in config_changes(saved, config) if c[0] not in RESUME_MAY_CHANGE]
        if changed:
            key, old, new = changed[0]
            raise TrainingError(f"{run_dir}: cannot resume with {key} = {new!r}: the run was trained with "
                                f"{old!r}; keep it, or start a new run with another --out")
        config = replace(saved, **{k: getattr(config, k) for k in RESUME_MAY_CHANGE})
    else:
        _check_new_run_dir(run_dir, config)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io.write_error(run_dir, err) from None
    if not _is_writer():
        return _train(config, run_dir, resume, progress, on_eval)
    with io.RunLock(run_dir, note=lambda line: print(f"note: {line}", flush=True)):
        return _train(config, run_dir, resume, progress, on_eval)


def _train(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, on_eval) -> dict:
    ckpt_path = run_dir / "checkpoint.h5"
    be = get_backend(config.device, config.dtype)
    config = replace(config, device=be.device)
    if _is_writer():
        io.write_text(run_dir / "config.json", config.to_json())
    task = make_task(config)
    data_path = resolve_dataset(config)
    train_split, val_split, fingerprint = load_splits(data_path, config)

    params = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model))
    adam = Adam()
    state = adam.init(params)
    start = 0
    if resume and ckpt_path.exists():
        params, state, start, saved_fp = load_checkpoint(ckpt_path, be, params, config)
        if saved_fp != fingerprint:
            raise TrainingError(f"checkpoint {ckpt_path} was trained on another dataset than {data_path}")
    schedule = Schedule(config.learning_rate, config.warmup_steps, config.decay_steps)
    order = BatchOrder(len(train_split), config.batch_size, config.seed)
    value_and_grad = autograd.value_and_grad(task.loss)
    metrics_path = run_dir / "metrics.jsonl"
    last_eval: dict = {}

    bar = tqdm(total=config.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    t_log, step_log = time.perf_counter(), start
    stop = _StopRequest()
    with stop:
        for step in range(start, config.steps):
            images, targets = task.batch(be, train_split, order(step))
            noise = train_noise(be, config, step)
            loss, grads = value_and_grad(params, images, targets, noise)
            lr = schedule(step)
            # The only host sync of a step, and only every log_every steps: the
            # finiteness check guards the checkpoints, the metrics log records it.
            if (step + 1) % config.log_every == 0:
                loss_value = to_float(loss)
                if not math.isfinite(loss_value):
                    raise DivergenceError(f"loss became {loss_value} at step {step}; the last good checkpoint "
                                        f"({ckpt_path if ckpt_path.exists() else 'none'}) is kept")
                now = time.perf_counter()
                rate = (step + 1 - step_log) * config.batch_size / max(now - t_log, 1e-9)
                t_log, step_log = now, step + 1
                _append_jsonl(metrics_path, {"step": step + 1, "loss": loss_value, "lr": lr,
                                             "images_per_s": round(rate, 2), "time": time.time()})
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
            adam.update(params, grads, state, lr)
            bar.update(1)
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested:
                _check_finite_params(params, done, ckpt_path)
                save_checkpoint(ckpt_path, params, state, done, config, fingerprint)
            if stop.requested:
                bar.close()
                raise KeyboardInterrupt(f"{stop.reason} after step {done}; checkpoint saved in {ckpt_path}")
            if done % config.eval_every == 0 or done == config.steps:
                _check_finite_params(params, done, ckpt_path)
                last_eval = task.evaluate(be, params, val_split)
                _append_jsonl(metrics_path, {"step": done, "eval": last_eval, "time": time.time()})
                bar.write(f"step {done}: " + _format_eval(last_eval))
                if config.task == "discovery" and looks_collapsed(last_eval):
                    bar.write(f"warning: slots look collapsed at step {done} (even attention or near-identical "
                              "slots, the 'stripes' of section 4.1). Usual early on: the Tetrominoes preset's "
                              "slots split the image after 1,000-3,000 steps. If it persists, try another "
                              "seed or more warm-up.")
                if on_eval is not None:
                    on_eval(done, last_eval)
    bar.close()
    return last_eval


class _StopRequest:
    """Ctrl-C or SIGTERM finishes the current step, saves a checkpoint, then stops; a second one stops
    at once, without saving (the last checkpoint, written whole or not at all, is kept)."""

    SIGNALS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

    def __init__(self):
        self.requested = False
        self.reason = "interrupted"
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            self._restore()
            raise KeyboardInterrupt(f"{self.SIGNALS.get(signum, 'stopped')} a second time: stopped at once, "
                                    "without saving the step in progress; checkpoint.h5 holds the last saved step")
        self.requested = True
        self.reason = self.SIGNALS.get(signum, "stopped")

    def _restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def _check_finite_params(params, step, ckpt_path):
    for name, leaf in tree_leaves(params):
        if not bool(backend.xp_of(leaf).isfinite(leaf).all()):
            raise DivergenceError(f"parameter {name} is not finite at step {step}; the last good checkpoint "
                                f"({ckpt_path if ckpt_path.exists() else 'none'}) is kept")


def _format_eval(result: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())


def load_run(run_dir: str | Path, device: str | None = None):
    """(config, backend, params, task, val_split, step) of a finished or interrupted run."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.h5"
    if not ckpt.exists():
        raise TrainingError(f"{run_dir}: no checkpoint.h5 (is it a run directory?)")
    config = read_checkpoint_config(ckpt)  # checked: known keys, types, sane sizes
    if device:
        config = replace(config, device=device)
    be = get_backend(config.device, config.dtype)
    template = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model))
    params, _, step, _ = load_checkpoint(ckpt, be, template, config)
    # The stored config is data: its dataset is read if it is there, never made.
    _, val_split, _ = load_splits(resolve_dataset(config, create=False), config)
    return config, be, params, make_task(config), val_split, step
