"""The losses as a specification.

* Hungarian Huber loss (``docs/spec.md``: the set-prediction target): the sum of the
  matched pairwise costs under the best one-to-one matching, mean over the
  batch. Checked against a brute-force minimum over every permutation, for
  invariance to the order of targets and of predictions (Hypothesis), for
  zero-padding of the targets when M < K, and its gradient against finite
  differences.
* The pairwise cost: Huber (delta 1) averaged over the 19 numbers, as a
  literal loop.
* MSE as a literal loop.

Float64 on the CPU; plain Python helpers below are independent of
``slotref.layers``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

from slotref.losses import (hungarian_assignment, hungarian_huber_loss, matched_cost, mse, pad_targets,
                            pairwise_huber_cost)

P = 19


# --------------------------------------------------------------------------
# Literal references.

def literal_huber(x: float, delta: float = 1.0) -> float:
    """Huber's loss of one residual: x^2/2 for |x| <= delta, delta (|x| - delta/2) outside."""
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def literal_cost(prediction, target, coord_weight: float = 1.0) -> float:
    """Huber (delta 1) of each of the 19 numbers, averaged; the first three (x, y, z) residuals times
    ``coord_weight``."""
    weights = [coord_weight] * 3 + [1.0] * (len(target) - 3)
    return sum(literal_huber(w * (float(t) - float(p))) for w, t, p in zip(weights, target, prediction)) / len(target)


def brute_force_loss(predictions, targets, coord_weight: float = 1.0) -> float:
    """min over all K! assignments of the summed matched costs, mean over the batch; M < K padded."""
    b, k, p = predictions.shape
    padded = np.zeros((b, k, p))
    padded[:, :targets.shape[1]] = targets
    total = 0.0
    for i in range(b):
        costs = [[literal_cost(predictions[i, j], padded[i, t], coord_weight) for j in range(k)]
                 for t in range(k)]
        total += min(sum(costs[t][perm[t]] for t in range(k)) for perm in itertools.permutations(range(k)))
    return total / b


def random_sets(rng, b, k, m):
    """Predictions in (0, 1) as a sigmoid gives them, targets like the 19 numbers of ``slotref.paper``."""
    predictions = rng.uniform(0.0, 1.0, size=(b, k, P))
    targets = rng.uniform(0.0, 1.0, size=(b, m, P))
    return predictions, targets


# --------------------------------------------------------------------------
# Pairwise cost.

def test_pairwise_cost_is_the_mean_huber_of_the_19_numbers(rng):
    predictions = rng.normal(0.0, 1.5, size=(2, 3, P))  # residuals on both sides of delta = 1
    targets = rng.normal(0.0, 1.5, size=(2, 4, P))
    cost = pairwise_huber_cost(predictions, targets)
    assert cost.shape == (2, 4, 3)  # (B, M, K): targets on axis 1, as the official code
    for b in range(2):
        for i in range(4):
            for j in range(3):
                assert cost[b, i, j] == pytest.approx(literal_cost(predictions[b, j], targets[b, i]), rel=1e-12)


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    predictions = np.zeros((1, 1, P))
    targets = np.zeros((1, 1, P))
    targets[0, 0, 0] = 0.5   # 0.125
    targets[0, 0, 1] = -3.0  # 2.5
    cost = pairwise_huber_cost(predictions, targets)
    assert cost[0, 0, 0] == pytest.approx((0.125 + 2.5) / P, rel=1e-12)


# --------------------------------------------------------------------------
# Hungarian matching and the loss.

@pytest.mark.parametrize("k, m", [(1, 1), (3, 3), (4, 2), (5, 5), (5, 1)])
def test_loss_equals_brute_force_minimum_over_permutations(rng, k, m):
    predictions, targets = random_sets(rng, 3, k, m)
    assert float(hungarian_huber_loss(predictions, targets)) == pytest.approx(
        brute_force_loss(predictions, targets), rel=1e-12)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), data=st.data())
