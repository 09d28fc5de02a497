"""A loaded run's model on images, as ``slotref eval`` runs it (``slotref.predict``).

``load_model`` gives a run's ``(config, params)``; the model functions (``set_prediction``,
``autoencoder``) take any K, T and slot noise. ``predict`` fills these in the way evaluation does, so
the Python API and the command line give the same numbers for the same images:

- K: the run's ``config.model.num_slots``;
- T: ``config.test_iterations``, the run's test-time T (``train --eval-iters``), else its training T;
- the slot noise: the run's evaluation noise, drawn from ``config.seed`` and each image's index
  (``training.data.eval_noise``), in the batches evaluation uses.
"""

from __future__ import annotations

import numpy as np

from slotref.backend import get_backend, is_host_array, tree_leaves
from slotref.training.data import Split
from slotref.training.tasks import make_task


def predict(config, params: dict, images, num_slots: int | None = None,
            num_iterations: int | None = None) -> dict:
    """The outputs of the run's model on ``images`` (uint8 (B, H, W, 3), as a dataset file stores them),
    with the run's evaluation settings; host NumPy arrays.

    ``config``, ``params``: from ``slotref.load_model``. ``num_slots``, ``num_iterations``: K and T at
    test time (default: the run's, as ``slotref eval``). Image i gets the noise ``slotref eval`` gives the
    i-th example of a file, so ``predict`` on a file's images equals ``slotref eval RUN --dataset FILE``.

    Set prediction: ``{"predictions": (B, K, 19), "attention": (B, N, K)}`` (the last iteration's).
    Discovery: ``{"masks": (B, K, H, W), "recon_combined": (B, H, W, 3), "slots": (B, K, D),
    "attention": (B, T, N, K)}``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"predict takes uint8 images (B, H, W, 3) as a dataset file stores them, got "
                         f"{images.dtype} {tuple(images.shape)}; the model functions take float images in [-1, 1]")
    leaf = tree_leaves(params)[0][1]
    be = get_backend("cpu" if is_host_array(leaf) else "gpu", leaf.dtype)
    task, split = make_task(config), Split(images, None, None)
    if config.task == "setpred":
        predictions, attention = task.predict(be, params, split, num_slots, num_iterations)
        return {"predictions": predictions, "attention": attention}
    return task.outputs(be, params, split, num_slots, num_iterations)
