"""What the gradient allreduce of data-parallel training costs: measured here, projected at scale.

``mpiexec -n 2 python -m slotref.bench.allreduce time`` times one allreduce of
each paper model's gradient buffer (float32, every parameter plus the loss)
under the current world; ``python -m slotref.bench.allreduce project`` projects
the scaling of each paper preset from a ring-allreduce cost model.

The projection's model of one training step on N GPUs at global batch B:

    step(N) = compute(B / N) + allreduce(N)
    compute(b) = overhead + (B / images_per_s - overhead) * b / B
    allreduce(N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency

``images_per_s`` is the measured one-GPU throughput at the paper batch. The
fixed ``overhead`` is the part of a step that does not shrink with the batch
(kernel launches and Python): 45 ms, from two launch-bound steps on one H100
(docs/performance.md): Tetrominoes at batch 64 takes 56 ms a step, and set
prediction on 32x32 images (the CPU preset, negligible arithmetic) about 51 ms
with its evaluations and checkpoints. ``--overhead 0`` gives the bound where
only the allreduce costs. A ring allreduce moves 2 (N - 1) / N of the buffer
through each link in 2 (N - 1) hops of ``latency`` each; the step does not
overlap it with the backward pass. Speed-up = step(1) / step(N), efficiency =
speed-up / N; N above the global batch is impossible (no example for some rank).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from slotref.training.collectives import World
from slotref.training.launch import world

# One H100 (docs/performance.md), training step at the paper batch (Table 11).
H100_IMAGES_PER_S = {"setpred": 2780.0, "clevr6": 118.0, "multi-dsprites": 492.0, "tetrominoes": 1150.0}
PAPER_PRESETS = {"setpred": ("setpred", "clevr-shapes"), "clevr6": ("discovery", "clevr6"),
                 "multi-dsprites": ("discovery", "multi-dsprites"), "tetrominoes": ("discovery", "tetrominoes")}
STEP_OVERHEAD_S = 0.045
# Link bandwidth (bytes/s) and latency per ring hop (s).
LINKS = {"NVLink": (300e9, 2e-6), "InfiniBand": (25e9, 5e-6)}
RANKS = (8, 64, 512)


def paper_runs() -> list[dict]:
    """Each paper preset: name, parameter count, global batch, steps, one-H100 images/s."""
    from slotref.backend import host_rng, tree_leaves
    from slotref.models import init_model
    from slotref.training.presets import preset_config

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
    """One line per (preset, GPUs), one group of columns per link."""
    links = list(dict.fromkeys(r["link"] for r in rows))
    head = ["preset (1 GPU)", "GPUs", "per-GPU batch"]
    head += [f"{what}, {link}" for what in ("allreduce ms", "efficiency", "wall-clock") for link in links]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["name"], r["ranks"]), {})[r["link"]] = r
    for (name, n), by_link in groups.items():
        first = next(iter(by_link.values()))
        cells = [f"{name} ({_duration(first['one_gpu_days'])})", str(n)]
        if not first["per_rank"]:
            lines.append("| " + " | ".join(cells + [f"- (global batch {first['batch']})"] + [""] * (len(head) - 3))
                         + " |")
            continue
        cells.append(str(first["per_rank"]))
        cells += [f"{by_link[link]['allreduce_ms']:.3f}" for link in links]
        cells += [f"{by_link[link]['efficiency']:.0%}" for link in links]
        cells += [_duration(by_link[link]["days"]) for link in links]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_timing(rows: list[dict]) -> str:
    lines = ["| model | parameters | buffer MB | ranks | path | ms per allreduce | bus GB/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['params']:,} | {r['bytes'] / 1e6:.2f} | {r['ranks']} | {r['path']} | "
              f"{r['ms']:.3f} | {r['bus_GB_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} d"
    return f"{days * 24:.1f} h" if days * 24 >= 1 else f"{days * 1440:.0f} min"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slotref.bench.allreduce", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("time", "project"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--overhead", type=float, default=STEP_OVERHEAD_S, help="fixed seconds per step")
    args = parser.parse_args(argv)
    if args.what == "project":
        print(format_projection(project(overhead=args.overhead)))
        return
    w = world()
    with w.fail_fast():
        rows = time_allreduce(w, repeats=args.repeats, device=args.device)
    if w.is_root:
        print(w.describe())
        print(format_timing(rows))


if __name__ == "__main__":
    main()
