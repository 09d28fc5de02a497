"""The benchmark's bookkeeping (timings themselves are never tested)."""

from __future__ import annotations

import re

import numpy as np

from slotref import bench, kernels, layers
from slotref.kernels import conv
from slotref.backend import get_backend
from slotref.bench import conv_flops
from slotref.bench_profile import ConvTimer, launches_and_device_time


def test_conv_timer_counts_the_flops_of_every_layer_that_shares_a_shape():
    x = np.ones((2, 24, 24, 16), np.float32)      # big enough that the printed GFLOP/s has digits
    w = np.ones((3, 3, 16, 16), np.float32)
    with kernels.using("fast"), ConvTimer(np) as timer:
        layers.conv2d_same(x, w, 1)
        layers.conv2d_same(x, w, 1)                  # a second layer of the same shape
        layers.conv2d_same(x[:1], w, 1)
    seconds, calls = timer.times[((2, 24, 24, 16), (3, 3, 16, 16), 1)]["forward"]
    assert calls == 2 and seconds > 0
    assert timer.times[((1, 24, 24, 16), (3, 3, 16, 16), 1)]["forward"][1] == 1
    lines = []
    timer.report(lines.append, peak=1.0)
    row = next(line for line in lines if "(2, 24, 24, 16)" in line)
    assert " x2 " in row
    rate = float(re.split(r"\s+", row.split("forward")[1].strip())[1])
    expected = 2 * conv_flops(2, 24, 24, 3, 16, 16) / seconds / 1e9
    assert abs(rate - expected) <= 0.05 + 1e-3 * expected   # printed with one decimal: 0.05 is its rounding
    # the patched functions are restored
    assert conv._conv_forward.__name__ == "_conv_forward"


def test_gemm_shapes_report_the_rate_of_each_product(monkeypatch):
    calls = []

    def fake_time(fn, xp, repeats):
        calls.append(fn)
        return 0.02                                   # 20 GEMMs: 1 ms each
    monkeypatch.setattr(bench, "_time", fake_time)
    monkeypatch.setattr(bench, "GEMM_SHAPES", [("thin", 160, 32), ("square", 64, 64)])
    lines = []
    rows = bench.bench_gemm_shapes(get_backend("cpu", "float32"), peak=100.0, echo=lines.append)
    m = conv.BLOCK_ROWS + 4 * 64
    assert [r["gflops"] for r in rows] == [2 * m * 160 * 32 / 1e-3 / 1e9, 2 * m * 64 * 64 / 1e-3 / 1e9]
    assert len(calls) == 2 and "thin" in lines[1] and f"{m}x160 @ 160x32" in lines[1]
    calls[0]()                                          # the timed function runs the product


def test_the_profile_counts_the_array_calls_of_a_training_step():
    be = get_backend("cpu", "float32")
    value_and_grad, params, adam, state, _ = bench.step_setup(be, "setpred", 16, 2)

    def train_step(p):
        loss, grads = value_and_grad(p)
        adam.update(p, grads, state, 1e-6)
        return loss

    lines = []
    launches_and_device_time(train_step, params, np, lines.append)
    calls = int(re.search(r"; (\d+) array calls", lines[0]).group(1))
    assert calls > 100 and "matmul" in lines[0]        # forward, backward and Adam of a whole model
