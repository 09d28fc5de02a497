"""Where the time goes: the profiler of ``bench --profile`` and ``bench --what module``.

Each instrument takes a call of its own (they would distort one another):

- ``cprofile``: by Python function (cProfile): the share of each of
  PROFILE_GROUPS, autograd's own bookkeeping, the top functions by own time
  (NumPy ufuncs and matmul run inside autograd's primitive wrapper
  ``f_wrapped``, so their time shows there) and slotref's functions by
  cumulative time;
- ``time_primitives``: by autograd primitive, a reverse-mode node type that
  counts each traced primitive, charges it the forward time since the
  previous primitive (its own array work plus the Python between the two) and
  times its VJP; the backward time not spent in VJPs is autograd adding up
  gradients;
- ``ConvTimer``: the time, FLOPs and GFLOP/s of every convolution;
- ``launches_and_device_time``: array-library calls (a GPU's kernel launches,
  ``slotref.bench.launches``) on NumPy, device time on CuPy;
- ``slot_attention_seconds``, ``data_loading_seconds``: parts timed alone.

``profile_step`` runs them all on a training step and prints the report.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from dataclasses import replace

import autograd
import numpy as np
from autograd.core import VJPNode, backward_pass
from autograd.extend import register_notrace
from autograd.tracer import notrace_primitives, trace

from slotref import backend
from slotref.bench.flops import conv_flops, step_flops
from slotref.bench.launches import launches
from slotref.bench.timing import best_seconds, matmul_peak, sync
from slotref.kernels import conv

SLOTREF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# Functions whose cumulative time the profile reports, grouped by what they are.
PROFILE_GROUPS = {
    "conv forward": ("_conv_forward",),
    "conv grad input": ("_conv_backward_input",),
    "conv grad weight": ("_conv_backward_weight",),
    "Hungarian matching (host)": ("linear_sum_assignment",),
    "LayerNorm": ("normalize", "_normalize_vjp"),
    "softmax": ("softmax",),
    "Adam": ("update",),
}


# --------------------------------------------------------------------------
# By Python function.

def _label(key) -> str:
    filename, line, name = key
    if filename == "~":  # a builtin, e.g. "<method 'reduce' of 'numpy.ufunc' objects>"
        return name
    label = f"{os.path.basename(filename)}:{line}({name})"
    if name == "f_wrapped":
        label += " [autograd primitive: array work inside]"
    return label


def cprofile(fn, top: int = 8) -> dict:
    """One call of ``fn`` under cProfile: profiled_s, groups (PROFILE_GROUPS -> seconds), autograd_own_s,
    top_tottime and top_cumtime_slotref (lists of {function, calls, seconds, share})."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
    total = max(stats.total_tt, 1e-12)
    ours = [item for item in entries.items() if os.path.abspath(item[0][0]).startswith(SLOTREF_DIR)
            and not os.path.abspath(item[0][0]).startswith(BENCH_DIR)]
    row = lambda k, v, seconds: {"function": _label(k), "calls": v[1], "seconds": seconds, "share": seconds / total}
    return {
        "profiled_s": total,
        "groups": {group: sum(v[3] for (_, _, name), v in entries.items() if name in names)
                   for group, names in PROFILE_GROUPS.items()},
        "autograd_own_s": sum(v[2] for (f, _, _), v in entries.items() if "autograd" in f),
        "top_tottime": [row(k, v, v[2]) for k, v in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]],
        "top_cumtime_slotref": [row(k, v, v[3]) for k, v in sorted(ours, key=lambda kv: -kv[1][3])[:top]],
    }


def format_cprofile(result: dict, indent: str = "    ") -> list[str]:
    """The lines of a ``cprofile`` result: groups and autograd's own time, then the two top lists."""
    total = result["profiled_s"]
    groups = {**{g: s for g, s in result["groups"].items() if s > 0},   # groups the call never entered: left out
              "autograd bookkeeping (own)": result["autograd_own_s"]}
    lines = [f"{indent}{group:<28}{seconds:>8.3f} s {100 * seconds / total:>5.1f}%" for group, seconds in groups.items()]
    for title, key in (("own time", "top_tottime"), ("slotref functions, cumulative", "top_cumtime_slotref")):
        lines.append(f"{indent}cProfile, {title}:")
        lines += [f"{indent}  {e['share']:6.1%} {e['seconds']:8.4f} s {e['calls']:>6}x  {e['function']}"
                  for e in result[key]]
    return lines


# --------------------------------------------------------------------------
# By autograd primitive.

