"""Device self-check: every layer's gradient and its agreement with NumPy.

``run_selfcheck("gpu")`` (wired to ``python cli.py selfcheck --device gpu``)
runs, on the chosen device, for every layer and for the Slot Attention module
(``cases.layer_cases``):

1. ``grad-fd``: the float64 gradient of a scalar loss against central finite
   differences, one random direction per parameter/input array, evaluated on
   the device and compared on the host;
2. ``numpy float64``: forward output and every gradient against the NumPy
   run on the same inputs (relative error < 1e-9);
3. ``numpy float32``: the same in float32; the error is reported, and fails
   only above 1e-3 (float32 GEMMs on a GPU sum in another order than BLAS);
4. ``kernel==spec`` (layers that reach a fast kernel registered in
   ``slotref.dispatch``): the fast kernels against the specification, forward
   and every gradient, float64, both on the device (relative error < 1e-9);
   and the same for the Adam step (``optim.adam_step``).

Then, for one training step of every task (set prediction, the three
discovery architectures, the Slot MLP): the loss and every gradient on the
device against NumPy (float64 < 1e-9; float32 reported, fails above 1e-3);
and Proposition 1 on the device: Slot Attention is equivariant to permuting
the initial slots and invariant to permuting the inputs (float64, < 1e-10).

On the CPU the NumPy comparisons are trivially exact, and so are the kernel
checks of the kernels that apply to CuPy arrays only; the finite-difference
checks are not. ``tests/kernels/test_selfcheck.py`` runs it on the CPU, on the
stand-in device, and with the CuPy kernels compiled for the CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from slotref import dispatch
from slotref.backend import Backend, get_backend
from slotref.selfcheck.cases import STEP_CASES, Case, layer_cases, step_problem
from slotref.selfcheck.compare import (compare_adam_step, compare_kernels, compare_step, compare_with_numpy,
                                       finite_difference_check, projection, proposition1_errors)

__all__ = ["Case", "STEP_CASES", "layer_cases", "run_selfcheck", "step_problem"]

FD_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-9
FLOAT32_TOLERANCE = 1e-3
PROPOSITION1_TOLERANCE = 1e-10


def run_selfcheck(device: str | Backend = "cpu", out: Callable[[str], Any] = print,
                  cases: list[Case] | None = None, steps: list | None = None, small_steps: bool | None = None,
                  proposition1: bool = True) -> bool:
    """Run the checks on ``device`` ('cpu', 'gpu' or a ``Backend``); True if all pass.

    ``steps``: entries of ``STEP_CASES`` (default: all); ``small_steps``: their small versions
    (default: on NumPy, where the paper's sizes take minutes).
    """
    b = device if isinstance(device, Backend) else get_backend(device)
    b64 = dataclasses.replace(b, dtype=np.dtype(np.float64))
    b32 = dataclasses.replace(b, dtype=np.dtype(np.float32))
    every_layer = cases is None
    cases = layer_cases() if every_layer else cases
    steps = STEP_CASES if steps is None else steps
    small_steps = b.xp is np if small_steps is None else small_steps
    out(f"selfcheck on device {b.device!r} ({getattr(b.xp, '__name__', b.xp)}), {len(cases)} layers, "
        f"{len(steps)} training steps, kernels: {dispatch.active()}")
    all_pass = True

    def report(ok: bool, name: str, check: str, text: str):
        nonlocal all_pass
        all_pass &= ok
        out(f"{'PASS' if ok else 'FAIL'}  {name:<34} {check:<15} {text}")

    def attempt(name: str, check: str, measure: Callable, passes: Callable, describe: Callable):
        try:  # a crash is a failed check, not an aborted self-check
            result = measure()
            report(passes(result), name, check, describe(result))
        except Exception as exc:
            report(False, name, check, f"{type(exc).__name__}: {exc}")

    def rel_err(tolerance):
        return (lambda result: result[0] < tolerance), lambda result: f"rel err {result[0]:.1e} (worst: {result[1]})"

    for i, case in enumerate(cases):
        try:
            r = projection(case, seed=100 + i)
        except Exception as exc:
            report(False, case.name, "numpy forward", f"{type(exc).__name__}: {exc}")
            continue
        attempt(case.name, "grad-fd", lambda: finite_difference_check(b64, case, r), *rel_err(FD_TOLERANCE))
        for bk, tolerance in ((b64, FLOAT64_TOLERANCE), (b32, FLOAT32_TOLERANCE)):
            attempt(case.name, f"numpy {bk.dtype}", lambda: compare_with_numpy(bk, case, r),
                    lambda result: result[0] < tolerance and not result[2],
                    lambda result: rel_err(0)[1](result) + "".join(f"; {p}" for p in result[2]))
        if case.kernel:
            attempt(case.name, "kernel==spec", lambda: compare_kernels(b64, case, r), *rel_err(FLOAT64_TOLERANCE))
    if every_layer:  # and the one fast kernel outside the layers
        attempt("adam_step", "kernel==spec", lambda: compare_adam_step(b64), lambda err: err < FLOAT64_TOLERANCE,
                lambda err: f"rel err {err:.1e}")
    for name, task, dataset, batch in steps:
        label = f"step {name}" + (" (small)" if small_steps else "")
        for bk, tolerance in ((b64, FLOAT64_TOLERANCE), (b32, FLOAT32_TOLERANCE)):
            attempt(label, f"numpy {bk.dtype}",
                    lambda: compare_step(bk, *step_problem(name, task, dataset, batch, small_steps)),
                    *rel_err(tolerance))
    if proposition1:
        attempt("slot_attention", "Proposition 1", lambda: proposition1_errors(b),
                lambda errors: max(errors) < PROPOSITION1_TOLERANCE,
                lambda errors: f"slot permutation err {errors[0]:.1e}, input permutation err {errors[1]:.1e}")
    out(f"selfcheck {'PASSED' if all_pass else 'FAILED'}")
    return all_pass
