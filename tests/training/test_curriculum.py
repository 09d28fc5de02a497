"""Curricula (slotref/training/curriculum.py): parsing, one-line errors, stage switching,
what each step of a run uses, and exact resume across a stage boundary."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from slotref.training.curriculum import Curriculum, Stage, fits, follows
from slotref.training.data import num_objects
from slotref.optim import Schedule
from slotref.training.config import TrainConfig
from slotref.training.data import BatchOrder
from slotref.training.loop import train
from slotref.training import tasks as train_module
from slotref.training.presets import fast_dev_run, fit_to_file, preset_config, scale_budget
from tests.training.test_train import assert_same_checkpoints, read_checkpoint, records, setpred_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from slotref.data.hdf5 import write_dataset

    d = tmp_path_factory.mktemp("data")
    write_dataset("clevr-shapes", d / "clevr.h5", 96, 0, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    return d


# --------------------------------------------------------------------------
# Parsing.

def test_a_curriculum_parses_into_stages_with_their_steps():
    c = Curriculum.parse("slots=1,objects=1:1000; slots=3, reset_adam, warmup=500, lr=0.5x")
    first, second = c.stages
    assert (first.start, first.length, first.slots, first.min_objects, first.max_objects) == (0, 1000, 1, 1, 1)
    assert (second.start, second.length, second.slots, second.warmup, second.reset_adam, second.lr_scale) == \
        (1000, None, 3, 500, True, 0.5)
    assert str(c) == "slots=1,objects=1:1000; slots=3,lr=0.5x,warmup=500,reset_adam"
    assert Curriculum.parse(str(c)) == c


def test_objects_take_a_range_and_lr_a_value_or_a_multiple():
    c = Curriculum.parse("slots=2,objects=2-2,lr=2e-4:10; objects=1-3,reset_adam=0:5; lr=3x")
    assert (c.stages[0].min_objects, c.stages[0].max_objects, c.stages[0].lr) == (2, 2, 2e-4)
    assert (c.stages[1].start, c.stages[1].min_objects, c.stages[1].max_objects) == (10, 1, 3)
    assert c.stages[1].reset_adam is False
    assert (c.stages[2].start, c.stages[2].lr_scale) == (15, 3.0)


def test_coord_weight_sets_the_stages_loss_weight_and_round_trips():
    c = Curriculum.parse("slots=1,objects=1:4; slots=3:2; slots=3,coord_weight=2.5")
    assert [c.setting(s, "coord_weight", 1.0) for s in range(8)] == [1.0] * 6 + [2.5] * 2
    assert [c.setting(s, "coord_weight", 3.0) for s in (0, 6)] == [3.0, 2.5]   # a stage without one keeps the run's
    assert str(c) == "slots=1,objects=1:4; slots=3:2; slots=3,coord_weight=2.5"
    assert Curriculum.parse(str(c)) == c
    assert c.scaled(0.5).stages[2].coord_weight == 2.5


def test_matching_coord_weight_is_the_stages_or_the_runs_and_round_trips():
    c = Curriculum.parse("slots=1,objects=1:4; slots=3,coord_weight=2,matching_coord_weight=1")
    assert [c.setting(s, "matching_coord_weight", None) for s in (0, 3, 4, 9)] == [None, None, 1.0, 1.0]
    assert c.setting(0, "matching_coord_weight", 2.0) == 2.0          # a stage without one keeps the run's
    assert str(c) == "slots=1,objects=1:4; slots=3,coord_weight=2,matching_coord_weight=1"
    with pytest.raises(ValueError, match="matching_coord_weight must be a positive number"):
        Curriculum.parse("slots=3,matching_coord_weight=-1")
    with pytest.raises(ValueError, match="matching_coord_weight= needs set prediction"):
        Curriculum.parse("slots=2:10; slots=4,matching_coord_weight=1").check(4, None)


def test_grad_is_the_stages_or_the_runs_and_round_trips():
    c = Curriculum.parse("grad=last:4; slots=3")
    assert [c.setting(s, "grad", "all") for s in (0, 3, 4, 9)] == ["last", "last", "all", "all"]
    assert c.setting(5, "grad", "last") == "last"                     # a stage without one keeps the run's
    assert str(c) == "grad=last:4; slots=3"
    assert Curriculum.parse(str(c)) == c
    assert c.scaled(0.5).stages[0].grad == "last"


def test_the_empty_curriculum_is_the_plain_schedule():
    for text in ("", "  "):
        c = Curriculum.parse(text)
        assert c.plain and c.stages == (Stage(index=0, start=0),)
    assert not Curriculum.parse("slots=3").plain


@pytest.mark.parametrize("text, names", [
    ("slots=1:1000; slots=3:500", "'slots=3:500'"),           # the last stage is open-ended
    ("slots=1; slots=3", "'slots=1'"),                        # a length is needed before the last
    ("slots=1:0; slots=3", "'slots=1:0'"),
    ("slots=1:ten; slots=3", "'slots=1:ten'"),
    ("slots=0", "slots"),
    ("colours=3", "'colours'"),
    ("slots=2,slots=3", "twice"),
    ("objects=3-1,slots=3", "'3-1'"),
    ("objects=a", "'a'"),
    ("lr=-1", "'-1'"),
    ("lr=fast", "'fast'"),
    ("lr=", "lr needs a value"),
    ("warmup=-5", "warmup"),
    ("reset_adam=maybe", "'maybe'"),
    ("coord_weight=0", "coord_weight must be a positive number"),
    ("coord_weight=heavy", "'heavy'"),
    ("coord_weight=inf", "'inf'"),
    ("grad=first", "grad must be one of all, last, got 'first'"),
    ("grad=", "grad needs a value"),
    ("slots=1,objects=2:10; slots=3", "objects=2 needs at least as many slots"),
    ("slots=1:10;; slots=3", "empty stage"),
    ("slots=1:10; slots=3;", "empty stage"),
])
def test_a_malformed_curriculum_is_a_one_line_error_naming_the_bad_part(text, names):
    with pytest.raises(ValueError) as err:
        Curriculum.parse(text)
    message = str(err.value)
    assert "\n" not in message and names in message


def test_check_refuses_what_a_run_cannot_follow():
    with pytest.raises(ValueError, match="last stage has slots=2 .* num_slots=3"):
        Curriculum.parse("slots=1,objects=1:10; slots=2").check(num_slots=3, max_objects=3)
    with pytest.raises(ValueError, match="up to 3 objects need as many slots"):
        Curriculum.parse("slots=2:10; slots=3").check(num_slots=3, max_objects=3)
    with pytest.raises(ValueError, match="shared slot initialisation"):
        Curriculum.parse("slots=1,objects=1:10; slots=3").check(3, 3, slot_init="per_slot")
    with pytest.raises(ValueError, match="set prediction"):
        Curriculum.parse("objects=1:10; slots=4").check(4, None)
    with pytest.raises(ValueError, match="coord_weight= needs set prediction"):
        Curriculum.parse("slots=2:10; slots=4,coord_weight=3").check(4, None)
    Curriculum.parse("slots=1,objects=1:10; slots=3").check(3, 3)
    Curriculum.parse("slots=2:10; slots=4").check(4, None)  # discovery: slots only


# --------------------------------------------------------------------------
# Stage switching and what a step uses.

def test_the_stage_of_a_step_switches_at_the_boundaries():
    c = Curriculum.parse("slots=1,objects=1:3; slots=2,objects=2:2; slots=3")
    assert [c.stage_at(s).index for s in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert [c.slots(s, 3) for s in range(6)] == [1, 1, 1, 2, 2, 3]
    assert [c.stage_at(s).index for s in (10**6,)] == [2]


def test_adam_is_reset_only_at_the_first_step_of_a_stage_that_asks():
    c = Curriculum.parse("slots=1,objects=1,reset_adam:3; slots=3,reset_adam:2; slots=3")
    assert [s for s in range(10) if c.resets_adam(s)] == [0, 3]


def test_the_learning_rate_is_the_schedule_rescaled_and_rewarmed_per_stage():
    schedule = Schedule(4e-4, warmup_steps=2, decay_steps=10)
    c = Curriculum.parse("slots=1,objects=1:4; lr=0.5x,warmup=4:4; lr=1e-4")
    for step in range(4):
        assert c.learning_rate(step, schedule) == schedule(step)
    for step in range(4, 8):
        assert c.learning_rate(step, schedule) == pytest.approx(schedule(step) * 0.5 * (step - 4) / 4)
    assert c.learning_rate(9, schedule) == pytest.approx(schedule(9) / 4)
    assert Curriculum.parse("").learning_rate(7, schedule) == schedule(7)


def test_targets_are_cut_to_the_stages_slots():
    targets = np.zeros((2, 3, 19), np.float32)
    c = Curriculum.parse("slots=1,objects=1:2; slots=3")
    assert c.targets(targets, 1, 3).shape == (2, 1, 19)
    assert c.targets(targets, 2, 3) is targets
    assert c.targets(None, 0, 3) is None


def test_a_stage_draws_only_its_scenes_in_an_order_fixed_by_seed_stage_and_step():
    counts = np.array([1, 2, 3, 1, 2, 3, 1, 1, 3, 2, 1, 2])
    c = Curriculum.parse("slots=1,objects=1:5; slots=2,objects=2-2:5; slots=3")
    plain = BatchOrder(len(counts), 2, seed=0)
    order = c.batch_order(plain, counts, batch_size=2, seed=0)
    first = np.concatenate([order(s) for s in range(5)])
    assert set(counts[first]) == {1}
    assert sorted(first[:5]) == sorted(np.flatnonzero(counts == 1))   # an epoch is a permutation of the subset
    assert set(counts[np.concatenate([order(s) for s in range(5, 10)])]) == {2}
    for s in range(10, 14):                                            # all scenes: the run's plain order
        np.testing.assert_array_equal(order(s), plain(s))
    again = c.batch_order(BatchOrder(len(counts), 2, seed=0), counts, batch_size=2, seed=0)
    for s in (7, 2, 9, 0, 12):                                         # no hidden state, any order of calls
        np.testing.assert_array_equal(again(s), order(s))
    other = c.batch_order(BatchOrder(len(counts), 2, seed=1), counts, batch_size=2, seed=1)
    assert not all(np.array_equal(other(s), order(s)) for s in range(5))


def test_a_stage_with_fewer_scenes_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="only 1 training scenes"):
        Curriculum.parse("slots=1,objects=1:5; slots=3").batch_order(None, np.array([1, 2, 3]), 2, 0)


def test_num_objects_counts_the_real_rows_of_the_targets():
    t = np.zeros((3, 3, 19), np.float32)
    t[0, :1, -1] = 1
    t[1, :3, -1] = 1
    np.testing.assert_array_equal(num_objects(t), [1, 3, 0])
    assert num_objects(None) is None


# --------------------------------------------------------------------------
# Runs.

CURRICULUM = ("slots=2,objects=2,grad=last:3; slots=4,reset_adam,warmup=2:2; "
              "slots=4,coord_weight=3,matching_coord_weight=1")


def test_a_run_follows_its_curriculum(data_dir, tmp_path, monkeypatch):
    batches, forwards = [], []
    batch, loss = train_module.SetPredictionTask.batch, train_module.SetPredictionTask.loss

    def recording_batch(task, be, split, idx):
        batches.append(num_objects(split.targets[idx]))
        return batch(task, be, split, idx)

    def recording_loss(task, params, images, targets, noise, coord_weight=None, matching_coord_weight=None,
                       grad=None):
        forwards.append((noise.shape[1], targets.shape[1], coord_weight, matching_coord_weight, grad))
        return loss(task, params, images, targets, noise, coord_weight, matching_coord_weight, grad)

    monkeypatch.setattr(train_module.SetPredictionTask, "batch", recording_batch)
    monkeypatch.setattr(train_module.SetPredictionTask, "loss", recording_loss)
    run_dir = tmp_path / "curriculum"
    train(setpred_run(data_dir, curriculum=CURRICULUM), run_dir, progress=False)
    assert forwards == [(2, 2, 1.0, None, "last")] * 3 + [(4, 4, 1.0, None, "all")] * 2 + [(4, 4, 3.0, 1.0, "all")]
    assert all(n.max() <= 2 for n in batches[:3]) and max(n.max() for n in batches[3:]) > 2
    lrs = [r["lr"] for r in records(run_dir) if "loss" in r]
    assert lrs[3] == 0.0 and lrs[4] > 0.0                     # the warm-up restarts at the switch
    assert read_checkpoint(run_dir / "checkpoint.h5")["attrs"]["adam_t"] == 3   # reset at step 3
    assert json.loads((run_dir / "config.json").read_text())["curriculum"] == CURRICULUM


def test_a_one_stage_curriculum_with_the_runs_k_trains_as_without_one(data_dir, tmp_path):
    train(setpred_run(data_dir), tmp_path / "plain", progress=False)
    train(setpred_run(data_dir, curriculum="slots=4"), tmp_path / "one-stage", progress=False)
    assert_same_checkpoints(tmp_path / "plain" / "checkpoint.h5", tmp_path / "one-stage" / "checkpoint.h5")


def test_a_stages_grad_trains_as_the_runs_option(data_dir, tmp_path):
    """A one-stage ``grad=last`` trains as ``grad="last"``, and differently from the paper's gradient."""
    train(setpred_run(data_dir, grad="last"), tmp_path / "option", progress=False)
    train(setpred_run(data_dir, curriculum="grad=last"), tmp_path / "stage", progress=False)
    train(setpred_run(data_dir), tmp_path / "all", progress=False)
    assert_same_checkpoints(tmp_path / "option" / "checkpoint.h5", tmp_path / "stage" / "checkpoint.h5")
    option, paper = (read_checkpoint(tmp_path / d / "checkpoint.h5") for d in ("option", "all"))
    weights = [k for k in option if k.startswith("params/slot_attention/")]
    assert weights and any(not np.array_equal(option[k], paper[k]) for k in weights)