class _TimedNode(VJPNode):
    """autograd's reverse-mode node, also tallying calls and time per primitive."""

    __slots__ = []
    tally: dict = {}          # name -> [calls, forward seconds, backward seconds]
    last: float = 0.0         # when the previous node was made

    def __init__(self, value, fun, args, kwargs, parent_argnums, parents):
        now = time.perf_counter()
        entry = _TimedNode.tally.setdefault(getattr(fun, "__name__", repr(fun)), [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += now - _TimedNode.last
        super().__init__(value, fun, args, kwargs, parent_argnums, parents)
        vjp = self.vjp

        def timed_vjp(g):
            start = time.perf_counter()
            out = vjp(g)
            entry[2] += time.perf_counter() - start
            return out

        self.vjp = timed_vjp
        _TimedNode.last = time.perf_counter()


for _fun in list(notrace_primitives[VJPNode]):  # the same untraced primitives as VJPNode
    register_notrace(_TimedNode, _fun)


def time_primitives(fun, x) -> dict:
    """One forward and backward pass of scalar ``fun`` at ``x``, timed by primitive.

    Returns forward_s, backward_s, accumulate_s (backward time outside the
    VJPs: autograd summing gradients), primitives_traced and ``primitives``,
    a list of {name, calls, forward_s, backward_s} sorted by total time.
    """
    _TimedNode.tally = {}
    start = _TimedNode.last = time.perf_counter()
    end_value, end_node = trace(_TimedNode.new_root(), fun, x)
    middle = time.perf_counter()
    if end_node is not None:
        backward_pass(backend.xp_of(end_value).ones_like(end_value), end_node)
    end = time.perf_counter()
    rows = [{"name": name, "calls": calls, "forward_s": fwd, "backward_s": bwd}
            for name, (calls, fwd, bwd) in _TimedNode.tally.items()]
    rows.sort(key=lambda r: r["forward_s"] + r["backward_s"], reverse=True)
    return {
        "forward_s": middle - start,
        "backward_s": end - middle,
        "accumulate_s": (end - middle) - sum(r["backward_s"] for r in rows),
        "primitives_traced": sum(r["calls"] for r in rows),
        "primitives": rows,
    }


# --------------------------------------------------------------------------
# By convolution layer.

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
            sync(self.xp)
            t0 = time.perf_counter()
            out = fn(*args)
            sync(self.xp)
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


# --------------------------------------------------------------------------
# Launches, and parts of a step timed alone.

def launches_and_device_time(train_step, params, xp, echo=print):
    """Array-library calls per step (on NumPy: a proxy for a GPU's kernel launches) or, on CuPy,
    the step's device time from CUDA events beside its wall time (the rest is Python and autograd)."""
    _, prof = launches(train_step, params, xp=xp)
    echo(f"    launches and device time: {prof.summary()}")
    if prof.device_ms is not None:
        host = max(prof.wall_ms - prof.device_ms, 0.0)
        echo(f"    host-side (Python, autograd, launches) about {host:.1f} ms of {prof.wall_ms:.1f} ms")


def data_loading_seconds(be, config, batch) -> float:
    """Gathering a random batch of uint8 images on the host and preprocessing it on the device."""
    from slotref.training.data import preprocess

    h, w = config.resolution
    images = backend.host_rng(2).integers(0, 256, (4 * batch, h, w, 3), dtype=np.uint8)
    idx = backend.host_rng(3).permutation(4 * batch)[:batch]
    return best_seconds(lambda: preprocess(be, images[idx]), be.xp, 3)


def slot_attention_seconds(be, config, batch, repeats=3) -> float:
    """Forward + backward of the model's Slot Attention module alone, at the step's shapes."""
    from slotref.slot_attention import init_slot_attention, slot_attention

    if config.model != "slot-attention":
        return 0.0
    rng = backend.host_rng(1)
    h, w = config.feature_resolution()
    sa_config = replace(config.slot_attention, num_train_slots=config.num_slots)
    params = be.tree_asarray(init_slot_attention(rng, sa_config))
    inputs = be.asarray(rng.standard_normal((batch, h * w, sa_config.input_size)))
    slots = be.asarray(rng.standard_normal((batch, config.num_slots, sa_config.slot_size)))
    value_and_grad = autograd.value_and_grad(
        lambda p, x: backend.sum(slot_attention(p, x, slots, config.num_iterations, sa_config)), argnum=(0, 1))
    return best_seconds(lambda: value_and_grad(params, inputs), be.xp, repeats)


def profile_step(be, step, train_step, params, config, batch, seconds, repeats=3, echo=print):
    """The report of ``bench --profile`` for a training step that took ``seconds``: ``step()`` runs it,
    ``train_step(params)`` is the same step as a function of the parameter tree."""
    share = lambda s: f"{s:>8.3f} s {100 * s / seconds:>5.1f}% of the step"
    result = cprofile(step)
    echo(f"  profile of one step ({result['profiled_s']:.3f} s, under cProfile):")
    for line in format_cprofile(result):
        echo(line)
    launches_and_device_time(train_step, params, be.xp, echo)
    echo(f"    {'Slot Attention (timed alone)':<28}{share(slot_attention_seconds(be, config, batch, repeats))}")
    echo(f"    {'data: batch to device (alone)':<28}{share(data_loading_seconds(be, config, batch))}")
    peak = matmul_peak(be)
    flops = step_flops(config, batch)
    echo(f"    whole step: {flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {flops / seconds / 1e9:.1f} "
         f"GFLOP/s, {100 * flops / seconds / 1e9 / peak:.0f}% of the {peak:.0f} GFLOP/s matmul peak")
    with ConvTimer(be.xp) as timer:
        step()
    timer.report(echo, peak)
