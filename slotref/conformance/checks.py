"""The checks: a port's forward pass and gradients on the golden cases, Proposition 1, K and T at call time.

The adapter protocol (``docs/conformance.md``)::

    forward(params, inputs, noise, num_iterations)            -> slots (B, K, D)
    forward(params, inputs, noise, num_iterations, trace=True) -> (slots, trace)   # optional
    forward(..., epsilon=1e-8)                                 # optional: line 8's offset
    grad(params, inputs, noise, num_iterations, probe)        -> (d_params, d_inputs)  # optional
    grad(..., epsilon=1e-8)                                    # optional

``params`` is the tree of ``init_slot_attention`` (NumPy arrays), ``noise``
(B, K, D) the N(0, 1) draw that ``mu + exp(log_sigma) * noise`` turns into the
initial slots, ``probe`` (B, K, D) the weights of the scalar ``sum(slots * probe)``
whose gradients ``grad`` returns, in the layout of ``params`` and ``inputs``. A case
whose epsilon is not the paper's 1e-8 is skipped for an adapter without ``epsilon``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from slotref.conformance import diagnose, golden
from slotref.conformance.walk import QUANTITIES

# The largest error (``diagnose.relative_error``) a port may show, per dtype of the arrays it is
# given: about 1e4 x (float64) and 100 x (float32) the worst error of the example NumPy port,
# `slotref conformance --adapter examples/conformance/numpy_port.py:forward [--dtype float32]`
# (docs/conformance.md).
TOLERANCES = {"float64": 1e-10, "float32": 1e-4}


@dataclass
class Result:
    """One check: ``status`` is 'pass', 'fail' or 'skip'."""

    check: str
    case: str
    status: str
    error: float = 0.0
    tolerance: float = 0.0
    line: int | None = None          # the first line of Algorithm 1 that differs
    quantity: str | None = None      # the traced quantity that differs first (and its iteration)
    slip: str | None = None          # the known slip that reproduces the port's values
    hint: str = ""

    def __str__(self):
        where = f"line {self.line}" if self.line is not None else "-"
        if self.quantity:
            where += f" ({self.quantity})"
        text = f"{self.status.upper():4} {self.check:17} {self.case:26} error {self.error:9.2e} " \
               f"tol {self.tolerance:7.0e}  {where}"
        if self.slip:
            text += f"  [{self.slip}]"
        return text + (f"  {self.hint}" if self.hint else "")


@dataclass
class Report:
    results: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.status == "fail"]

    def __str__(self):
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return "\n".join([str(r) for r in self.results] + [f"{'OK' if self.ok else 'FAILED'}: {summary}"])

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "results": [asdict(r) for r in self.results]}, indent=1)

    def raise_for_failure(self):
        if not self.ok:
            raise AssertionError("the port does not conform to slotref's Slot Attention:\n" + str(self))


def cast(tree, dtype):
    """Every array of a (nested dict/list) tree as ``dtype``."""
    return golden._map_paths(lambda _, x: np.asarray(x, dtype=dtype), tree)


DEFAULT_EPSILON = 1e-8


def accepts(fn, keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _epsilon(fn, case) -> dict | None:
    """The epsilon keyword for ``fn`` on ``case``: {} for the paper's value, None where fn cannot take it."""
    epsilon = case["attrs"]["epsilon"]
    if accepts(fn, "epsilon"):
        return {"epsilon": epsilon}
    return {} if epsilon == DEFAULT_EPSILON else None


def check_forward(forward, case_name: str, dtype: str = "float64", path=None) -> Result:
    """The final slots of one golden case; with a trace, the first line that differs."""
    case, tolerance = diagnose.case_data(case_name, path), TOLERANCES[dtype]
    args = (cast(case["params"], dtype), case["inputs"].astype(dtype), case["noise"].astype(dtype),
            case["attrs"]["num_iterations"])
    keywords, trace, first = _epsilon(forward, case), None, None
    if keywords is None:
        return Result("forward", case_name, "skip", tolerance=tolerance, hint="forward takes no epsilon")
    if accepts(forward, "trace"):
        slots, trace = forward(*args, trace=True, **keywords)
        first = diagnose.first_difference(trace, case, tolerance)
    else:
        slots = forward(*args, **keywords)
    error = diagnose.relative_error(slots, case["slots"])
    if trace is not None:
        error = max(error, diagnose.worst_traced(trace, case))
    result = Result("forward", case_name, "pass", error, tolerance)
    if first is None and error <= tolerance:
        if dtype == "float32" and getattr(slots, "dtype", None) == np.float64:
            # A float64 constant promotes the whole computation (NumPy 2 keeps NumPy scalars' dtype).
            result.hint = "note: float32 arrays in, float64 slots out: the port did not compute in float32"
        return result
    result.status = "fail"
    if first is not None and first[0] == "iterations":
        slip = diagnose.BY_NAME["one_iteration_too_many"]
        result.line, result.quantity = 4, f"{first[1]} iterations traced, T = {case['attrs']['num_iterations']}"
        result.slip, result.hint = (slip.name, slip.hint) if first[1] == args[3] + 1 else (None, slip.hint)
        return result
    if first is not None:
        name, iteration, _ = first
        value = trace[name] if iteration is None else trace[name][iteration]
        result.line = QUANTITIES[name][0]
        result.quantity = name if iteration is None else f"{name}, iteration {iteration + 1}"
        slips = diagnose.slips_at(case_name, name, iteration, value, tolerance, path)
    else:
        slips = diagnose.slips_for_slots(case_name, slots, tolerance, path)
        if slips:
            result.line = slips[0].line
    if slips:
        result.slip, result.hint = slips[0].name, slips[0].hint
    elif result.line is not None:
        result.hint = diagnose.hint_for_line(result.line)
    else:
        result.hint = "the final slots differ; give forward a trace=True mode to find the line"
    return result


