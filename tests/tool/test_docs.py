"""The docs name only things that exist: code, files, tests, links and sections.

Every reference doc (README.md, docs/*.md, docs/notes/*.md) is read for
- dotted code names: ``slotref.x.y`` anywhere (prose and commands alike), and in backticks the short
  forms the docs use (``layers.conv2d``, ``training.loop.train``, ``ModelConfig.num_slots``,
  ``hdf5.describe``); a backticked ``name.attr`` whose head is neither slotref code nor a name listed in
  ``OUTSIDE`` fails, so a module that was renamed or deleted cannot pass as "not code";
- repository paths (``slotref/x.py``, ``tests/test_x.py::test_y``, ``docs/x.md``, ``examples/``);
- relative Markdown links and their ``#anchors``, and sections cited by name (``docs/x.md``, "Title");
- test names; line numbers are never cited (code is cited by name, which does not drift).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from functools import cache
from pathlib import Path

import pytest


def _root() -> Path:
    here = Path(__file__).resolve().parent
    return next(p for p in (here, *here.parents) if (p / "pyproject.toml").exists())


ROOT = _root()
DOCS = sorted(str(p.relative_to(ROOT)) for pattern in ("docs/*.md", "docs/notes/*.md") for p in ROOT.glob(pattern))
DOCS = ["README.md", *DOCS]
MAP_DOCS = ["docs/spec.md", "docs/kernels.md"]
FILE_SUFFIXES = {"md", "py", "h5", "hdf5", "json", "jsonl", "csv", "txt", "png", "cfg", "toml", "lock", "tmp",
                 "partial", "tfrecords", "npz", "sh", "yaml", "yml", "pt", "whl", "log"}
# Heads of backticked dotted names that are not slotref code: libraries, placeholders, variables.
OUTSIDE = {"np", "numpy", "anp", "autograd", "scipy", "cupy", "cp", "torch", "tf", "jax", "h5py", "click",
           "MPI", "mpi4py", "os", "sys", "math", "config", "params", "args", "self", "x"}
# `name.attr`, optionally called or assigned, filling a pair of backticks.
BACKTICKED = re.compile(r"`([A-Za-z_][\w.]*\.[A-Za-z_]\w*)(?:\([^`]*\))?(?:\s*=[^`]*)?`")
QUALIFIED = re.compile(r"(?<![\w./-])slotref(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w./-])((?:slotref|tests|docs|examples)/[\w./-]*(?:::\w+)?)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SECTION = re.compile(r"((?:docs/)?(?:notes/)?[\w-]+\.md|below|above)`?\)?,\s+\"([^\"]+)\"")
LINE_CITE = re.compile(r"\[L\d+|\.py:\d+\b|\blines? \d+(?:-\d+)? of `?slotref")


def _text(doc: str) -> str:
    return (ROOT / doc).read_text()


class _Source:
    """A slotref module whose optional dependency (torch, cupy) is not installed: its names, read from source."""

    def __init__(self, name: str):
        self.__name__ = name

    def __getattr__(self, attr: str):
        if attr in _defined_names(self.__name__):
            return None
        raise AttributeError(attr)


@cache
def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            return None
        if e.name and not e.name.startswith("slotref"):
            return _Source(name)
        raise


@cache
def _code_index() -> tuple[dict, dict]:
    """Module basename -> dotted modules, and class name -> dotted modules, read from the source tree."""
    modules, classes = {}, {}
    for path in sorted((ROOT / "slotref").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        dotted = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules.setdefault(dotted.split(".")[-1], []).append(dotted)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(dotted)
    return modules, classes


@cache
def _defined_names(module: str) -> set[str] | frozenset:
    """Names a module's own source defines (not imports); every name for a package's __init__."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        return _Everything()
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


class _Everything(frozenset):
    def __contains__(self, item) -> bool:
        return True


def _attrs_exist(obj, attrs: list[str], defined_in: str | None = None) -> bool:
    for i, attr in enumerate(attrs):
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        if attr in fields and i == len(attrs) - 1:
            return True
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
        if i == 0 and defined_in and attr not in _defined_names(defined_in):
            return False  # imported from elsewhere: the doc names the wrong home
    return True


