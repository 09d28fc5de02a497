"""``--keep-checkpoints``: checkpoint.h5 alone by default; every N steps or the best evaluation's on request,
each a whole checkpoint that loads as checkpoint.h5 does, the choice free to change on resume."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from slotref.training.checkpoint import load_model
from slotref.training.config import ConfigError, TrainConfig, config_from_dict
from slotref.training.loop import train
from slotref.training.resolve import resolve_config, resume_config
from slotref.training.tasks import DiscoveryTask
from tests.tool.test_commands import assert_one_line_error, invoke
from tests.training.test_train import discovery_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from slotref.data.hdf5 import write_dataset

    d = tmp_path_factory.mktemp("data")
    write_dataset("tetrominoes", d / "tetrominoes.h5", 48, 0, progress=False, workers=1)
    return d


def step_of(path) -> int:
    with h5py.File(path, "r") as f:
        return int(f.attrs["step"])


def checkpoints(run_dir) -> list[str]:
    return sorted(p.name for p in run_dir.glob("checkpoint*.h5"))


def test_by_default_only_the_last_checkpoint_is_kept(data_dir, tmp_path):
    train(discovery_run(data_dir, steps=4, checkpoint_every=2, eval_every=2), tmp_path / "run", progress=False)
    assert checkpoints(tmp_path / "run") == ["checkpoint.h5"]


def test_every_n_keeps_the_checkpoint_of_every_nth_step_whatever_the_checkpoint_interval(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(discovery_run(data_dir, steps=6, checkpoint_every=6, eval_every=6, keep_checkpoints="every:2"), run_dir,
          progress=False)
    assert checkpoints(run_dir) == ["checkpoint-2.h5", "checkpoint-4.h5", "checkpoint-6.h5", "checkpoint.h5"]
    assert [step_of(run_dir / f"checkpoint-{s}.h5") for s in (2, 4, 6)] == [2, 4, 6]
    _, early = load_model(run_dir / "checkpoint-2.h5")
    _, last = load_model(run_dir / "checkpoint-6.h5")
    _, final = load_model(run_dir / "checkpoint.h5")
    w = ("slot_attention", "gru", "w_input")
    pick = lambda p: p[w[0]][w[1]][w[2]]  # noqa: E731
    assert np.array_equal(pick(last), pick(final)) and not np.array_equal(pick(early), pick(final))
    assert not list(run_dir.glob("*.tmp*"))  # written atomically: no temporary file left


def test_best_keeps_the_checkpoint_of_the_best_headline_metric_across_a_resume(data_dir, tmp_path, monkeypatch):
    scores = iter([0.2, 0.5, float("nan"), 0.3, 0.4, 0.6])  # FG-ARI at steps 2, 4, 6 | resumed: 8, 10, 12
    evaluate = DiscoveryTask.evaluate
    monkeypatch.setattr(DiscoveryTask, "evaluate",
                        lambda *a, **k: {**evaluate(*a, **k), "fg_ari": next(scores)})
    run_dir = tmp_path / "run"
    config = discovery_run(data_dir, steps=6, checkpoint_every=3, eval_every=2, keep_checkpoints="best")
    train(config, run_dir, progress=False)
    assert checkpoints(run_dir) == ["checkpoint-best.h5", "checkpoint.h5"]
    assert step_of(run_dir / "checkpoint-best.h5") == 4   # written at an evaluation without a checkpoint.h5
    _, best = load_model(run_dir / "checkpoint-best.h5")  # a whole checkpoint
    assert best["slot_attention"]["gru"]["w_input"].shape
    train(discovery_run(data_dir, steps=10, checkpoint_every=3, eval_every=2, keep_checkpoints="best"), run_dir,
          resume=True, progress=False)
    assert step_of(run_dir / "checkpoint-best.h5") == 4   # 0.3 and 0.4 after the resume: 0.5 still the best
    train(discovery_run(data_dir, steps=12, checkpoint_every=3, eval_every=2, keep_checkpoints="best"), run_dir,
          resume=True, progress=False)
    assert step_of(run_dir / "checkpoint-best.h5") == 12  # copied from the checkpoint.h5 of the last step


def test_the_option_is_checked_maps_to_the_field_and_may_change_on_resume(tmp_path):
    assert TrainConfig().keep_checkpoints == "last"
    for bad in ("every:0", "every:", "every:x", "every:²", "first", "", 3):
        with pytest.raises(ConfigError, match="keep_checkpoints"):
            TrainConfig(keep_checkpoints=bad)
    assert_one_line_error(invoke("train", "--print-config", "--keep-checkpoints", "every:-1"), "--keep-checkpoints")
    config = resolve_config(flags={"--keep-checkpoints": "every:500"})[0]
    assert config.keep_checkpoints == "every:500"
    stored = json.loads(config.to_json())
    del stored["keep_checkpoints"]                           # a run stored before the option existed
    assert config_from_dict(stored).keep_checkpoints == "last"
    (tmp_path / "config.json").write_text(config.to_json())
    resumed, notes = resume_config(tmp_path, flags={"--keep-checkpoints": "best"})
    assert resumed.keep_checkpoints == "best" and "keep_checkpoints" in notes[0]
