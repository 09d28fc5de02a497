"""Proposition 1 against a port, and K and T changed at call time.

Proposition 1 (permutation symmetry): permuting the inputs leaves the slots
unchanged; permuting the slot noise permutes the slots the same way. Both are
Hypothesis properties over the permutation when Hypothesis is installed (a few
derandomized examples, so a run is reproducible), and a fixed set of seeded
permutations otherwise. K and T are call arguments of Algorithm 1, not
parameters: the port run with other K and T than a golden case's must equal
``slotref.slot_attention`` on the same parameters.
"""

from __future__ import annotations

import numpy as np

from slotref.conformance import diagnose
from slotref.conformance.checks import TOLERANCES, Result, cast
from slotref.slot_attention import SlotAttentionConfig, sample_initial_slots, slot_attention

CASE = "paper_like"       # the golden case whose parameters the properties use
EXAMPLES = 6              # permutations tried per property


def _setup(dtype, path):
    case = diagnose.case_data(CASE, path)
    return case, cast(case["params"], dtype), case["inputs"].astype(dtype), case["noise"].astype(dtype), \
        case["attrs"]["num_iterations"]


def _for_permutations(size: int, seed: int, test) -> float:
    """Run ``test(permutation) -> error`` over permutations of ``size``; the worst error.
    Hypothesis reports a failing permutation by raising."""
    errors = []
    try:
        from hypothesis import given, settings, strategies as st
    except ImportError:
        rng = np.random.default_rng(seed)
        for _ in range(EXAMPLES):
            errors.append(test(rng.permutation(size)))
        return max(errors)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None)
    @given(st.permutations(list(range(size))))
    def run(permutation):
        errors.append(test(np.asarray(permutation)))
    run()
    return max(errors)


def permute_inputs(forward, dtype="float64", path=None) -> Result:
    """Permuting the inputs (axis 1) leaves the slots unchanged."""
    case, params, inputs, noise, t = _setup(dtype, path)
    slots = np.asarray(forward(params, inputs, noise, t), np.float64)

    def test(permutation):
        return diagnose.relative_error(forward(params, inputs[:, permutation], noise, t), slots)
    return _result("permute_inputs", _for_permutations(inputs.shape[1], 1, test), dtype, 3,
                   "the slots must not depend on the order of the inputs (Proposition 1): "
                   "no position-dependent term over the inputs axis")


def permute_slots(forward, dtype="float64", path=None) -> Result:
    """Permuting the slot noise (axis 1) permutes the slots the same way."""
    case, params, inputs, noise, t = _setup(dtype, path)
    slots = np.asarray(forward(params, inputs, noise, t), np.float64)

    def test(permutation):
        return diagnose.relative_error(forward(params, inputs, noise[:, permutation], t), slots[:, permutation])
    return _result("permute_slots", _for_permutations(noise.shape[1], 2, test), dtype, 1,
                   "slots are exchangeable (Proposition 1): one mu and sigma shared by all slots, "
                   "nothing indexed by slot position")


def call_time_k_t(forward, dtype="float64", path=None) -> Result:
    """The port with other K and T than it was given before equals the reference."""
    case, params, inputs, _, _ = _setup(dtype, path)
    rng = np.random.default_rng(3)
    worst = 0.0
    for k, t in ((11, 5), (2, 1), (1, 0)):
        noise = rng.standard_normal((inputs.shape[0], k, case["noise"].shape[2]))
        reference = slot_attention(case["params"], case["inputs"], sample_initial_slots(case["params"], noise), t,
                                   _config(case))
        worst = max(worst, diagnose.relative_error(forward(params, inputs, noise.astype(dtype), t), reference))
    return _result("call_time_k_t", worst, dtype, 4,
                   "K and T are call arguments: the slot count comes from the noise's shape, "
                   "the iterations from num_iterations")


def _config(case):
    """The SlotAttentionConfig of a golden case, read from its parameter shapes."""
    p = case["params"]
    return SlotAttentionConfig(input_size=p["project_k"]["w"].shape[0], slot_size=p["project_q"]["w"].shape[0],
                               mlp_hidden_size=p["mlp"][0]["w"].shape[1], epsilon=case["attrs"]["epsilon"])


def _result(name, error, dtype, line, hint) -> Result:
    tolerance = TOLERANCES[dtype]
    if error <= tolerance:
        return Result(name, CASE, "pass", error, tolerance)
    return Result(name, CASE, "fail", error, tolerance, line=line, hint=hint)


PROPERTIES = (permute_inputs, permute_slots, call_time_k_t)
