"""The benchmark's bookkeeping (timings themselves are never tested): FLOP counts, the profiler's
instruments, and the launch-count proxy counting what a step calls."""

from __future__ import annotations

import re

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from slotref import backend, dispatch, layers
from slotref.backend import get_backend
from slotref.bench import convolutions
from slotref.bench.launches import count_calls, counting, launches
from slotref.bench.module import bench_module, format_bench_module
from slotref.bench.flops import conv_flops
from slotref.bench.profiler import ConvTimer, launches_and_device_time
from slotref.bench.step import bench_step, step_setup
from slotref.flat import FlatTree
from slotref.kernels import conv
from slotref.optim import Adam


def test_conv_timer_counts_the_flops_of_every_layer_that_shares_a_shape():
    x = np.ones((2, 24, 24, 16), np.float32)      # big enough that the printed GFLOP/s has digits
    w = np.ones((3, 3, 16, 16), np.float32)
    with dispatch.using("fast"), ConvTimer(np) as timer:
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
    monkeypatch.setattr(convolutions, "best_seconds", fake_time)
    monkeypatch.setattr(convolutions, "GEMM_SHAPES", [("thin", 160, 32), ("square", 64, 64)])
    lines = []
    rows = convolutions.bench_gemm_shapes(get_backend("cpu", "float32"), peak=100.0, echo=lines.append)
    m = conv.BLOCK_ROWS + 4 * 64
    assert [r["gflops"] for r in rows] == [2 * m * 160 * 32 / 1e-3 / 1e9, 2 * m * 64 * 64 / 1e-3 / 1e9]
    assert len(calls) == 2 and "thin" in lines[1] and f"{m}x160 @ 160x32" in lines[1]
    calls[0]()                                          # the timed function runs the product


def test_the_profile_counts_the_array_calls_of_a_training_step():
    be = get_backend("cpu", "float32")
    value_and_grad, params, adam, state, _ = step_setup(be, "setpred", 16, 2)

    def train_step(p):
        loss, grads = value_and_grad(p)
        adam.update(p, grads, state, 1e-6)
        return loss

    lines = []
    launches_and_device_time(train_step, params, np, lines.append)
    calls = int(re.search(r"; (\d+) array calls", lines[0]).group(1))
    assert calls > 100 and "matmul" in lines[0]        # forward, backward and Adam of a whole model


def test_the_step_profile_reports_every_instrument():
    lines = []
    bench_step(get_backend("cpu", "float32"), "setpred", resolution=16, batch_size=2, repeats=1, profile=True,
               echo=lines.append)
    report = "\n".join(lines)
    for part in ("under cProfile", "conv forward", "autograd bookkeeping", "cProfile, own time",
                 "slotref functions, cumulative", "array calls", "Slot Attention (timed alone)",
                 "data: batch to device", "whole step", "convolution (input, kernel, stride)"):
        assert part in report, part
    assert "bench/" not in report.split("slotref functions, cumulative")[1]   # the profiler leaves itself out


def test_the_module_benchmark_reports_primitives_and_functions():
    [result] = bench_module(batch=2, num_inputs=16, num_slots=3, slot_size=8, repeats=1)
    assert result["num_slots"] == 3 and result["primitives_traced"] > 10
    assert {p["name"] for p in result["primitives"]} >= {"matmul", "softmax"}
    text = format_bench_module([result])
    assert "primitive" in text and "cProfile of one call" in text and "LayerNorm" in text


# --------------------------------------------------------------------------
# The launch-count proxy.

def test_count_calls_counts_each_array_call_once_by_name(rng):
    x = rng.normal(size=(3, 8))
    y, counts = count_calls(layers.normalize, x)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, layers.normalize(x))
    # mean, subtract, multiply, mean, add, sqrt, divide: np.mean's own sum and divide are not recounted.
    assert counts == {"mean": 2, "subtract": 1, "multiply": 1, "add": 1, "sqrt": 1, "divide": 1}
    assert counts.total == 7
    _, counts = count_calls(lambda a: (np.shape(a), a.sum(), np.concatenate([a, a])), x)
    assert counts == {"add.reduce": 1, "concatenate": 1}   # metadata calls make no array


def test_count_calls_follows_autograd_through_the_backward_pass(rng):
    x = rng.normal(size=(4, 8))

    def loss(x):
        return backend.sum(layers.softmax(x) ** 2)
    (value, grad), counts = count_calls(autograd.value_and_grad(loss), x)
    assert type(grad) is np.ndarray
    assert value == pytest.approx(np.sum(layers.softmax(x) ** 2))
    _, forward = count_calls(loss, x)
    assert counts.total > forward.total >= 5


def test_flat_adam_makes_far_fewer_calls_than_per_leaf_adam(rng):
    """The launch proxy of the whole-buffer update: a handful of calls instead of a handful per leaf."""
    tree = {f"layer{i}": {"w": rng.normal(size=(4, 4)), "b": rng.normal(size=4)} for i in range(10)}
    grads = {k: {n: rng.normal(size=a.shape) for n, a in v.items()} for k, v in tree.items()}
    adam = Adam()
    per_leaf = counting({k: {n: a.copy() for n, a in v.items()} for k, v in tree.items()})
    state = adam.init(per_leaf)
    _, leaf_counts = count_calls(adam.update, per_leaf, grads, state, 1e-3)
    flat = FlatTree.from_tree(tree)

    def counted(flat_tree):
        return flat_tree.layout.wrap({k: counting(v) for k, v in flat_tree.buffers.items()})
    params = counted(flat)
    flat_state = adam.init(params)
    flat_state["flat"] = {k: counted(v) for k, v in flat_state["flat"].items()}
    _, flat_counts = count_calls(adam.update, params, counted(flat.layout.flatten(grads)), flat_state, 1e-3)
    assert leaf_counts.total == 13 * 20             # 13 calls per leaf, 20 leaves
    assert flat_counts.total == 13                  # 13 calls in all
    np.testing.assert_array_equal(flat.tree["layer3"]["w"], per_leaf["layer3"]["w"])


def test_launches_on_numpy_reports_calls_and_no_device_time(rng):
    _, measured = launches(lambda a: anp.exp(a) + a, rng.normal(size=3))
    assert measured.device_ms is None and measured.calls == {"exp": 1, "add": 1}
    assert "2 array calls" in measured.summary()
