"""``bench --what module``: the Slot Attention module alone, forward + backward on the CPU.

    from slotref.bench.module import bench_module, format_bench_module
    print(format_bench_module(bench_module()))

One call is ``autograd.value_and_grad`` of ``sum(slot_attention(...))`` with
respect to the parameters and the inputs, in float32, with the initial slots
sampled inside the call (``sample_initial_slots``), as in a training step. The
defaults: B = 64, N = 1024 (32x32 features), K = 7 and K = 10,
D_inputs = D = 64, T = 3. Where the time goes comes from two extra calls
after the timed ones, by autograd primitive and by Python function
(``slotref.bench.profiler``).

Timings on a shared or busy machine vary a lot (OpenBLAS threads compete);
``blas_threads`` is reported with each result.
"""

from __future__ import annotations

import time

import numpy as np
from autograd import value_and_grad

from slotref import backend
from slotref.bench.profiler import cprofile, format_cprofile, time_primitives
from slotref.bench.timing import blas_threads
from slotref.slot_attention import (SlotAttentionConfig, init_slot_attention, sample_initial_slots, slot_attention,
                                    slot_noise)


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

        results.append({
            "batch": batch, "num_inputs": num_inputs, "num_slots": k, "slot_size": slot_size,
            "num_iterations": num_iterations, "dtype": str(np.asarray(value).dtype), "repeats": len(times),
            "blas_threads": blas_threads(),
            "seconds_per_call": float(np.median(times)), "seconds_min": min(times), "seconds_max": max(times),
            **time_primitives(lambda p_x: objective(*p_x), (params, inputs)),
            "cprofile": cprofile(lambda: step(params, inputs), top),
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
        lines.append(f"  cProfile of one call ({r['cprofile']['profiled_s']:.4f} s):")
        lines += format_cprofile(r["cprofile"], indent="  ")
    return "\n".join(lines)
