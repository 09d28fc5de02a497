"""The two tasks: a task supplies the loss of a batch, its metric and its outputs.

- ``SetPredictionTask``: Hungarian-matched Huber loss, AP at five thresholds (Table 3).
- ``DiscoveryTask``: reconstruction MSE, FG-ARI (Table 1), and the collapse
  diagnostics that tell the 'stripes' failure of section 4.1.

Evaluation takes a ``slotref.training.collectives.World`` (default: this process
alone): each rank evaluates its share of the examples in whole evaluation
batches (so every example keeps the slot noise it has in one process), the
per-example results (predictions; ARI, MSE and diagnostics per image) are
gathered, and every rank returns the same metrics.
"""

from __future__ import annotations

import math

import numpy as np

from slotref import metrics
from slotref.backend import to_host
from slotref.losses import mse
from slotref.models import autoencoder, set_prediction
from slotref.training.collectives import World, shard_range
from slotref.training.config import TrainConfig
from slotref.training.data import Split, eval_noise, preprocess
from slotref.training.diagnostics import collapse_per_example, summarise_collapse
from slotref.training.implicit import slot_attention_module
from slotref.training.setpred_loss import setpred_loss

class SetPredictionTask:
    name = "setpred"

    def __init__(self, config: TrainConfig):
        self.config = config

    def loss(self, params, images, targets, noise, coord_weight=None, matching_coord_weight=None, grad=None):
        """``coord_weight``, ``matching_coord_weight``: the coordinate weights of the loss and of the
        matching; ``grad``: the gradient through Slot Attention (default: the run's; a curriculum stage
        may set them; ``setpred_loss``, ``training.implicit``)."""
        predictions = set_prediction(params, images, noise, self.config.model,
                                     module=slot_attention_module(grad or self.config.grad))
        weight = self.config.coord_weight if coord_weight is None else coord_weight
        matching = self.config.matching_coord_weight if matching_coord_weight is None else matching_coord_weight
        return setpred_loss(predictions, targets, coord_weight=weight, matching_coord_weight=matching)

    def batch(self, be, split: Split, idx):
        return preprocess(be, split.images[idx]), be.asarray(split.targets[idx])

    def predict(self, be, params, split: Split, num_slots=None, num_iterations=None, batch_size=64,
                world: World | None = None):
        """Predictions (N, K, 19) and attention (N, T, N_in, K) on the host.

        With a world of several ranks each rank predicts its share and every rank
        gets all the predictions (the attention is not gathered: None).
        """
        w = world or World()
        start, stop = shard_range(len(split), w.rank, w.size, batch_size)
        k = num_slots or self.config.model.num_slots
        t = num_iterations or self.config.test_iterations
        preds, attns = [], []
        for lo in range(start, stop, batch_size):
            images = preprocess(be, split.images[lo:min(lo + batch_size, stop)])
            noise = eval_noise(be, self.config, images.shape[0], k, lo)
            p, a = set_prediction(params, images, noise, self.config.model, t, return_attention=True)
            preds.append(to_host(p))
            attns.append(None if a is None or w.size > 1 else to_host(a[:, -1]))
        preds = np.concatenate(preds) if preds else np.zeros((0, k, self.config.model.output_size), np.float32)
        if w.size > 1:
            return np.concatenate(w.allgather(preds)), None
        return preds, (None if not attns or attns[0] is None else np.concatenate(attns))

    @staticmethod
    def scores(predictions, targets) -> dict:
        """AP at the five thresholds (keys ap_inf ... ap_0.125) and the per-attribute accuracies."""
        table = metrics.ap_table(predictions, targets)
        result = {f"ap_{threshold_name(t)}": float(v) for t, v in table.items()}
        result.update(metrics.attribute_accuracy(predictions, targets))
        return result

    def evaluate(self, be, params, split: Split, num_slots=None, num_iterations=None,
                 world: World | None = None) -> dict:
        preds, _ = self.predict(be, params, split, num_slots, num_iterations, world=world)
        return self.scores(preds, split.targets)


class DiscoveryTask:
    name = "discovery"

    def __init__(self, config: TrainConfig):
        self.config = config

    def loss(self, params, images, _targets, noise, grad=None):
        """``grad``: the gradient through Slot Attention (default: the run's; a curriculum stage may set it)."""
        module = slot_attention_module(grad or self.config.grad)
        return mse(autoencoder(params, images, noise, self.config.model, module=module)["recon_combined"], images)

    def batch(self, be, split: Split, idx):
        return preprocess(be, split.images[idx]), None

    def outputs(self, be, params, split: Split, num_slots=None, num_iterations=None, batch_size=32,
                with_recons=False, offset=0):
        """Host arrays: masks (N, K, H, W), recon_combined (N, H, W, 3), slots (N, K, D), attention
        (N, T, N_in, K), and with ``with_recons`` the per-slot reconstructions (N, K, H, W, 3).

        ``offset``: the index of ``split``'s first example in the split it was taken from (its noise)."""
        k = num_slots or self.config.model.num_slots
        t = num_iterations or self.config.test_iterations
        out = {"masks": [], "recon_combined": [], "slots": [], "attention": []}
        if with_recons:
            out["recons"] = []
        for start in range(0, len(split), batch_size):
            images = preprocess(be, split.images[start:start + batch_size])
            noise = eval_noise(be, self.config, images.shape[0], k, offset + start)
            o = autoencoder(params, images, noise, self.config.model, t)
            out["masks"].append(to_host(o["masks"])[..., 0])
            out["recon_combined"].append(to_host(o["recon_combined"]))
            out["slots"].append(to_host(o["slots"]))
            out["attention"].append(None if o["attention"] is None else to_host(o["attention"]))
            if with_recons:
                out["recons"].append(to_host(o["recons"]))
        return {k: (None if v[0] is None else np.concatenate(v)) for k, v in out.items()}

    def per_example(self, be, params, split: Split, num_slots=None, num_iterations=None, batch_size=32,
                    offset=0) -> dict:
        """Host arrays, one row per image of ``split``: ARI, MSE and the collapse diagnostics (no masks)."""
        from slotref.data.hdf5 import images_to_float

        o = self.outputs(be, params, split, num_slots, num_iterations, batch_size, offset=offset)
        masks = o["masks"]                                                     # (N, K, H, W)
        pred = np.argmax(masks, axis=1)                                        # (N, H, W)
        ari = metrics.adjusted_rand_index(split.masks.astype(np.int64), pred.astype(np.int64))
        squared = (o["recon_combined"] - images_to_float(split.images)) ** 2
        return {"ari": np.asarray(ari, np.float64), "mse": squared.reshape(len(split), -1).mean(axis=1),
                **collapse_per_example(masks, o["slots"], o["attention"])}

    def evaluate(self, be, params, split: Split, num_slots=None, num_iterations=None,
                 world: World | None = None, batch_size=32) -> dict:
        w = world or World()
        start, stop = shard_range(len(split), w.rank, w.size, batch_size)
        rows = None
        if stop > start:
            rows = self.per_example(be, params, split.take(slice(start, stop)), num_slots, num_iterations,
                                    batch_size, offset=start)
        if w.size > 1:
            parts = [p for p in w.allgather(rows) if p is not None]
            rows = {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in parts[0]}
        result = {"fg_ari": float(np.nanmean(rows["ari"])), "mse": float(np.mean(rows["mse"]))}
        result.update(summarise_collapse(rows))
        return result


def threshold_name(t: float) -> str:
    return "inf" if math.isinf(t) else f"{t:g}"


def make_task(config: TrainConfig):
    return SetPredictionTask(config) if config.task == "setpred" else DiscoveryTask(config)
