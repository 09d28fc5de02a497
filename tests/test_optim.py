"""The optimiser as a specification: Adam (Kingma & Ba 2015, Algorithm 1) and
the learning-rate schedule of Table 11 (linear warm-up, then lr * 0.5 ** (step / decay_steps))."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from slotref.backend import tree_leaves, tree_map
from slotref.optim import Adam, Schedule

# --------------------------------------------------------------------------
# Schedule (Table 11).


@pytest.mark.parametrize("warmup, decay", [(1_000, 50_000), (10_000, 100_000)])  # set prediction, discovery
def test_schedule_is_zero_at_step_zero_and_warms_up_linearly(warmup, decay):
    s = Schedule(4e-4, warmup, decay)
    assert s(0) == 0.0
    for step in (1, warmup // 4, warmup // 2, warmup - 1):
        assert s(step) == pytest.approx(4e-4 * step / warmup * 0.5 ** (step / decay), rel=1e-12)
    # Linear: equal increments over the warm-up, up to the (slow) decay factor.
    undecayed = [s(t) / 0.5 ** (t / decay) for t in range(0, warmup + 1, warmup // 10)]
    np.testing.assert_allclose(np.diff(undecayed), 4e-4 / 10, rtol=1e-9)
    assert s(warmup) == pytest.approx(4e-4 * 0.5 ** (warmup / decay), rel=1e-12)


@pytest.mark.parametrize("warmup, decay", [(1_000, 50_000), (10_000, 100_000)])
def test_schedule_halves_every_decay_steps_after_warm_up(warmup, decay):
    s = Schedule(4e-4, warmup, decay)
    assert s(decay) == pytest.approx(0.5 * 4e-4, rel=1e-12)
    assert s(2 * decay) == pytest.approx(0.25 * 4e-4, rel=1e-12)
    for step in (warmup, warmup + 7, 3 * decay):
        assert s(step + decay) / s(step) == pytest.approx(0.5, rel=1e-12)


def test_schedule_defaults_are_the_papers_set_prediction_values():
    s = Schedule()
    assert (s.base_lr, s.warmup_steps, s.decay_steps, s.decay_rate) == (4e-4, 1_000, 50_000, 0.5)


def test_schedule_without_warm_up_starts_at_the_base_rate():
    assert Schedule(1e-3, 0, 100)(0) == 1e-3
    assert Schedule(1e-3, 0, 100)(100) == pytest.approx(5e-4, rel=1e-12)


# --------------------------------------------------------------------------
# Adam.


def literal_adam(theta, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Kingma & Ba (2015), Algorithm 1, line by line, for one scalar parameter.

    ``lr[t - 1]`` is alpha at step t (the schedule changes it between steps).
    Returns (theta_T, m_T, v_T).
    """
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr[t - 1] * m_hat / (math.sqrt(v_hat) + eps)
    return theta, m, v


def make_tree(rng, dtype):
    return {"encoder": {"w": rng.normal(size=(2, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)},
            "convs": [{"w": rng.normal(size=(2, 2, 1, 2)).astype(dtype)}, {"w": rng.normal(size=4).astype(dtype)}],
            "mu": rng.normal(size=(5,)).astype(dtype)}


def test_adam_matches_a_literal_algorithm_1_on_a_nested_tree(rng):
    params = make_tree(rng, np.float64)
    initial = copy.deepcopy(params)
    grad_seq = [make_tree(rng, np.float64) for _ in range(4)]
    grad_seq[2]["mu"][:] = 0.0  # a zero gradient still moves a parameter through its momentum
    lrs = [1e-3, 5e-3, 2e-2, 1e-1]
    adam = Adam()
    state = adam.init(params)
    for g, lr in zip(grad_seq, lrs):
        adam.update(params, g, state, lr)
    assert state["t"] == 4
    got = dict(tree_leaves(params))
    m_got, v_got = dict(tree_leaves(state["m"])), dict(tree_leaves(state["v"]))
    for path, theta0 in tree_leaves(initial):
        gs = [dict(tree_leaves(g))[path] for g in grad_seq]
        for idx in np.ndindex(theta0.shape):
            theta, m, v = literal_adam(float(theta0[idx]), [float(g[idx]) for g in gs], lrs)
            assert got[path][idx] == pytest.approx(theta, rel=1e-10, abs=1e-12), path
            assert m_got[path][idx] == pytest.approx(m, rel=1e-12, abs=1e-15), path
            assert v_got[path][idx] == pytest.approx(v, rel=1e-12, abs=1e-18), path


def test_adam_uses_the_papers_constants():
    adam = Adam()
    assert (adam.beta1, adam.beta2, adam.eps) == (0.9, 0.999, 1e-8)


def test_adam_first_step_moves_each_coordinate_by_about_lr(rng):
    # Algorithm 1's bias correction: the first step is lr * g / (|g| + eps) = lr * sign(g).
    params = {"x": rng.normal(size=10)}
    g = {"x": rng.normal(size=10)}
    before = params["x"].copy()
    adam = Adam()
    adam.update(params, g, adam.init(params), 1e-2)
    np.testing.assert_allclose(before - params["x"], 1e-2 * np.sign(g["x"]), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_updates_in_place_and_preserves_dtype(rng, dtype):
    params = make_tree(rng, dtype)
    adam = Adam()
    state = adam.init(params)
    ids = {path: id(leaf) for path, leaf in tree_leaves(params)}
    state_ids = {path: id(leaf) for path, leaf in tree_leaves(state["m"]) + tree_leaves(state["v"])}
    before = copy.deepcopy(params)
    for _ in range(3):
        out_params, out_state = adam.update(params, make_tree(rng, dtype), state, 1e-3)
    assert out_params is params and out_state is state
    assert {path: id(leaf) for path, leaf in tree_leaves(params)} == ids
    assert {path: id(leaf) for path, leaf in tree_leaves(state["m"]) + tree_leaves(state["v"])} == state_ids
    for (path, leaf), (_, old) in zip(tree_leaves(params), tree_leaves(before)):
        assert leaf.dtype == dtype, path
        assert not np.array_equal(leaf, old), path
    for _, leaf in tree_leaves(state["m"]) + tree_leaves(state["v"]):
        assert leaf.dtype == dtype


def test_adam_float32_agrees_with_float64(rng):
    p64 = make_tree(rng, np.float64)
    p32 = tree_map(lambda a: a.astype(np.float32), p64)
    adam = Adam()
    s64, s32 = adam.init(p64), adam.init(p32)
    for _ in range(3):
        g = make_tree(rng, np.float64)
        adam.update(p64, g, s64, 1e-3)
        adam.update(p32, tree_map(lambda a: a.astype(np.float32), g), s32, 1e-3)
    for (path, a), (_, b) in zip(tree_leaves(p32), tree_leaves(p64)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
