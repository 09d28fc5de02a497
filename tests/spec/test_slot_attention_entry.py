"""``slotref.slot_attention`` is a function with a real signature; the module stays importable by its
name; ``SlotAttention`` holds parameters and config and runs the same function."""

from __future__ import annotations

import importlib
import inspect
import pydoc
import subprocess
import sys
import types

import numpy as np

import slotref


def test_the_entry_point_is_a_function_with_its_signature_and_docstring():
    assert isinstance(slotref.slot_attention, types.FunctionType)
    assert list(inspect.signature(slotref.slot_attention).parameters) == [
        "params", "inputs", "slots", "num_iterations", "config", "return_attention"]
    assert "Run Algorithm 1" in pydoc.render_doc(slotref.slot_attention)


def test_the_module_stays_importable_by_its_name_whoever_imports_it_first():
    module = importlib.import_module("slotref.slot_attention")
    assert isinstance(module, types.ModuleType) and module.slot_attention is slotref.slot_attention
    from slotref.slot_attention import SlotAttentionConfig
    assert SlotAttentionConfig is slotref.SlotAttentionConfig
    # a fresh process where another module imports slotref/slot_attention.py before anyone asks slotref
    code = ("import slotref.models, slotref, types; from slotref import slot_attention; "
            "assert isinstance(slotref.slot_attention, types.FunctionType), slotref.slot_attention; "
            "assert slot_attention is slotref.models.slot_attention")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_slot_attention_object_runs_the_function_on_its_parameters():
    rng = np.random.default_rng(0)
    config = slotref.SlotAttentionConfig(input_size=6, slot_size=8, mlp_hidden_size=16)
    module = slotref.SlotAttention(config, np.random.default_rng(1))
    x = rng.standard_normal((2, 10, 6)).astype(np.float32)
    slots, attention = module(x, num_slots=3, num_iterations=2, return_attention=True)
    assert slots.shape == (2, 3, 8) and slots.dtype == np.float32 and attention.shape == (2, 2, 10, 3)

    # the same as the functions, given the same generator
    again = np.random.default_rng(1)
    params = slotref.init_slot_attention(again, config, dtype=np.float32)
    initial = slotref.sample_initial_slots(params, slotref.slot_noise(again, 2, 3, 8, np.float32))
    np.testing.assert_array_equal(slots, slotref.slot_attention(params, x, initial, 2, config))
    assert module(x).shape == (2, config.num_train_slots, 8)
