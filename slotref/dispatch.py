"""Which implementation a replaceable specification function runs: as written, or a fast kernel.

The specification modules (``slotref.layers``, ``slotref.convolution``,
``slotref.optim``) write every formula once. A function there marked
``@replaceable`` may be replaced by a kernel of ``slotref.kernels`` that
declares it with ``@implements(<spec function>)``; the kernel must give the
same outputs and the same gradients (``tests/kernels/test_kernels.py`` checks every
registered kernel, in float64). ``implements(spec, on="cupy")`` registers a
kernel that applies only when the call's first argument is a CuPy array; on
any other array the specification runs (``docs/kernels.md``). A kernel
registered with ``measured=False`` is tested equal to its specification but
not yet shown faster on the hardware it targets: it runs only under ``all``.

Which implementation runs: ``SLOTREF_KERNELS=reference|fast|all`` (default
``fast``: the measured kernels; ``all``: every registered kernel), or ``use(name)`` / ``with using(name):`` in Python; ``active()``
says which one is in force. This module imports no kernel: the kernel
modules (``MODULES``) are imported by name on the first dispatch, so a
specification module never depends on them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable

from slotref.backend import xp_of

KERNELS_ENV = "SLOTREF_KERNELS"
CHOICES = ("reference", "fast", "all")
MODULES = ("slotref.kernels.conv", "slotref.kernels.broadcast", "slotref.kernels.fused_cupy")


@dataclass(frozen=True)
class Kernel:
    """A registered fast kernel, the array module it is for (None: every one), and whether it
    runs by default (``measured``) or only under ``all``."""

    fn: Callable
    on: str | None = None
    measured: bool = True

    def applies(self, args: tuple, choice: str) -> bool:
        if choice == "reference" or not (self.measured or choice == "all"):
            return False
        return self.on is None or (bool(args) and getattr(xp_of(args[0]), "__name__", "") == self.on)


_fast: dict[Callable, Kernel] = {}     # specification function -> its fast kernel
_choice: str | None = None             # set by use(); None: the environment decides
_loaded = False


def _validate(name: str, where: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def active() -> str:
    """'fast', 'all' or 'reference': the implementation that replaceable calls run now."""
    if _choice is not None:
        return _choice
    return _validate(os.environ.get(KERNELS_ENV) or "fast", f"${KERNELS_ENV}")


def use(name: str | None) -> str | None:
    """Select 'fast', 'all' or 'reference' for this process (None: back to $SLOTREF_KERNELS).
    Returns the previous selection, for restoring it."""
    global _choice
    previous = _choice
    _choice = None if name is None else _validate(name, "kernels")
    return previous


@contextlib.contextmanager
def using(name: str):
    """``with using("reference"):`` runs the specification inside the block."""
    previous = use(name)
    try:
        yield
    finally:
        use(previous)


def implements(spec: Callable, on: str | None = None, measured: bool = True) -> Callable:
    """Register the decorated function as the fast kernel of ``spec`` (a ``@replaceable`` function);
    ``on``: the name of the only array module it applies to (e.g. "cupy"), None for every one;
    ``measured=False``: off unless ``all`` is chosen (not yet shown faster where it applies)."""
    if not hasattr(spec, "specification"):
        raise TypeError(f"{getattr(spec, '__name__', spec)} is not marked @replaceable")

    def register(kernel: Callable) -> Callable:
        _fast[spec] = Kernel(kernel, on, measured)
        return kernel
    return register


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(module)


def kernel_for(spec: Callable) -> Callable | None:
    """The registered fast kernel of ``spec``, or None."""
    _load()
    entry = _fast.get(spec)
    return entry.fn if entry is not None else None


def replaceable(spec: Callable) -> Callable:
    """Mark a specification function that a registered fast kernel may replace."""
    @functools.wraps(spec)
    def dispatch(*args, **kwargs):
        choice = active()
        if choice != "reference":
            _load()
            entry = _fast.get(dispatch)
            if entry is not None and entry.applies(args, choice):
                return entry.fn(*args, **kwargs)
        return spec(*args, **kwargs)
    dispatch.specification = spec
    return dispatch


def _qualified(fn: Callable) -> str:
    fn = getattr(fn, "specification", fn)
    fn = getattr(fn, "fun", fn)              # an autograd primitive's own function
    return f"{fn.__module__}.{fn.__name__}"


def registered() -> dict[str, tuple[str, str | None]]:
    """{specification function: (its fast kernel, the array module it applies to or None)},
    functions as 'module.name' strings."""
    _load()
    return {_qualified(spec): (_qualified(entry.fn), entry.on) for spec, entry in _fast.items()}


def specifications() -> dict[str, Callable]:
    """{'module.name': the replaceable specification function} of every registered kernel."""
    _load()
    return {_qualified(spec): spec for spec in _fast}


def unmeasured() -> set[str]:
    """The specification functions (as 'module.name') whose kernel runs only under ``all``."""
    _load()
    return {_qualified(spec) for spec, entry in _fast.items() if not entry.measured}


def status() -> list[str]:
    """Lines for ``cli.py info``: the active implementation, how to choose, and every fast
    kernel beside the specification function it replaces."""
    heads = {"fast": "kernels: fast (the measured kernels below replace their specification functions",
             "all": "kernels: all (every kernel below replaces its specification function",
             "reference": "kernels: reference (every function as written in the specification; "
                          "the kernels below are off"}
    lines = [f"{heads[active()]}; choose with --kernels or {KERNELS_ENV}=reference|fast|all)"]
    opt_in = unmeasured()
    for spec, (kernel, on) in sorted(registered().items()):
        notes = ([f"on {on} arrays only"] if on else []) + (["only under all: not yet measured"] if spec in opt_in else [])
        lines.append(f"  {spec:<48} <- {kernel}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines
