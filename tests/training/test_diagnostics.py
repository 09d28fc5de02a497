"""Diagnostics of a run (``slotref.training.diagnostics``) beside the paper's metrics.

The collapse diagnostics of object discovery are specified with the training loop that prints them
(``tests/training/test_train.py``); the position readout of set prediction here.
"""

from __future__ import annotations

import numpy as np
import pytest

from slotref.training.diagnostics import position_readout


# --------------------------------------------------------------------------
# Position readout: where position is lost.

def _scenes_on_a_grid(rng, n=60, side=4, k=3):
    """Two objects per scene, each on a cell of a side x side feature grid, its x, y linear in the
    cell's row and column; the matched slot attends to that cell alone. The model predicts every
    attribute right and the middle of the floor as every position."""
    from slotref.paper import COLOR, PRESENCE, SHAPE, SIZE, MATERIAL, coords_to_unit

    targets = np.zeros((n, 2, 19))
    predictions = np.zeros((n, k, 19))
    attention = np.full((n, side * side, k), 1e-9)
    for b in range(n):
        cells = rng.choice(side * side, size=2, replace=False)
        for i, cell in enumerate(cells):
            r, c = divmod(cell, side)
            row = np.zeros(19)
            row[:3] = coords_to_unit(np.array([r - 1.5, 0.5 * c - 0.75, 0.35]))
            for part in (SIZE, MATERIAL, SHAPE):
                row[part.start + rng.integers(part.stop - part.start)] = 1.0
            row[COLOR.start + i] = 1.0                 # the two objects differ: one matching
            row[PRESENCE] = 1.0
            targets[b, i] = row
            slot = (i + b) % k                      # objects land in different slots
            predictions[b, slot] = row
            predictions[b, slot, :3] = coords_to_unit(np.array([0.0, 0.0, 0.35]))
            attention[b, cell, slot] = 1.0
    return predictions, targets, attention


def test_position_readout_finds_position_in_the_attention_the_head_does_not_report(rng):
    predictions, targets, attention = _scenes_on_a_grid(rng)
    out = position_readout(predictions, targets, attention)
    assert out["attention"]["median_distance"] < 1e-6 and out["attention"]["within_0.5"] == 1.0
    assert out["model"]["median_distance"] > 0.5 and out["constant"]["median_distance"] > 0.5
    # The model's error: its predictions against the second half's matched objects.
    half = targets[len(targets) // 2:]
    d = np.linalg.norm(6 * (half[..., :2] - 0.5), axis=-1).ravel()
    assert out["model"]["median_distance"] == pytest.approx(np.median(d))
    # Slots in another order (predictions and attention alike) read the same.
    perm = [2, 0, 1]
    again = position_readout(predictions[:, perm], targets, attention[..., perm])
    assert again == out


def test_position_readout_refuses_what_it_cannot_read(rng):
    predictions, targets, attention = _scenes_on_a_grid(rng, n=4)
    with pytest.raises(ValueError, match="square grid"):
        position_readout(predictions, targets, attention[:, :15])
    with pytest.raises(ValueError, match="no object"):
        position_readout(predictions, np.zeros_like(targets), attention)