def check_gradients(grad, case_name: str, dtype: str = "float64", path=None) -> Result:
    """Gradients of sum(slots * probe) for every parameter and the inputs; names those without gradient."""
    case, tolerance = diagnose.case_data(case_name, path), TOLERANCES[dtype]
    keywords = _epsilon(grad, case)
    if keywords is None:
        return Result("gradients", case_name, "skip", tolerance=tolerance, hint="grad takes no epsilon")
    d_params, d_inputs = grad(cast(case["params"], dtype), case["inputs"].astype(dtype),
                              case["noise"].astype(dtype), case["attrs"]["num_iterations"],
                              case["probe"].astype(dtype), **keywords)
    port = dict(golden.leaves(d_params or {}), inputs=d_inputs)
    expected = dict(golden.leaves(case["grads"]["params"]), inputs=case["grads"]["inputs"])
    errors = {k: diagnose.relative_error(port[k] if port.get(k) is not None else np.zeros_like(v), v)
              for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    result = Result("gradients", case_name, "pass", errors[worst], tolerance)
    if errors[worst] <= tolerance:
        return result
    result.status = "fail"
    wrong = [k for k, e in errors.items() if e > tolerance]
    silent = [k for k in wrong if np.abs(expected[k]).max() > 0
              and (port.get(k) is None or not np.any(np.asarray(port[k])))]
    result.quantity = "d " + ", ".join(wrong[:3]) + (", ..." if len(wrong) > 3 else "")
    result.line = min(diagnose.PARAMETER_LINES[k.split("/")[0]] for k in wrong)
    slips = diagnose.slips_for_gradients(case_name, {k: v for k, v in port.items() if v is not None},
                                         tolerance, path)
    if slips:
        result.slip, result.line, result.hint = slips[0].name, slips[0].line, slips[0].hint
    elif silent:
        result.hint = "no gradient reaches " + ", ".join(silent) + " (zero or missing where the reference has one)"
    else:
        result.hint = diagnose.hint_for_line(result.line)
    return result


def check(forward, grad=None, *, dtype: str = "float64", cases=None, properties: bool = True,
          path=None) -> Report:
    """Run every check on a port; returns a ``Report`` (``report.ok``, ``print(report)``).

    forward, grad: the adapter (module docstring); ``grad`` defaults to ``forward.grad`` if set.
    dtype: 'float64' or 'float32', the dtype the arrays are given in (and the tolerance).
    cases: golden case names (default: all of ``golden.CASE_NAMES``).
    properties: also run Proposition 1 and K and T changed at call time.
    """
    from slotref.conformance import properties as props

    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    grad = grad if grad is not None else getattr(forward, "grad", None)
    path = None if path is None else str(path)
    report = Report()
    for name in cases or golden.CASE_NAMES:
        report.results.append(_guarded(check_forward, "forward", name, dtype, forward, name, dtype, path))
        if grad is not None:
            report.results.append(_guarded(check_gradients, "gradients", name, dtype, grad, name, dtype, path))
    if grad is None:
        report.results.append(Result("gradients", "all", "skip", hint="no grad function given"))
    if properties:
        for prop in props.PROPERTIES:
            report.results.append(_guarded(prop, prop.__name__, "-", dtype, forward, dtype, path))
    return report


def _guarded(fn, check_name, case_name, dtype, *args):
    """A check that raises is a failure with the exception as its hint."""
    try:
        return fn(*args)
    except Exception as error:  # the port's own errors are findings, not crashes of the kit
        return Result(check_name, case_name, "fail", float("inf"), TOLERANCES[dtype],
                      hint=f"raised {type(error).__name__}: {error}")
