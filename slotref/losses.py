"""Losses: Hungarian-matched Huber (set prediction) and MSE (object discovery)."""

from __future__ import annotations

import numpy as np
from autograd.tracer import getval
from scipy.optimize import linear_sum_assignment

from slotref import backend
from slotref.backend import xp_of
from slotref.layers import huber
from slotref.paper import COORDS


def pairwise_huber_cost(predictions, targets, coord_weight: float = 1.0):
    """Huber (delta 1) averaged over the 19 numbers, for every (target, prediction) pair.

    predictions (B, K, P), targets (B, M, P) -> cost (B, M, K), cost[b, i, j] =
    mean_p huber(targets[b, i, p] - predictions[b, j, p]), as the official code
    (Keras Huber with reduction NONE, targets on axis 1).

    coord_weight w multiplies the differences of the three coordinates before
    the Huber function (the paper: 1). The targets map CLEVR's floor, [-3, 3],
    to [0, 1]; a scene whose objects lie in [-3/w, 3/w] (a camera zoomed w
    times) then has the coordinates' share of the loss that the paper's scenes
    have, as if its own extent were mapped to [0, 1].
    """
    b, m, p = targets.shape
    k = predictions.shape[1]
    # reshape, not [:, None]: autograd's VJP of basic indexing makes host arrays.
    diff = targets.reshape(b, m, 1, p) - predictions.reshape(b, 1, k, p)    # (B, M, K, P)
    if coord_weight != 1.0:
        weight = np.ones(p, dtype=np.float64)
        weight[COORDS] = coord_weight
        diff = diff * xp_of(diff).asarray(weight, dtype=diff.dtype)
    return backend.mean(huber(diff, 1.0), axis=-1)                           # (B, M, K)


def hungarian_assignment(cost) -> np.ndarray:
    """One-hot assignment (B, M, K) minimising each example's total cost, on the host."""
    cost = backend.to_host(getval(cost))
    # NaN/inf costs (a diverged model): any matching will do, the loss stays non-finite for
    # the training loop to report (scipy would raise on them instead).
    cost = np.where(np.isfinite(cost), cost, 0.0)
    assignment = np.zeros(cost.shape, dtype=np.float32)
    for b in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[b])
        assignment[b, rows, cols] = 1.0
    return assignment


def hungarian_huber_loss(predictions, targets, return_assignment: bool = False, coord_weight: float = 1.0,
                         matching_coord_weight: float | None = None):
    """Set loss: sum of matched Huber costs per example, mean over the batch.

    The pairwise costs are computed on the device; only the matching runs on
    the host (scipy's linear_sum_assignment); the matched costs are selected on
    the device by a 0/1 assignment matrix, so the gradient flows through them.
    predictions (B, K, 19), targets (B, M, 19) with M <= K (targets padded with
    zero rows to K, i.e. "no object", when M < K). ``coord_weight``: see
    ``pairwise_huber_cost`` (the paper: 1). ``matching_coord_weight``: the
    coordinate weight of the cost the matching minimises (None: ``coord_weight``);
    1 pairs slots and objects as the paper's loss would, and ``coord_weight``
    then changes what each pair is trained towards, not which pairs are made.
    """
    _check_sets(predictions, targets)
    xp = xp_of(predictions)
    b, k, p = predictions.shape
    if targets.shape[1] < k:
        pad = xp.zeros((b, k - targets.shape[1], p), dtype=targets.dtype)
        targets = xp.concatenate([getval(targets), pad], axis=1)
    cost = pairwise_huber_cost(predictions, targets, coord_weight)                       # (B, K, K)
    if matching_coord_weight is None or matching_coord_weight == coord_weight:
        matching_cost = cost
    else:
        matching_cost = pairwise_huber_cost(getval(predictions), targets, matching_coord_weight)
    assignment = xp.asarray(hungarian_assignment(matching_cost), dtype=cost.dtype)   # (B, K, K)
    loss = backend.sum(cost * assignment) / b
    return (loss, assignment) if return_assignment else loss


def mse(a, b):
    """Mean squared error over every element."""
    d = a - b
    return backend.mean(d * d)


def _check_sets(predictions, targets):
    if predictions.ndim != 3 or targets.ndim != 3 or predictions.shape[0] != targets.shape[0] \
            or predictions.shape[2] != targets.shape[2]:
        raise ValueError(f"hungarian_huber_loss expects predictions (B, K, P) and targets (B, M, P), "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    if targets.shape[1] > predictions.shape[1]:
        raise ValueError(f"need at least as many slots as target rows: K = {predictions.shape[1]} "
                         f"< M = {targets.shape[1]}")
