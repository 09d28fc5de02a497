"""The set-prediction loss training minimises: the paper's, with the coordinates optionally weighted.

Composed of the paper's parts in ``slotref.losses``; with unit weights it is
``losses.hungarian_huber_loss`` itself.

``coord_weight`` w multiplies the three coordinates of predictions and targets
before the pairwise Huber cost (the paper: 1), so it multiplies their
residuals. The targets map CLEVR's floor, [-3, 3], to [0, 1]; a scene whose
objects lie in [-3/w, 3/w] (a camera zoomed w times) then has the coordinates'
share of the loss that the paper's scenes have, as if its own extent were
mapped to [0, 1]. ``matching_coord_weight``: the coordinate weight of the cost
the matching minimises (None: ``coord_weight``'s); 1 pairs slots and objects as
the paper's loss would, and ``coord_weight`` then changes what each pair is
trained towards, not which pairs are made.
"""

from __future__ import annotations

import numpy as np
from autograd.tracer import getval

from slotref import losses
from slotref.backend import xp_of
from slotref.paper import COORDS


def weigh_coordinates(sets, weight: float):
    """Sets (B, N, P) with their three coordinates (``paper.COORDS``) multiplied by ``weight``."""
    if weight == 1.0:
        return sets
    scale = np.ones(sets.shape[-1], dtype=np.float64)
    scale[COORDS] = weight
    return sets * xp_of(sets).asarray(scale, dtype=sets.dtype)


def weighted_pairwise_cost(predictions, targets, coord_weight: float = 1.0):
    """``losses.pairwise_huber_cost`` with the coordinate residuals times ``coord_weight``: (B, M, K)."""
    return losses.pairwise_huber_cost(weigh_coordinates(predictions, coord_weight),
                                      weigh_coordinates(targets, coord_weight))


def setpred_loss(predictions, targets, coord_weight: float = 1.0, matching_coord_weight: float | None = None,
                 return_assignment: bool = False):
    """The set loss with weighted coordinates: predictions (B, K, 19), targets (B, M, 19), M <= K -> a scalar
    (and, with ``return_assignment``, the 0/1 matching (B, K, K) on the host).

    Unit weights give ``losses.hungarian_huber_loss(predictions, targets)``.
    """
    matching_coord_weight = coord_weight if matching_coord_weight is None else matching_coord_weight
    if coord_weight == 1.0 and matching_coord_weight == 1.0 and not return_assignment:
        return losses.hungarian_huber_loss(predictions, targets)
    targets = losses.pad_targets(predictions, targets)
    cost = weighted_pairwise_cost(predictions, targets, coord_weight)                 # (B, K, K)
    matching_cost = cost if matching_coord_weight == coord_weight else \
        weighted_pairwise_cost(getval(predictions), targets, matching_coord_weight)
    assignment = losses.hungarian_assignment(matching_cost)                           # (B, K, K)
    loss = losses.matched_cost(cost, assignment)
    return (loss, assignment) if return_assignment else loss
