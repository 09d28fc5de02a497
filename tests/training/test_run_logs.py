"""What a run keeps of itself: elapsed time in train.csv, the printed lines in console.log, the package
versions in command.txt, and the warning of unbound slots once per run with its reason."""

from __future__ import annotations

import csv
import importlib.metadata

import pytest

from slotref.training.logs import write_command
from slotref.training.loop import train
from tests.training.test_train import discovery_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from slotref.data.hdf5 import write_dataset

    d = tmp_path_factory.mktemp("data")
    write_dataset("tetrominoes", d / "tetrominoes.h5", 48, 0, progress=False, workers=1)
    return d


def test_unbound_slots_are_warned_once_per_reason_and_the_run_keeps_its_console_and_elapsed_time(
        data_dir, tmp_path, capsys, monkeypatch):
    # the binding diagnostics of the three evaluations (steps 2, 4, 6): the same sign twice, then a second one
    even = {"entropy": [0.97], "slot_cosine": [0.5], "slot_change": [0.1]}
    seen = iter([even, {**even, "entropy": [0.98]}, {**even, "slot_cosine": [0.99]}])
    monkeypatch.setattr("slotref.training.binding.WARN_FROM_STEP", 0)
    monkeypatch.setattr("slotref.training.loop.evaluate_binding", lambda *args: next(seen))
    run_dir = tmp_path / "run"
    train(discovery_run(data_dir, steps=6, eval_every=2, checkpoint_every=6), run_dir, progress=False)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: slots have not bound")]
    assert len(warnings) == 2, out                                   # steps 2 and 6: not again at step 4
    assert "by step 2: attention entropy 0.97 > 0.9 (even attention)" in warnings[0]
    assert "slot cosine 0.99 > 0.95 (near-identical slots)" in warnings[1] and "by step 6" in warnings[1]
    console = (run_dir / "console.log").read_text().splitlines()
    assert [line for line in console if line.startswith(("step ", "warning"))] == \
        [line for line in out.splitlines() if line.startswith(("step ", "warning"))]
    assert [line.split(":")[0] for line in console if line.startswith("step ")] == ["step 2", "step 4", "step 6"]

    # train.csv: the seconds since training started, beside the epoch
    with open(run_dir / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert len(rows) == 6 and 0 <= elapsed[0] <= elapsed[-1] < 600
    assert float(rows[-1]["time"]) - float(rows[0]["time"]) == pytest.approx(elapsed[-1] - elapsed[0], abs=0.01)

def test_command_txt_records_the_package_versions(tmp_path):
    write_command(tmp_path, ["slotref", "train"])
    text = (tmp_path / "command.txt").read_text()
    for name in ("numpy", "scipy", "autograd", "h5py"):
        assert f"{name} {importlib.metadata.version(name)}" in text
    assert "python 3." in text


def test_console_log_ends_with_the_closing_lines_the_terminal_showed(tmp_path, monkeypatch):
    from tests.tool.test_cli import invoke

    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--task", "setpred", "--fast-dev-run", "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = (tmp_path / "runs").iterdir()
    console = (run_dir / "console.log").read_text()
    closing = result.output[result.output.index("AP (%)"):]
    assert console.rstrip().endswith(closing.rstrip()) and console.startswith("step ")
