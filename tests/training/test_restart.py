"""New initial weights for slots that have not bound (``train --restart-unbound``, slotref/training/restart.py):
when a draw is checked, what a redraw resets, that a bound run trains as without the option, and exact
resume from the step of a check."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from slotref import io
from slotref.backend import tree_astype, tree_leaves
from slotref.optim import Schedule
from slotref.training import restart
from slotref.training.config import ConfigError, TrainConfig
from slotref.training.logs import curve_table
from slotref.training.loop import train
from slotref.viz import draw_binding
from slotref.training.presets import preset_config, scale_budget
from tests.training.test_train import assert_same_checkpoints, discovery_run, read_checkpoint, records

UNBOUND = {"entropy": [0.99], "slot_cosine": [0.97], "slot_change": [0.1]}
BOUND = {"entropy": [0.2], "slot_cosine": [0.3], "slot_change": [1.3]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from slotref.data.hdf5 import write_dataset

    d = tmp_path_factory.mktemp("data")
    write_dataset("tetrominoes", d / "tetrominoes.h5", 48, 0, progress=False, workers=1)
    return d


def scripted_binding(monkeypatch, binding):
    """Every binding check of the loop (evaluations and redraw checks) reads ``binding``; returns the
    steps' count of calls."""
    calls = []
    monkeypatch.setattr("slotref.training.loop.evaluate_binding", lambda *args: calls.append(1) or binding)
    return calls


def test_a_draw_is_checked_once_its_steps_in_while_redraws_and_steps_remain():
    config = TrainConfig(steps=10, restart_unbound=3)
    assert [d for d in range(11) if restart.due(config, restart.Draw(0, 0), d)] == [3]
    assert [d for d in range(11) if restart.due(config, restart.Draw(1, 3), d)] == [6]
    assert not restart.due(config, restart.Draw(restart.MAX_REDRAWS, 6), 9)       # no redraw left
    assert not restart.due(TrainConfig(steps=6, restart_unbound=3), restart.Draw(1, 3), 6)  # the last step
    assert not any(restart.due(TrainConfig(steps=10), restart.Draw(), d) for d in range(11))  # 0: never


def test_the_warning_waits_for_a_check_to_come():
    config = TrainConfig(steps=10, restart_unbound=3)
    assert [d for d in range(11) if restart.check_to_come(config, restart.Draw(1, 3), d)] == [0, 1, 2, 3, 4, 5, 6]
    assert not restart.check_to_come(config, restart.Draw(restart.MAX_REDRAWS, 6), 7)   # the last draw: warned
    assert not restart.check_to_come(TrainConfig(steps=10), restart.Draw(), 1)


def test_only_even_attention_or_copied_slots_call_for_new_weights():
    assert restart.redraw_signs(BOUND) == []
    assert restart.redraw_signs({**BOUND, "slot_change": [2.0]}) == []       # still moving, yet bound
    assert restart.redraw_signs(None) == []                                   # the Slot MLP: no attention
    signs = restart.redraw_signs(UNBOUND)
    assert signs == ["attention entropy 0.99 > 0.9 (even attention)", "slot cosine 0.97 > 0.95 (near-identical slots)"]
    line = restart.message(signs, restart.Draw(1, 1000))
    assert line.startswith("slots have not bound after step 1000: attention entropy 0.99") and "draw 2 of at most 3" in line


def test_each_draw_is_a_stream_of_its_own_and_draw_0_is_the_runs():
    from slotref.backend import host_rng
    from slotref.models import init_model

    config = TrainConfig(seed=3)
    first, again, second = (dict(tree_leaves(restart.initial_params(config, n))) for n in (0, 0, 1))
    plain = dict(tree_leaves(init_model(host_rng(3, 0), config.model)))
    assert all(np.array_equal(first[k], again[k]) and np.array_equal(first[k], plain[k]) for k in first)
    assert not np.array_equal(first["slot_attention/project_q/w"], second["slot_attention/project_q/w"])