@pytest.mark.parametrize("stop", [2, 3, 4, 5])   # before, at and after the stage boundaries (steps 3 and 5)
def test_resume_is_exact_across_a_stage_boundary(data_dir, tmp_path, stop):
    reference = tmp_path / "straight"
    train(setpred_run(data_dir, curriculum=CURRICULUM), reference, progress=False)
    run_dir = tmp_path / "resumed"
    train(setpred_run(data_dir, curriculum=CURRICULUM, steps=stop, checkpoint_every=1), run_dir, progress=False)
    train(setpred_run(data_dir, curriculum=CURRICULUM), run_dir, resume=True, progress=False)
    assert_same_checkpoints(run_dir / "checkpoint.h5", reference / "checkpoint.h5")
    assert [r for r in records(run_dir) if "loss" in r] == [r for r in records(reference) if "loss" in r]


def test_a_bad_curriculum_fails_before_the_run_directory_is_made(data_dir, tmp_path):
    with pytest.raises(ValueError, match="slots=1"):
        train(setpred_run(data_dir, curriculum="slots=1:3; slots=4"), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_configs_saved_before_curricula_existed_still_load():
    d = json.loads(TrainConfig().to_json())
    d.pop("curriculum")
    assert TrainConfig.from_dict(d).curriculum == ""


def test_the_cpu_set_prediction_presets_curriculum_fits_the_preset():
    config = preset_config("setpred", preset="cpu")
    c = Curriculum.parse(config.curriculum)
    c.check(config.model.num_slots, config.max_objects, config.model.slot_attention.slot_init)
    assert preset_config("setpred", preset="paper").curriculum == ""
    assert preset_config("discovery", preset="cpu").curriculum == ""


def test_a_scaled_curriculum_keeps_its_stages_in_proportion():
    c = Curriculum.parse("slots=1,objects=1:1000; slots=3,reset_adam,warmup=500")
    assert str(c.scaled(0.1)) == "slots=1,objects=1:100; slots=3,warmup=50,reset_adam"
    assert c.scaled(0.0001).stages[0].length == 1 and c.scaled(0.0001).stages[1].warmup == 1


def test_a_shorter_budget_scales_the_presets_curriculum():
    config = preset_config("setpred", preset="cpu")
    assert scale_budget(config, 1250).curriculum == ("slots=1,objects=1:100; slots=3,objects=2-3,warmup=50,"
                                                     "reset_adam:600; slots=3,coord_weight=2,matching_coord_weight=1")
    tiny = fast_dev_run(config)
    assert tiny.curriculum == ("slots=1,objects=1:1; slots=3,objects=2-3,warmup=1,reset_adam:2; "
                               "slots=3,coord_weight=2,matching_coord_weight=1")
    assert fits(tiny)


def test_experiments_scale_the_curriculum_and_drop_it_where_k_is_fixed():
    from slotref.experiments import plans, runner
    from slotref.models import setpred_config

    config = preset_config("setpred", preset="cpu")
    mlp = replace(config, model=replace(config.model, model="slot-mlp"))
    per_slot = replace(config, model=setpred_config(32, num_slots=3, slot_attention=replace(
        config.model.slot_attention, slot_init="per_slot")))
    more = replace(config, max_objects=6, model=replace(config.model, num_slots=6))
    assert [follows(c) for c in (config, mlp, per_slot, more)] == [True, False, False, True]
    assert [fits(c) for c in (config, mlp, per_slot, more)] == [True, False, False, False]
    opts = plans.Options(preset="cpu", steps=1250)
    for name, transform, curriculum in (
            ("default", plans.identity, "slots=1,objects=1:100; slots=3,objects=2-3,warmup=50,reset_adam:600; "
                                        "slots=3,coord_weight=2,matching_coord_weight=1"),
            ("mlp", plans.with_model(model="slot-mlp"), ""),
            ("max6", plans.compose(plans.with_train(max_objects=6), plans.with_model(num_slots=6)), "")):
        configuration = plans.Configuration(name=name, task="setpred", dataset="clevr-shapes",
                                            transform=transform, probes=())
        assert runner.run_config(configuration, opts, seed=0).curriculum == curriculum, name


def test_a_users_file_trains_without_the_presets_curriculum_unless_asked(data_dir):
    config = replace(preset_config("setpred", preset="cpu"), dataset=str(data_dir / "clevr.h5"))
    fitted, notes = fit_to_file(config)
    assert fitted.curriculum == "" and any("curriculum" in n for n in notes)
