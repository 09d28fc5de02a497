"""``info`` says what ``train`` will do (the ranks it starts), the real package versions, and commands
spelled as the user invoked slotref."""

from __future__ import annotations

import importlib.metadata

import pytest
from click.testing import CliRunner

from slotref.cli import main as cli
from slotref.training import launch
from slotref.training.presets import preset_config
from slotref.training.resolve import ranks_to_launch


def info(prog_name="slotref"):
    result = CliRunner().invoke(cli, ["info"], prog_name=prog_name)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(launch, "can_launch", lambda: True)
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    monkeypatch.setattr(launch, "launch_error", lambda n, timeout=60.0: None)
    monkeypatch.delenv("SLOTREF_DEVICE", raising=False)


def test_info_names_the_ranks_train_starts(two_cores):
    n, _ = ranks_to_launch("auto", preset_config("setpred"), typed=True)
    assert n == 2
    assert "slotref train on the CPU starts 2 ranks under mpiexec" in info()
    assert "no MPI" not in info()


def test_info_says_train_runs_in_one_process_where_it_does(two_cores, monkeypatch):
    monkeypatch.setattr(launch, "can_launch", lambda: False)
    assert ranks_to_launch("auto", preset_config("setpred"), typed=True)[0] == 1
    assert "world: 1 process; slotref train runs in it" in info()


def test_info_prints_real_versions_and_the_command_as_invoked(two_cores):
    text = info("cli.py")
    assert f"autograd {importlib.metadata.version('autograd')}" in text and ".x," not in text
    assert "python cli.py train" in text and "slotref train" not in text
