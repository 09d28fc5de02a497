"""The training loop, shared by both tasks.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per
line), ``checkpoint.h5`` (``slotref.training.checkpoint``), the checkpoints kept on
request (``slotref.training.kept``) and pictures.
``resume=True`` continues exactly: the data order and the slot noise of step s
depend only on (seed, s).

Under ``mpiexec -n N`` the same loop runs on N ranks (docs/scale.md): each
rank computes the gradient of its slice of every global batch, one allreduce
per step sums them, every rank applies the same flat Adam update; rank 0
alone prints and writes. A single process never touches MPI.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import autograd
from tqdm import tqdm

from slotref import backend, io
from slotref.training.curriculum import run_plan
from slotref.backend import get_backend, to_float, tree_leaves
from slotref.flat import FlatTree
from slotref.kernels.allocator import keep_freed_host_memory
from slotref.optim import Adam, Schedule
from slotref.training.average import ParameterAverage
from slotref.training import collectives
from slotref.training.checkpoint import load_training_state, save_training_state
from slotref.training.config import DivergenceError, TrainConfig, TrainingError, read_run_config
from slotref.training.resolve import check_new_run_dir, resumed
from slotref.training.stop import StopRequest
from slotref.training.logs import RunLog, check_logs, format_metrics, require_tensorboard, write_command
from slotref.training.data import BatchOrder, load_splits, num_objects, resolve_dataset, train_noise
from slotref.training.binding import GradientNorms, binding_warning, evaluate_binding
from slotref.training.launch import world
from slotref.training.tasks import make_task
from slotref.training import kept, restart

def _is_writer() -> bool:
    """Ranks other than 0 of an MPI job neither lock nor write the run directory (``launch.is_writer``)."""
    from slotref.training.launch import is_writer

    return is_writer()


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_eval=None, tensorboard: bool = False, echo=None, command: list[str] | None = None) -> dict:
    """Train ``config`` in ``run_dir`` (resuming from its checkpoint with ``resume``).

    Returns the last evaluation's metrics. Raises DivergenceError (a
    TrainingError) on a NaN loss or parameter, TrainingError with a one-line
    message on an incompatible run directory; KeyboardInterrupt
    saves a checkpoint first. ``tensorboard``: also write TensorBoard event files (``training.logs``);
    ``echo``: where notes go (default: tqdm.write); ``command``: the command line for command.txt
    (default: sys.argv).
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.json").exists():
            raise TrainingError(f"nothing to resume in {run_dir}: no config.json")
        config = resumed(read_run_config(run_dir), config, run_dir)  # the one resume policy
    else:
        check_new_run_dir(run_dir, config)
    run_plan(config)  # a curriculum the run cannot follow: a one-line ValueError, before any file is made
    check_logs(run_dir)  # a log that is a link or a FIFO: refused before config.json or a checkpoint is written
    if tensorboard:
        require_tensorboard()  # before any file is made
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # the folders this start makes
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io.write_error(run_dir, err) from None
    if not _is_writer():
        return _train(config, run_dir, resume, progress, on_eval, tensorboard, echo, command)
    try:
        with io.RunLock(run_dir, note=lambda line: print(f"note: {line}", flush=True)):
            return _train(config, run_dir, resume, progress, on_eval, tensorboard, echo, command)
    except BaseException:
        # A start that fails before it writes anything (data, device, logger) leaves no empty folder behind.
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()                                         # only an empty one
        raise


