"""A start that fails leaves nothing behind: no empty run directory (nor its runs/ folder) after an
unknown dataset, a missing file, a GPU without CuPy, a missing tensorboardX or a fresh --resume."""

from __future__ import annotations

import sys

import pytest

from tests.tool.test_cli import assert_one_line_error, invoke

FAILED_STARTS = {
    "unknown dataset": (["--dataset", "nope"], "unknown dataset"),
    "missing file": (["--dataset", "missing.h5"], "does not exist"),
    "gpu without cupy": (["--device", "gpu"], "CuPy"),
    "tensorboard without tensorboardX": (["--logger", "tensorboard"], "tensorboardX"),
    "resume of nothing": (["--resume", "--out", "runs/fresh"], "resume"),
}


@pytest.mark.parametrize("case", FAILED_STARTS)
def test_a_failed_start_leaves_no_run_directory(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", None)          # "import cupy" fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    args, words = FAILED_STARTS[case]
    result = invoke("train", "--task", "setpred", "--fast-dev-run", "--data-dir", tmp_path / "data", "--quiet", *args)
    assert_one_line_error(result, words)
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))
