"""Where a training step's time goes: ``python cli.py bench --profile``.

- ``profile_step``: cProfile of one step, by group (convolutions, LayerNorm,
  softmax, Adam, Hungarian matching) and autograd's own bookkeeping;
- ``ConvTimer``: the time, FLOPs and GFLOP/s of every convolution of a step;
- ``launches_and_device_time``: array-library calls (a GPU's kernel launches)
  and, on CuPy, device time;
- ``slot_attention_seconds``, ``data_loading_seconds``: parts timed alone.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from dataclasses import replace

import autograd
import numpy as np

from slotref.backend import host_rng
from slotref.bench import _sync, _time, conv_flops
from slotref.kernels import conv


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
