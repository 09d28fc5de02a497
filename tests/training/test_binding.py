"""Binding diagnostics (``slotref.training.binding``): Slot Attention watched one iteration at a time, the
gradient through the module, the warning of a run whose slots have not bound, and where a run shows them
(metrics.jsonl, train.csv, eval.csv, ``eval --curve``, ``viz --binding``)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from slotref.backend import get_backend, host_rng, tree_leaves, tree_map
from slotref.flat import FlatLayout, FlatTree
from slotref.models import infer_slots, init_model, setpred_config
from slotref.slot_attention import SlotAttentionConfig, sample_initial_slots
from slotref.training import binding
from slotref.training.binding import (GradientNorms, attention_entropy, binding_per_example, binding_warning,
                                      evaluate_binding, iterate_slots, slot_change, slot_cosine)
from slotref.training.logs import curve_table
from slotref.training.loop import train
from tests.tool.test_cli import invoke
from tests.training.test_train import SA8, data_dir, discovery_run, setpred_run  # noqa: F401 (data_dir: a fixture)


def tiny_model(rng, **overrides):
    """A float64 set prediction model at 16x16 with 8 channels, K = 3, and a batch for it."""
    config = setpred_config(16, num_slots=3, encoder_channels=8, mlp_size=8, head_hidden=8, slot_attention=SA8,
                            **overrides)
    params = init_model(host_rng(0, 0), config)
    images = rng.uniform(-1, 1, size=(2, 16, 16, 3))
    noise = rng.standard_normal((2, 3, 8))
    return config, params, images, noise


# --------------------------------------------------------------------------
# One iteration at a time is Algorithm 1.

def test_chaining_one_iteration_at_a_time_is_one_call_with_t_iterations(rng):
    config, params, images, noise = tiny_model(rng)
    slots, attention = iterate_slots(params, images, noise, config, 4)
    whole, maps = infer_slots(params, images, noise, config, 4, return_attention=True)
    assert len(slots) == 5 and len(attention) == 4
    np.testing.assert_allclose(slots[-1], whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.stack(attention, axis=1), maps, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(slots[0], sample_initial_slots(params["slot_attention"], noise))
    # The diagnostics of each iteration read the spec's attention and slots.
    rows = binding_per_example(params, images, noise, config, 4)
    assert {k: v.shape for k, v in rows.items()} == {k: (2, 4) for k in binding.DIAGNOSTICS}
    for t in range(4):
        np.testing.assert_allclose(rows["entropy"][:, t], attention_entropy(maps[:, t]))
        np.testing.assert_allclose(rows["slot_cosine"][:, t], slot_cosine(infer_slots(params, images, noise, config,
                                                                                     t + 1)))
    np.testing.assert_allclose(rows["slot_change"][:, -1], slot_change(whole, slots[3]))


def test_the_slot_mlp_has_no_iterations_to_watch(rng):
    config, params, images, noise = tiny_model(rng, model="slot-mlp")
    params = init_model(host_rng(0, 0), config)
    assert binding_per_example(params, images, noise, config, 3) is None


def test_entropy_is_one_for_even_attention_and_zero_for_one_slot_per_input():
    n, k = 6, 4
    assert attention_entropy(np.full((2, n, k), 1 / k)) == pytest.approx([1.0, 1.0])
    one_hot = np.eye(k)[np.arange(n) % k][None]                         # (1, N, K)
    assert attention_entropy(one_hot) == pytest.approx([0.0], abs=1e-9)
    # Half the inputs even over two slots of four: (1/2) * log 2 / log 4.
    half = np.concatenate([np.tile([0.5, 0.5, 0, 0], (3, 1)), np.eye(k)[:3]])[None]
    assert attention_entropy(half) == pytest.approx([0.25])
    # Attention normalised over inputs (Figure 10) is read over slots all the same.
    assert attention_entropy(np.full((1, n, k), 1 / n)) == pytest.approx([1.0])


def test_slot_cosine_and_change_on_slots_by_hand():
    orthogonal = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    assert slot_cosine(orthogonal) == pytest.approx([0.0])
    assert slot_cosine(np.array([[[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]]])) == pytest.approx(
        [(1 / np.sqrt(2) + 1 + 1 / np.sqrt(2)) / 3])                   # the three pairs' cosines
    assert slot_cosine(np.ones((1, 3, 2))) == pytest.approx([1.0])
    before = np.array([[[3.0, 0.0], [0.0, 4.0]]])                      # ||s|| = 5
    after = before + np.array([[[0.0, 0.0], [1.0, 0.0]]])
    assert slot_change(after, before) == pytest.approx([0.2])
    assert slot_change(before, before) == pytest.approx([0.0])


def test_evaluate_binding_watches_the_first_scenes_with_the_evaluations_noise_and_t(data_dir):
    from slotref.training.data import eval_noise, load_splits, preprocess

    config = replace(setpred_run(data_dir), eval_iterations=4)
    be = get_backend("cpu", "float32")
    params = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model))
    _, val, _ = load_splits(data_dir / "clevr.h5", config)
    result = evaluate_binding(be, params, config, val, examples=5)
    assert set(result) == set(binding.DIAGNOSTICS) and all(len(v) == 4 for v in result.values())
    noise = eval_noise(be, config, 5, config.model.num_slots, 0)
    rows = binding_per_example(params, preprocess(be, val.images[:5]), noise, config.model, 4)
    assert result == {k: [round(float(x), 4) for x in v.mean(axis=0)] for k, v in rows.items()}
    slot_mlp = replace(config, model=replace(config.model, model="slot-mlp"))
    assert evaluate_binding(be, params, slot_mlp, val) is None


# --------------------------------------------------------------------------
# The warning.

UNBOUND = {"entropy": [0.9, 0.95, 0.97], "slot_cosine": [0.3, 0.5, 0.6], "slot_change": [0.6, 0.4, 0.3]}
BOUND = {"entropy": [0.5, 0.3, 0.2], "slot_cosine": [0.3, 0.25, 0.25], "slot_change": [1.0, 0.3, 0.1]}


def test_the_warning_names_the_signs_and_what_to_try_once_past_a_fifth_of_the_run():
    line, warned = binding_warning(UNBOUND, 3000, 10_000, "discovery")
    assert line.startswith("warning: slots have not bound by step 3000: attention entropy 0.97 > 0.9 "
                           "(even attention). Try: new initial weights (--restart-unbound 1500")
    assert "another --seed" in line and "--grad last" in line and "slotref docs binding" in line
    assert "slotref docs curriculum" in binding_warning(UNBOUND, 3000, 10_000, "setpred")[0]
    assert binding_warning(BOUND, 3000, 10_000, "discovery") == (None, None)
    close = {**BOUND, "slot_cosine": [0.3, 0.5, 0.951]}                          # above 0.95, not "0.95 > 0.95"
    assert "slot cosine 0.951 > 0.95 (near-identical slots)" in binding_warning(close, 3000, 10_000, "discovery")[0]
    assert binding_warning(UNBOUND, 1000, 10_000, "discovery") == (None, None)      # before 20% of the run
    assert binding_warning(UNBOUND, 400, 1000, "discovery") == (None, None)         # before step 500
    assert binding_warning(None, 3000, 10_000, "discovery") == (None, None)          # the Slot MLP: nothing
    # Once, and again only when the kind of sign changes.
    assert binding_warning(UNBOUND, 4000, 10_000, "discovery", warned) == (None, warned)
    assert binding_warning(BOUND, 5000, 10_000, "discovery", warned) == (None, warned)
    copies = {**UNBOUND, "slot_cosine": [0.9, 0.97, 0.99], "slot_change": [1.0, 0.8, 0.6]}
    line, again = binding_warning(copies, 6000, 10_000, "discovery", warned)
    assert "slot cosine 0.99 > 0.95 (near-identical slots)" in line and again != warned
    assert "slot change at the last iteration 0.60 > 0.5 (the iteration has not settled)" in line


def test_slots_still_moving_alone_are_no_warning():
    """A bound run whose slots still move at the last iteration (slot change above its level, entropy and
    cosine low) is not said to be unbound; with a sign of unbound slots the slot change is named too."""
    moving = {**BOUND, "slot_change": [1.1, 1.3, 1.3]}
    assert binding_warning(moving, 3000, 10_000, "discovery") == (None, None)
    line, kinds = binding_warning({**moving, "entropy": [0.9, 0.95, 0.97]}, 3000, 10_000, "discovery")
    assert kinds == ["entropy", "slot_change"] and "slot change at the last iteration 1.30 > 0.5" in line


def test_a_run_warns_once_at_the_evaluation_whose_slots_have_not_bound(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(binding, "WARN_FROM_STEP", 0)
    seen = iter([BOUND, UNBOUND, UNBOUND])                                   # steps 2, 4, 6
    monkeypatch.setattr("slotref.training.loop.evaluate_binding", lambda *args: next(seen))
    run_dir = tmp_path / "run"
    train(discovery_run(data_dir, steps=6, eval_every=2, checkpoint_every=6), run_dir, progress=False)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: slots have not bound")]
    assert len(warnings) == 1 and "by step 4: attention entropy 0.97 > 0.9" in warnings[0], out
    assert warnings[0] in (run_dir / "console.log").read_text().splitlines()


# --------------------------------------------------------------------------
# The gradient norms.

def test_gradient_norms_are_the_norms_of_each_part_averaged_over_the_steps(rng):
    config, params, _, _ = tiny_model(rng)
    layout = FlatLayout(params)
    norms = GradientNorms(layout)
    grads = [tree_map(lambda p: rng.standard_normal(p.shape), params) for _ in range(2)]  # shaped like params
    expected = {part: np.mean([np.sqrt(sum(np.sum(leaf ** 2) for leaf in _leaves(g[part]))) for g in grads])
                for part in ("slot_attention", "encoder")}
    flat = norms.add(grads[0])
    assert isinstance(flat, FlatTree) and flat.layout is layout
    np.testing.assert_array_equal(flat.buffers["float64"], layout.flatten(grads[0]).buffers["float64"])
    assert norms.add(layout.flatten(grads[1])).buffers["float64"] is not None   # a flat gradient as it is
    means = norms.mean()
    assert means["grad_norm_slot_attention"] == pytest.approx(expected["slot_attention"], rel=1e-12)
    assert means["grad_norm_encoder"] == pytest.approx(expected["encoder"], rel=1e-12)
    norms.add(grads[1])                                                  # a new average after each read
    assert norms.mean()["grad_norm_encoder"] == pytest.approx(np.sqrt(sum(np.sum(v ** 2) for v in
                                                                          _leaves(grads[1]["encoder"]))))


def _leaves(tree):
    return [leaf for _, leaf in tree_leaves(tree)]


# --------------------------------------------------------------------------
# Where a run shows them.

@pytest.fixture(scope="module")
def setpred_dir(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("binding") / "run"
    train(setpred_run(data_dir, steps=6, eval_every=3, log_every=2, eval_iterations=4), run_dir, progress=False)
    return run_dir


def test_a_run_logs_the_gradient_norms_and_each_iterations_diagnostics(setpred_dir):
    records = [json.loads(line) for line in (setpred_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [2, 4, 6]
    assert all(r["grad_norm_slot_attention"] > 0 and r["grad_norm_encoder"] > 0 for r in trained)
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) == 2
    for result in evals:
        assert set(result["binding"]) == {"entropy", "slot_cosine", "slot_change"}
        assert all(len(v) == 4 for v in result["binding"].values())               # T = eval_iterations
        assert all(0 <= x <= 1 for x in result["binding"]["entropy"])
    with open(setpred_dir / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["grad_norm_slot_attention"]) == pytest.approx(trained[-1]["grad_norm_slot_attention"])
    with open(setpred_dir / "eval.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["binding_entropy"]) == evals[-1]["binding"]["entropy"][-1]


def test_eval_curve_shows_the_last_iteration_and_the_gradient_norms(setpred_dir):
    result = invoke("eval", setpred_dir, "--curve")
    assert result.exit_code == 0, result.output
    header, _, *rows = result.output.strip().splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:3] == ["step", "minutes", "ap_inf"]
    assert columns[-5:] == ["entropy_last", "cosine_last", "change_last", "grad_sa", "grad_encoder"]
    last = json.loads((setpred_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["binding"]
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert float(cells[-5]) == pytest.approx(last["entropy"][-1], abs=1e-3) and float(cells[-1]) > 0
    assert curve_table(setpred_dir) == result.output.strip()


def test_eval_binding_prints_each_iteration_for_the_checkpoint(setpred_dir):
    result = invoke("eval", setpred_dir, "--binding", "--num-iters", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("binding, on the first 64 scenes (slotref docs binding):")
    assert lines[at + 1].split() == ["iteration", "1", "2"]
    assert [line.split()[0] for line in lines[at + 2:at + 5]] == ["entropy", "slot_cosine", "slot_change"]
    report = json.loads(invoke("eval", setpred_dir, "--binding", "--json").output)
    logged = json.loads((setpred_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["binding"]
    assert report["binding"] == logged                                 # what training logged at its last step


def test_viz_binding_draws_the_diagnostics_over_training(setpred_dir, tmp_path):
    result = invoke("viz", setpred_dir, "--binding")
    assert result.exit_code == 0, result.output
    picture = setpred_dir / "binding.png"
    with Image.open(picture) as image:
        assert image.size[0] > 600 and image.size[1] > 400
    out = tmp_path / "b.svg"
    assert invoke("viz", setpred_dir, "--binding", "--out", out).exit_code == 0 and out.stat().st_size > 0
    again = invoke("viz", setpred_dir, "--binding", "--out", out)
    assert again.exit_code != 0 and "--overwrite" in again.output
    wrong = invoke("viz", setpred_dir, "--binding", "--out", tmp_path / "b.bmp")
    assert wrong.exit_code != 0 and "unknown picture format" in wrong.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5, "time": 1.0}\n')
    refused = invoke("viz", empty, "--binding")
    assert refused.exit_code != 0 and "no binding diagnostics" in refused.output


def test_the_drawing_has_a_line_per_iteration_and_the_warning_levels(setpred_dir, tmp_path, monkeypatch):
    from slotref import viz
    from slotref.io import read_jsonl

    drawn = []
    monkeypatch.setattr(viz.plt, "close", drawn.append)                  # the figure, kept to be read
    viz.draw_binding(tmp_path / "b.png", read_jsonl(setpred_dir / "metrics.jsonl"))
    entropy, cosine, change, grads = drawn[0].axes
    assert [line.get_label() for line in entropy.lines] == [f"iteration {t}" for t in (1, 2, 3, 4)] + \
        ["warning level 0.9 (last iteration)"]
    colours = {tuple(line.get_color()) for line in entropy.lines[:4]}
    assert len(colours) == 4
    assert [line.get_label() for line in grads.lines] == ["slot attention", "encoder"]
    assert all(ax.get_xlabel() == "training step" and ax.get_ylabel() for ax in (entropy, cosine, change, grads))


def test_on_a_device_the_norms_and_the_diagnostics_make_no_hidden_host_array(rng, data_dir):
    import standin
    from slotref.training.data import load_splits

    be = standin.standin_backend(np.float32)
    config = setpred_run(data_dir)
    params = be.tree_asarray(init_model(host_rng(config.seed, 0), config.model, dtype=np.float32))
    grads = be.tree_asarray(tree_map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params))
    norms = GradientNorms(FlatTree.from_tree(params).layout)
    with standin.watch() as stats:
        norms.add(grads)
        norms.add(grads)
    assert not (stats.conversions or stats.host_operands or stats.float64_created), stats.report()
    expected = np.sqrt(sum(np.sum(leaf.get().astype(np.float64) ** 2) for leaf in _leaves(grads["encoder"])))
    assert norms.mean()["grad_norm_encoder"] == pytest.approx(expected, rel=1e-5)
    _, val, _ = load_splits(data_dir / "clevr.h5", config)
    on_host = evaluate_binding(get_backend("cpu", "float32"), tree_map(lambda a: a.get(), params), config, val, 4)
    with standin.watch() as stats:
        on_device = evaluate_binding(be, params, config, val, 4)
    assert not (stats.conversions or stats.host_operands), stats.report()
    assert on_device == on_host


def test_tensorboard_gets_the_gradient_norms_and_the_last_iteration(data_dir, tmp_path):
    pytest.importorskip("tensorboardX")
    from tests.tool.test_commands import _scalars_in_event_files

    run_dir = tmp_path / "run"
    train(setpred_run(data_dir, steps=2, eval_every=2, checkpoint_every=2), run_dir, progress=False, tensorboard=True)
    scalars = _scalars_in_event_files(run_dir)
    assert [s for s, _ in scalars["train/grad_norm_slot_attention"]] == [1, 2]
    assert [s for s, _ in scalars["train/grad_norm_encoder"]] == [1, 2]
    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["binding"]
    for key in binding.DIAGNOSTICS:
        [(step, value)] = scalars[f"eval/binding_{key}"]
        assert step == 2 and value == pytest.approx(logged[key][-1], abs=1e-6)
