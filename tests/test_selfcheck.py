"""The device self-check (slotref/selfcheck.py) on the CPU and on the stand-in device.

On a CUDA machine the same function runs on CuPy: ``python cli.py selfcheck
--device gpu``.
"""

import sys

import numpy as np
import pytest
from autograd.extend import defvjp, primitive

import standin
from slotref import backend, selfcheck
from slotref.backend import BackendError


def run(device, cases=None):
    lines = []
    ok = selfcheck.run_selfcheck(device, out=lines.append, cases=cases)
    return ok, lines


def check_lines(lines):
    return [line for line in lines if line.startswith(("PASS", "FAIL"))]


def test_selfcheck_passes_on_the_cpu_with_one_line_per_check():
    ok, lines = run("cpu")
    checks = check_lines(lines)
    assert ok, "\n".join(lines)
    assert len(checks) == 3 * len(selfcheck.layer_cases())
    assert all(line.startswith("PASS") for line in checks)
    for case in selfcheck.layer_cases():
        for check in ("grad-fd", "numpy float64", "numpy float32"):
            assert any(case.name in line and check in line for line in checks), (case.name, check)
    assert lines[-1] == "selfcheck PASSED"


def test_selfcheck_covers_every_layer_and_slot_attention():
    names = " ".join(case.name for case in selfcheck.layer_cases())
    for layer in ("linear", "mlp", "relu", "sigmoid", "layer_norm", "softmax", "huber", "gru_cell",
                  "conv2d k3 s1", "conv2d k5 s2", "conv_transpose2d k5 s2", "conv_transpose2d k3 s1",
                  "soft_position_embed", "spatial_broadcast", "slot_attention"):
        assert layer in names


def test_selfcheck_passes_on_the_standin_device_without_hidden_transfers():
    with standin.watch() as stats:
        ok, lines = run(standin.standin_backend())
    assert ok, "\n".join(lines)
    assert "'standin'" in lines[0]
    assert not stats.conversions and not stats.host_operands, stats.report()


@primitive
def square_with_wrong_gradient(x):
    return x * x


defvjp(square_with_wrong_gradient, lambda ans, x: lambda g: 3 * x * g)  # should be 2 * x * g


def test_selfcheck_fails_on_a_wrong_gradient():
    case = selfcheck.Case("wrong square", lambda p, x: square_with_wrong_gradient(x), {},
                          (np.random.default_rng(0).standard_normal((3, 2)),))
    ok, lines = run("cpu", cases=[case])
    assert not ok
    assert any(line.startswith("FAIL") and "grad-fd" in line for line in lines)
    assert lines[-1] == "selfcheck FAILED"


def test_a_crashing_layer_is_a_failed_check_not_a_crash():
    def broken(p, x):
        raise RuntimeError("boom")

    def broken_on_the_device(p, x):
        return x if isinstance(x, np.ndarray) else broken(p, x)

    ok, lines = run(standin.standin_backend(), cases=[
        selfcheck.Case("broken", broken, {}, (np.ones(2),)),
        selfcheck.Case("broken on the device", broken_on_the_device, {}, (np.ones(2),)),
        selfcheck.layer_cases()[0]])
    assert not ok
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 1 + 3  # the host run of the first; all three checks of the second
    assert all("RuntimeError: boom" in line for line in fails)
    assert sum(line.startswith("PASS") for line in lines) == 3  # the good case still runs


def test_selfcheck_on_a_gpu_without_cupy_raises_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendError, match="(?i)cupy"):
        selfcheck.run_selfcheck("gpu", out=lambda line: None)


def test_selfcheck_accepts_a_backend_of_either_dtype():
    for dtype in (np.float32, np.float64):
        ok, _ = run(backend.Backend("cpu", np, np.dtype(dtype)), cases=selfcheck.layer_cases()[:2])
        assert ok
