"""Where the forward pass of the Tetrominoes decoder's 32 -> 32 layer goes (issue 7).

    python bench/wide_path_profile.py [BLOCK_ROWS ...]

The layer (5x5, stride 1, 35x35, batch 128 = 32 images x 4 slots) runs on the
wide path of ``kernels.conv._shifted_sum``. This script repeats that path's steps
with a timer around each: padding the input into rows, the column-shifted
buffer of each row block, the block's GEMM, the shifted adds of its products,
and copying the output out of the padded rows. Best of 3 after a warm-up; the
pieces should add up to about the whole forward pass timed first.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slotref.kernels import conv  # noqa: E402
from slotref.kernels.allocator import keep_freed_host_memory  # noqa: E402
from slotref.kernels.conv import _Geometry, _pair_layout, _shifted_block  # noqa: E402

B, H, C, K = 128, 35, 32, 5
FLOPS = 2 * B * H * H * K * K * C * C


def best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pieces(x, w, block_rows):
    """The wide path step by step; returns (output, {piece: seconds})."""
    t = {}
    t0 = time.perf_counter()
    geo = _Geometry(x.shape, w.shape, 1)
    sources = geo.phases(x)
    t["pad into rows"] = time.perf_counter() - t0
    terms = [(phase, ro, co, w[i, j], 0) for i, j, phase, ro, co in geo.taps()]
    pairs, index, spans = _pair_layout(terms)
    offsets = sorted(spans)
    (lo, hi), = set(spans.values())
    weights = np.zeros(((hi - lo) * C, len(offsets) * C), np.float32)
    for src, ro, co, wt, _ in terms:
        k, i = index[(src, co)] - lo, offsets.index(ro)
        weights[k * C:(k + 1) * C, i * C:(i + 1) * C] = wt
    lo_row, hi_row = min(spans), max(spans)
    buf = np.empty((block_rows + hi_row - lo_row, len(pairs) * C), np.float32)
    t0 = time.perf_counter()
    out = np.zeros((geo.rows, C), np.float32)
    t["zero the output"] = time.perf_counter() - t0
    t.update({"column-shifted buffer": 0.0, "GEMM": 0.0, "shifted adds": 0.0})
    for r0 in range(0, geo.rows, block_rows):
        n = min(geo.rows, r0 + block_rows) - r0
        t0 = time.perf_counter()
        block = _shifted_block(sources, pairs, r0 + lo_row, n + hi_row - lo_row, buf[:n + hi_row - lo_row])
        t1 = time.perf_counter()
        product = block[:, lo * C:hi * C] @ weights
        t2 = time.perf_counter()
        for i, ro in enumerate(offsets):
            out[r0:r0 + n] += product[ro - lo_row:ro - lo_row + n, i * C:(i + 1) * C]
        t3 = time.perf_counter()
        t["column-shifted buffer"] += t1 - t0
        t["GEMM"] += t2 - t1
        t["shifted adds"] += t3 - t2
    t0 = time.perf_counter()
    y = np.ascontiguousarray(geo.from_rows(out))
    t["copy out of the rows"] = time.perf_counter() - t0
    return y, t


def main(block_sizes):
    keep_freed_host_memory()         # as get_backend does for every run (change 9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, H, H, C)).astype(np.float32)
    w = (rng.standard_normal((K, K, C, C)) * 0.05).astype(np.float32)
    ref = conv._conv_forward(x, w, 1)
    whole = best(lambda: conv._conv_forward(x, w, 1))
    print(f"conv._conv_forward: {1e3 * whole:.1f} ms, {FLOPS / whole / 1e9:.0f} GFLOP/s "
          f"(BLOCK_ROWS = {conv.BLOCK_ROWS})")
    for rows in block_sizes:
        runs = []
        for _ in range(4):                   # a warm-up and 3 timed; each output is dropped before the next
            y, times = pieces(x, w, rows)
            assert np.array_equal(y, ref), "the step-by-step path must match the layer"
            runs.append(times)
            del y
        t = {name: min(r[name] for r in runs[1:]) for name in runs[0]}
        total = sum(t.values())
        print(f"block rows {rows}: " + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in t.items())
              + f"; sum {1e3 * total:.1f} ms; the GEMM is {100 * t['GEMM'] / total:.0f}%")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [conv.BLOCK_ROWS])
