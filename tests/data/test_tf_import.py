"""Checkpoints of the official TensorFlow code, read without TensorFlow (slotref.data.tensorbundle,
slotref.official_checkpoints, ``slotref import-tf``).

The fixtures in tests/fixtures/tf_checkpoints were written by TensorFlow itself
(``make_fixtures.py`` there) from models with the official layer structure and
reduced widths, together with TensorFlow's outputs for fixed images and slot
noise. slotref must reproduce those outputs to float32 rounding. Damaged
variants are made here from the fixtures' bytes; each must fail with one line
naming the file and the variable, and write nothing.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slotref.cli import main as cli
from slotref.data.hdf5 import write_dataset
from slotref.data.tensorbundle import TABLE_MAGIC, BundleError, _read_table, masked_crc32c, read_bundle
from slotref.models import autoencoder, encoder, infer_slots, set_prediction
from slotref.official_checkpoints import load_official
from slotref.slot_attention import sample_initial_slots, slot_attention

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_checkpoints"
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
ROOT = "network/layer_with_weights-0/"
# The fixtures' K, T and image sizes (make_fixtures.py).
SETPRED = dict(num_slots=3, num_iterations=2, resolution=16)
DISCOVERY = dict(num_slots=3, num_iterations=2, resolution=32)


def close(actual, expected):
    """Equal to float32 rounding: the same float32 operations in another order."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_one_line_error(result, *words):
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


# --------------------------------------------------------------------------
# TensorFlow's outputs, reproduced.

@pytest.mark.parametrize("prefix", ["setpred/ckpt-1", "setpred", "setpred_weights/weights"])
def test_set_prediction_reproduces_tensorflow(prefix):
    """The authors' layout (network/, optimizer slots), the folder's latest checkpoint, and
    model.save_weights (no network/ prefix) give TensorFlow's predictions and slots."""
    ref = np.load(FIXTURES / "setpred.npz")
    config, params, official = load_official(FIXTURES / prefix, "setpred", **SETPRED)
    close(set_prediction(params, ref["images"], ref["noise"], config), ref["predictions"])
    close(infer_slots(params, ref["images"], ref["noise"], config), ref["slots"])
    assert official.root == ("" if "weights" in prefix else "network/") + "layer_with_weights-0/"


def test_object_discovery_reproduces_tensorflow_from_three_shards():
    ref = np.load(FIXTURES / "discovery.npz")
    assert read_bundle(FIXTURES / "discovery/ckpt-1").num_shards == 3
    config, params, _ = load_official(FIXTURES / "discovery/ckpt-1", "discovery", **DISCOVERY)
    assert config.decoder == "clevr" and config.decoder_init_resolution == (2, 2)
    out = autoencoder(params, ref["images"], ref["noise"], config)
    for key in ("recon_combined", "recons", "masks", "slots"):
        close(out[key], ref[key])


def test_partial_checkpoint_imports_into_the_encoder_and_module_alone():
    ref = np.load(FIXTURES / "partial.npz")
    config, params, _ = load_official(FIXTURES / "partial/ckpt-1", "setpred", parts=("encoder", "slot_attention"),
                                      **SETPRED)
    assert set(params) == {"encoder", "slot_attention"}
    assert len(read_bundle(FIXTURES / "partial/ckpt-1").slice_entries) > 2  # tensors split across shards
    inputs = encoder(params["encoder"], ref["images"], config)
    slots = slot_attention(params["slot_attention"], inputs, sample_initial_slots(params["slot_attention"],
                                                                                  ref["noise"]),
                           config.num_iterations, config.slot_attention)
    close(slots, ref["slots"])
    _, module, _ = load_official(FIXTURES / "partial/ckpt-1", "setpred", parts=("slot_attention",))
    assert set(module) == {"slot_attention"}
    with pytest.raises(BundleError, match="mlp_classifier.*missing"):
        load_official(FIXTURES / "partial/ckpt-1", "setpred")


