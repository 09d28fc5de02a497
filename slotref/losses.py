"""Losses of the paper: Hungarian-matched Huber (set prediction, E.4) and MSE (object discovery, E.3).

``hungarian_huber_loss(predictions, targets)`` is the official code's
``utils.hungarian_huber_loss(x, y)`` (google-research ``slot_attention``),
called there as ``hungarian_huber_loss(preds, batch["target"])``: pairwise Huber
averaged over the 19 numbers, the Hungarian matching, the matched costs summed
per example, the mean over the batch. Its parts (``pairwise_huber_cost``,
``hungarian_assignment``, ``matched_cost``) are public so that a training
variant can be composed of them (``slotref.training.setpred_loss``).
"""

from __future__ import annotations

import numpy as np
from autograd.tracer import getval
from scipy.optimize import linear_sum_assignment

from slotref import backend
from slotref.backend import xp_of
from slotref.layers import huber


def pairwise_huber_cost(predictions, targets):
    """Huber (delta 1) averaged over the 19 numbers, for every (target, prediction) pair.

    predictions (B, K, P), targets (B, M, P) -> cost (B, M, K), cost[b, i, j] =
    mean_p huber(targets[b, i, p] - predictions[b, j, p]), as the official code
    (Keras Huber with reduction NONE, targets on axis 1).
    """
    b, m, p = targets.shape
    k = predictions.shape[1]
    # reshape, not [:, None]: autograd's VJP of basic indexing makes host arrays.
    diff = targets.reshape(b, m, 1, p) - predictions.reshape(b, 1, k, p)    # (B, M, K, P)
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


def matched_cost(cost, assignment):
    """The matched costs summed per example, mean over the batch: cost (B, M, K), 0/1 assignment (B, M, K) -> ().

    The costs are selected on the device by the assignment matrix (no gather), so the
    gradient flows through the matched pairs only.
    """
    assignment = xp_of(cost).asarray(assignment, dtype=cost.dtype)
    return backend.sum(cost * assignment) / cost.shape[0]


def pad_targets(predictions, targets):
    """Targets (B, M, P) padded with zero rows ("no object") to the K slots of predictions (B, K, P).

    Raises ValueError (naming the shapes) unless both are sets of one batch and feature size, M <= K.
    """
    if predictions.ndim != 3 or targets.ndim != 3 or predictions.shape[0] != targets.shape[0] \
            or predictions.shape[2] != targets.shape[2]:
        raise ValueError(f"hungarian_huber_loss expects predictions (B, K, P) and targets (B, M, P), "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    (b, k, p), m = predictions.shape, targets.shape[1]
    if m > k:
        raise ValueError(f"need at least as many slots as target rows: K = {k} < M = {m}")
    if m == k:
        return targets
    pad = xp_of(predictions).zeros((b, k - m, p), dtype=targets.dtype)
    return xp_of(predictions).concatenate([getval(targets), pad], axis=1)


def hungarian_huber_loss(predictions, targets):
    """Set loss (the official ``hungarian_huber_loss(x, y)``): sum of matched Huber costs per example,
    mean over the batch.

    predictions (B, K, 19), targets (B, M, 19) with M <= K (padded with zero rows to
    K, i.e. "no object", when M < K) -> a scalar. The pairwise costs are computed on
    the device; only the matching runs on the host (scipy's ``linear_sum_assignment``).
    """
    targets = pad_targets(predictions, targets)
    cost = pairwise_huber_cost(predictions, targets)                           # (B, K, K)
    return matched_cost(cost, hungarian_assignment(cost))


def mse(a, b):
    """Mean squared error over every element."""
    d = a - b
    return backend.mean(d * d)
