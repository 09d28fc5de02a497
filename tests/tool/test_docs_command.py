"""The documentation travels with the package: ``slotref docs NAME`` prints a page from the checkout or
the installed wheel alike, and every page the commands point to (``--help``, a run's closing lines) is one
it holds."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from slotref.cli import main as cli
from slotref.cli.docs import pages
from tests.tool.test_cli import invoke

ROOT = Path(__file__).resolve().parents[2]


def pointers(text: str) -> list[str]:
    """The pages ``text`` points to as ``slotref docs NAME`` (across line wraps)."""
    return re.findall(r"slotref docs ([\w-]+)", " ".join(text.split()))


def help_texts(command=cli, path=()):
    """(command path, --help output) of every command and subcommand."""
    yield path, invoke(*path, "--help").output
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from help_texts(sub, (*path, name))


def test_docs_prints_a_page_by_any_of_its_names_and_lists_them_all():
    text = (ROOT / "docs" / "curriculum.md").read_text(encoding="utf-8")
    for name in ("curriculum", "curriculum.md", "docs/curriculum.md"):
        result = invoke("docs", name)
        assert result.exit_code == 0 and result.output == text
    listing = invoke("docs").output
    assert {"curriculum", "results", "scale", "api"} <= {line.split()[0] for line in listing.splitlines() if line}
    assert "Training curricula" in listing
    unknown = invoke("docs", "nope")
    assert unknown.exit_code == 2 and "no page 'nope'; the pages are: " in unknown.output


def test_the_package_holds_the_repository_docs_and_the_wheel_ships_them():
    assert set(pages()) == {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert (ROOT / "slotref" / "docs").resolve() == (ROOT / "docs").resolve()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "docs/*.md" in setup["options.package_data"]["slotref"]


def test_every_help_text_points_to_pages_the_package_holds_and_to_no_path():
    known, seen = set(pages()), set()
    for path, text in help_texts():
        flat = " ".join(text.split())
        assert not re.search(r"\bdocs/[\w-]+\.md|\bexamples/", flat), (path, flat)   # not in a wheel
        seen |= set(pointers(text))
    assert seen and seen <= known, seen - known
    assert {"curriculum", "scale", "datasets"} <= seen


def test_a_training_runs_closing_lines_point_to_pages_the_package_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--task", "setpred", "--fast-dev-run")
    assert result.exit_code == 0, result.output
    closing = result.output[result.output.index("AP (%)"):]
    assert not re.search(r"\bdocs/[\w-]+\.md", closing)
    assert {"results", "curriculum"} <= set(pointers(closing)) <= set(pages())


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_prints_its_docs(tmp_path):
    """pip wheel (building in an isolated environment: needs the package index), installed in a venv
    outside the checkout whose other dependencies are this environment's."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", tmp_path / "wheel"],
                   check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")     # a path entry: the editable finder stays out
    wheel = next((tmp_path / "wheel").glob("slotref-*.whl"))
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", wheel], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([venv / "bin" / "slotref", "docs", "curriculum", "--path"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith(str(site)) and Path(out).read_text() == (ROOT / "docs" / "curriculum.md").read_text()
    run = subprocess.run([venv / "bin" / "slotref", "train", "--task", "setpred", "--fast-dev-run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=True).stdout
    for name in pointers(run):
        subprocess.run([venv / "bin" / "slotref", "docs", name], cwd=tmp_path, env=env, capture_output=True,
                       check=True)
