"""Per-example randomness shared by the generators.

Example ``i`` of seed ``s`` takes all of its randomness from
``np.random.default_rng([s, i])`` (``[s, i, attempt]`` when a scene is drawn
again), so an example depends only on (seed, index).
"""

from __future__ import annotations

import numpy as np


def uniforms(seed, indices, attempts, size):
    """(len(indices), size) uniforms; row k depends only on (seed, indices[k], attempts[k])."""
    out = np.empty((len(indices), size))
    for k, (i, a) in enumerate(zip(indices.tolist(), attempts.tolist())):
        key = [seed, i] if a == 0 else [seed, i, a]
        out[k] = np.random.default_rng(key).random(size)
    return out


def redraw_until(draw_attempt, indices, max_attempts=200):
    """Call ``draw_attempt(indices, attempts) -> (arrays, ok)`` until every example is ok.

    Rejected examples are drawn again with the next attempt number, so each
    example still depends only on (seed, index).
    """
    attempts = np.zeros(len(indices), dtype=np.int64)
    pending = np.arange(len(indices))
    result = None
    for _ in range(max_attempts):
        arrays, ok = draw_attempt(indices[pending], attempts[pending])
        if result is None:
            result = {key: np.zeros((len(indices),) + v.shape[1:], v.dtype) for key, v in arrays.items()}
        for key, v in arrays.items():
            result[key][pending[ok]] = v[ok]
        pending = pending[~ok]
        attempts[pending] += 1
        if len(pending) == 0:
            return result
    raise RuntimeError(f"could not place the objects of examples {indices[pending][:5].tolist()} "
                       f"in {max_attempts} attempts; relax the options")
