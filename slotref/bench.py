"""Benchmarks behind ``python cli.py bench`` (speed is measured here, never in tests).

- ``layers``: forward and backward of the convolutions at the paper's shapes,
  in GFLOP/s next to this machine's float32 matrix-multiply throughput;
- ``module``: the Slot Attention module alone (``slotref.bench_module``);
- ``step``: images/s of a full training step (forward, loss, backward, Adam)
  of each task configuration, with peak memory; on the CPU with PyTorch
  installed, also PyTorch eager's images/s on the same architecture and batch
  (``slotref.bench_torch``), measured in the same run, and the ratio;
  ``--profile`` breaks the step down by function;
- ``data``: images/s of the built-in generators.
"""

from __future__ import annotations

import cProfile
import pstats
import resource
import time
from dataclasses import replace

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


def data_loading_seconds(be, config, batch) -> float:
    """Gathering a random batch of uint8 images on the host and preprocessing it on the device."""
    from slotref.training.data import preprocess

    h, w = config.resolution
    images = host_rng(2).integers(0, 256, (4 * batch, h, w, 3), dtype=np.uint8)
    idx = host_rng(3).permutation(4 * batch)[:batch]
    return _time(lambda: preprocess(be, images[idx]), be.xp, 3)


def slot_attention_seconds(be, config, batch, repeats=3) -> float:
    """Forward + backward of the model's Slot Attention module alone, at the step's shapes."""
    from slotref import backend
    from slotref.slot_attention import init_slot_attention, slot_attention

    if config.model != "slot-attention":
        return 0.0
    rng = host_rng(1)
    h, w = config.feature_resolution()
    sa_config = replace(config.slot_attention, num_train_slots=config.num_slots)
    params = be.tree_asarray(init_slot_attention(rng, sa_config))
    inputs = be.asarray(rng.standard_normal((batch, h * w, sa_config.input_size)))
    slots = be.asarray(rng.standard_normal((batch, config.num_slots, sa_config.slot_size)))
    value_and_grad = autograd.value_and_grad(
        lambda p, x: backend.sum(slot_attention(p, x, slots, config.num_iterations, sa_config)), argnum=(0, 1))
    return _time(lambda: value_and_grad(params, inputs), be.xp, repeats)


# Functions whose time the profile reports, grouped by what they are.
PROFILE_GROUPS = {
    "conv forward": ("_conv_forward",),
    "conv grad input": ("_conv_backward_input",),
    "conv grad weight": ("_conv_backward_weight",),
    "Hungarian matching (host)": ("linear_sum_assignment",),
    "LayerNorm": ("normalize", "_normalize_vjp"),
    "softmax": ("softmax",),
    "Adam": ("update",),
}


class ConvTimer:
    """Times every call of the three convolution kernels, keyed by layer shape.

    Patches ``kernels.conv._conv_forward`` / ``_conv_backward_input`` /
    ``_conv_backward_weight`` for the duration of a ``with`` block (the
    primitives look them up at call time), so one training step yields each
    convolution layer's forward, input-gradient and weight-gradient time.
    """

    KERNELS = {"_conv_forward": "forward", "_conv_backward_input": "grad x", "_conv_backward_weight": "grad w"}

    def __init__(self, xp):
        self.xp, self.times, self.saved = xp, {}, {}

    def _wrap(self, name, fn):
        def timed(*args):
            _sync(self.xp)
            t0 = time.perf_counter()
            out = fn(*args)
            _sync(self.xp)
            # The layer: (input shape, kernel shape, stride) of the forward convolution it belongs to.
            if name == "_conv_forward":
                x, w, stride = args
                key = (tuple(x.shape), tuple(w.shape), stride)
            elif name == "_conv_backward_input":
                g, w, stride, x_shape = args
                key = (tuple(x_shape), tuple(w.shape), stride)
            else:
                x, g, stride, w_shape = args
                key = (tuple(x.shape), tuple(w_shape), stride)
            # Layers of the same shape (Tetrominoes' encoder has three) share a row:
            # their seconds add up, and so must their FLOPs.
            entry = self.times.setdefault(key, {}).setdefault(self.KERNELS[name], [0.0, 0])
            entry[0] += time.perf_counter() - t0
            entry[1] += 1
            return out
        return timed

    def __enter__(self):
        for name in self.KERNELS:
            self.saved[name] = getattr(conv, name)
            setattr(conv, name, self._wrap(name, self.saved[name]))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(conv, name, fn)

    def report(self, echo, peak):
        echo(f"    {'convolution (input, kernel, stride)':<52}{'pass':<9}{'ms':>8}{'GFLOP/s':>9}{'% peak':>8}")
        for (x_shape, w_shape, stride), passes in self.times.items():
            b, h, w, _ = x_shape
            kh, _, c_in, c_out = w_shape
            flops = conv_flops(b, -(-h // stride), -(-w // stride), kh, c_in, c_out)
            for pass_name, (seconds, calls) in passes.items():
                label = f"{x_shape} {w_shape} s{stride}" + (f" x{calls}" if calls > 1 else "")
                rate = calls * flops / seconds / 1e9
                echo(f"    {label:<52}{pass_name:<9}{1e3 * seconds:>8.1f}{rate:>9.1f}{100 * rate / peak:>7.0f}%")


def launches_and_device_time(train_step, params, xp, echo=print):
    """Array-library calls per step (on NumPy: a proxy for a GPU's kernel launches) or, on CuPy,
    the step's device time from CUDA events beside its wall time (the rest is Python and autograd)."""
    from slotref import profile_gpu

    _, prof = profile_gpu.profile_step(train_step, params, xp=xp)
    echo(f"    launches and device time: {prof.summary()}")
    if prof.device_ms is not None:
        host = max(prof.wall_ms - prof.device_ms, 0.0)
        echo(f"    host-side (Python, autograd, launches) about {host:.1f} ms of {prof.wall_ms:.1f} ms")


def profile_step(step, echo=print):
    """cProfile one step; print each group's share of the step and autograd's own bookkeeping."""
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    step()
    profiler.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(profiler).stats
    shares = {}
    for group, names in PROFILE_GROUPS.items():
        shares[group] = sum(v[3] for (f, _, fn), v in stats.items() if fn in names)
    autograd_own = sum(v[2] for (f, _, fn), v in stats.items() if "autograd" in f)
    echo(f"  profile of one step ({total:.3f} s, under cProfile):")
    for group, seconds in shares.items():
        echo(f"    {group:<28}{seconds:>8.3f} s {100 * seconds / total:>5.1f}%")
    echo(f"    {'autograd bookkeeping (own)':<28}{autograd_own:>8.3f} s {100 * autograd_own / total:>5.1f}%")
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
    echo("    top functions by own time: " + ", ".join(f"{fn} {v[2]:.3f}s" for (_, _, fn), v in top))


# --------------------------------------------------------------------------

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
