"""The set-prediction loss of training (``slotref.training.setpred_loss``): the paper's loss with the
coordinates weighted, in the loss and in the matching's cost.

* With unit weights it is the paper's loss (``losses.hungarian_huber_loss``), bit for bit.
* ``coord_weight`` multiplies the three coordinate residuals (a literal loop), and equals the paper's
  loss of a scene whose coordinates were normalised to a zoomed extent.
* ``matching_coord_weight`` chooses the pairs and ``coord_weight`` costs them (every permutation tried).

The literal references are ``tests/spec/test_losses.py``'s.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

from slotref.losses import hungarian_huber_loss, pairwise_huber_cost
from slotref.training.setpred_loss import setpred_loss, weighted_pairwise_cost
from tests.spec.test_losses import P, brute_force_loss, literal_cost, random_sets


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), data=st.data())
def test_unit_weights_give_the_papers_loss_and_gradient(seed, k, data):
    m = data.draw(st.integers(1, k))
    predictions, targets = random_sets(np.random.default_rng(seed), 2, k, m)
    for options in ({}, {"coord_weight": 1.0}, {"coord_weight": 1.0, "matching_coord_weight": 1.0}):
        assert float(setpred_loss(predictions, targets, **options)) == float(hungarian_huber_loss(predictions, targets))
        np.testing.assert_array_equal(grad(lambda p: setpred_loss(p, targets, **options))(predictions),
                                      grad(lambda p: hungarian_huber_loss(p, targets))(predictions))
    loss, _ = setpred_loss(predictions, targets, return_assignment=True)
    assert float(loss) == float(hungarian_huber_loss(predictions, targets))


def test_unit_weights_give_the_papers_pairwise_cost(rng):
    predictions, targets = random_sets(rng, 2, 3, 2)
    np.testing.assert_array_equal(weighted_pairwise_cost(predictions, targets, 1.0),
                                  pairwise_huber_cost(predictions, targets))


@pytest.mark.parametrize("coord_weight", [0.5, 3.0])
def test_coord_weight_multiplies_the_three_coordinate_residuals(rng, coord_weight):
    predictions = rng.normal(0.0, 0.7, size=(2, 3, P))  # weighted residuals on both sides of delta = 1
    targets = rng.normal(0.0, 0.7, size=(2, 3, P))
    cost = weighted_pairwise_cost(predictions, targets, coord_weight)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert cost[b, i, j] == pytest.approx(
                    literal_cost(predictions[b, j], targets[b, i], coord_weight), rel=1e-12)
    assert not np.allclose(cost, pairwise_huber_cost(predictions, targets))


def test_coord_weight_is_the_loss_of_coordinates_normalised_to_a_zoomed_extent(rng):
    # Objects in [-3/w, 3/w] (a camera zoomed w times): coordinates mapped from that
    # extent to [0, 1] instead of from [-3, 3] are w times further apart.
    from slotref.paper import COORDS, coords_to_unit

    w = 3.0
    world_pred, world_true = rng.uniform(-3 / w, 3 / w, size=(2, 2, 4, 3))
    predictions, targets = random_sets(rng, 2, 4, 4)
    predictions[..., COORDS], targets[..., COORDS] = coords_to_unit(world_pred), coords_to_unit(world_true)
    zoomed_pred, zoomed_true = predictions.copy(), targets.copy()
    zoomed_pred[..., COORDS], zoomed_true[..., COORDS] = coords_to_unit(w * world_pred), coords_to_unit(w * world_true)
    assert float(setpred_loss(predictions, targets, coord_weight=w)) == pytest.approx(
        float(setpred_loss(zoomed_pred, zoomed_true)), rel=1e-12)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), coord_weight=st.floats(0.25, 8.0), data=st.data())
def test_weighted_loss_equals_brute_force_minimum_property(seed, k, coord_weight, data):
    m = data.draw(st.integers(1, k))
    predictions, targets = random_sets(np.random.default_rng(seed), 2, k, m)
    assert float(setpred_loss(predictions, targets, coord_weight=coord_weight)) == pytest.approx(
        brute_force_loss(predictions, targets, coord_weight), rel=1e-10)


def test_weighted_loss_gradient_matches_finite_differences(rng):
    predictions, targets = random_sets(rng, 2, 3, 2)
    check_grads(lambda p: setpred_loss(p, targets, coord_weight=3.0), modes=["rev"], order=1)(predictions)


def brute_force_matched_cost(predictions, targets, loss_weight: float, matching_weight: float) -> float:
    """The pairs that minimise the ``matching_weight`` cost, each costed with ``loss_weight``; mean over the
    batch. All K! assignments are tried."""
    b, k, p = predictions.shape
    padded = np.zeros((b, k, p))
    padded[:, :targets.shape[1]] = targets
    total = 0.0
    for i in range(b):
        def cost(weight, perm):
            return sum(literal_cost(predictions[i, perm[t]], padded[i, t], weight) for t in range(k))
        best = min(itertools.permutations(range(k)), key=lambda perm: cost(matching_weight, perm))
        total += cost(loss_weight, best)
    return total / b


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), data=st.data())
def test_matching_coord_weight_chooses_the_pairs_and_coord_weight_costs_them_property(seed, k, data):
    m = data.draw(st.integers(1, k))
    rng = np.random.default_rng(seed)
    predictions, targets = random_sets(rng, 2, k, m)
    predictions[..., :3] *= 6.0   # positions far off: the weighted and unweighted matchings often differ
    loss = float(setpred_loss(predictions, targets, coord_weight=10.0, matching_coord_weight=1.0))
    assert loss == pytest.approx(brute_force_matched_cost(predictions, targets, 10.0, 1.0), rel=1e-10)


def test_matching_coord_weight_changes_the_pairs_not_their_costs():
    # Each slot has one object's attributes at the other object's position.
    # The paper's cost pairs slots and objects by attributes, a cost with the
    # coordinates weighted 10 by position.
    targets = np.full((1, 2, P), 0.2)
    targets[0, 1] = 0.8
    targets[0, 0, :3], targets[0, 1, :3] = 0.0, 1.0
    predictions = targets.copy()
    predictions[0, :, :3] = targets[0, ::-1, :3]
    _, weighted = setpred_loss(predictions, targets, return_assignment=True, coord_weight=10.0)
    _, paper = setpred_loss(predictions, targets, return_assignment=True, coord_weight=10.0,
                            matching_coord_weight=1.0)
    assert weighted[0].tolist() == [[0.0, 1.0], [1.0, 0.0]] and paper[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert np.array_equal(paper, setpred_loss(predictions, targets, return_assignment=True)[1])
    loss = float(setpred_loss(predictions, targets, coord_weight=10.0, matching_coord_weight=1.0))
    assert loss == pytest.approx(sum(literal_cost(predictions[0, j], targets[0, j], 10.0) for j in range(2)),
                                 rel=1e-12)


def test_loss_with_a_matching_weight_has_the_gradient_of_its_matched_costs(rng):
    predictions, targets = random_sets(rng, 2, 3, 2)
    check_grads(lambda p: setpred_loss(p, targets, coord_weight=3.0, matching_coord_weight=1.0),
                modes=["rev"], order=1)(predictions)


