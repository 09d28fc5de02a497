"""Check anyone's Slot Attention against slotref: golden cases, Proposition 1, diagnosis by line.

    from slotref.conformance import check
    report = check(forward)          # forward(params, inputs, noise, num_iterations) -> slots
    print(report); assert report.ok

- ``golden``: the module cases, made in float64 by slotref and shipped as HDF5;
- ``model_cases`` / ``model_checks``: set prediction, the autoencoder and AP as whole models;
- ``walk``: Algorithm 1 one line at a time, recording every intermediate;
- ``catalogue``: known porting slips, each replayable, with its fix;
- ``checks`` / ``properties``: the checks; ``diagnose``: the first line that differs;
- ``layouts``: parameter converters to PyTorch and Keras layouts;
- ``pytest_plugin``: a fixture for a project's own test suite.

``docs/conformance.md`` documents the adapter protocol, the parameter names and the tolerances.
"""

from slotref.conformance.checks import TOLERANCES, Report, Result, check, check_forward, check_gradients
from slotref.conformance.golden import CASE_NAMES, read_module_case
from slotref.conformance.model_checks import check_models

__all__ = ["check", "check_models", "check_forward", "check_gradients", "Report", "Result", "TOLERANCES", "CASE_NAMES",
           "read_module_case"]
