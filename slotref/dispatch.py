"""Which implementation a replaceable specification function runs: as written, or a fast kernel.

The specification modules (``slotref.layers``, ``slotref.convolution``,
``slotref.optim``) write every formula once. A function there marked
``@replaceable`` may be replaced by a kernel of ``slotref.kernels`` that
declares it with ``@implements(<spec function>)``; the kernel must give the
same outputs and the same gradients (``tests/test_kernels.py`` checks every
registered kernel, in float64). ``implements(spec, on="cupy")`` registers a
kernel that applies only when the call's first argument is a CuPy array; on
any other array the specification runs (``docs/kernels.md``).

Which implementation runs: ``SLOTREF_KERNELS=reference|fast`` (default
``fast``), or ``use(name)`` / ``with using(name):`` in Python; ``active()``
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
CHOICES = ("reference", "fast")
MODULES = ("slotref.kernels.conv", "slotref.kernels.broadcast", "slotref.kernels.fused_cupy")


@dataclass(frozen=True)
class Kernel:
    """A registered fast kernel and the array module it is for (None: every one)."""

    fn: Callable
    on: str | None = None

    def applies(self, args: tuple) -> bool:
        return self.on is None or (bool(args) and getattr(xp_of(args[0]), "__name__", "") == self.on)


_fast: dict[Callable, Kernel] = {}     # specification function -> its fast kernel
_choice: str | None = None             # set by use(); None: the environment decides
_loaded = False


def _validate(name: str, where: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def active() -> str:
    """'fast' or 'reference': the implementation that replaceable calls run now."""
    if _choice is not None:
        return _choice
    return _validate(os.environ.get(KERNELS_ENV) or "fast", f"${KERNELS_ENV}")


def use(name: str | None) -> str | None:
    """Select 'fast' or 'reference' for this process (None: back to $SLOTREF_KERNELS).
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


def implements(spec: Callable, on: str | None = None) -> Callable:
    """Register the decorated function as the fast kernel of ``spec`` (a ``@replaceable`` function);
    ``on``: the name of the only array module it applies to (e.g. "cupy"), None for every one."""
    if not hasattr(spec, "specification"):
        raise TypeError(f"{getattr(spec, '__name__', spec)} is not marked @replaceable")

    def register(kernel: Callable) -> Callable:
        _fast[spec] = Kernel(kernel, on)
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
        if active() == "fast":
            _load()
            entry = _fast.get(dispatch)
            if entry is not None and entry.applies(args):
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


def status() -> list[str]:
    """Lines for ``cli.py info``: the active implementation, how to choose, and every fast
    kernel beside the specification function it replaces."""
    if active() == "fast":
        head = "kernels: fast (the kernels below replace their specification functions"
    else:
        head = "kernels: reference (every function as written in the specification; the kernels below are off"
    lines = [f"{head}; choose with --kernels or {KERNELS_ENV}=reference|fast)"]
    for spec, (kernel, on) in sorted(registered().items()):
        lines.append(f"  {spec:<48} <- {kernel}" + (f" (on {on} arrays only)" if on else ""))
    return lines
