"""Speed of the Slot Attention module alone: forward + backward on the CPU.

    from slotref.bench_module import bench_module, format_bench_module
    print(format_bench_module(bench_module()))        # or: python cli.py bench --what module

One call is ``autograd.value_and_grad`` of ``sum(slot_attention(...))`` with
respect to the parameters and the inputs, in float32, with the initial slots
sampled inside the call (``sample_initial_slots``), as in a training step. The
defaults: B = 64, N = 1024 (32x32 features), K = 7 and
K = 10, D_inputs = D = 64, T = 3.

Where the time goes, from two extra calls after the timed ones:

- by autograd primitive: a reverse-mode node type that counts each traced
  primitive, charges it the forward time since the previous primitive (its own
  NumPy work plus the Python between the two) and times its VJP; the backward
  time not spent in VJPs is autograd adding up gradients;
- by Python function: ``cProfile``, own time (``tottime``; NumPy ufuncs and
  matmul run inside autograd's primitive wrapper ``f_wrapped``, so their time
  shows there) and the cumulative time of slotref's functions.

Timings on a shared or busy machine vary a lot (OpenBLAS threads compete);
``blas_threads`` is reported with each result.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time

import numpy as np
from autograd import value_and_grad
from autograd.core import VJPNode, backward_pass
from autograd.extend import register_notrace
from autograd.tracer import notrace_primitives, trace

from slotref import backend
from slotref.slot_attention import (SlotAttentionConfig, init_slot_attention, sample_initial_slots, slot_attention,
                                    slot_noise)


# --------------------------------------------------------------------------
# Time by autograd primitive.

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
# Time by Python function (cProfile).

def _label(key) -> str:
    filename, line, name = key
    if filename == "~":  # a builtin, e.g. "<method 'reduce' of 'numpy.ufunc' objects>"
        return name
    label = f"{os.path.basename(filename)}:{line}({name})"
    if name == "f_wrapped":
        label += " [autograd primitive: NumPy work inside]"
    return label


def profile_breakdown(stats: pstats.Stats, top: int = 8) -> dict:
    """The ``top`` functions by own time, and slotref's functions by cumulative time."""
    entries = stats.stats  # {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
    total = max(stats.total_tt, 1e-12)
    package = os.path.dirname(os.path.abspath(__file__))
    by_own = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    ours = [item for item in entries.items() if os.path.abspath(item[0][0]).startswith(package)
            and not item[0][0].endswith("bench_module.py")]
    by_cumulative = sorted(ours, key=lambda item: item[1][3], reverse=True)[:top]
    row = lambda k, v, seconds: {"function": _label(k), "calls": v[1], "seconds": seconds, "share": seconds / total}
    return {
        "profiled_s": total,
        "top_tottime": [row(k, v, v[2]) for k, v in by_own],
        "top_cumtime_slotref": [row(k, v, v[3]) for k, v in by_cumulative],
    }


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return sum(p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas") or None


# --------------------------------------------------------------------------

def bench_module(batch: int = 64, num_inputs: int = 1024, num_slots=(7, 10), slot_size: int = 64,
                 num_iterations: int = 3, repeats: int = 3, seed: int = 0, top: int = 8) -> list[dict]:
    """Seconds per forward+backward call of the module on the CPU in float32; one dict per K."""
    cpu = backend.get_backend("cpu", "float32")
    config = SlotAttentionConfig(input_size=slot_size, slot_size=slot_size)
    params = cpu.tree_asarray(init_slot_attention(backend.host_rng(seed), config))
    inputs = cpu.asarray(backend.host_rng(seed, 1).standard_normal((batch, num_inputs, slot_size)))
    results = []
    for k in ([num_slots] if np.isscalar(num_slots) else list(num_slots)):
        noise = slot_noise(cpu.rng(seed, 2, k), batch, k, slot_size, cpu.dtype)      # (B, K, D)

        def objective(params, inputs):
            slots = sample_initial_slots(params, noise)                               # (B, K, D)
            return backend.sum(slot_attention(params, inputs, slots, num_iterations, config))

        step = value_and_grad(objective, argnum=(0, 1))
        value, _ = step(params, inputs)  # warm-up: allocations, BLAS threads
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            step(params, inputs)
            times.append(time.perf_counter() - start)

        by_primitive = time_primitives(lambda p_x: objective(*p_x), (params, inputs))
        profiler = cProfile.Profile()
        profiler.enable()
        step(params, inputs)
        profiler.disable()

        results.append({
            "batch": batch, "num_inputs": num_inputs, "num_slots": k, "slot_size": slot_size,
            "num_iterations": num_iterations, "dtype": str(np.asarray(value).dtype), "repeats": len(times),
            "blas_threads": _blas_threads(),
            "seconds_per_call": float(np.median(times)), "seconds_min": min(times), "seconds_max": max(times),
            **by_primitive,
            **profile_breakdown(pstats.Stats(profiler), top),
        })
    return results


def format_bench_module(results: list[dict], top: int = 8) -> str:
    """A plain-text table of ``bench_module`` results, then where the time goes for each."""
    lines = [f"{'B':>4} {'N':>6} {'K':>4} {'D':>4} {'T':>3} {'dtype':>8}  {'s/call':>8} {'min':>8} {'max':>8}"
             f"  {'fwd s':>7} {'bwd s':>7}  {'prims':>5}  threads"]
    for r in results:
        lines.append(f"{r['batch']:>4} {r['num_inputs']:>6} {r['num_slots']:>4} {r['slot_size']:>4} "
                     f"{r['num_iterations']:>3} {r['dtype']:>8}  {r['seconds_per_call']:8.4f} {r['seconds_min']:8.4f} "
                     f"{r['seconds_max']:8.4f}  {r['forward_s']:7.4f} {r['backward_s']:7.4f}  "
                     f"{r['primitives_traced']:>5}  {r['blas_threads']}")
    for r in results:
        total = r["forward_s"] + r["backward_s"]
        lines += ["", f"K = {r['num_slots']}: one instrumented call, {total:.4f} s "
                      f"(forward {r['forward_s'] / total:.0%}, backward {r['backward_s'] / total:.0%}, "
                      f"of which summing gradients {r['accumulate_s'] / total:.0%})",
                  f"  {'primitive':<16} {'calls':>5} {'fwd s':>8} {'bwd s':>8} {'share':>6}"]
        for p in r["primitives"][:top]:
            lines.append(f"  {p['name']:<16} {p['calls']:>5} {p['forward_s']:8.4f} {p['backward_s']:8.4f} "
                         f"{(p['forward_s'] + p['backward_s']) / total:6.1%}")
        lines.append(f"  cProfile ({r['profiled_s']:.4f} s), own time:")
        lines += [f"    {e['share']:6.1%} {e['seconds']:8.4f} s {e['calls']:>6}x  {e['function']}"
                  for e in r["top_tottime"][:top]]
        lines.append("  cProfile, slotref functions, cumulative:")
        lines += [f"    {e['share']:6.1%} {e['seconds']:8.4f} s {e['calls']:>6}x  {e['function']}"
                  for e in r["top_cumtime_slotref"][:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_bench_module(bench_module()))
