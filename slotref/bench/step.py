"""``bench --what step``: images/s of a full training step (forward, loss, backward, Adam) of each task
configuration, with peak memory; on the CPU with PyTorch installed, also PyTorch eager's images/s on the
same architecture and batch (``slotref.bench.torch_twin``), measured in the same run, and the ratio.
``--profile`` breaks each step down (``slotref.bench.profiler``). ``--what data``: the generators' speed.
"""

from __future__ import annotations

import time

import autograd
import numpy as np

from slotref.backend import host_rng
from slotref.bench import torch_twin
from slotref.bench.timing import best_seconds, best_seconds_of_ranks, peak_memory_gb

# (name, task, dataset/resolution, batch size): the configurations of ``bench --what step``.
STEP_CONFIGS = [
    ("setpred-64", "setpred", 64, 32),
    ("setpred-128", "setpred", 128, 8),
    ("tetrominoes", "discovery", "tetrominoes", 32),
    ("multi-dsprites", "discovery", "multi-dsprites", 16),
    ("clevr6-shapes", "discovery", "clevr6-shapes", 2),
]


def step_setup(be, task: str, dataset, batch_size: int, seed: int = 0):
    """(loss_and_grad closure, params, adam, state, config) for one synthetic batch."""
    from slotref import paper
    from slotref.models import discovery_config, init_model, setpred_config
    from slotref.optim import Adam
    from slotref.training.config import TrainConfig
    from slotref.training.tasks import make_task

    if task == "setpred":
        config = setpred_config(int(dataset))
    else:
        config = discovery_config(dataset)
    rng = host_rng(seed)
    params = be.tree_asarray(init_model(rng, config))
    h, w = config.resolution
    images = be.asarray(rng.uniform(-1, 1, (batch_size, h, w, 3)))
    noise = be.asarray(rng.standard_normal((batch_size, config.num_slots, config.slot_attention.slot_size)))
    targets = None
    if task == "setpred":
        targets = np.zeros((batch_size, 10, paper.NUM_PROPERTIES))
        targets[:, :5] = rng.uniform(0, 1, (batch_size, 5, paper.NUM_PROPERTIES))
        targets[:, :5, paper.PRESENCE] = 1
        targets = be.asarray(targets)
    task_loss = make_task(TrainConfig(task=task, model=config)).loss

    def loss_fn(p):
        return task_loss(p, images, targets, noise)

    adam = Adam()
    return autograd.value_and_grad(loss_fn), params, adam, adam.init(params), config


def step_configs(task=None, dataset=None, batch_size=None, resolution=None) -> list[tuple]:
    """The rows of STEP_CONFIGS that ``--task``, ``--dataset``, ``--resolution`` and ``--batch-size`` pick."""
    configs = STEP_CONFIGS
    if task == "setpred":
        configs = [c for c in configs if c[1] == "setpred"]
        if resolution:
            configs = [(f"setpred-{resolution}", "setpred", resolution, batch_size or 8)]
    elif task == "discovery":
        configs = [c for c in configs if c[1] == "discovery" and (dataset is None or c[2] == dataset)]
    if batch_size:
        configs = [(n, t, d, batch_size) for n, t, d, _ in configs]
    return configs


def bench_step(be, task=None, dataset=None, batch_size=None, resolution=None, repeats=3, profile=False,
               echo=print) -> list[dict]:
    """Time the training step of each chosen configuration; print a row each and return the rows."""
    from slotref.training.collectives import GradientSync
    from slotref.training.launch import world
    from slotref.flat import FlatTree

    w = world()  # under mpiexec -n N: each rank steps on B / N examples plus the allreduce
    # PyTorch beside one process on the CPU (a single PyTorch process is the comparison there too)
    with_torch = be.device == "cpu" and w.size == 1 and torch_twin.available()
    echo(f"{'configuration':<16}{'batch':>6}{'s/step':>9}{'images/s':>10}"
         + (f"{'PyTorch CPU':>13}{'ratio':>7}" if with_torch else "") + f"{'peak GB':>9}")
    if w.size > 1:
        echo(f"{w.size} ranks, global batch = batch; each rank times its slice and the allreduce "
             f"({w.allreduce_path()}), the slowest rank counts")
    rows = []
    for name, t, d, b in step_configs(task, dataset, batch_size, resolution):
        sync = GradientSync(w, b)
        value_and_grad, tree, adam, _, config = step_setup(be, t, d, sync.slice.stop - sync.slice.start,
                                                           seed=w.rank)
        params = FlatTree.from_tree(tree)
        state = adam.init(params)
        sync.layout = params.layout

        def train_step(tree):
            loss, grads = value_and_grad(tree)
            loss, grads, _ = sync.reduce(loss, grads)
            adam.update(params, grads, state, 1e-6)
            return loss

        def step():
            return train_step(params.tree)

        seconds = (best_seconds(step, be.xp, repeats) if w.size == 1
                   else best_seconds_of_ranks(step, be.xp, repeats, w))
        ips = b / seconds
        row = {"config": name, "batch": b, "seconds": seconds, "images_per_s": ips, "peak_gb": peak_memory_gb(be)}
        torch_columns = ""
        if with_torch:  # PyTorch eager on the same architecture and batch, measured now
            row["torch_images_per_s"] = b / torch_twin.step_seconds_apart(t, d, b, repeats)
            torch_columns = f"{row['torch_images_per_s']:>13.1f}{ips / row['torch_images_per_s']:>7.2f}"
        rows.append(row)
        echo(f"{name:<16}{b:>6}{seconds:>9.3f}{ips:>10.1f}{torch_columns}{row['peak_gb']:>9.2f}")
        if profile:
            from slotref.bench.profiler import profile_step

            profile_step(be, step, train_step, params.tree, config, b, seconds, repeats, echo)
    return rows


def bench_data(echo=print) -> None:
    """Images/s of the built-in generators (one process, rendering only)."""
    from slotref.data import generators

    for name, res in (("clevr-shapes", 64), ("clevr-shapes", 128), ("tetrominoes", None),
                      ("multi-dsprites", None)):
        n = 512
        generators.render(name, 0, 0, 64, resolution=res)
        t0 = time.perf_counter()
        generators.render(name, 0, 64, n, resolution=res)
        dt = time.perf_counter() - t0
        echo(f"{name:<16} {res or 'default':>7}  {n / dt:>8.0f} images/s")
