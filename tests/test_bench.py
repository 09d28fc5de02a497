"""The benchmark's bookkeeping (timings themselves are never tested)."""

from __future__ import annotations

import re

import numpy as np

from slotref import layers
from slotref.bench import ConvTimer, conv_flops


def test_conv_timer_counts_the_flops_of_every_layer_that_shares_a_shape():
    x = np.ones((2, 24, 24, 16), np.float32)      # big enough that the printed GFLOP/s has digits
    w = np.ones((3, 3, 16, 16), np.float32)
    with ConvTimer(np) as timer:
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
    np.testing.assert_allclose(rate, 2 * conv_flops(2, 24, 24, 3, 16, 16) / seconds / 1e9, rtol=0.01)
    # the patched functions are restored
    assert layers._conv_forward.__name__ == "_conv_forward"