def test_unbound_slots_get_new_weights_a_fresh_adam_and_a_new_warm_up(data_dir, tmp_path, monkeypatch, capsys):
    scripted_binding(monkeypatch, UNBOUND)
    config = discovery_run(data_dir, steps=6, restart_unbound=2, eval_every=6, checkpoint_every=6)
    train(config, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    redraws = [line for line in out.splitlines() if line.startswith("slots have not bound after step")]
    assert [line.split(":")[0] for line in redraws] == ["slots have not bound after step 2",
                                                        "slots have not bound after step 4"]  # at most twice
    assert "draw 2 of at most 3" in redraws[0] and "draw 3 of at most 3" in redraws[1]
    attrs = read_checkpoint(tmp_path / "run" / "checkpoint.h5")["attrs"]
    assert (attrs["draw"], attrs["draw_start"], attrs["adam_t"]) == (2, 4, 2)  # Adam from step 4 on
    schedule = Schedule(config.learning_rate, config.warmup_steps, config.decay_steps)
    lrs = [r["lr"] for r in records(tmp_path / "run") if "loss" in r]
    assert lrs == pytest.approx([schedule(s) for s in (0, 1, 0, 1, 0, 1)])   # the schedule restarts
    # metrics.jsonl records each redraw; eval --curve gives the draw each evaluation read, viz marks them
    assert [(r["step"], r["redraw"]) for r in records(tmp_path / "run") if "redraw" in r] == [(2, 1), (4, 2)]
    table = curve_table(tmp_path / "run").splitlines()
    assert table[0].endswith("| draw |") and table[-1].startswith("| 6 |") and table[-1].endswith("| 3 |")
    draw_binding(tmp_path / "binding.png", io.read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert (tmp_path / "binding.png").stat().st_size > 0


def test_a_redraw_trains_from_the_new_draws_initial_weights(data_dir, tmp_path, monkeypatch):
    # Step 3 follows a redraw at step 2 with the warm-up's first learning rate, 0: the weights stay the draw's.
    scripted_binding(monkeypatch, UNBOUND)
    config = discovery_run(data_dir, steps=3, restart_unbound=2)
    train(config, tmp_path / "run", progress=False)
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.h5")
    drawn = dict(tree_leaves(tree_astype(restart.initial_params(config, 1), np.float32)))
    assert drawn and all(np.array_equal(saved[f"params/{k}"], v) for k, v in drawn.items())


def test_a_run_whose_slots_bound_trains_as_without_the_option(data_dir, tmp_path, monkeypatch, capsys):
    calls = scripted_binding(monkeypatch, BOUND)
    train(discovery_run(data_dir, steps=4, restart_unbound=2, eval_every=4, checkpoint_every=4), tmp_path / "checked",
          progress=False)
    assert len(calls) == 2                                                  # the check at step 2, the evaluation
    kept = "step 2: the slots of draw 1 have bound (its parameters: attention entropy 0.20, slot cosine 0.30); no new"
    assert kept in capsys.readouterr().out
    assert kept in (tmp_path / "checked" / "console.log").read_text()
    train(discovery_run(data_dir, steps=4, eval_every=4, checkpoint_every=4), tmp_path / "plain", progress=False)
    assert_same_checkpoints(tmp_path / "checked" / "checkpoint.h5", tmp_path / "plain" / "checkpoint.h5")
    attrs = read_checkpoint(tmp_path / "checked" / "checkpoint.h5")["attrs"]
    assert (attrs["draw"], attrs["draw_start"]) == (0, 0)
    assert "| draw |" not in curve_table(tmp_path / "checked")                 # no redraw, no column


def test_the_check_reads_the_trained_weights_not_their_average(data_dir, tmp_path, monkeypatch):
    # A draw's average still holds much of its initial weights when checked (ema 0.999: 22% after 1,500
    # steps), so the check evaluates the parameters; the evaluation of the same step reports the average.
    seen = []

    def binding_of(be, params, *rest):
        seen.append({k: np.array(v) for k, v in tree_leaves(params)})
        return BOUND

    monkeypatch.setattr("slotref.training.loop.evaluate_binding", binding_of)
    train(discovery_run(data_dir, steps=3, restart_unbound=2, ema=0.5, eval_every=2, checkpoint_every=2),
          tmp_path / "checked", progress=False)
    reported, checked = seen[:2]                                  # step 2: the evaluation, then the check
    train(discovery_run(data_dir, steps=2, ema=0.5, eval_every=2, checkpoint_every=2), tmp_path / "plain",
          progress=False)
    at_2 = read_checkpoint(tmp_path / "plain" / "checkpoint.h5")
    assert checked and all(np.array_equal(v, at_2[f"params/{k}"]) for k, v in checked.items())
    assert all(np.array_equal(v, at_2[f"average/{k}"]) for k, v in reported.items())
    assert not all(np.array_equal(checked[k], reported[k]) for k in checked)


@pytest.mark.parametrize("stop", [1, 2, 3])   # before, at and after the step of the check
def test_resume_is_exact_around_a_redraw(data_dir, tmp_path, monkeypatch, stop):
    scripted_binding(monkeypatch, UNBOUND)
    reference = tmp_path / "straight"
    train(discovery_run(data_dir, steps=5, restart_unbound=2, checkpoint_every=5, eval_every=5), reference,
          progress=False)
    run_dir = tmp_path / "resumed"
    train(discovery_run(data_dir, steps=stop, restart_unbound=2, checkpoint_every=1, eval_every=5), run_dir,
          progress=False)
    train(discovery_run(data_dir, steps=5, restart_unbound=2, checkpoint_every=5, eval_every=5), run_dir,
          resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    assert [r for r in records(run_dir) if "loss" in r] == [r for r in records(reference) if "loss" in r]


def test_a_checkpoint_from_before_redraws_resumes_as_draw_0(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(discovery_run(data_dir, steps=2, checkpoint_every=2), run_dir, progress=False)
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        del f.attrs["draw"], f.attrs["draw_start"]
    train(discovery_run(data_dir, steps=3), run_dir, resume=True, progress=False)
    attrs = read_checkpoint(run_dir / "checkpoint.h5")["attrs"]
    assert (attrs["step"], attrs["draw"], attrs["draw_start"]) == (3, 0, 0)


def test_the_option_refuses_a_curriculum_and_keeps_its_step_whatever_the_budget():
    with pytest.raises(ConfigError, match="restart_unbound does not combine with a curriculum"):
        TrainConfig(restart_unbound=100, curriculum="slots=1:10; slots=2")
    with pytest.raises(ConfigError, match="restart_unbound"):
        TrainConfig(restart_unbound=-1)
    # Slots bind after about as many steps in a short run as in a long one: a run shorter than the
    # check never redraws (restart.due), however the budget scales.
    cpu = preset_config("discovery")
    assert {scale_budget(cpu, n).restart_unbound for n in (100, cpu.steps // 2, 4 * cpu.steps)} == {cpu.restart_unbound}
    assert scale_budget(preset_config("setpred"), 100).restart_unbound == 0


def test_the_command_line_sets_it(tmp_path):
    import json

    from tests.tool.test_cli import invoke

    out = invoke("train", "--task", "discovery", "--restart-unbound", "500", "--print-config")
    assert json.loads(out.output)["restart_unbound"] == 500
    out = invoke("train", "--task", "discovery", "--restart-unbound", "-3", "--print-config")
    assert out.exit_code == 2 and "--restart-unbound" in out.output
    # the preset's redraw turned off makes room for a curriculum, in either order on the command line
    for args in (["--restart-unbound", "0", "--curriculum", "lr=0.5x:100; lr=1x"],
                 ["--curriculum", "lr=0.5x:100; lr=1x", "--restart-unbound", "0"]):
        out = invoke("train", "--task", "discovery", *args, "--print-config")
        assert out.exit_code == 0 and json.loads(out.output)["curriculum"] == "lr=0.5x:100; lr=1x", out.output
    out = invoke("train", "--task", "discovery", "--curriculum", "lr=0.5x:100; lr=1x", "--print-config")
    assert out.exit_code == 2 and "--restart-unbound 0" in out.output


def test_a_draw_that_starts_after_the_checkpoints_step_is_a_one_line_error(data_dir, tmp_path):
    from slotref.training.config import TrainingError

    run_dir = tmp_path / "run"
    train(discovery_run(data_dir, steps=2, checkpoint_every=2), run_dir, progress=False)
    with h5py.File(run_dir / "checkpoint.h5", "r+") as f:
        f.attrs["draw_start"] = 7
    with pytest.raises(TrainingError, match="draw_start: attribute is 7, after the checkpoint.s step 2"):
        train(discovery_run(data_dir, steps=3), run_dir, resume=True, progress=False)
