"""Checks of whole-model ports on the cases of ``model_cases``: set prediction, the autoencoder, AP.

A port gives any of these callables (``check_models``; ``docs/conformance.md``), with
``architecture`` the case's dict of encoder strides and decoder rows:

    setpred(params, images, noise, num_iterations, architecture)          -> predictions (B, K, 19)
    set_loss(predictions, targets)                                       -> Hungarian Huber loss
    setpred_grad(params, images, noise, num_iterations, architecture, targets) -> d_params of that loss
    autoencoder(params, images, noise, num_iterations, architecture)      -> {"recon_combined", "recons", "masks"}
    autoencoder_grad(params, images, noise, num_iterations, architecture) -> d_params of MSE(recon_combined, images)
    average_precision(predictions, targets, threshold)                   -> AP (threshold inf: none)

Where a model's outputs differ, the diagnosis replays the one model-level slip
catalogued, symmetric instead of SAME padding, and names it if it reproduces them.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from slotref import convolution, dispatch
from slotref.conformance import golden, model_cases
from slotref.conformance.checks import TOLERANCES, Report, Result, _guarded, cast
from slotref.conformance.diagnose import relative_error
from slotref.losses import hungarian_huber_loss, mse
from slotref.metrics import AP_THRESHOLDS
from slotref.models import autoencoder, set_prediction

PADDING_HINT = ("convolutions pad as TF's SAME: output ceil(in / stride), the odd padding pixel at the "
                "bottom and right (a stride-2, 5x5 convolution of an even size pads (1, 2), not PyTorch's "
                "padding=2 on both sides)")


@contextlib.contextmanager
def symmetric_padding():
    """The convolutions as written, padding kernel // 2 on both sides (PyTorch's padding=k//2)."""
    original = convolution.same_padding

    def symmetric(size, kernel, stride):
        return -(-size // stride), kernel // 2, kernel // 2
    convolution.same_padding = symmetric
    try:
        with dispatch.using("reference"):
            yield
    finally:
        convolution.same_padding = original


# --------------------------------------------------------------------------
# slotref itself as a whole-model adapter.

def reference_setpred(params, images, noise, num_iterations, architecture):
    config = _config(architecture)
    return set_prediction(params, images, noise, config, num_iterations)


def reference_autoencoder(params, images, noise, num_iterations, architecture):
    out = autoencoder(params, images, noise, _config(architecture), num_iterations)
    return {k: out[k] for k in ("recon_combined", "recons", "masks")}


def _config(architecture):
    return model_cases.config_of({"attrs": {"architecture": architecture}})


@functools.lru_cache(maxsize=None)
def case_data(name):
    return model_cases.read_model_case(name)


@functools.lru_cache(maxsize=None)
def padding_slip_outputs(name):
    case = case_data(name)
    args = (case["params"], case["images"], case["noise"], case["attrs"]["num_iterations"],
            case["attrs"]["architecture"])
    with symmetric_padding():
        if "predictions" in case:
            return {"predictions": reference_setpred(*args)}
        return reference_autoencoder(*args)


# --------------------------------------------------------------------------
# The checks.

def _args(case, dtype):
    return (cast(case["params"], dtype), case["images"].astype(dtype), case["noise"].astype(dtype),
            case["attrs"]["num_iterations"], case["attrs"]["architecture"])


def _outputs_result(check, name, outputs, expected, dtype):
    errors = {k: relative_error(outputs.get(k) if isinstance(outputs, dict) else outputs, expected[k])
              for k in expected}
    worst = max(errors, key=errors.get)
    result = Result(check, name, "pass", errors[worst], TOLERANCES[dtype])
    if errors[worst] <= result.tolerance:
        return result
    result.status, result.quantity = "fail", next(k for k, e in errors.items() if e > result.tolerance)
    slip = padding_slip_outputs(name)
    if all(relative_error(outputs.get(k) if isinstance(outputs, dict) else outputs, slip[k]) <= result.tolerance
           for k in expected):
        result.slip, result.hint = "symmetric_padding", PADDING_HINT
    else:
        result.hint = f"{result.quantity} differs; known model-level slip: symmetric_padding"
    return result


def check_setpred(setpred, dtype="float64"):
    case = case_data("setpred")
    return _outputs_result("setpred", "setpred", setpred(*_args(case, dtype)), {"predictions": case["predictions"]},
                           dtype)


def check_set_loss(set_loss, dtype="float64"):
    case = case_data("setpred")
    loss = set_loss(case["predictions"].astype(dtype), case["targets"].astype(dtype))
    return _scalar_result("set_loss", "setpred", loss, case["loss"], dtype,
                          "the loss sums the Huber (delta 1) costs, averaged over the 19 numbers, of the "
                          "Hungarian-matched pairs, then averages over the batch (targets padded to K)")


def check_autoencoder(forward, name, dtype="float64"):
    case = case_data(name)
    expected = {k: case[k] for k in ("recon_combined", "recons", "masks")}
    return _outputs_result("autoencoder", name, forward(*_args(case, dtype)), expected, dtype)


def check_model_grad(grad, name, dtype="float64"):
    case = case_data(name)
    extra = (case["targets"].astype(dtype),) if "targets" in case else ()
    port = dict(golden.leaves(grad(*_args(case, dtype), *extra) or {}))
    expected = dict(golden.leaves(case["grads"]))
    errors = {k: relative_error(port[k] if port.get(k) is not None else np.zeros_like(v), v)
              for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    result = Result("model_gradients", name, "pass", errors[worst], TOLERANCES[dtype])
    if errors[worst] > result.tolerance:
        wrong = [k for k, e in errors.items() if e > result.tolerance]
        result.status, result.quantity = "fail", "d " + ", ".join(wrong[:3]) + (", ..." if len(wrong) > 3 else "")
        result.hint = "the gradients of the loss differ, first at " + wrong[0]
    return result


def check_average_precision(average_precision, name, dtype="float64"):
    case = case_data(name)
    aps = [average_precision(case["predictions"], case["targets"], t) for t in AP_THRESHOLDS]
    errors = [relative_error(a, e) for a, e in zip(aps, case["ap"])]
    worst = int(np.argmax(errors))
    result = Result("average_precision", name, "pass", errors[worst], TOLERANCES["float64"])
    if errors[worst] > result.tolerance:
        result.status, result.quantity = "fail", f"threshold {AP_THRESHOLDS[worst]}"
        result.hint = {"ap_confidence_ties": "tied confidences keep their (image, slot) order: a stable sort",
                       "ap_identical_objects": "each detection takes its nearest attribute-matching object, "
                       "matched or not; if that one is taken the detection is a false positive (the official "
                       "rule)"}.get(name, "AP as E.9: detections sorted by confidence across the batch, "
                                         "a hit within the threshold on matching attributes, VOC interpolation")
    return result


def _scalar_result(check, name, value, expected, dtype, hint):
    error = relative_error(np.asarray(value, np.float64).reshape(()), expected)
    result = Result(check, name, "pass", error, TOLERANCES[dtype])
    if error > result.tolerance:
        result.status, result.hint = "fail", hint
    return result


def check_models(*, setpred=None, set_loss=None, setpred_grad=None, autoencoder=None, autoencoder_grad=None,
                 average_precision=None, dtype: str = "float64") -> Report:
    """Run the whole-model checks for the callables given (module docstring); returns a ``Report``."""
    report = Report()
    plan = []
    if setpred is not None:
        plan.append((check_setpred, "setpred", "setpred", setpred))
    if set_loss is not None:
        plan.append((check_set_loss, "set_loss", "setpred", set_loss))
    if setpred_grad is not None:
        plan.append((functools.partial(check_model_grad, name="setpred"), "model_gradients", "setpred",
                     setpred_grad))
    for name in ("discovery_clevr", "discovery_full"):
        if autoencoder is not None:
            plan.append((functools.partial(check_autoencoder, name=name), "autoencoder", name, autoencoder))
        if autoencoder_grad is not None:
            plan.append((functools.partial(check_model_grad, name=name), "model_gradients", name, autoencoder_grad))
    for name in model_cases.AP_CASES:
        if average_precision is not None:
            plan.append((functools.partial(check_average_precision, name=name), "average_precision", name,
                         average_precision))
    for fn, check, name, callable_ in plan:
        report.results.append(_guarded(lambda c, d: fn(c, dtype=d), check, name, dtype, callable_, dtype))
    return report


def reference_setpred_grad(params, images, noise, num_iterations, architecture, targets):
    import autograd
    return autograd.grad(lambda p: hungarian_huber_loss(
        reference_setpred(p, images, noise, num_iterations, architecture), targets))(params)


def reference_autoencoder_grad(params, images, noise, num_iterations, architecture):
    import autograd
    return autograd.grad(lambda p: mse(
        reference_autoencoder(p, images, noise, num_iterations, architecture)["recon_combined"], images))(params)