def _train(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, on_eval, tensorboard: bool,
           echo, command) -> dict:
    ckpt_path = run_dir / "checkpoint.h5"
    w = world()
    local_slice = collectives.local_slice(config.batch_size, w.rank, w.size)  # a one-line error if B % N
    plan = run_plan(config)  # checked before the backend is made
    data_path = root_first(w, lambda: resolve_dataset(config, progress=progress))  # built-in data is made once, by rank 0
    failure = None
    try:  # what may fail on one rank alone (its GPU, its copy of the file) fails on every rank
        if w.size > 1 and (config.device or os.environ.get(backend.DEVICE_ENV) or "cpu").lower() == "gpu":
            w.use_device()  # this rank's GPU, before the backend is made
        keep_freed_host_memory()  # a training step reuses freed host pages (kernels.allocator)
        be = get_backend(config.device, config.dtype)
        config = replace(config, device=be.device)
        task = make_task(config)
        train_split, val_split, fingerprint = load_splits(data_path, config)
        params = FlatTree.from_tree(be.tree_asarray(restart.initial_params(config)))
        adam = Adam()
        state = adam.init(params)
        averaging = ParameterAverage(config.ema) if config.ema > 0 else None
        average = None  # started at each stage's first step
        start, draw = 0, restart.Draw()  # the draw of the initial weights trained (training.restart)
        if resume and ckpt_path.exists():
            tree, tree_state, start, saved_fp = load_training_state(ckpt_path, be, params.tree, config)
            # An empty fingerprint: weights written without data (save_model, import-tf), fine-tuned on any file.
            if saved_fp and saved_fp != fingerprint:
                raise TrainingError(f"checkpoint {ckpt_path} was trained on another dataset than {data_path}")
            params.assign(tree)
            state = adam.from_tree(tree_state, params)
            draw = restart.Draw(*tree_state["draw"])
            if averaging is not None:
                average = params.layout.copy_in(tree_state["average"], params.xp)
    except Exception as err:  # noqa: BLE001 - raised again on every rank
        failure = err
    w.raise_together(failure)
    if w.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / "config.json", config.to_json())
        write_command(run_dir, command)
        if len(val_split) < config.eval_size:
            (echo or tqdm.write)(f"note: validation holds the first {len(val_split)} of the "
                                 f"{len(val_split) + len(train_split)} examples of {data_path} (at most a tenth "
                                 f"of the file; eval_size is {config.eval_size})")
    log = RunLog(run_dir, tensorboard=tensorboard) if w.is_root else None
    if log is not None:
        log.hyperparameters(config)
    schedule = Schedule(config.learning_rate, config.warmup_steps, config.decay_steps)
    order = BatchOrder(len(train_split), config.batch_size, config.seed)
    order = plan.batch_order(order, num_objects(train_split.targets), config.batch_size, config.seed)
    sync = collectives.GradientSync(w, config.batch_size, params.layout)
    value_and_grad = autograd.value_and_grad(task.loss)
    grad_norms = GradientNorms(params.layout)  # through Slot Attention and the encoder (training.binding)
    last_eval: dict = {}
    best = kept.best_so_far(run_dir, config) if resume and w.is_root else -math.inf  # --keep-checkpoints best
    saved_at = None  # the step of the checkpoint.h5 on disk, written by this start
    warned = None  # the signs of unbound slots last warned of: said once, and again only when they change

    def say(line: str) -> None:  # on the terminal, and in the run's console.log
        if w.is_root:
            tqdm.write(line)
            log.console(line)

    def redraw_if_unbound(done: int, binding=None) -> None:  # train --restart-unbound (training.restart)
        """``binding``: the diagnostics of the trained parameters at ``done``, when evaluated already."""
        nonlocal draw, state, average, warned
        if not restart.due(config, draw, done):
            return
        if binding is None:  # the parameters, not their average: that still holds much of the initial draw
            binding = root_first(w, lambda: evaluate_binding(be, params.tree, config, val_split))
        signs = restart.redraw_signs(binding)
        if not signs and binding is not None:
            say(restart.kept_message(binding, draw, done))
        if signs:
            draw, warned = restart.Draw(draw.number + 1, done), None
            say(restart.message(signs, draw))
            if w.is_root:
                log.redraw(done, draw.number, signs)
            params.assign(be.tree_asarray(restart.initial_params(config, draw.number)))
            state = adam.init(params)
            average = None if averaging is None else averaging.start(params)
            if w.is_root:  # the checkpoint of this step holds the new draw
                save_training_state(ckpt_path, params.tree, adam.to_tree(state), done, config, fingerprint,
                                    average=None if average is None else average.tree,
                                    draw=(draw.number, draw.start))
            w.barrier()

    bar = tqdm(total=config.steps, initial=start, disable=not (progress and w.is_root), unit="step",
               dynamic_ncols=True)
    t_log, step_log = time.perf_counter(), start
    stop = StopRequest()
    interrupted = False
    with stop, w.fail_fast(agreed=(DivergenceError,)):
        redraw_if_unbound(start)  # a run stopped at the step its draw is checked at, resumed
        for step in range(start, config.steps):
            # Step s's examples and slot noise are drawn for the global batch; this rank keeps its slice.
            # The curriculum's stage sets K (slot noise, target rows), the Adam reset, the learning rate,
            # the set prediction loss's coordinate weights (loss and matching) and the gradient option.
            k_step = plan.slots(step, config.model.num_slots)
            images, targets = task.batch(be, train_split, order(step)[local_slice])
            targets = plan.targets(targets, step, config.model.num_slots)
            noise = train_noise(be, config, step, k_step)[local_slice]
            if plan.resets_adam(step):
                state = adam.init(params)
            loss, grads = value_and_grad(params.tree, images, targets, noise, *plan.loss_settings(step, config))
            # One allreduce: the global loss, the summed gradient, and the ranks' Ctrl-C votes.
            loss, grads, stops = sync.reduce(loss, grads, stop.requested)
            grads = grad_norms.add(grads)  # flat, as Adam takes it
            lr = plan.learning_rate(step - draw.start, schedule)  # from the first step of the draw trained
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
                if w.is_root:
                    log.train({"step": step + 1, "loss": loss_value, "lr": lr, "images_per_s": round(rate, 2),
                               "time": time.time(), **grad_norms.mean()})
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
            adam.update(params, grads, state, lr)
            if averaging is not None:  # a stage's first step starts the average from its parameters
                average = averaging.start(params) if plan.starts_stage(step) else averaging.update(average, params)
            if w.size > 1 and (step + 1) % config.log_every == 0:
                w.check_same(collectives.checksum(params.buffers), f"parameters after step {step + 1}")
            bar.update(1)
            done = step + 1
            stopping = stop.requested if w.size == 1 else to_float(stops) > 0
            keep_step = kept.keeps_step(config, done)
            if done % config.checkpoint_every == 0 or done == config.steps or stopping or keep_step:
                _check_finite_params(params.tree, done, ckpt_path)
                if w.is_root:
                    save_training_state(ckpt_path, params.tree, adam.to_tree(state), done, config, fingerprint,
                                        average=None if average is None else average.tree,
                                        draw=(draw.number, draw.start))
                    if keep_step:
                        kept.copy_checkpoint(ckpt_path, run_dir / kept.step_name(done))
                saved_at = done
                w.barrier()  # on disk before any rank goes on: a rank failing later leaves it whole
            if stopping:
                interrupted = True
                break
            evaluated = done % config.eval_every == 0 or done == config.steps
            if evaluated:
                model = params if average is None else average  # what the run evaluates and reports
                _check_finite_params(model.tree, done, ckpt_path)
                last_eval = task.evaluate(be, model.tree, val_split, world=w)
                binding = root_first(w, lambda: evaluate_binding(be, model.tree, config, val_split))  # rank 0's
                last_eval = last_eval if binding is None else {**last_eval, "binding": binding}
                if w.is_root:
                    log.eval(done, last_eval)
                    if log.writer is not None and len(val_split):  # viz's picture, for TensorBoard
                        title = f"{run_dir.name}, step {done}"
                        log.figure(done, _figure(config, be, model.tree, task, val_split, title))
                headline = last_eval.get(config.headline)
                if w.is_root and config.keep_checkpoints == "best" and kept.improves(headline, best):
                    best = last_eval[config.headline]
                    if saved_at == done:  # the checkpoint of this step is on disk: copied, not written again
                        kept.copy_checkpoint(ckpt_path, run_dir / kept.BEST_NAME)
                    else:
                        save_training_state(run_dir / kept.BEST_NAME, params.tree, adam.to_tree(state), done, config,
                                            fingerprint, average=None if average is None else average.tree,
                                            draw=(draw.number, draw.start))
                say(f"step {done}: " + format_metrics(last_eval))
                line, warned = (None, warned) if restart.check_to_come(config, draw, done) else \
                    binding_warning(binding, done, config.steps, config.task, warned)
                if line:
                    say(line)
                if on_eval is not None:
                    on_eval(done, last_eval)
            redraw_if_unbound(done, binding if evaluated and model is params else None)
    bar.close()
    w.barrier()  # the checkpoint is on disk before any rank returns
    if log is not None:
        log.close()
    if interrupted:
        raise KeyboardInterrupt(f"{stop.reason} after step {done}; checkpoint saved in {ckpt_path}")
    return last_eval


def root_first(w, make):
    """``make()`` on rank 0 alone, its result (or its error, raised again) on every rank."""
    outcome = None
    if w.is_root:
        try:
            outcome = (make(), None)
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            outcome = (None, err)
    value, err = w.broadcast(outcome)
    if err is not None:
        raise err
    return value


def _figure(config, be, params, task, split, title, images=4):
    """What draws ``slotref viz``'s picture of the first ``images`` examples of ``split`` to a path."""
    from slotref.viz import draw_run  # matplotlib: only for a run that logs pictures

    return lambda path: draw_run(path, config, be, params, task, split.take(slice(0, images)), title=title)


def _check_finite_params(params, step, ckpt_path):
    for name, leaf in tree_leaves(params):
        if not bool(backend.xp_of(leaf).isfinite(leaf).all()):
            raise DivergenceError(f"parameter {name} is not finite at step {step}; the last good checkpoint "
                                f"({ckpt_path if ckpt_path.exists() else 'none'}) is kept")
