"""``train --grad last``: implicit differentiation of Slot Attention in its first-order form
(``slotref.training.implicit``). The forward values are the paper's; the gradient is that of the last
iteration with the slots entering it held constant, checked against finite differences of that
truncated objective; Proposition 1 still holds, for the values and for the gradient."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from slotref.backend import tree_leaves
from slotref.slot_attention import sample_initial_slots, slot_attention
from slotref.training.implicit import slot_attention_last_grad, slot_attention_module
from tests.spec.test_slot_attention import SWITCHES, case_problem, cases, make_config, make_problem


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("t", [0, 1, 2, 4])
def test_forward_values_are_the_papers_bit_for_bit(switch, t):
    config = make_config(switch, 3, 4, 3)
    params, inputs, slots = make_problem(config, 2, 5, 3, seed=t)
    want_slots, want_attn = slot_attention(params, inputs, slots, t, config, return_attention=True)
    got_slots, got_attn = slot_attention_last_grad(params, inputs, slots, t, config, return_attention=True)
    np.testing.assert_array_equal(got_slots, want_slots)
    np.testing.assert_array_equal(got_attn, want_attn)
    np.testing.assert_array_equal(slot_attention_last_grad(params, inputs, slots, t, config), want_slots)


def weighted(out, weights):
    return anp.sum(anp.tanh(out) * weights)


@pytest.mark.parametrize("switch", SWITCHES)
def test_gradient_is_the_truncated_objectives_by_finite_differences(switch):
    """d/d(params, inputs) of L(f(params, inputs, s)) with s = the slots after T - 1 iterations held fixed."""
    config = make_config(switch, 3, 4, 3)
    params, inputs, slots = make_problem(config, 2, 5, 3, seed=7)
    weights = np.random.default_rng(1).standard_normal(slots.shape)
    entering = slot_attention(params, inputs, slots, 2, config)       # the constant of the last iteration (T = 3)

    def truncated(tree):
        return weighted(slot_attention(tree["params"], tree["inputs"], entering, 1, config), weights)

    def implicit(tree):
        return weighted(slot_attention_last_grad(tree["params"], tree["inputs"], slots, 3, config), weights)

    tree = {"params": params, "inputs": inputs}
    check_grads(truncated, modes=["rev"], order=1)(tree)              # the truncated objective, by finite differences
    got, want = grad(implicit)(tree), grad(truncated)(tree)
    for (name, g), (_, w) in zip(tree_leaves(got), tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=name)
    assert np.isclose(implicit(tree), truncated(tree), rtol=1e-12)


def test_the_slot_initialisation_gets_no_gradient_and_all_iterations_differ_from_last():
    config = make_config("paper default", 3, 4, 3)
    params, inputs, _ = make_problem(config, 2, 5, 3, seed=3)
    noise = np.random.default_rng(2).standard_normal((2, 3, 4))

    def loss(p, module, t):
        return anp.sum(anp.tanh(module(p, inputs, sample_initial_slots(p, noise), t, config)))

    last = grad(loss)(params, slot_attention_module("last"), 3)
    full = grad(loss)(params, slot_attention_module("all"), 3)
    assert not np.any(last["slots_mu"]) and not np.any(last["slots_log_sigma"])
    assert np.abs(full["slots_mu"]).max() > 1e-6
    assert max(np.abs(a - b).max() for (_, a), (_, b) in zip(tree_leaves(last), tree_leaves(full))) > 1e-6
    # With one iteration there is nothing to truncate: the two gradients agree on every parameter but the
    # initialisation's.
    one_last, one_full = grad(loss)(params, slot_attention_module("last"), 1), grad(loss)(params, slot_attention_module("all"), 1)
    for (name, a), (_, b) in zip(tree_leaves(one_last), tree_leaves(one_full)):
        if not name.startswith("slots_"):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("switch", SWITCHES)
@settings(deadline=None)
@given(case=cases(num_iterations=st.integers(1, 4)))
def test_proposition_1_holds_for_values_and_gradients(switch, case):
    """SA(pi_i . x, pi_s . s) = pi_s . SA(x, s); the input gradient of a slot-symmetric loss permutes with pi_i."""
    config, params, inputs, slots = case_problem(switch, case)
    t, pi, ps = case.num_iterations, case.perm_inputs, case.perm_slots
    out = slot_attention_last_grad(params, inputs, slots, t, config)
    permuted = slot_attention_last_grad(params, inputs[:, pi], slots[:, ps], t, config)
    scale = max(1.0, float(np.abs(out).max()))
    np.testing.assert_allclose(permuted, out[:, ps], rtol=1e-9, atol=1e-9 * scale)

    def loss(x, s):
        return anp.sum(anp.tanh(slot_attention_last_grad(params, x, s, t, config)) ** 2)

    g = grad(loss)(inputs, slots)
    g_permuted = grad(loss)(inputs[:, pi], slots[:, ps])
    np.testing.assert_allclose(g_permuted, g[:, pi], rtol=1e-7, atol=1e-9 * max(1.0, float(np.abs(g).max())))


def test_unknown_gradient_option_is_refused():
    with pytest.raises(ValueError, match="grad must be one of"):
        slot_attention_module("first")


@pytest.mark.parametrize("task", ["setpred", "discovery"])
def test_train_grad_last_trains_both_tasks_and_records_the_option(tmp_path, task):
    import json

    from tests.tool.test_commands import invoke

    out = tmp_path / "run"
    result = invoke("train", "--task", task, "--fast-dev-run", "--grad", "last", "--data-dir", tmp_path / "data",
                    "--out", out, "--quiet", "--procs", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["grad"] == "last"
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(loss is not None and np.isfinite(loss) for loss in losses)