def _resolves(dotted: str, defined_in_module: bool = False) -> bool:
    """Whether ``dotted`` (a module path, then attributes) names slotref code."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _import(".".join(parts[:cut]))
        if module is not None:
            return _attrs_exist(module, parts[cut:], module.__name__ if defined_in_module else None)
    return False


def _exists(name: str) -> bool | None:
    """True/False where ``name`` is slotref code (full or short form); None where it is an outside name."""
    parts = name.split(".")
    head = parts[0]
    modules, classes = _code_index()
    if head == "slotref":
        return _resolves(name)
    if head in OUTSIDE or parts[-1] in FILE_SUFFIXES or head.isupper():
        return None
    if head in classes:
        return any(_attrs_exist(getattr(_import(m), head), parts[1:]) for m in classes[head] if _import(m))
    if (ROOT / "slotref" / head).is_dir() or (ROOT / "slotref" / f"{head}.py").exists():
        return _resolves(f"slotref.{name}", defined_in_module=True)
    if head in modules:  # a submodule by its own name (``hdf5.describe``): the name must live there
        return any(_resolves(f"{m}.{'.'.join(parts[1:])}", defined_in_module=True) for m in modules[head])
    return False


def _path_exists(ref: str) -> bool:
    path, _, test = ref.rstrip(".,;:").partition("::")
    if not (ROOT / path).exists():
        return False
    return not test or re.search(rf"^\s*def {test}\b", (ROOT / path).read_text(), re.M) is not None


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(path: Path) -> list[str]:
    return [re.sub(r"[`*]", "", h) for h in re.findall(r"^#+\s+(.*?)\s*$", path.read_text(), re.M)]


@pytest.mark.parametrize("doc", DOCS)
def test_every_code_name_a_doc_gives_exists(doc):
    text = _text(doc)
    names = {m.group(1) for m in BACKTICKED.finditer(text)} | {m.group(0) for m in QUALIFIED.finditer(text)}
    checked = {n: _exists(n) for n in sorted(names)}
    missing = [n for n, ok in checked.items() if ok is False]
    assert not missing, (f"{doc} names code that does not exist, or not in the module that defines it "
                         f"(or an outside name missing from tests/tool/test_docs.py's OUTSIDE): {missing}")


@pytest.mark.parametrize("doc", MAP_DOCS)
def test_the_maps_of_paper_to_code_name_code(doc):
    checked = [_exists(m.group(1)) for m in BACKTICKED.finditer(_text(doc))]
    assert sum(ok is True for ok in checked) >= 10, f"{doc} names too little code to check"


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_a_doc_gives_exists(doc):
    refs = sorted({m.group(1) for m in PATH.finditer(_text(doc)) if "*" not in m.group(1)})
    missing = [r for r in refs if not _path_exists(r)]
    assert not missing, f"{doc} names files or tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_and_section_a_doc_gives_exists(doc):
    here = (ROOT / doc).parent
    broken = []
    for target in LINK.findall(_text(doc)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (here / path).resolve() if path else ROOT / doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in {_slug(h) for h in _headings(file)}:
            broken.append(target)
    for where, title in SECTION.findall(_text(doc)):
        title = " ".join(title.split())
        file = ROOT / doc if where in ("below", "above") else ROOT / where if "/" in where else here / where
        if not file.exists() or not any(h.startswith(title) for h in _headings(file)):
            broken.append(f'{where}, "{title}"')
    assert not broken, f"{doc} links to files or sections that do not exist: {broken}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_doc_names_exists(doc):
    named = set(re.findall(r"`(test_\w+)", _text(doc)))
    source = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = sorted(n for n in named if not re.search(rf"def {n}" if n.endswith("_") else rf"def {n}\b", source))
    assert not missing, f"{doc} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_no_doc_cites_line_numbers(doc):
    cites = sorted({m.group(0) for m in LINE_CITE.finditer(_text(doc))})
    assert not cites, f"{doc} cites code by line number (cite the function instead): {cites}"


def test_algorithm_1_walk_quotes_the_code_verbatim():
    """docs/slot_attention.md quotes each line of Algorithm 1's code; each quote is in the source."""
    text = _text("docs/slot_attention.md")
    walk = text[text.index("## Algorithm 1"):text.index("## Proposition 1")]
    source = " ".join((ROOT / "slotref" / "slot_attention.py").read_text().split())
    quotes = [q for q in re.findall(r"`([^`]+)`", walk) if " = " in q or "#" in q or q.startswith("softmax(")]
    assert len(quotes) >= 15
    missing = [q for q in quotes if " ".join(q.split()) not in source]
    assert not missing, f"docs/slot_attention.md quotes code that slotref/slot_attention.py does not hold: {missing}"
    module = importlib.import_module("slotref.slot_attention")
    functions = set(re.findall(r"`([a-z_]\w*)\(", walk)) | set(re.findall(r"`(_\w+)`", walk))
    unknown = sorted(f for f in functions if not hasattr(module, f))
    assert not unknown, f"docs/slot_attention.md names functions slotref/slot_attention.py does not have: {unknown}"


def test_the_readme_opens_with_what_slotref_is_then_two_commands_the_second_run_by_ci():
    text = _text("README.md")
    assert text.split("\n\n")[1].startswith("slotref is ")
    commands = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(commands) == 2 and commands[0].startswith("python -m pip install")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_checker_notices_what_is_missing():
    assert _exists("layers.conv2d") is True
    assert _exists("layers.no_such_layer") is False
    assert _exists("slotref.layers.conv2d") is True
    assert _exists("slotref.no_such_module.f") is False
    assert _exists("no_such_module.f") is False
    assert _exists("ModelConfig.num_slots") is True
    assert _exists("ModelConfig.no_such_field") is False
    assert _exists("hdf5.describe") is True
    assert _exists("np.random.default_rng") is None
    assert _exists("config.json") is None
    assert _path_exists("slotref/layers.py") and not _path_exists("slotref/no_such_file.py")
    assert _slug("Why it is sound") == "why-it-is-sound"
    assert LINE_CITE.search("[L134]") and LINE_CITE.search("slot_attention.py:150")
