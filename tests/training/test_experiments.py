"""The experiment runner as a specification: every experiment runs end
to end, writes its table next to the paper's numbers, and a second call neither
retrains nor re-evaluates.

Each experiment runs on a tiny model and tiny data (``smoke_overrides``: 32x32
or 35x35, 8 channels, 48 scenes, 2 steps), in the temporary directory of the
test (``runs/`` and ``data/`` are relative to it); and once with the cpu
preset's real architectures for 2 steps on a few scenes (slow where that means
CLEVR6 discovery at 128x128).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from slotref.cli.experiment import experiment
from slotref.data.hdf5 import load_dataset
from slotref.experiments import runner
from slotref.experiments.plans import ABLATIONS, EXPERIMENTS, ExperimentError, Options, configurations
from slotref.experiments.runner import run_config, run_experiment, scale_budget, smoke_overrides
from slotref.models import init_model
from slotref.training import DivergenceError, evaluation, loop as training
from slotref.training.presets import preset_config


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """runs/ and data/ of every test in its own temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny(seeds=1, steps=2, **kw) -> Options:
    return Options(seeds=seeds, overrides=functools.partial(smoke_overrides, steps=steps), **kw)


def run(name, opts, **kw):
    return run_experiment(name, opts, progress=False, echo=lambda *_: None, **kw)


