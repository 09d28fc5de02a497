"""The optimiser as a specification: Adam (Kingma & Ba 2015, Algorithm 1) and
the learning-rate schedule of Table 11 (linear warm-up, then lr * 0.5 ** (step / decay_steps))."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import standin
from slotref.backend import host_rng, tree_leaves, tree_map
from slotref.flat import FlatTree
from slotref.models import init_model, setpred_config
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


def make_tree(rng, dtype=np.float64):
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


# --------------------------------------------------------------------------
# Adam over flat buffers: the same arithmetic per element, so the same bits.

def quadratic_grads(params, targets):
    """Gradient of sum((p - target)^2 / 2 + p^4 / 4): a simple training step on a real tree."""
    if isinstance(params, dict):
        return {k: quadratic_grads(v, targets[k]) for k, v in params.items()}
    if isinstance(params, list):
        return [quadratic_grads(p, t) for p, t in zip(params, targets)]
    return (params - targets) + params * params * params


def small_model(dtype):
    config = setpred_config(16, encoder_channels=8, mlp_size=8, head_hidden=8)
    return tree_map(lambda a: a.astype(dtype), init_model(host_rng(0, 0), config))


def assert_trees_equal(a, b):
    for (path, x), (_, y) in zip(tree_leaves(a), tree_leaves(b), strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(x, y, err_msg=path)


def run_per_leaf(params, targets, steps, schedule, start=0, state=None):
    adam = Adam()
    state = state or adam.init(params)
    for step in range(start, start + steps):
        adam.update(params, quadratic_grads(params, targets), state, schedule(step))
    return params, state


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_flat_adam_equals_per_leaf_adam_bit_for_bit_on_a_model(dtype):
    schedule = Schedule(1e-2, 3, 10)          # warm-up and decay both act within the run
    init = small_model(dtype)
    targets = tree_map(lambda a: np.random.default_rng(a.size).normal(size=a.shape).astype(dtype), init)
    per_leaf, leaf_state = run_per_leaf(copy.deepcopy(init), targets, 12, schedule)
    adam = Adam()
    flat = FlatTree.from_tree(init)
    state = adam.init(flat)
    for step in range(12):
        adam.update(flat, quadratic_grads(flat.tree, targets), state, schedule(step))
    assert state["t"] == leaf_state["t"] == 12
    assert_trees_equal(flat.tree, per_leaf)
    assert_trees_equal(state["m"], leaf_state["m"])
    assert_trees_equal(state["v"], leaf_state["v"])
    assert not any(np.array_equal(a, b) for (_, a), (_, b) in zip(tree_leaves(flat.tree), tree_leaves(init))
                   if np.any(b != 0))


def test_flat_adam_matches_a_literal_algorithm_1(rng):
    params = make_tree(rng, np.float64)
    initial = copy.deepcopy(params)
    grad_seq = [make_tree(rng, np.float64) for _ in range(3)]
    lrs = [1e-3, 5e-3, 2e-2]
    adam = Adam()
    flat = FlatTree.from_tree(params)
    state = adam.init(flat)
    for g, lr in zip(grad_seq, lrs):
        adam.update(flat, g, state, lr)
    for (path, theta0), (_, got) in zip(tree_leaves(initial), tree_leaves(flat.tree)):
        gs = [dict(tree_leaves(g))[path] for g in grad_seq]
        for idx in np.ndindex(theta0.shape):
            theta, _, _ = literal_adam(float(theta0[idx]), [float(g[idx]) for g in gs], lrs)
            assert got[idx] == pytest.approx(theta, rel=1e-10, abs=1e-12), path


def test_flat_adam_updates_the_buffers_in_place_and_the_tree_sees_it(rng):
    adam = Adam()
    flat = FlatTree.from_tree(make_tree(rng, np.float32))
    state = adam.init(flat)
    buffers = {k: id(v) for k, v in flat.buffers.items()}
    moments = {k: id(v) for k, v in state["flat"]["m"].buffers.items()}
    before = copy.deepcopy(flat.tree)
    out_params, out_state = adam.update(flat, make_tree(rng, np.float32), state, 1e-3)
    assert out_params is flat and out_state is state
    assert {k: id(v) for k, v in flat.buffers.items()} == buffers
    assert {k: id(v) for k, v in state["flat"]["m"].buffers.items()} == moments
    for (path, leaf), (_, old) in zip(tree_leaves(flat.tree), tree_leaves(before)):
        assert leaf.dtype == np.float32 and not np.array_equal(leaf, old), path
    for _, leaf in tree_leaves(state["m"]):
        assert np.shares_memory(leaf, state["flat"]["m"].buffers["float32"])


def test_a_flat_gradient_buffer_gives_the_same_step_as_a_gradient_tree(rng):
    adam = Adam()
    a = FlatTree.from_tree(make_tree(rng))
    b = FlatTree.from_tree(a.tree)
    sa, sb = adam.init(a), adam.init(b)
    for _ in range(3):
        g = make_tree(rng)
        adam.update(a, g, sa, 1e-2)
        adam.update(b, b.layout.flatten(g), sb, 1e-2)   # e.g. an allreduced buffer
    np.testing.assert_array_equal(a.buffers["float64"], b.buffers["float64"])


def test_a_gradient_of_another_layout_is_refused(rng):
    adam = Adam()
    flat = FlatTree.from_tree(make_tree(rng))
    other = FlatTree.from_tree({"x": np.zeros(22)})
    with pytest.raises(ValueError, match="layout"):
        adam.update(flat, other, adam.init(flat), 1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_resuming_flat_adam_from_checkpointed_trees_is_bit_exact(dtype):
    """Save (params and moments as host trees, as a checkpoint stores them), rebuild, continue:
    the same bits as an uninterrupted per-leaf run."""
    schedule = Schedule(1e-2, 2, 8)
    init = small_model(dtype)
    targets = tree_map(lambda a: np.random.default_rng(a.size + 1).normal(size=a.shape).astype(dtype), init)
    reference, ref_state = run_per_leaf(copy.deepcopy(init), targets, 10, schedule)

    adam = Adam()
    flat = FlatTree.from_tree(init)
    state = adam.init(flat)
    for step in range(6):
        adam.update(flat, quadratic_grads(flat.tree, targets), state, schedule(step))
    saved_state = Adam.to_tree(state)
    assert set(saved_state) == {"m", "v", "t"}
    checkpoint = {"params": tree_map(np.array, flat.to_tree()), "m": tree_map(np.array, saved_state["m"]),
                  "v": tree_map(np.array, saved_state["v"]), "t": saved_state["t"]}
    del flat, state

    resumed = FlatTree.from_tree(checkpoint["params"])
    state = Adam.from_tree({"m": checkpoint["m"], "v": checkpoint["v"], "t": checkpoint["t"]}, resumed)
    for step in range(6, 10):
        adam.update(resumed, quadratic_grads(resumed.tree, targets), state, schedule(step))
    assert state["t"] == 10
    assert_trees_equal(resumed.tree, reference)
    assert_trees_equal(state["m"], ref_state["m"])
    assert_trees_equal(state["v"], ref_state["v"])


def test_a_per_leaf_state_moves_into_flat_buffers_on_the_first_flat_step(rng):
    params = make_tree(rng)
    adam = Adam()
    leaf_state = adam.init(params)
    adam.update(params, make_tree(rng), leaf_state, 1e-2)
    reference, ref_state = copy.deepcopy(params), copy.deepcopy(leaf_state)
    g = make_tree(rng)
    adam.update(reference, g, ref_state, 1e-2)
    flat = FlatTree.from_tree(params)
    adam.update(flat, g, leaf_state, 1e-2)
    assert "flat" in leaf_state and leaf_state["t"] == 2
    assert_trees_equal(flat.tree, reference)
    assert_trees_equal(leaf_state["m"], ref_state["m"])


def test_flat_adam_runs_on_a_device_without_host_arrays(rng):
    be = standin.standin_backend(np.float32)
    params = be.tree_asarray(make_tree(rng))
    grads = be.tree_asarray(make_tree(rng))
    host = tree_map(lambda a: a.get(), params)
    host_state = Adam().init(host)
    Adam().update(host, tree_map(lambda a: a.get(), grads), host_state, 1e-3)
    adam = Adam()
    flat = FlatTree.from_tree(params)
    state = adam.init(flat)
    with standin.watch() as stats:
        adam.update(flat, grads, state, 1e-3)
    assert not (stats.conversions or stats.host_operands or stats.explicit_transfers
                or stats.float64_created), stats.report()
    for (path, a), (_, b) in zip(tree_leaves(flat.tree), tree_leaves(host)):
        np.testing.assert_array_equal(a.get(), b, err_msg=path)
