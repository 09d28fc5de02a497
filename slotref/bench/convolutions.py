"""``bench --what layers``: each convolution pass at the paper's shapes, and the GEMMs they are made of,
in GFLOP/s beside this machine's float32 matrix-multiply peak."""

from __future__ import annotations

import numpy as np

from slotref import layers
from slotref.backend import host_rng
from slotref.bench.flops import conv_flops, print_model_flops
from slotref.bench.timing import best_seconds, matmul_peak
from slotref.kernels import conv

# (label, batch, resolution, kernel, C_in, C_out, stride, kind)
LAYER_SHAPES = [("conv 5x5 64->64, 64x64, batch 8, s1", 8, 64, 5, 64, 64, 1, "conv"),
                ("conv 5x5 64->64, 128x128, batch 8, s1", 8, 128, 5, 64, 64, 1, "conv"),
                ("conv 5x5 64->64, 128x128, batch 8, s2", 8, 128, 5, 64, 64, 2, "conv"),
                ("conv 5x5 3->64, 128x128, batch 8, s1", 8, 128, 5, 3, 64, 1, "conv"),
                ("deconv 5x5 64->64, 64->128, batch 8, s2", 8, 64, 5, 64, 64, 2, "deconv"),
                ("deconv 5x5 32->32, 35x35, batch 128, s1", 128, 35, 5, 32, 32, 1, "deconv")]

# The GEMMs a CPU convolution is made of (kernels.conv._shifted_sum: row blocks of
# BLOCK_ROWS plus a halo, K = column offsets x C_in, N = C_out or, on the wide
# path, row offsets x C_out), and the single GEMM of a full patch matrix. What
# these reach alone is the ceiling of a convolution built from them.
GEMM_SHAPES = [("64-ch stride 1: one row offset", 320, 64),
               ("32-ch stride 1, wide: all row offsets", 160, 160),
               ("32-ch stride 1: one row offset", 160, 32),
               ("64-ch, full patch matrix (im2col)", 1600, 64),
               ("32-ch, full patch matrix (im2col)", 800, 32)]


def bench_layers(be, repeats=3, echo=print) -> list[dict]:
    """Forward, input gradient and weight gradient of each of LAYER_SHAPES, then GEMM_SHAPES; one row each."""
    xp = be.xp
    peak = matmul_peak(be)
    echo(f"float32 matmul peak (2048^3): {peak:.1f} GFLOP/s on {be.device}")
    print_model_flops(echo, peak)
    echo(f"{'layer':<44}{'pass':<10}{'ms':>9}{'GFLOP/s':>10}{'% peak':>8}")
    rng = host_rng(0)
    rows = []
    for name, b, res, k, c_in, c_out, s, kind in LAYER_SHAPES:
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
            t = best_seconds(fn, xp, repeats)
            gflops = flops / t / 1e9
            rows.append({"layer": name, "pass": pass_name, "ms": 1e3 * t, "gflops": gflops, "peak": peak})
            echo(f"{name:<44}{pass_name:<10}{1e3 * t:>9.1f}{gflops:>10.1f}{100 * gflops / peak:>7.0f}%")
    rows += bench_gemm_shapes(be, peak, repeats, echo)
    return rows


def bench_gemm_shapes(be, peak, repeats=3, echo=print) -> list[dict]:
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
        t = best_seconds(gemms, xp, repeats) / reps
        gflops = 2 * m * k * n / t / 1e9
        label = f"{name} ({m}x{k} @ {k}x{n})"
        rows.append({"layer": label, "pass": "gemm", "ms": 1e3 * t, "gflops": gflops, "peak": peak})
        echo(f"{label:<64}{1e3 * t:>9.2f}{gflops:>10.1f}{100 * gflops / peak:>7.0f}%")
    return rows
