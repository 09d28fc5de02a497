"""slotref: a readable reference implementation of Slot Attention.

Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020.
Every layer is a pure function over a nested dict of parameters; gradients come
from autograd; ``slotref.backend`` is the only module that knows NumPy from CuPy.

The names below are importable from ``slotref`` directly (docs/api.md)::

    import slotref
    params = slotref.init_slot_attention(rng, slotref.SlotAttentionConfig(input_size=32), dtype="float32")
    slots, attention = slotref.slot_attention(params, features, slotref.sample_initial_slots(params, noise))

They load on first use, so ``import slotref`` (and the command line's ``--help``) stays quick.
``slotref.slot_attention`` is the function of Algorithm 1; its module, ``slotref/slot_attention.py``, is
imported by name (``from slotref.slot_attention import SlotAttentionConfig``,
``importlib.import_module("slotref.slot_attention")``).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    # Slot Attention (Algorithm 1)
    "slot_attention": ["SlotAttentionConfig", "init_slot_attention", "sample_initial_slots", "slot_noise",
                       "slot_attention", "SlotAttention"],
    # the two models (Tables 4-8) and the Slot MLP baseline
    "models": ["ModelConfig", "setpred_config", "discovery_config", "init_model", "encoder", "infer_slots",
               "set_prediction", "autoencoder"],
    # losses and metrics
    "losses": ["hungarian_huber_loss", "mse"],
    "metrics": ["ap_table", "average_precision", "ap_by_num_objects", "adjusted_rand_index", "fg_ari",
                "attribute_accuracy"],
    # optimiser
    "optim": ["Adam", "Schedule"],
    # arrays on a device
    "backend": ["get_backend", "host_rng", "to_host", "tree_astype"],
    # data
    "data.hdf5": ["load_dataset", "write_dataset", "set_prediction_targets", "images_to_float"],
    # runs and checkpoints
    "training": ["TrainConfig", "preset_config", "train", "load_run"],
    "training.checkpoint": ["load_model", "save_model"],
    "training.inference": ["predict"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
# Former names, kept working with a DeprecationWarning: old name -> new name.
_DEPRECATED = {"load_checkpoint": "load_model", "save_checkpoint": "save_model"}

__all__ = ["__version__", *_WHERE]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"slotref.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        return _deprecated(name, _DEPRECATED[name])
    raise AttributeError(f"module 'slotref' has no attribute {name!r}")


def _deprecated(old: str, new: str):
    """``new`` under its former name ``old``: the same function, warning on each call."""
    import functools
    import warnings

    function = __getattr__(new)

    @functools.wraps(function)
    def call(*args, **kwargs):
        warnings.warn(f"slotref.{old} is deprecated; use slotref.{new}", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)
    call.__name__ = call.__qualname__ = old
    return call


class _Package(types.ModuleType):
    """``slotref`` itself. Importing a submodule sets it as an attribute of its package; for
    ``slotref/slot_attention.py`` the package keeps the function of that name instead, so
    ``slotref.slot_attention`` is the function (with its signature and docstring) whoever imported the
    module first."""

    def __setattr__(self, name, value):
        if name == "slot_attention" and isinstance(value, types.ModuleType):
            value = value.slot_attention
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