def test_optimizer_state_and_step_are_left_out():
    """Keras' legacy slots (.OPTIMIZER_SLOT) and the 2.11+ optimizer's optimizer/_variables."""
    for prefix, task, sizes in [("setpred/ckpt-1", "setpred", SETPRED), ("discovery/ckpt-1", "discovery", DISCOVERY)]:
        _, _, official = load_official(FIXTURES / prefix, task, **sizes)
        assert official.ignored["optimizer state"] > 2 * len(official.variables) - 10
        assert official.global_step == 1
        assert not any("OPTIMIZER" in name for name in official.variables)


# --------------------------------------------------------------------------
# Damaged and foreign checkpoints: one line, nothing written.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def write_table(path: Path, items: dict[bytes, bytes]) -> None:
    """An index as TensorFlow lays it out: one data block, an empty metaindex block, an index block, the footer."""
    out = bytearray()

    def block(entries):
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
        return body + struct.pack("<II", 0, 1)  # one restart point, at 0

    def put(contents):
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00")))
        return handle

    data = put(block(sorted(items.items())))
    meta = put(block([]))
    index = put(block([(max(items), data)]))
    out.extend((meta + index).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC))
    path.write_bytes(bytes(out))


def key(name: str) -> bytes:
    return f"{ROOT}{name}{SUFFIX}".encode()


def _rewrite(index: Path, change) -> None:
    items = _read_table(index)
    change(items)
    write_table(index, items)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _patch_dtype(items):
    value = items[key("slot_attention/gru/kernel")]
    assert value[:2] == b"\x08\x01"  # field 1 (dtype) = DT_FLOAT
    items[key("slot_attention/gru/kernel")] = b"\x08\x63" + value[2:]


def _swap(items):
    a, b = key("encoder_pos/dense/bias"), key("mlp/layer_with_weights-0/bias")
    items[a], items[b] = items[b], items[a]


def _gru_kernel_at(ckpt: Path) -> tuple[Path, int]:
    bundle = read_bundle(ckpt)
    entry = bundle.entries[key("slot_attention/gru/kernel").decode()]
    return bundle.shard_path(entry.shard), entry.offset + entry.size // 2


INDEX, DATA = "ckpt-1.index", "ckpt-1.data-00000-of-00001"
DAMAGE = {
    "index truncated": (lambda d: (d / INDEX).write_bytes((d / INDEX).read_bytes()[:-20]), [INDEX, "truncated"]),
    "foreign file": (lambda d: (d / INDEX).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200)), [INDEX, "another kind"]),
    "index byte flipped": (lambda d: _flip(d / INDEX, 100), [INDEX, "checksum mismatch"]),
    "data truncated": (lambda d: (d / DATA).write_bytes((d / DATA).read_bytes()[:1000]), [DATA, "ends before"]),
    "data byte flipped": (lambda d: _flip(*_gru_kernel_at(d / "ckpt-1")), [DATA, "slot_attention/gru/kernel",
                                                                           "checksum mismatch"]),
    "missing variable": (lambda d: _rewrite(d / INDEX, lambda t: t.pop(key("slot_attention/gru/recurrent_kernel"))),
                         [INDEX, "slot_attention/gru/recurrent_kernel", "missing"]),
    "extra variable": (lambda d: _rewrite(d / INDEX, lambda t: t.update(
        {key("slot_attention/extra"): t[key("slot_attention/slots_mu")]})), [INDEX, "slot_attention/extra", "extra"]),
    "shape that does not fit": (lambda d: _rewrite(d / INDEX, _swap), [INDEX, "encoder_pos/dense/bias", "shape"]),
    "unknown dtype": (lambda d: _rewrite(d / INDEX, _patch_dtype), [INDEX, "slot_attention/gru/kernel", "dtype 99"]),
}


@pytest.fixture
def copy_of_setpred(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "setpred", folder)
    return folder


