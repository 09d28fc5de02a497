"""Diagnostics of a training run beside the paper's metrics: what a number near zero does not say.

- ``collapse_diagnostics`` (object discovery): numbers that tell the 'stripes'
  failure of section 4.1 (slots that split the image evenly) from objects
  without pictures, with ``looks_collapsed`` on the levels of the warning the
  training loop prints (``slotref.training.binding``, which also watches each
  iteration of both tasks);
- ``position_readout`` (set prediction): where position is lost, in the
  attention or in the head (``slotref eval --positions``).

Host-only NumPy.
"""

from __future__ import annotations

import numpy as np

from slotref.metrics import matched_objects
from slotref.training.binding import BINDING_LEVELS, attention_entropy, slot_cosine
from slotref.paper import COORD_SCALE, COORDS


def collapse_diagnostics(masks: np.ndarray, slots: np.ndarray, attention: np.ndarray | None) -> dict:
    """Numbers that tell the 'stripes' failure (section 4.1) from objects without pictures.

    - mask areas: the share of pixels each slot wins (sorted, mean over images);
    - attention entropy over slots of the last iteration, normalised by log K
      (1: every input split evenly between slots; 0: each input to one slot);
    - mean pairwise cosine similarity of the slots of an image.
    """
    return summarise_collapse(collapse_per_example(masks, slots, attention))


def collapse_per_example(masks: np.ndarray, slots: np.ndarray, attention: np.ndarray | None) -> dict:
    """The diagnostics of each image: sorted areas (N, K), attention entropy (N,) or None, slot cosine (N,)."""
    n, k = masks.shape[:2]
    winners = np.argmax(masks, axis=1).reshape(n, -1)
    areas = np.stack([(winners == j).mean(axis=1) for j in range(k)], axis=1)   # (N, K)
    entropy = None if attention is None else attention_entropy(attention[:, -1])  # (N,)
    return {"areas": np.sort(areas, axis=1)[:, ::-1], "entropy": entropy, "cosine": slot_cosine(slots)}


def summarise_collapse(rows: dict) -> dict:
    """Means over images of ``collapse_per_example``'s rows."""
    result = {"slot_area_sorted": [round(float(a), 4) for a in rows["areas"].mean(axis=0)]}
    if rows["entropy"] is not None:
        result["attention_entropy"] = float(np.mean(rows["entropy"]))
    result["slot_cosine"] = float(np.mean(rows["cosine"]))
    return result


# The collapse signs: diagnostic -> (the level above which it shows, what it means); the levels of
# ``binding.BINDING_LEVELS``.
COLLAPSE_SIGNS = {"attention_entropy": BINDING_LEVELS["entropy"][::2],
                  "slot_cosine": BINDING_LEVELS["slot_cosine"][::2]}


def collapse_signs(diag: dict) -> list[str]:
    """The signs of collapse ``diag`` shows, each with its number: 'even attention (attention_entropy 0.97
    > 0.9)', 'near-identical slots (slot_cosine 0.99 > 0.95)'."""
    return [f"{meaning} ({key} {diag[key]:.2f} > {level})" for key, (level, meaning) in COLLAPSE_SIGNS.items()
            if diag.get(key, 0.0) > level]


def looks_collapsed(diag: dict) -> bool:
    """Heuristic warning: attention spread evenly (no competition won) or slots nearly identical."""
    return bool(collapse_signs(diag))


def position_readout(predictions, targets, attention) -> dict:
    """Where position is lost: three position errors of the matched objects, in CLEVR units.

    - ``model``: the model's predicted coordinates;
    - ``attention``: a least-squares fit of the coordinates from where the matched slot's attention
      lies (its centroid (r, c) over the square feature grid, features [1, r, c, r^2, rc, c^2]);
    - ``constant``: the mean position.
    The fit and the mean are made on the first half of the examples; every error is measured on the
    second half. An attention error far below the model's means the slots find the objects but
    their vectors do not carry where they are to the head.

    predictions (N, K, 19), targets (N, M, 19), attention (N, N_in, K) (the last iteration's).
    Returns {name: {"median_distance", "within_1", "within_0.5"}}.
    """
    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    attention = np.asarray(attention, np.float64)
    side = int(round(np.sqrt(attention.shape[1])))
    if side * side != attention.shape[1]:
        raise ValueError(f"position_readout needs attention over a square grid, got {attention.shape[1]} inputs")
    rows, cols = np.divmod(np.arange(side * side), side)
    matches = matched_objects(predictions, targets)
    if not matches:
        raise ValueError("position_readout: the targets hold no object")
    b, i, j = (np.array(v) for v in zip(*matches))
    weights = attention[b, :, j]
    weights = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-12)
    r, c = weights @ rows, weights @ cols
    features = np.stack([np.ones_like(r), r, c, r * r, r * c, c * c], axis=-1)
    true, model = targets[b, i][:, COORDS], predictions[b, j][:, COORDS]
    fit = b < len(predictions) // 2
    test = ~fit
    if not fit.any() or not test.any():
        raise ValueError("position_readout needs at least two examples with objects")
    coef = np.linalg.lstsq(features[fit], true[fit], rcond=None)[0]
    guesses = {"model": model[test], "attention": features[test] @ coef,
               "constant": np.broadcast_to(true[fit].mean(0), true[test].shape)}
    out = {}
    for name, guess in guesses.items():
        d = np.linalg.norm(COORD_SCALE * (guess - true[test]), axis=-1)
        out[name] = {"median_distance": float(np.median(d)), "within_1": float(np.mean(d < 1.0)),
                     "within_0.5": float(np.mean(d < 0.5))}
    return out