class Calls:
    """Wraps a function and counts its calls (to see what a second run does again)."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kw):
        self.count += 1
        return self.fn(*args, **kw)


def cell(result, table, row, column):
    t = next(t for t in result["tables"] if t["key"] == table)
    return next(r for r in t["rows"] if r["row"] == row)["cells"][column]


# --------------------------------------------------------------------------
# Each experiment end to end.

def test_table3_writes_mean_and_std_over_seeds_next_to_the_papers_numbers():
    result = run("table3", tiny(seeds=2))
    out = Path("runs/experiments/table3")
    md = (out / "results.md").read_text()
    assert "| Slot Attention, paper | 94.3 ± 1.1 | 86.7 ± 1.4 | 56.0 ± 3.6 | 10.8 ± 1.7 | 0.9 ± 0.2 |" in md
    assert "| Slot MLP, paper | 19.8 ± 1.6 | 1.4 ± 0.3 | 0.3 ± 0.2 | 0.0 ± 0.0 | 0.0 ± 0.0 |" in md
    assert json.loads((out / "results.json").read_text())["tables"] == result["tables"]
    for model in ("slot-attention", "slot-mlp"):
        for seed in (0, 1):
            with h5py.File(out / f"{model}-seed{seed}" / "checkpoint.h5", "r") as f:
                assert f.attrs["step"] == 2
        c = cell(result, "ap", "Slot Attention" if model == "slot-attention" else "Slot MLP", "AP_inf")
        assert c["n"] == 2 and c["mean"] == pytest.approx(np.mean(c["values"]))
        assert c["std"] == pytest.approx(np.std(c["values"]))
        assert (c["median"], c["min"], c["max"]) == (np.median(c["values"]), min(c["values"]), max(c["values"]))
        assert f"(median {c['median']:.1f}, {c['min']:.1f} to {c['max']:.1f})" in md


def test_runs_another_process_is_training_are_left_out_and_named():
    import os
    import socket

    from slotref import io

    busy = Path("runs/experiments/table3/slot-attention-seed0")
    busy.mkdir(parents=True)
    (busy / io.LOCK_NAME).write_text(f"{os.getppid()} {socket.gethostname()}\n")   # a live process's lock
    result = run("table3", tiny(seeds=2), only=("slot-attention",))
    assert [(r["seed"], r["status"]) for r in result["runs"]] == [(0, "busy"), (1, "trained")]
    assert cell(result, "ap", "Slot Attention", "AP_inf")["n"] == 1
    assert result["busy"] == [str(busy)]
    assert f"being trained by another process: {busy}" in Path("runs/experiments/table3/results.md").read_text()
    (busy / io.LOCK_NAME).unlink()                       # that process ended: the next call trains seed 0
    again = run("table3", tiny(seeds=2), only=("slot-attention",))
    assert [(r["seed"], r["status"]) for r in again["runs"]] == [(0, "trained"), (1, "finished earlier")]
    assert again["busy"] == []


def test_table1_has_both_models_on_every_discovery_dataset():
    result = run("table1", tiny())
    table = result["tables"][0]
    assert table["columns"] == ["tetrominoes", "multi-dsprites", "clevr6-shapes"]
    assert [r["row"] for r in table["rows"]] == ["Slot Attention", "Slot MLP"]
    assert table["rows"][1]["paper"] == {"tetrominoes": [25.1, 34.3], "multi-dsprites": [60.3, 1.8],
                                         "clevr6-shapes": [60.4, 6.6]}
    config = json.loads(Path("runs/experiments/table1/clevr6-shapes-slot-mlp-seed0/config.json").read_text())
    assert config["task"] == "discovery" and config["model"]["model"] == "slot-mlp"


def test_iterations_evaluates_one_model_trained_with_three_iterations_at_t_3_to_7(monkeypatch):
    load_run = Calls(evaluation.load_run)
    monkeypatch.setattr(evaluation, "load_run", load_run)
    result = run("iterations", tiny())
    assert [t["key"] for t in result["tables"]] == ["setpred", "discovery"]
    for t in result["tables"]:
        assert [r["row"] for r in t["rows"]] == [f"T = {t}" for t in (3, 4, 5, 6, 7)]
    assert load_run.count == 2  # one model per task, loaded once for its five evaluations
    cached = json.loads(Path("runs/experiments/iterations/tetrominoes-seed0/evaluations.json").read_text())
    assert sorted(cached["results"]) == [f"validation K=4 T={t}" for t in (3, 4, 5, 6, 7)]


def test_more_objects_trains_on_at_most_six_and_tests_on_exactly_n_with_k_equal_n():
    result = run("more-objects", tiny())
    config = json.loads(Path("runs/experiments/more-objects/setpred-max6-seed0/config.json").read_text())
    assert (config["data_max_objects"], config["max_objects"], config["model"]["num_slots"]) == (6, 6, 6)
    assert max(load_dataset(config["dataset"]).num_objects) <= 6
    keys = json.loads(Path("runs/experiments/more-objects/setpred-max6-seed0/evaluations.json").read_text())["results"]
    for n in (6, 7, 8, 9, 10):
        files = list(Path("data").glob(f"clevr-shapes-64px-n8-max{n}-min{n}-s*.h5"))  # train.LARGE_SCENES
        assert len(files) == 1 and set(load_dataset(str(files[0])).num_objects) == {n}
        assert f"{files[0].name} K={n} T=3" in keys
    discovery = next(t for t in result["tables"] if t["key"] == "discovery")
    assert [r["row"] for r in discovery["rows"]] == ["CLEVR6-like (validation), K = 7 as trained",
                                                     "CLEVR10-like (3-10 objects), K = 11"]
    assert discovery["columns"] == [f"T = {t}" for t in (3, 4, 5, 6, 7)]


# The weighted sum (Figure 7) lets the GRU's tanh saturate: overflow warnings, as the paper's instability.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_ablations_run_every_default_switch_on_both_tasks():
    result = run("ablations", tiny())
    default_rows = [label for _, label, _, default in ABLATIONS if default]
    for t in result["tables"]:
        assert [r["row"] for r in t["rows"]] == default_rows
    out = Path("runs/experiments/ablations")
    sa = json.loads((out / "setpred-no-gru-seed0/config.json").read_text())["model"]["slot_attention"]
    assert sa["update"] == "none"
    model = json.loads((out / "tetrominoes-soft-kmeans-seed0/config.json").read_text())["model"]
    assert model["slot_attention"]["projections"] == "identity"
    assert model["mlp_size"] == model["slot_attention"]["slot_size"] == model["slot_attention"]["input_size"]


# --------------------------------------------------------------------------
# Resuming.

def test_a_second_call_neither_retrains_nor_reevaluates(monkeypatch):
    first = run("table3", tiny(seeds=2))
    train, load_run = Calls(training.train), Calls(evaluation.load_run)
    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(evaluation, "load_run", load_run)
    second = run("table3", tiny(seeds=2))
    assert (train.count, load_run.count) == (0, 0)
    assert second["tables"] == first["tables"]
    assert {r["status"] for r in second["runs"]} == {"finished earlier"}


def test_an_interrupted_run_resumes_from_its_checkpoint(monkeypatch):
    real_train = training.train

    def interrupted(config, run_dir, resume=False, progress=True, on_eval=None):
        def stop(step, _):
            raise KeyboardInterrupt(f"interrupted after step {step}")
        return real_train(config, run_dir, resume, progress, on_eval=stop)

    opts = tiny(steps=4, tasks=("setpred",))
    opts = replace(opts, overrides=lambda c: replace(smoke_overrides(c, steps=4), eval_every=2, checkpoint_every=2))
    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("iterations", opts)
    run_dir = Path("runs/experiments/iterations/setpred-seed0")
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        assert f.attrs["step"] == 2

    train = Calls(real_train)
    calls = []
    monkeypatch.setattr(training, "train", lambda *a, **kw: calls.append(kw.get("resume")) or train(*a, **kw))
    result = run("iterations", opts)
    assert calls == [True]
    assert result["runs"][0]["status"] == "trained" and result["runs"][0]["step"] == 4
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        assert f.attrs["step"] == 4


def test_a_run_directory_of_another_budget_is_an_error_not_mixed_into_the_table():
    run("table3", tiny(steps=2))
    with pytest.raises(ExperimentError, match="holds another run .*steps"):
        run("table3", tiny(steps=3))


def test_a_diverged_seed_is_counted_not_averaged_and_not_retrained(monkeypatch):
    real_train = training.train

    def diverging(config, run_dir, **kw):
        if config.seed == 1:
            raise DivergenceError("loss became nan at step 1; the last good checkpoint (none) is kept")
        return real_train(config, run_dir, **kw)

    monkeypatch.setattr(training, "train", Calls(diverging))
    result = run("table3", tiny(seeds=2), only=("slot-attention",))
    c = cell(result, "ap", "Slot Attention", "AP_inf")
    assert (c["n"], c["diverged"]) == (1, 1)
    assert "(1 of 2 diverged)" in Path("runs/experiments/table3/results.md").read_text()
    train = Calls(real_train)
    monkeypatch.setattr(training, "train", train)
    run("table3", tiny(seeds=2), only=("slot-attention",))
    assert train.count == 0


# --------------------------------------------------------------------------
# Configurations and budgets.

def test_all_seeds_train_on_the_same_data():
    run("table3", tiny(seeds=2), only=("slot-attention",))
    datasets = {json.loads(Path(f"runs/experiments/table3/slot-attention-seed{s}/config.json").read_text())["dataset"]
                for s in (0, 1)}
    assert len(datasets) == 1


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_the_schedule_scales_with_the_steps(preset):
    base = preset_config("setpred", preset=preset)
    scaled = scale_budget(base, base.steps // 10)
    assert scaled.steps == base.steps // 10
    for name in ("warmup_steps", "decay_steps", "eval_every", "checkpoint_every"):
        assert getattr(scaled, name) == round(getattr(base, name) / 10)
    assert scale_budget(base, None) == base


@pytest.mark.parametrize("task,dataset", [("setpred", "clevr-shapes"), ("discovery", "tetrominoes")])
def test_every_ablation_changes_only_its_own_switch(task, dataset):
    configs, _ = configurations("ablations", Options(tasks=(task,), dataset=dataset), only=tuple(
        f"{'setpred' if task == 'setpred' else dataset}-{name}" for name, *_ in ABLATIONS))
    default = run_config(configs[0], Options(), 0)
    expected = {"sum": {"aggregation"}, "sum-layernorm": {"aggregation"},
                "per-slot-init": {"slot_init"} | ({"curriculum"} if task == "setpred" else set()),
                "softmax-inputs": {"softmax_axis", "aggregation"}, "no-gru": {"update"},
                "no-layernorm": {"layer_norms"}, "no-residual-mlp": {"residual_mlp"},
                "temperature-one": {"temperature"}, "epsilon-denominator": {"epsilon_placement"},
                "no-position-embedding": {"position_embedding"}, "no-decay": {"decay_steps"},
                "no-warmup": {"warmup_steps"},
                # another training T also tests with it (the setpred preset tests with T = 5)
                **{f"train-iters-{t}": {"num_iterations"} | ({"eval_iterations"} if task == "setpred" else set())
                   for t in (1, 2, 5)},
                "more-slots": {"num_slots"} | ({"curriculum"} if task == "setpred" else set()),
                "soft-kmeans": {"projections", "update", "layer_norms"} | (
                    {"mlp_size", "input_size"} if task == "discovery" else set())}
    flat = lambda c: runner._flat(json.loads(c.to_json()))  # noqa: E731
    for configuration, (name, *_) in zip(configs[1:], ABLATIONS[1:]):
        config = run_config(configuration, Options(), 0)
        changed = {k.split(".")[-1] for k, v in flat(config).items() if flat(default)[k] != v}
        assert changed == expected[name], name
        init_model(np.random.default_rng(0), config.model)  # a model the switch can build


def test_the_ablations_experiment_has_a_row_for_every_switch_train_offers():
    """Every value of every appendix B switch of ``SlotAttentionConfig`` (``slot_attention.ABLATIONS``, from
    which ``train``'s options are made) other than the paper's is a row of the ablations experiment."""
    from slotref.slot_attention import ABLATIONS as SWITCHES, SlotAttentionConfig

    default = SlotAttentionConfig()
    wanted = {(name, value) for name, (_, values) in SWITCHES.items()
              for value in ((True, False) if values is bool else values) if value != getattr(default, name)}
    config = preset_config("setpred")
    rows = {(name, getattr(transform(config).model.slot_attention, name)) for _, _, transform, _ in ABLATIONS
            for name in SWITCHES}
    assert wanted <= rows


def test_unknown_configurations_and_empty_selections_are_one_line_errors():
    with pytest.raises(ExperimentError, match="no configuration 'nope'"):
        configurations("table3", Options(), only=("nope",))
    with pytest.raises(ExperimentError, match="no configuration of table1 is left"):
        configurations("table1", Options(tasks=("setpred",)))


def test_the_cli_prints_the_papers_numbers_beside_a_run():
    # The command line takes the paper's numbers from slotref.paper: Table 3's
    # Slot Attention row under an AP table, Table 1's FG-ARI under a discovery run.
    from slotref.cli.common import result_table

    ap_text = result_table("setpred", preset_config("setpred"), {"ap_inf": 0.5})
    assert "94.3 ± 1.1" in ap_text and "0.9 ± 0.2" in ap_text and "50.0" in ap_text
    ari_text = result_table("discovery", preset_config("discovery", "tetrominoes"), {"fg_ari": 0.25})
    assert "25.0" in ari_text and "99.5 ± 0.2" in ari_text
    assert "parameter average, ema 0.999" in ap_text and "parameter average, ema 0.999" in ari_text
    paper_text = result_table("discovery", preset_config("discovery", "tetrominoes", "paper"), {"fg_ari": 0.25})
    assert "average" not in paper_text   # the paper's presets evaluate the parameters themselves


# --------------------------------------------------------------------------
# The command.

def invoke(*args):
    return CliRunner().invoke(experiment, [str(a) for a in args], catch_exceptions=True)


def test_the_command_runs_an_experiment_and_prints_its_table():
    result = invoke("table3", "--smoke", "--seeds", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert "table3 [1/2] slot-attention seed 0: training 2 steps" in result.output
    assert "| Slot Attention, paper | 94.3 ± 1.1" in result.output
    md = Path("runs/experiments-smoke/table3/results.md").read_text()
    assert "`slotref experiment table3 --preset cpu --seeds 1 --smoke`" in md
    again = invoke("table3", "--smoke", "--seeds", 1, "--quiet")
    assert "finished earlier (step 2), not retrained" in again.output


def test_the_command_lists_configurations_and_fails_in_one_line():
    listing = invoke("ablations", "--list")
    assert listing.exit_code == 0 and "tetrominoes-soft-kmeans" in listing.output
    assert "(optional)" in listing.output
    result = invoke("table3", "--smoke", "--config", "nope")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: table3 has no configuration 'nope'")


# --------------------------------------------------------------------------
# The presets' real architectures (2 steps on a few scenes).

def few_scenes(config):
    return replace(config, data_size=40, eval_size=8, batch_size=2, steps=2, warmup_steps=1, decay_steps=100,
                   eval_every=2, checkpoint_every=2)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
# CLEVR6 discovery is 128x128 with K = 7 (and K = 11 on 10 objects): 20-60 s on two cores.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("table1", "more-objects") else n
                                  for n in EXPERIMENTS])
def test_every_experiment_runs_with_the_presets_architectures(name):
    result = run(name, Options(seeds=1, overrides=few_scenes))
    assert result["tables"] and all(r["status"] == "trained" for r in result["runs"])
