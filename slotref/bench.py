"""Benchmarks behind ``python cli.py bench`` (speed is measured here, never in tests).

- ``layers``: forward and backward of the convolutions at the paper's shapes,
  in GFLOP/s next to this machine's float32 matrix-multiply throughput;
- ``module``: the Slot Attention module alone (``slotref.bench_module``);
- ``step``: images/s of a full training step (forward, loss, backward, Adam)
  of each task configuration, with peak memory; on the CPU with PyTorch
  installed, also PyTorch eager's images/s on the same architecture and batch
  (``slotref.bench_torch``), measured in the same run, and the ratio;
  ``--profile`` breaks the step down (``slotref.bench_profile``);
- ``data``: images/s of the built-in generators.
"""

from __future__ import annotations

import resource
import time

import autograd
import numpy as np

from slotref import layers
from slotref.kernels import conv
from slotref.backend import get_backend, host_rng

# (name, task, dataset/resolution, batch size): the configurations of ``bench --what step``.
STEP_CONFIGS = [
    ("setpred-64", "setpred", 64, 32),
    ("setpred-128", "setpred", 128, 8),
    ("tetrominoes", "discovery", "tetrominoes", 32),
    ("multi-dsprites", "discovery", "multi-dsprites", 16),
    ("clevr6-shapes", "discovery", "clevr6-shapes", 2),
]


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def _time(fn, xp, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(xp)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(be, n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply throughput in GFLOP/s."""
    xp = be.xp
    a = be.asarray(host_rng(0).standard_normal((n, n)), dtype=np.float32)
    b = be.asarray(host_rng(1).standard_normal((n, n)), dtype=np.float32)
    return 2 * n ** 3 / _time(lambda: a @ b, xp, repeats) / 1e9


def _time_ranks(fn, xp, repeats: int, w) -> float:
    """Best over ``repeats`` of the slowest rank's wall time, the ranks starting together (a barrier)."""
    fn()
    _sync(xp)
    times = []
    for _ in range(repeats):
        w.barrier()
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        times.append(time.perf_counter() - t0)
    return min(max(column) for column in zip(*w.allgather(times)))


def peak_memory_gb(be) -> float:
    """Peak resident memory of this process (CPU) or of CuPy's pool (GPU), in GB."""
    if be.xp is np:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return be.xp.get_default_memory_pool().total_bytes() / 1e9


# --------------------------------------------------------------------------

def conv_flops(batch, h_out, w_out, kernel, c_in, c_out) -> float:
    return 2.0 * batch * h_out * w_out * kernel * kernel * c_in * c_out


def model_flops(config) -> dict:
    """Forward FLOPs per image of each part of a model (multiply-adds count 2)."""
    from slotref.models import decoder_layers

    parts = {}
    h, w = config.resolution
    c_in, convs = 3, 0.0
    if config.model == "slot-attention":
        for s in config.encoder_strides:
            h, w = -(-h // s), -(-w // s)
            convs += conv_flops(1, h, w, config.encoder_kernel, c_in, config.encoder_channels)
            c_in = config.encoder_channels
        n, c = h * w, config.encoder_channels
        parts["encoder convs"] = convs
        parts["encoder MLPs"] = 2.0 * n * (4 * c + c * config.mlp_size + config.mlp_size ** 2)
        sa, d, k = config.slot_attention, config.slot_attention.slot_size, config.num_slots
        per_iter = 2.0 * (k * d * d + 2 * n * k * d + k * d * 6 * d + 2 * k * d * sa.mlp_hidden_size)
        parts["slot attention"] = 2.0 * 2 * n * sa.input_size * d + config.num_iterations * per_iter
    else:
        parts["slot MLP"] = 2.0 * (16 * 16 * 3 * 512 + 512 * 512 + 512 * config.num_slots * 64)
    if config.task == "setpred":
        parts["head"] = 2.0 * config.num_slots * (64 * config.head_hidden + config.head_hidden * config.output_size)
    else:
        h0, w0 = config.resolution if config.decoder == "full" else config.decoder_init_resolution
        dec, c = 0.0, config.slot_attention.slot_size
        for kernel, stride, c_out in decoder_layers(config):
            dec += conv_flops(1, h0, w0, kernel, c, c_out)  # a transposed conv: every input pixel x kernel
            h0, w0, c = h0 * stride, w0 * stride, c_out
        parts["decoder (all slots)"] = config.num_slots * dec
    return parts


def print_model_flops(echo=print, peak=None):
    """FLOPs of the paper's configurations and the step time they imply at the matmul peak."""
    from slotref.models import discovery_config, setpred_config

    echo(f"{'model (paper configuration)':<34}{'GFLOP/image fwd':>16}{'~step GFLOP/image':>19}"
         + (f"{'floor ms/image':>16}" if peak else ""))
    for name, config in (("set prediction 128x128", setpred_config(128)), ("set prediction 64x64", setpred_config(64)),
                         ("discovery Tetrominoes", discovery_config("tetrominoes")),
                         ("discovery Multi-dSprites", discovery_config("multi-dsprites")),
                         ("discovery CLEVR6", discovery_config("clevr6-shapes"))):
        fwd = sum(model_flops(config).values()) / 1e9
        line = f"{name:<34}{fwd:>16.3f}{3 * fwd:>19.3f}"
        if peak:
            line += f"{1e3 * 3 * fwd / peak:>16.2f}"
        echo(line)


def bench_layers(be, repeats=3, echo=print):
    xp = be.xp
    peak = matmul_peak(be)
    echo(f"float32 matmul peak (2048^3): {peak:.1f} GFLOP/s on {be.device}")
    print_model_flops(echo, peak)
    echo(f"{'layer':<44}{'pass':<10}{'ms':>9}{'GFLOP/s':>10}{'% peak':>8}")
    rng = host_rng(0)
    shapes = [("conv 5x5 64->64, 64x64, batch 8, s1", 8, 64, 5, 64, 64, 1, "conv"),
              ("conv 5x5 64->64, 128x128, batch 8, s1", 8, 128, 5, 64, 64, 1, "conv"),
              ("conv 5x5 64->64, 128x128, batch 8, s2", 8, 128, 5, 64, 64, 2, "conv"),
              ("conv 5x5 3->64, 128x128, batch 8, s1", 8, 128, 5, 3, 64, 1, "conv"),
              ("deconv 5x5 64->64, 64->128, batch 8, s2", 8, 64, 5, 64, 64, 2, "deconv"),
              ("deconv 5x5 32->32, 35x35, batch 128, s1", 128, 35, 5, 32, 32, 1, "deconv")]
    rows = []
    for name, b, res, k, c_in, c_out, s, kind in shapes:
        x = be.asarray(rng.standard_normal((b, res, res, c_in)))
        if kind == "conv":
            w = be.asarray(rng.standard_normal((k, k, c_in, c_out)) * 0.05)
            y = layers.conv2d_same(x, w, s)
            g = xp.ones_like(y)
            flops = conv_flops(b, y.shape[1], y.shape[2], k, c_in, c_out)
            passes = [("forward", lambda: layers.conv2d_same(x, w, s)),
                      ("grad x", lambda: conv._conv_backward_input(g, w, s, x.shape)),
                      ("grad w", lambda: conv._conv_backward_weight(x, g, s, w.shape))]
        else:
            w = be.asarray(rng.standard_normal((k, k, c_out, c_in)) * 0.05)
            y = layers.conv_transpose2d_same(x, w, s)
            g = xp.ones_like(y)
            flops = conv_flops(b, res, res, k, c_in, c_out)
            passes = [("forward", lambda: layers.conv_transpose2d_same(x, w, s)),
                      ("grad x", lambda: conv._conv_forward(g, w, s)),
                      ("grad w", lambda: conv._conv_backward_weight(g, x, s, w.shape))]
        for pass_name, fn in passes:
            t = _time(fn, xp, repeats)
            gflops = flops / t / 1e9
            rows.append({"layer": name, "pass": pass_name, "ms": 1e3 * t, "gflops": gflops, "peak": peak})
            echo(f"{name:<44}{pass_name:<10}{1e3 * t:>9.1f}{gflops:>10.1f}{100 * gflops / peak:>7.0f}%")
    rows += bench_gemm_shapes(be, peak, repeats, echo)
    return rows


# The GEMMs a CPU convolution is made of (kernels.conv._shifted_sum: row blocks of
# BLOCK_ROWS plus a halo, K = column offsets x C_in, N = C_out or, on the wide
# path, row offsets x C_out), and the single GEMM of a full patch matrix. What
# these reach alone is the ceiling of a convolution built from them.
GEMM_SHAPES = [("64-ch stride 1: one row offset", 320, 64),
               ("32-ch stride 1, wide: all row offsets", 160, 160),
               ("32-ch stride 1: one row offset", 160, 32),
               ("64-ch, full patch matrix (im2col)", 1600, 64),
               ("32-ch, full patch matrix (im2col)", 800, 32)]


def bench_gemm_shapes(be, peak, repeats=3, echo=print):
    """GFLOP/s of each GEMM shape in GEMM_SHAPES, alone, on fresh float32 operands."""
    xp = be.xp
    rng = host_rng(2)
    m = conv.BLOCK_ROWS + 4 * 64                   # a block and a 5x5 kernel's halo on a 64-wide image
    echo(f"{'GEMM inside a convolution (M x K @ K x N)':<64}{'ms':>9}{'GFLOP/s':>10}{'% peak':>8}")
    rows = []
    for name, k, n in GEMM_SHAPES:
        a = be.asarray(rng.standard_normal((m, k)), dtype=np.float32)
        b = be.asarray(rng.standard_normal((k, n)), dtype=np.float32)
        out = xp.empty((m, n), dtype=np.float32)
        reps = 20                                     # 20 blocks per timing: about the rows of one layer
        def gemms():
            for _ in range(reps):
                xp.matmul(a, b, out=out)
        t = _time(gemms, xp, repeats) / reps
        gflops = 2 * m * k * n / t / 1e9
        label = f"{name} ({m}x{k} @ {k}x{n})"
        rows.append({"layer": label, "pass": "gemm", "ms": 1e3 * t, "gflops": gflops, "peak": peak})
        echo(f"{label:<64}{1e3 * t:>9.2f}{gflops:>10.1f}{100 * gflops / peak:>7.0f}%")
    return rows


# --------------------------------------------------------------------------

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


def bench_step(be, task=None, dataset=None, batch_size=None, resolution=None, repeats=3, profile=False, echo=print):
    configs = STEP_CONFIGS
    if task == "setpred":
        configs = [c for c in configs if c[1] == "setpred"]
        if resolution:
            configs = [(f"setpred-{resolution}", "setpred", resolution, batch_size or 8)]
    elif task == "discovery":
        configs = [c for c in configs if c[1] == "discovery" and (dataset is None or c[2] == dataset)]
    if batch_size:
        configs = [(n, t, d, batch_size) for n, t, d, _ in configs]
    from slotref import bench_torch, distributed
    from slotref.flat import FlatTree

    w = distributed.world()  # under mpiexec -n N: each rank steps on B / N examples plus the allreduce
    # PyTorch beside one process on the CPU (a single PyTorch process is the comparison there too)
    with_torch = be.device == "cpu" and w.size == 1 and bench_torch.available()
    echo(f"{'configuration':<16}{'batch':>6}{'s/step':>9}{'images/s':>10}"
         + (f"{'PyTorch CPU':>13}{'ratio':>7}" if with_torch else "") + f"{'peak GB':>9}")
    if w.size > 1:
        echo(f"{w.size} ranks, global batch = batch; each rank times its slice and the allreduce "
             f"({w.allreduce_path()}), the slowest rank counts")
    rows = []
    for name, t, d, b in configs:
        sync = distributed.GradientSync(w, b)
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

        seconds = _time(step, be.xp, repeats) if w.size == 1 else _time_ranks(step, be.xp, repeats, w)
        ips = b / seconds
        row = {"config": name, "batch": b, "seconds": seconds, "images_per_s": ips, "peak_gb": peak_memory_gb(be)}
        torch_columns = ""
        if with_torch:  # PyTorch eager on the same architecture and batch, measured now
            row["torch_images_per_s"] = b / bench_torch.step_seconds_apart(t, d, b, repeats)
            torch_columns = f"{row['torch_images_per_s']:>13.1f}{ips / row['torch_images_per_s']:>7.2f}"
        rows.append(row)
        echo(f"{name:<16}{b:>6}{seconds:>9.3f}{ips:>10.1f}{torch_columns}{row['peak_gb']:>9.2f}")
        if profile:
            from slotref.bench_profile import (ConvTimer, data_loading_seconds, launches_and_device_time,
                                               profile_step, slot_attention_seconds)

            profile_step(step, echo)
            launches_and_device_time(train_step, params.tree, be.xp, echo)
            sa = slot_attention_seconds(be, config, b, repeats)
            echo(f"    {'Slot Attention (timed alone)':<28}{sa:>8.3f} s {100 * sa / seconds:>5.1f}% of the step")
            loading = data_loading_seconds(be, config, b)
            echo(f"    {'data: batch to device (alone)':<28}{loading:>8.3f} s {100 * loading / seconds:>5.1f}% of the step")
            peak = matmul_peak(be)
            step_flops = 3 * b * sum(model_flops(config).values())
            echo(f"    whole step: {step_flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {step_flops / seconds / 1e9:.1f} "
                 f"GFLOP/s, {100 * step_flops / seconds / 1e9 / peak:.0f}% of the {peak:.0f} GFLOP/s matmul peak")
            with ConvTimer(be.xp) as timer:
                step()
            timer.report(echo, peak)
    return rows


def bench_data(echo=print):
    from slotref.data import generators

    for name, res in (("clevr-shapes", 64), ("clevr-shapes", 128), ("tetrominoes", None),
                      ("multi-dsprites", None)):
        n = 512
        generators.render(name, 0, 0, 64, resolution=res)
        t0 = time.perf_counter()
        generators.render(name, 0, 64, n, resolution=res)
        dt = time.perf_counter() - t0
        echo(f"{name:<16} {res or 'default':>7}  {n / dt:>8.0f} images/s")


def run(what="step", task=None, dataset=None, device=None, batch_size=None, resolution=None, repeats=3,
        profile=False, echo=print):
    be = get_backend(device, "float32")
    if what in ("layers", "all"):
        bench_layers(be, repeats, echo)
    if what in ("module", "all"):
        from slotref.bench_module import bench_module, format_bench_module
        echo(format_bench_module(bench_module(repeats=repeats)))
    if what in ("step", "all"):
        bench_step(be, task, dataset, batch_size, resolution, repeats, profile, echo)
    if what in ("data", "all"):
        bench_data(echo)
