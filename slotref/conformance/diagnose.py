"""Diagnosis by line: which line of Algorithm 1 a port first differs at, and which known slip it is.

Errors compare a whole array: ``max |port - reference| / max(1, max |reference|)``, the
absolute difference for arrays below 1 in size (an array that is zero in exact arithmetic,
such as the gradient of ``norm_slots/offset``, which the softmax over slots cancels, holds
rounding noise) and the relative one above.
"""

from __future__ import annotations

import functools

import autograd
import autograd.numpy as anp
import numpy as np

from slotref.conformance import golden
from slotref.conformance.catalogue import BY_NAME, SLIPS
from slotref.conformance.walk import ONCE, PER_ITERATION, walk

# Which line of Algorithm 1 each parameter serves (a gradient's failure points there).
PARAMETER_LINES = {"slots_mu": 1, "slots_log_sigma": 1, "norm_inputs": 3, "project_k": 7, "project_v": 8,
                   "norm_slots": 6, "project_q": 7, "gru": 9, "norm_mlp": 10, "mlp": 10, "inputs": 3}


def relative_error(port, reference) -> float:
    """max |port - reference| / max(1, max |reference|); inf for a shape mismatch or a non-finite value."""
    reference = np.asarray(reference, np.float64)
    try:
        port = np.asarray(port, np.float64)
    except (TypeError, ValueError):
        return float("inf")
    if port.shape != reference.shape:
        return float("inf")
    if not reference.size:
        return 0.0
    error = np.abs(port - reference).max() / max(1.0, np.abs(reference).max())
    return float(error) if np.isfinite(error) else float("inf")


@functools.lru_cache(maxsize=None)
def case_data(name: str, path: str | None = None) -> dict:
    return golden.read_module_case(name, path)


@functools.lru_cache(maxsize=None)
def slip_run(case_name: str, slip_name: str, path: str | None = None) -> tuple[dict, np.ndarray] | None:
    """The trace and final slots the slip would produce on a golden case (float64); None where
    the slip cannot apply to the case's shapes."""
    case, slip = case_data(case_name, path), BY_NAME[slip_name]
    trace = {}
    try:
        slots = walk(case["params"], case["inputs"], case["noise"],
                     case["attrs"]["num_iterations"] + slip.extra_iterations, case["attrs"]["epsilon"],
                     slip.ops, record=trace)
    except ValueError:
        return None
    return trace, slots


@functools.lru_cache(maxsize=None)
def slip_gradients(case_name: str, slip_name: str, path: str | None = None):
    """(d_params, d_inputs) of sum(slots * probe) under a slip (float64)."""
    case, slip = case_data(case_name, path), BY_NAME[slip_name]
    t, eps = case["attrs"]["num_iterations"] + slip.extra_iterations, case["attrs"]["epsilon"]

    def scalar(params, inputs):
        return anp.sum(walk(params, inputs, case["noise"], t, eps, slip.ops) * case["probe"])
    return autograd.grad(scalar, (0, 1))(case["params"], case["inputs"])


def first_difference(trace: dict, case: dict, tolerance: float):
    """(quantity, iteration or None, error) of the first traced quantity, in execution order,
    that differs from the golden trace by more than ``tolerance``; None if all agree.
    A per-iteration list whose length is not T gives ('iterations', length, inf)."""
    golden_trace, t = case["trace"], case["attrs"]["num_iterations"]
    for name in ONCE:
        if name in trace and relative_error(trace[name], golden_trace[name]) > tolerance:
            return name, None, relative_error(trace[name], golden_trace[name])
    for name in PER_ITERATION:
        if name in trace and len(trace[name]) != t:
            return "iterations", len(trace[name]), float("inf")
    for i in range(t):
        for name in PER_ITERATION:
            if name in trace:
                error = relative_error(trace[name][i], golden_trace[name][i])
                if error > tolerance:
                    return name, i, error
    return None


def worst_traced(trace: dict, case: dict) -> float:
    """The largest error over every traced quantity (of the iterations both ran)."""
    golden_trace, errors = case["trace"], [0.0]
    for name, value in trace.items():
        if name in ONCE:
            errors.append(relative_error(value, golden_trace[name]))
        elif name in PER_ITERATION:
            errors += [relative_error(v, g) for v, g in zip(value, golden_trace[name])]
    return max(errors)


def slips_at(case_name: str, quantity: str, iteration, port_value, tolerance: float, path=None) -> list:
    """The known slips that produce the port's value of ``quantity`` (at ``iteration``)."""
    reference = case_data(case_name, path)["trace"][quantity]
    reference = reference if iteration is None else reference[iteration]
    found = []
    for slip in SLIPS:
        if slip.gradient_only or slip.extra_iterations:
            continue
        if slip.signature is not None:
            if quantity in slip.signature_at and slip.signature(port_value, reference):
                found.append(slip)
            continue
        run = slip_run(case_name, slip.name, path)
        if run is None:
            continue
        value = run[0][quantity] if iteration is None else run[0][quantity][iteration]
        if relative_error(port_value, value) <= tolerance:
            found.append(slip)
    return found


def slips_for_slots(case_name: str, port_slots, tolerance: float, path=None) -> list:
    """The known slips whose final slots equal the port's (no trace needed)."""
    found = []
    for slip in SLIPS:
        if slip.gradient_only or slip.ops is None:
            continue
        run = slip_run(case_name, slip.name, path)
        if run is not None and relative_error(port_slots, run[1]) <= tolerance:
            found.append(slip)
    return found


def slips_for_gradients(case_name: str, port_grads: dict, tolerance: float, path=None) -> list:
    """The gradient-only slips whose gradients equal the port's (``port_grads``: path -> array)."""
    found = []
    for slip in SLIPS:
        if not slip.gradient_only:
            continue
        d_params, d_inputs = slip_gradients(case_name, slip.name, path)
        expected = dict(golden.leaves(d_params), inputs=d_inputs)
        if all(relative_error(port_grads.get(k, np.zeros_like(v)), v) <= tolerance for k, v in expected.items()):
            found.append(slip)
    return found


def hint_for_line(line: int) -> str:
    names = [slip.name for slip in SLIPS if slip.line == line]
    return ("no known slip matches; known slips at this line: " + ", ".join(names)) if names else \
        "no known slip matches"