def test_a_rewritten_index_still_imports(copy_of_setpred, tmp_path):
    """The table writer above makes indexes the reader takes: the damage below is what fails."""
    _rewrite(copy_of_setpred / INDEX, lambda items: None)
    result = invoke("import-tf", copy_of_setpred / "ckpt-1", "--task", "setpred", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output


def test_sequential_layers_under_either_keras_name_import(copy_of_setpred):
    """``layer-N`` or ``layer_with_weights-N``: Keras tracks a Sequential's layers under both."""
    ref = np.load(FIXTURES / "setpred.npz")
    _rewrite(copy_of_setpred / INDEX, lambda items: [items.update({k.replace(b"/layer_with_weights-", b"/layer-"):
                                                                   items.pop(k)}) for k in list(items)])
    assert b"network/layer-0/encoder_cnn/layer-1/kernel" + SUFFIX.encode() in _read_table(copy_of_setpred / INDEX)
    config, params, _ = load_official(copy_of_setpred / "ckpt-1", "setpred", **SETPRED)
    close(set_prediction(params, ref["images"], ref["noise"], config), ref["predictions"])


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_and_writes_nothing(damage, copy_of_setpred, tmp_path):
    make, words = DAMAGE[damage]
    make(copy_of_setpred)
    out = tmp_path / "run"
    result = invoke("import-tf", copy_of_setpred / "ckpt-1", "--task", "setpred", "--out", out)
    assert_one_line_error(result, *words)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_wrong_task_and_missing_file_are_one_line(tmp_path):
    result = invoke("import-tf", FIXTURES / "discovery/ckpt-1", "--task", "setpred", "--out", tmp_path / "run")
    assert_one_line_error(result, "ckpt-1.index", "decoder_cnn", "import it as discovery")
    result = invoke("import-tf", tmp_path / "nothing/ckpt-9", "--task", "setpred", "--out", tmp_path / "run")
    assert_one_line_error(result, "ckpt-9.index", "no such file")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = invoke("import-tf", FIXTURES / "setpred", "--task", "setpred", "--out", tmp_path / "run")
    assert_one_line_error(result, "run", "not an empty folder")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------
# An imported run is a run: eval, viz, load_model, train --resume.

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    data = {"setpred": root / "scenes16.h5", "discovery": root / "scenes32.h5"}
    write_dataset("clevr-shapes", data["setpred"], 10, 0, resolution=16, min_objects=1, max_objects=3,
                  progress=False, workers=1)
    write_dataset("clevr6-shapes", data["discovery"], 4, 0, resolution=32, progress=False, workers=1)
    runs = {}
    for task, prefix, sizes in [("setpred", "setpred", SETPRED), ("discovery", "discovery/ckpt-1", DISCOVERY)]:
        runs[task] = root / task
        result = invoke("import-tf", FIXTURES / prefix, "--task", task, "--out", runs[task],
                        "--num-slots", sizes["num_slots"], "--num-iters", sizes["num_iterations"],
                        "--resolution", sizes["resolution"], "--dataset", data[task], "--steps", 2,
                        "--batch-size", 2)
        assert result.exit_code == 0, result.output
        assert "optimizer state" in result.output
    return runs, data


@pytest.mark.parametrize("task", ["setpred", "discovery"])
def test_eval_and_viz_run_on_an_imported_run(task, imported):
    runs, data = imported
    result = invoke("eval", runs[task], "--dataset", data[task])
    assert result.exit_code == 0, result.output
    assert ("AP_inf" if task == "setpred" else "FG-ARI") in result.output
    result = invoke("viz", runs[task], "--num-images", 2, "--dataset", data[task])
    assert result.exit_code == 0, result.output
    assert (runs[task] / "viz.png").read_bytes()[:4] == b"\x89PNG"


def test_load_model_gives_the_imported_weights_and_the_source_is_recorded(imported):
    import json

    from slotref.training.checkpoint import load_model

    runs, _ = imported
    config, params = load_model(runs["setpred"])
    _, expected, _ = load_official(FIXTURES / "setpred", "setpred", **SETPRED)
    np.testing.assert_array_equal(params["slot_attention"]["gru"]["b_hidden"],
                                  expected["slot_attention"]["gru"]["b_hidden"])
    assert config.model.num_slots == 3 and config.model.num_iterations == 2
    source = json.loads((runs["setpred"] / "source.json").read_text())
    assert source["index"].endswith("setpred/ckpt-1.index") and source["global_step"] == 1


def test_an_imported_run_fine_tunes_with_train_resume(imported, tmp_path):
    import h5py

    runs, _ = imported
    run = tmp_path / "fine-tuned"
    shutil.copytree(runs["setpred"], run)
    result = invoke("train", "--resume", "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(run / "checkpoint.h5") as f:
        assert f.attrs["step"] == 2