def test_loss_equals_brute_force_minimum_property(seed, k, data):
    m = data.draw(st.integers(1, k))
    predictions, targets = random_sets(np.random.default_rng(seed), 2, k, m)
    assert float(hungarian_huber_loss(predictions, targets)) == pytest.approx(
        brute_force_loss(predictions, targets), rel=1e-12)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), data=st.data())
def test_loss_is_invariant_to_the_order_of_targets_and_of_predictions(seed, k, data):
    m = data.draw(st.integers(1, k))
    target_perm = data.draw(st.permutations(range(m)))
    prediction_perm = data.draw(st.permutations(range(k)))
    predictions, targets = random_sets(np.random.default_rng(seed), 3, k, m)
    loss = float(hungarian_huber_loss(predictions, targets))
    assert float(hungarian_huber_loss(predictions, targets[:, list(target_perm)])) == pytest.approx(loss, rel=1e-12)
    assert float(hungarian_huber_loss(predictions[:, list(prediction_perm)], targets)) == pytest.approx(
        loss, rel=1e-12)


def test_perfect_predictions_in_any_order_give_zero_loss(rng):
    _, targets = random_sets(rng, 2, 4, 4)
    predictions = targets[:, [2, 0, 3, 1]]
    assert float(hungarian_huber_loss(predictions, targets)) == 0.0


def test_targets_are_padded_with_zero_rows_when_fewer_than_slots(rng):
    predictions, targets = random_sets(rng, 2, 5, 2)
    padded = np.concatenate([targets, np.zeros((2, 3, P))], axis=1)
    assert float(hungarian_huber_loss(predictions, targets)) == pytest.approx(
        float(hungarian_huber_loss(predictions, padded)), rel=1e-12)
    np.testing.assert_array_equal(pad_targets(predictions, targets), padded)
    assignment = hungarian_assignment(pairwise_huber_cost(predictions, padded))
    assert assignment.shape == (2, 5, 5)
    # A full one-to-one matching: one 1 in every row and every column.
    np.testing.assert_array_equal(assignment.sum(axis=1), 1.0)
    np.testing.assert_array_equal(assignment.sum(axis=2), 1.0)


def test_hungarian_assignment_is_a_minimal_permutation_matrix(rng):
    cost = rng.uniform(size=(3, 4, 4))
    a = hungarian_assignment(cost)
    assert a.shape == (3, 4, 4)
    for b in range(3):
        best = min(sum(cost[b, t, perm[t]] for t in range(4)) for perm in itertools.permutations(range(4)))
        assert (cost[b] * a[b]).sum() == pytest.approx(best, rel=1e-12)
        np.testing.assert_array_equal(np.sort(np.argmax(a[b], axis=1)), np.arange(4))


def test_loss_is_the_matched_cost_of_the_minimal_assignment(rng):
    predictions, targets = random_sets(rng, 3, 4, 4)
    cost = pairwise_huber_cost(predictions, targets)
    assignment = hungarian_assignment(cost)
    assert float(matched_cost(cost, assignment)) == float(hungarian_huber_loss(predictions, targets))
    assert float(matched_cost(cost, assignment)) == pytest.approx((cost * assignment).sum() / 3, rel=1e-12)


def test_loss_has_the_official_signature():
    import inspect

    # utils.hungarian_huber_loss(x, y) of the official code: two sets, nothing else.
    assert len(inspect.signature(hungarian_huber_loss).parameters) == 2


def test_loss_is_mean_over_the_batch(rng):
    predictions, targets = random_sets(rng, 3, 3, 2)
    each = [float(hungarian_huber_loss(predictions[i:i + 1], targets[i:i + 1])) for i in range(3)]
    assert float(hungarian_huber_loss(predictions, targets)) == pytest.approx(np.mean(each), rel=1e-12)


def test_loss_keeps_float32(rng):
    predictions, targets = random_sets(rng, 2, 3, 3)
    loss = hungarian_huber_loss(predictions.astype(np.float32), targets.astype(np.float32))
    assert np.asarray(loss).dtype == np.float32


