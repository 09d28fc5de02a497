"""Whole-model golden cases: set prediction, the autoencoder on each paper decoder, and AP.

Made in float64 by slotref's spec (``slotref.models``, ``slotref.losses``,
``slotref.metrics``, convolutions as written) and shipped as ``data/models.h5``:

- ``setpred``: a small set-prediction model (Table 4 with strides 1, 2, 2, 1;
  Table 8), its ``predictions`` (B, K, 19), the Hungarian Huber ``loss`` against
  ``targets`` (B, M, 19) and the loss's gradients ``grads`` for every parameter;
- ``discovery_clevr`` / ``discovery_full``: the autoencoder with Table 6's
  decoder (broadcast to 1x1 here, four stride-2 transposed convolutions) and
  Table 7's (broadcast to the full resolution), its ``recon_combined``,
  ``recons``, ``masks``, the ``loss`` MSE(recon_combined, images) and its ``grads``;
- ``ap_*``: predictions and targets whose AP at the five thresholds of E.9 is
  ``ap`` (one value per threshold of ``AP_THRESHOLDS``), with confidence ties and
  scenes holding two identical objects.

Each model case stores its architecture as the attribute ``architecture``
(JSON: encoder strides, decoder rows (kernel, stride, channels), the broadcast
resolution), which the tree alone does not say.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import autograd
import h5py
import numpy as np

from slotref import dispatch, paper
from slotref.conformance import golden
from slotref.losses import hungarian_huber_loss, mse
from slotref.metrics import AP_THRESHOLDS, average_precision
from slotref.models import ModelConfig, autoencoder, decoder_layers, init_model, set_prediction
from slotref.slot_attention import SlotAttentionConfig

MODELS_FILE = "models.h5"
SMALL = dict(encoder_channels=4, mlp_size=6, num_slots=3, num_iterations=2, head_hidden=8, decoder_channels=4,
             slot_attention=SlotAttentionConfig(input_size=6, slot_size=6, mlp_hidden_size=8))
MODEL_CASES = {
    "setpred": ModelConfig(task="setpred", resolution=(8, 8), encoder_strides=(1, 2, 2, 1), **SMALL),
    "discovery_clevr": ModelConfig(task="discovery", resolution=(16, 16), encoder_strides=(1, 1, 1, 1),
                                   decoder="clevr", decoder_init_resolution=(1, 1), **SMALL),
    "discovery_full": ModelConfig(task="discovery", resolution=(6, 6), encoder_strides=(1, 1, 1, 1),
                                  decoder="full", **SMALL),
}
AP_CASES = ("ap_random", "ap_confidence_ties", "ap_identical_objects")
CASE_NAMES = (*MODEL_CASES, *AP_CASES)


def architecture(config: ModelConfig) -> dict:
    """What an adapter needs besides the parameter tree."""
    arch = {"task": config.task, "encoder_strides": list(config.encoder_strides)}
    if config.task == "discovery":
        arch.update(decoder=config.decoder, decoder_rows=[list(row) for row in decoder_layers(config)],
                    decoder_init_resolution=list(config.resolution if config.decoder == "full"
                                                 else config.decoder_init_resolution))
    return arch


def make_model_case(name: str) -> dict:
    config = MODEL_CASES[name]
    rng = np.random.default_rng(golden.case_seed(name))
    params = golden._randomise(rng, init_model(rng, config))
    b, k, d = 2, config.num_slots, config.slot_attention.slot_size
    images = rng.uniform(-1, 1, (b, *config.resolution, 3))
    noise = rng.standard_normal((b, k, d))
    t = config.num_iterations
    data = {"params": params, "images": images, "noise": noise,
            "attrs": {"num_iterations": t, "architecture": json.dumps(architecture(config))}}
    if config.task == "setpred":
        targets = _objects(rng, b, k - 1)
        data["targets"] = targets
        data["predictions"] = set_prediction(params, images, noise, config, t)

        def loss(p):
            return hungarian_huber_loss(set_prediction(p, images, noise, config, t), targets)
    else:
        out = autoencoder(params, images, noise, config, t)
        data.update({k: out[k] for k in ("recon_combined", "recons", "masks")})

        def loss(p):
            return mse(autoencoder(p, images, noise, config, t)["recon_combined"], images)
    value, grads = autograd.value_and_grad(loss)(params)
    data["loss"], data["grads"] = np.asarray(value), grads
    return data


def _objects(rng, batch, count, present=None):
    """CLEVR-like targets (B, M, 19): coordinates in [0, 1], one-hot attributes, presence."""
    objects = np.zeros((batch, count, paper.NUM_PROPERTIES))
    objects[..., paper.COORDS] = rng.uniform(0, 1, (batch, count, 3))
    for s in paper.ATTRIBUTE_SLICES:
        width = s.stop - s.start
        objects[..., s] = np.eye(width)[rng.integers(0, width, (batch, count))]
    objects[..., paper.PRESENCE] = 1.0 if present is None else present
    return objects


def make_ap_case(name: str) -> dict:
    """Predictions near the targets, some attributes wrong, some coordinates off; plus the E.9 APs."""
    rng = np.random.default_rng(golden.case_seed(name))
    targets = _objects(rng, 3, 4, present=np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]))
    if name == "ap_identical_objects":
        targets[:, 1] = targets[:, 0]                       # two objects alike in every number
        targets[:, 1, paper.COORDS] += 0.01
    predictions = np.concatenate([targets, _objects(rng, 3, 2, present=0.0)], axis=1)   # K = 6
    predictions[..., paper.COORDS] += rng.normal(0, 0.03, predictions[..., paper.COORDS].shape)
    flip = rng.random(predictions.shape[:2]) < 0.2
    colour = paper.ATTRIBUTE_SLICES[-1]
    predictions[flip, colour] = np.roll(predictions[flip, colour], 1, axis=-1)
    predictions[..., paper.PRESENCE] = rng.uniform(0, 1, predictions.shape[:2])
    if name == "ap_confidence_ties":
        predictions[..., paper.PRESENCE] = np.round(predictions[..., paper.PRESENCE] * 2) / 2  # 0, 0.5, 1
    if name == "ap_identical_objects":
        predictions[:, 0, paper.COORDS] = targets[:, 1, paper.COORDS]     # the first detection takes object 1
        predictions[:, 1] = predictions[:, 0]
        predictions[:, :2, paper.PRESENCE] = [0.9, 0.8]
    ap = [average_precision(predictions, targets, t) for t in AP_THRESHOLDS]
    return {"predictions": predictions, "targets": targets, "ap": np.asarray(ap),
            "attrs": {"thresholds": json.dumps([str(t) for t in AP_THRESHOLDS])}}


def write_model_cases(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with golden._one_blas_thread(), dispatch.using("reference"), \
            h5py.File(path, "w", libver="latest", track_order=True) as f:
        for name in CASE_NAMES:
            data = make_model_case(name) if name in MODEL_CASES else make_ap_case(name)
            group = f.create_group(name, track_order=True)
            group.attrs.update(data.pop("attrs"))
            golden._write_tree(group, data)
    return path


def read_model_case(name: str, path: Path | str | None = None) -> dict:
    path = golden.GOLDEN_DIR / MODELS_FILE if path is None else Path(path)
    with h5py.File(path, "r") as f:
        if name not in f:
            raise KeyError(f"no model case {name!r}; the cases are {', '.join(f)}")
        data = golden._read_tree(f[name])
        data["attrs"] = {k: (json.loads(v) if k in ("architecture", "thresholds") else int(v))
                         for k, v in f[name].attrs.items()}
    return data


def config_of(case: dict) -> ModelConfig:
    """The ModelConfig a model case was made with (for slotref's own adapter)."""
    arch = case["attrs"]["architecture"]
    for config in MODEL_CASES.values():
        if architecture(config) == arch:
            return replace(config)
    raise ValueError("unknown architecture")
