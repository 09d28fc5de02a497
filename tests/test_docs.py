"""The docs' map of paper -> code names only things that exist."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAP_DOCS = ["docs/spec.md", "docs/kernels.md"]
ALL_DOCS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")) + ["README.md"]
CLASSES = {"ModelConfig": "slotref.models", "SlotAttentionConfig": "slotref.slot_attention",
           "TrainConfig": "slotref.training.config", "Adam": "slotref.optim", "Schedule": "slotref.optim"}
# `name.attr` in backticks, where name is a slotref module (``layers.conv2d``, ``training.loop.train``,
# ``slotref.kernels.conv``) or one of the config classes above (``ModelConfig.num_slots``).
REFERENCE = re.compile(r"`((?:slotref\.)?[A-Za-z_][\w.]*\.[A-Za-z_]\w*)(?:\([^`]*\))?(?:\s*=[^`]*)?`")


FILE_SUFFIXES = (".md", ".py", ".h5", ".hdf5", ".json", ".jsonl", ".csv", ".txt", ".png", ".cfg", ".toml")


def _module(name: str):
    try:
        return importlib.import_module(name if name.startswith("slotref") else f"slotref.{name}")
    except ModuleNotFoundError:
        return None


def _exists(dotted: str) -> bool | None:
    """True/False where ``dotted`` names slotref code; None where it is not a code reference."""
    parts = dotted.split(".")
    head = parts[0]
    if head in CLASSES:
        obj = getattr(importlib.import_module(CLASSES[head]), head)
        field_names = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        return parts[1] in field_names or hasattr(obj, parts[1])
    # the longest prefix that is a slotref module, then attributes
    for cut in range(len(parts) - 1, 0, -1):
        module = _module(".".join(parts[:cut]))
        if module is not None:
            obj = module
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return _module(".".join(parts[:cut + 1])) is not None and cut + 1 == len(parts)
                obj = getattr(obj, attr)
            return True
    return None


def references(doc: str) -> list[str]:
    text = (ROOT / doc).read_text()
    return sorted({m.group(1) for m in REFERENCE.finditer(text) if not m.group(1).endswith(FILE_SUFFIXES)})


@pytest.mark.parametrize("doc", MAP_DOCS)
def test_every_function_the_map_names_exists(doc):
    refs = references(doc)
    checked = {r: _exists(r) for r in refs}
    assert sum(v is not None for v in checked.values()) >= 10, f"{doc} names too little code to check"
    missing = [r for r, ok in checked.items() if ok is False]
    assert not missing, f"{doc} names code that does not exist: {missing}"


def test_the_checker_notices_a_missing_function():
    assert _exists("layers.conv2d") is True
    assert _exists("layers.no_such_layer") is False
    assert _exists("ModelConfig.num_slots") is True
    assert _exists("ModelConfig.no_such_field") is False


@pytest.mark.parametrize("doc", ALL_DOCS)
def test_every_test_a_doc_names_exists(doc):
    named = set(re.findall(r"`(test_\w+)", (ROOT / doc).read_text()))
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = sorted(n for n in named if not re.search(rf"def {n}" if n.endswith("_") else rf"def {n}\b", source))
    assert not missing, f"{doc} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", ALL_DOCS)
def test_no_doc_names_a_missing_qualified_function(doc):
    missing = [r for r in references(doc) if _exists(r) is False]
    assert not missing, f"{doc} names code that does not exist: {missing}"