@pytest.mark.parametrize("k, m", [(3, 3), (4, 2)])
def test_loss_gradient_matches_finite_differences(rng, k, m):
    # Random inputs have a unique optimal matching with a margin far above
    # check_grads' step, so the matching is constant around the point (no ties).
    predictions, targets = random_sets(rng, 2, k, m)
    check_grads(lambda p: hungarian_huber_loss(p, targets), modes=["rev"], order=1)(predictions)


def test_gradient_flows_only_through_matched_pairs(rng):
    from autograd import grad

    predictions, targets = random_sets(rng, 1, 3, 3)
    assignment = hungarian_assignment(pairwise_huber_cost(predictions, targets))
    g = grad(lambda p: hungarian_huber_loss(p, targets))(predictions)
    matched_target = np.argmax(assignment[0], axis=0)  # slot j -> its target row
    expected = np.stack([np.clip(predictions[0, j] - targets[0, matched_target[j]], -1, 1) / P
                         for j in range(3)])
    np.testing.assert_allclose(g[0], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("pred_shape, target_shape", [
    ((2, 3, P), (2, 3)),          # targets not a set
    ((3, P), (3, P)),             # no batch axis
    ((2, 3, P), (3, 3, P)),       # batch sizes differ
    ((2, 3, P), (2, 3, P - 1)),   # feature sizes differ
])
def test_bad_shapes_raise_value_error_naming_them(pred_shape, target_shape):
    with pytest.raises(ValueError) as err:
        hungarian_huber_loss(np.zeros(pred_shape), np.zeros(target_shape))
    assert str(pred_shape) in str(err.value) and str(target_shape) in str(err.value)


def test_fewer_slots_than_targets_raises_value_error():
    with pytest.raises(ValueError, match=r"K = 3 < M = 4"):
        hungarian_huber_loss(np.zeros((2, 3, P)), np.zeros((2, 4, P)))


# --------------------------------------------------------------------------
# MSE.

def test_mse_is_the_mean_of_squared_differences(rng):
    a = rng.normal(size=(2, 3, 4, 3))
    b = rng.normal(size=(2, 3, 4, 3))
    literal = sum((x - y) ** 2 for x, y in zip(a.ravel().tolist(), b.ravel().tolist())) / a.size
    assert float(mse(a, b)) == pytest.approx(literal, rel=1e-12)


def test_mse_keeps_float32_and_has_the_right_gradient(rng):
    a = rng.normal(size=(2, 5, 3))
    b = rng.normal(size=(2, 5, 3))
    assert np.asarray(mse(a.astype(np.float32), b.astype(np.float32))).dtype == np.float32
    check_grads(lambda x: mse(x, b), modes=["rev"], order=1)(a)


# --------------------------------------------------------------------------
# The device path: pairwise costs and the gathered matched costs stay on the
# device; only the 0/1 assignment crosses back (one explicit transfer).

try:
    from standin import assert_same_on_standin  # tests/ is on sys.path, as for test_standin_device.py
except ImportError:  # the stand-in device is optional
    assert_same_on_standin = None


@pytest.mark.skipif(assert_same_on_standin is None, reason="tests/standin.py not available")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_gradient_on_the_standin_device_match_numpy(rng, dtype):
    predictions, targets = random_sets(rng, 2, 4, 3)
    assert_same_on_standin(hungarian_huber_loss, predictions, targets, dtype=dtype,
                           allow_explicit_transfers=True)
    assert_same_on_standin(mse, predictions, predictions[:, ::-1].copy(), dtype=dtype)


def test_non_finite_predictions_give_a_non_finite_loss_not_a_matching_error(rng):
    # A diverged model must reach the training loop's NaN check (which names the
    # step), not stop inside scipy's matching with "invalid numeric entries".
    predictions, targets = random_sets(rng, 2, 3, 2)
    predictions[0, 1, 4] = np.nan
    predictions[1, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(float(hungarian_huber_loss(predictions, targets)))
