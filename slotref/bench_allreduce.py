"""What the gradient allreduce of data-parallel training costs: measured here, projected at scale.

``mpiexec -n 2 python -m slotref.bench_allreduce time`` times one allreduce of
each paper model's gradient buffer (float32, every parameter plus the loss)
under the current world; ``python -m slotref.bench_allreduce project`` projects
the scaling of each paper preset from a ring-allreduce cost model.

The projection's model of one training step on N GPUs at global batch B:

    step(N) = compute(B / N) + allreduce(N)
    compute(b) = overhead + (B / images_per_s - overhead) * b / B
    allreduce(N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency

``images_per_s`` is the measured one-GPU throughput at the paper batch; the
fixed ``overhead`` (kernel launches and Python, independent of the batch) is
fitted from two set-prediction measurements on one H100 (batch 512 at 2,780
images/s, batch 32 at about 630): 42 ms. A ring allreduce moves 2 (N - 1) / N
of the buffer through each link in 2 (N - 1) hops of ``latency`` each; the
step does not overlap it with the backward pass. Speed-up = step(1) / step(N),
efficiency = speed-up / N; N above the global batch is impossible (no example
for some rank).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from slotref.distributed import World, world

# One H100 (docs/performance.md), training step at the paper batch (Table 11).
H100_IMAGES_PER_S = {"setpred": 2780.0, "clevr6": 118.0, "multi-dsprites": 492.0, "tetrominoes": 1150.0}
PAPER_PRESETS = {"setpred": ("setpred", "clevr-shapes"), "clevr6": ("discovery", "clevr6"),
                 "multi-dsprites": ("discovery", "multi-dsprites"), "tetrominoes": ("discovery", "tetrominoes")}
STEP_OVERHEAD_S = 0.042
# Link bandwidth (bytes/s) and latency per ring hop (s).
LINKS = {"NVLink": (300e9, 2e-6), "InfiniBand": (25e9, 5e-6)}
RANKS = (8, 64, 512)


def paper_runs() -> list[dict]:
    """Each paper preset: name, parameter count, global batch, steps, one-H100 images/s."""
    from slotref.backend import host_rng, tree_leaves
    from slotref.models import init_model
    from slotref.train import preset_config

    runs = []
    for name, (task, dataset) in PAPER_PRESETS.items():
        config = preset_config(task, dataset, "paper")
        params = init_model(host_rng(0, 0), config.model)
        runs.append({"name": name, "params": sum(int(p.size) for _, p in tree_leaves(params)),
                     "batch": config.batch_size, "steps": config.steps, "images_per_s": H100_IMAGES_PER_S[name]})
    return runs


def time_allreduce(w: World | None = None, runs: list[dict] | None = None, repeats: int = 20,
                   device: str = "cpu") -> list[dict]:
    """Time ``w.allreduce_sum_`` of each run's gradient buffer (float32, params + 1), slowest rank's mean."""
    w = w or world()
    xp = np
    if device == "gpu":
        import cupy as xp

        w.use_device()
    rows = []
    for run in runs or paper_runs():
        buf = xp.ones(run["params"] + 1, dtype=np.float32)
        w.allreduce_sum_(buf)  # warm-up (and the NCCL communicator, once)
        w.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            w.allreduce_sum_(buf)
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        seconds = max(w.allgather((time.perf_counter() - start) / repeats))
        expected = float(w.size) ** (repeats + 1)
        if float(buf[0]) != expected:
            raise RuntimeError(f"allreduce gave {float(buf[0])}, expected {expected}")
        n, nbytes = w.size, buf.nbytes
        rows.append({"name": run["name"], "params": run["params"], "bytes": nbytes, "ranks": n,
                     "path": w.allreduce_path(), "ms": seconds * 1e3,
                     "bus_GB_s": 2 * (n - 1) / n * nbytes / seconds / 1e9 if n > 1 else float("nan")})
    return rows


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """Ring allreduce of ``nbytes`` over ``ranks``: 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def compute_seconds(batch: int, global_batch: int, images_per_s: float, overhead: float = STEP_OVERHEAD_S) -> float:
    """One GPU's forward, backward and Adam on ``batch`` examples (the module docstring's model)."""
    full = global_batch / images_per_s
    return overhead + (full - overhead) * batch / global_batch


def project(runs: list[dict] | None = None, ranks=RANKS, links=None, overhead: float = STEP_OVERHEAD_S,
            bytes_per_param: int = 4) -> list[dict]:
    """Rows of (preset, link, N): per-rank batch, allreduce ms, step ms, speed-up, efficiency, days."""
    rows = []
    for run in runs or paper_runs():
        one = compute_seconds(run["batch"], run["batch"], run["images_per_s"], overhead)
        for link, (bandwidth, latency) in (links or LINKS).items():
            for n in ranks:
                row = {"name": run["name"], "link": link, "ranks": n, "batch": run["batch"],
                       "one_gpu_days": one * run["steps"] / 86400}
                if n > run["batch"]:
                    rows.append(row | {"per_rank": 0})
                    continue
                comm = ring_allreduce_seconds((run["params"] + 1) * bytes_per_param, n, bandwidth, latency)
                step = compute_seconds(run["batch"] // n, run["batch"], run["images_per_s"], overhead) + comm
                rows.append(row | {"per_rank": run["batch"] // n, "allreduce_ms": comm * 1e3, "step_ms": step * 1e3,
                                   "speedup": one / step, "efficiency": one / step / n,
                                   "days": step * run["steps"] / 86400})
    return rows


def format_projection(rows: list[dict]) -> str:
    lines = ["| preset | link | GPUs | per-GPU batch | allreduce ms | step ms | speed-up | efficiency | "
             "wall-clock (1 GPU) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["per_rank"]:
            lines.append(f"| {r['name']} | {r['link']} | {r['ranks']} | - (global batch {r['batch']}) "
                         "| | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['link']} | {r['ranks']} | {r['per_rank']} | {r['allreduce_ms']:.3f} | "
                     f"{r['step_ms']:.1f} | {r['speedup']:.1f}x | {r['efficiency']:.0%} | "
                     f"{_duration(r['days'])} ({_duration(r['one_gpu_days'])}) |")
    return "\n".join(lines)


def format_timing(rows: list[dict]) -> str:
    lines = ["| model | parameters | buffer MB | ranks | path | ms per allreduce | bus GB/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['params']:,} | {r['bytes'] / 1e6:.2f} | {r['ranks']} | {r['path']} | "
              f"{r['ms']:.3f} | {r['bus_GB_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def _duration(days: float) -> str:
    return f"{days:.1f} d" if days >= 1 else f"{days * 24:.1f} h"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slotref.bench_allreduce", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("time", "project"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    if args.what == "project":
        print(format_projection(project()))
        return
    w = world()
    with w.fail_fast():
        rows = time_allreduce(w, repeats=args.repeats, device=args.device)
    if w.is_root:
        print(w.describe())
        print(format_timing(rows))


if __name__ == "__main__":
    main()
