"""The device self-check (slotref/selfcheck/) on the CPU, on the stand-in device, and with the
CuPy kernels compiled for the CPU.

On a CUDA machine the same function runs on CuPy: ``python cli.py selfcheck
--device gpu``.
"""

import sys

import numpy as np
import pytest
from autograd.extend import defvjp, primitive

import cuda_emulator
import standin
from slotref import backend, dispatch, optim, selfcheck
from slotref.backend import BackendError


def run(device, cases=None, steps=(), proposition1=False):
    """The layer checks only, unless steps (entries of STEP_CASES, run small) or Proposition 1 are asked for."""
    lines = []
    ok = selfcheck.run_selfcheck(device, out=lines.append, cases=cases, steps=list(steps), small_steps=True,
                                 proposition1=proposition1)
    return ok, lines


def check_lines(lines):
    return [line for line in lines if line.startswith(("PASS", "FAIL"))]


def test_selfcheck_passes_on_the_cpu_with_one_line_per_check():
    ok, lines = run("cpu")
    checks = check_lines(lines)
    assert ok, "\n".join(lines)
    cases = selfcheck.layer_cases()
    assert len(checks) == 3 * len(cases) + sum(case.kernel for case in cases) + 1   # + the Adam step
    assert all(line.startswith("PASS") for line in checks)
    for case in cases:
        for check in ("grad-fd", "numpy float64", "numpy float32") + (("kernel==spec",) if case.kernel else ()):
            assert any(case.name in line and check in line for line in checks), (case.name, check)
    assert any("adam_step" in line and "kernel==spec" in line for line in checks)
    assert lines[-1] == "selfcheck PASSED"


def test_every_registered_kernel_is_reached_by_a_kernel_check(monkeypatch):
    reached = set()
    dispatch.registered()                           # imports the kernel modules
    for spec in list(dispatch._fast):
        record = (lambda s: lambda *a, **k: reached.add(s) or s.specification(*a, **k))(spec)
        monkeypatch.setitem(dispatch._fast, spec, dispatch.Kernel(record, None))
    with dispatch.using("fast"):
        for case in selfcheck.layer_cases():
            if case.kernel:
                case.fn(case.params, *case.inputs)
    assert reached | {optim.adam_step} == set(dispatch._fast)   # the Adam step has its own check


def test_a_training_step_and_proposition_1_on_the_standin_device():
    with standin.watch() as stats:
        ok, lines = run(standin.standin_backend(), cases=[], steps=[selfcheck.STEP_CASES[1]], proposition1=True)
    assert ok, "\n".join(lines)
    checks = check_lines(lines)
    assert any("step tetrominoes (small)" in line and "numpy float64" in line for line in checks)
    assert any("step tetrominoes (small)" in line and "numpy float32" in line for line in checks)
    assert any("Proposition 1" in line for line in checks) and len(checks) == 3
    assert not stats.conversions and not stats.host_operands, stats.report()


def test_a_wrong_fast_kernel_fails_the_kernel_check(monkeypatch):
    from slotref.kernels import conv

    forward = conv._conv_forward
    monkeypatch.setattr(conv, "_conv_forward", lambda x, w, stride: 1.001 * forward(x, w, stride))
    case = next(case for case in selfcheck.layer_cases() if case.name.startswith("conv2d k3"))
    ok, lines = run("cpu", cases=[case])
    assert not ok
    assert [line.split()[0] for line in check_lines(lines) if "kernel==spec" in line] == ["FAIL"]


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


@pytest.mark.skipif(not cuda_emulator.available(), reason="needs g++ to compile the kernel sources")
def test_selfcheck_compares_the_cupy_kernels_with_their_specification(monkeypatch):
    from slotref.kernels import fused_cupy

    # The CuPy kernels, compiled for the CPU, applied to NumPy arrays: every kernel check passes...
    fused_cases = [case for case in selfcheck.layer_cases() if case.name in ("layer_norm", "huber", "gru_cell")]
    with cuda_emulator.cupy_kernels_on_numpy():
        ok, lines = run("cpu", cases=fused_cases)
    assert ok, "\n".join(lines)
    assert sum("kernel==spec" in line for line in check_lines(lines)) == 3

    # ...and a kernel that is off by 1e-3 fails its check and the selfcheck.
    build = fused_cupy.build_huber
    monkeypatch.setattr(fused_cupy, "build_huber", lambda cp: (lambda x, delta=1.0: build(cp)(x, delta) * 1.001))
    with cuda_emulator.cupy_kernels_on_numpy():
        ok, lines = run("cpu", cases=fused_cases)
    assert not ok
    assert [line.split()[1] for line in check_lines(lines) if line.startswith("FAIL")] == ["huber"]
    # With every kernel chosen (--kernels all) the layer's own checks run through it and fail too.
    with cuda_emulator.cupy_kernels_on_numpy(), dispatch.using("all"):
        ok, lines = run("cpu", cases=fused_cases)
    assert not ok
    assert [line.split()[1] for line in check_lines(lines) if line.startswith("FAIL")] == ["huber", "huber"]
