"""Fast kernels: drop-in replacements for specification functions of ``slotref.layers``.

``slotref.layers`` writes every layer as the math. A function there marked
``@replaceable`` may be replaced by a kernel of this package that declares it
with ``@implements(layers.<function>)``; the kernel must give the same outputs
and the same gradients (``tests/test_kernels.py`` checks each, in float64).

Kernels (``docs/kernels.md``):

- ``conv``: ``layers.conv2d_same`` and ``layers.conv_transpose2d_same`` as
  shifted GEMMs over stride phases, with the wide path for thin outputs;
- ``im2col``: the patch matrices those use for few input channels and on
  accelerators;
- ``broadcast``: ``layers.broadcast_embed_conv_transpose2d``, the decoder's
  first layer, without building the broadcast;
- ``allocator``: glibc keeps freed host memory (``get_backend`` applies it).

Which implementation runs: ``SLOTREF_KERNELS=reference|fast`` (default
``fast``), or ``use(name)`` / ``with using(name):`` in Python; ``active()``
says which one is in force.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable

KERNELS_ENV = "SLOTREF_KERNELS"
CHOICES = ("reference", "fast")
MODULES = ("slotref.kernels.conv", "slotref.kernels.broadcast")

_fast: dict[Callable, Callable] = {}   # specification function -> its fast kernel
_choice: str | None = None             # set by use(); None: the environment decides
_loaded = False


def _validate(name: str, where: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def active() -> str:
    """'fast' or 'reference': the implementation that layer calls run now."""
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


def implements(spec: Callable) -> Callable:
    """Register the decorated function as the fast kernel of ``spec`` (a ``@replaceable`` function)."""
    if not hasattr(spec, "specification"):
        raise TypeError(f"{getattr(spec, '__name__', spec)} is not marked @replaceable in slotref.layers")

    def register(kernel: Callable) -> Callable:
        _fast[spec] = kernel
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
    return _fast.get(spec)


def replaceable(spec: Callable) -> Callable:
    """Mark a specification function that a registered fast kernel may replace."""
    @functools.wraps(spec)
    def dispatch(*args, **kwargs):
        if active() == "fast":
            kernel = kernel_for(dispatch)
            if kernel is not None:
                return kernel(*args, **kwargs)
        return spec(*args, **kwargs)
    dispatch.specification = spec
    return dispatch


def _qualified(fn: Callable) -> str:
    fn = getattr(fn, "specification", fn)
    fn = getattr(fn, "fun", fn)              # an autograd primitive's own function
    return f"{fn.__module__}.{fn.__name__}"


def registered() -> dict[str, str]:
    """{specification function: its fast kernel}, as 'module.name' strings."""
    _load()
    return {_qualified(spec): _qualified(kernel) for spec, kernel in _fast.items()}


def status() -> str:
    """One line for ``cli.py info``: the active implementation and how to choose."""
    names = ", ".join(s.rsplit(".", 1)[1] for s in registered())
    what = "fast kernels for " + names if active() == "fast" else "every layer as written in slotref/layers.py"
    return f"kernels: {active()} ({what}; choose with --kernels or {KERNELS_ENV}=reference|fast)"
