"""The self-check's measures: finite differences, a device against NumPy, the fast kernels
against the specification, and Proposition 1.

Relative errors are ``max |a - b| / max |b|`` per array (for a gradient, the
denominator at least 1e-3 of the largest gradient entry, so that a gradient
that is zero up to rounding is not compared with its own noise); the worst
array is named.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools

import numpy as np
from autograd import value_and_grad

from slotref import backend, dispatch
from slotref.backend import Backend, to_float, to_host, tree_leaves, tree_map
from slotref.optim import adam_step
from slotref.selfcheck.cases import Case

sa = importlib.import_module("slotref.slot_attention")  # the module; slotref.slot_attention is its function

FD_STEP = 1e-5


def _max_abs(a) -> float:
    return float(np.max(np.abs(np.asarray(to_host(a), dtype=np.float64)), initial=0.0))


def _rel_err(a, b, floor: float = 0.0) -> float:
    """max |a - b| / max |b|, the denominator at least ``floor``."""
    a = np.asarray(to_host(a), dtype=np.float64)
    b = np.asarray(to_host(b), dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)) / max(_max_abs(b), floor, 1e-30)


def _label(path: str) -> str:
    """'0/gru/w_input' -> 'gru/w_input', '1/0' -> 'input 0' (paths in the (params, inputs) pair)."""
    head, _, rest = path.partition("/")
    return f"input {rest}" if head == "1" else rest


def _worst(value, grads, value_ref, grads_ref, value_name: str = "output", label=_label) -> tuple[float, str]:
    """Worst relative error of (value, gradient tree) against the reference pair, and where.

    A gradient that is zero up to rounding (Slot Attention's slot LayerNorm
    offset: softmax over slots cancels it) is compared at the scale of the
    whole gradient, not at its own.
    """
    worst, worst_path = _rel_err(value, value_ref), value_name
    floor = 1e-3 * max((_max_abs(g) for _, g in tree_leaves(grads_ref)), default=0.0)
    for (path, g), (_, g_ref) in zip(tree_leaves(grads), tree_leaves(grads_ref)):
        err = _rel_err(g, g_ref, floor)
        if err >= worst:
            worst, worst_path = err, f"d/d {label(path)}"
    return worst, worst_path


def projection(case: Case, seed: int) -> np.ndarray:
    """A fixed random cotangent, so the scalar loss weighs every output entry differently."""
    out = case.fn(case.params, *case.inputs)
    return np.random.default_rng(seed).standard_normal(np.shape(out))


def _on(b: Backend, case: Case, r: np.ndarray):
    """(loss function, (params, inputs)) on backend ``b``."""
    wrt = (b.tree_asarray(case.params), [b.asarray(x) for x in case.inputs])
    r = b.asarray(r)
    return (lambda w: backend.sum(case.fn(w[0], *w[1]) * r)), wrt


def _with_leaf(tree, index: int, new):
    counter = itertools.count()
    return tree_map(lambda leaf: new if next(counter) == index else leaf, tree)


def finite_difference_check(b: Backend, case: Case, r: np.ndarray, seed: int = 1) -> tuple[float, str]:
    """Worst relative error of <grad, v> against the central difference along v, per leaf.

    Everything is evaluated on ``b``'s device; only scalars come to the host.
    """
    loss, wrt = _on(b, case, r)
    value, grads = value_and_grad(loss)(wrt)
    # Errors are relative to the larger derivative, but at least to a floor set
    # by the loss: a gradient that is exactly zero (e.g. Slot Attention's slot
    # LayerNorm offset, which softmax over slots cancels) meets rounding noise.
    floor = 1e-4 * (1.0 + abs(to_float(value)))
    rng = np.random.default_rng(seed)
    worst, worst_path = 0.0, ""
    grad_leaves = tree_leaves(grads)
    for index, (path, leaf) in enumerate(tree_leaves(wrt)):
        v = rng.standard_normal(leaf.shape)
        v_dev = b.asarray(v)
        plus = to_float(loss(_with_leaf(wrt, index, leaf + FD_STEP * v_dev)))
        minus = to_float(loss(_with_leaf(wrt, index, leaf - FD_STEP * v_dev)))
        numeric = (plus - minus) / (2 * FD_STEP)
        analytic = float(np.vdot(to_host(grad_leaves[index][1]), v))
        err = abs(numeric - analytic) / max(abs(numeric), abs(analytic), floor)
        if err >= worst:
            worst, worst_path = err, _label(path)
    return worst, worst_path


def _run(b: Backend, case: Case, r: np.ndarray):
    """(output, gradient tree of the projected loss) of ``case`` on ``b``."""
    loss, wrt = _on(b, case, r)
    return case.fn(wrt[0], *wrt[1]), value_and_grad(loss)(wrt)[1]


def compare_with_numpy(b: Backend, case: Case, r: np.ndarray) -> tuple[float, str, list[str]]:
    """Worst relative error of forward output and gradients on ``b`` against NumPy.

    Also returns problems that are not numbers: gradients that came back as
    host arrays on a device, or in the wrong dtype.
    """
    out_h, grads_h = _run(Backend("cpu", np, b.dtype), case, r)
    out_d, grads_d = _run(b, case, r)
    problems = [f"gradient {_label(path)} is a host array" for path, g in tree_leaves(grads_d)
                if b.xp is not np and backend.is_host_array(g)]
    problems += [f"gradient {_label(path)} has dtype {g.dtype}" for path, g in tree_leaves(grads_d)
                 if g.dtype != b.dtype]
    if out_d.dtype != b.dtype:
        problems.append(f"output has dtype {out_d.dtype}")
    return (*_worst(out_d, grads_d, out_h, grads_h), problems)


def compare_kernels(b: Backend, case: Case, r: np.ndarray) -> tuple[float, str]:
    """Worst relative error of every registered kernel's forward output and gradients (``all``)
    against the specification's, both on ``b``."""
    results = {}
    for choice in dispatch.CHOICES:
        with dispatch.using(choice):
            results[choice] = _run(b, case, r)
    return _worst(*results["all"], *results["reference"])


def compare_adam_step(b: Backend, seed: int = 4) -> float:
    """Relative error of the Adam step's fast kernel against ``optim.adam_step`` on ``b`` (float64):
    the worst of the updated parameters and moments."""
    host = np.random.default_rng(seed).standard_normal((4, 37))
    host[3] = np.abs(host[3])                      # v, the second moment, is not negative
    results = {}
    for choice in dispatch.CHOICES:
        p, g, m, v = (b.asarray(a).astype(np.float64) for a in host)
        with dispatch.using(choice):
            adam_step(p, g, m, v, 1e-3 / (1 - 0.9 ** 2), 1 / (1 - 0.999 ** 2), 0.9, 0.999, 1e-8)
        results[choice] = (p, m, v)
    return max(_rel_err(f, s) for f, s in zip(results["all"], results["reference"]))


def compare_step(b: Backend, loss, params) -> tuple[float, str]:
    """Worst relative error of the loss and every gradient of one training step on ``b`` against NumPy."""
    runs = []
    for bk in (Backend("cpu", np, b.dtype), b):
        value, grads = value_and_grad(loss(bk))(bk.tree_asarray(params))
        runs.append((np.asarray(to_float(value)), grads))
    (value_h, grads_h), (value_d, grads_d) = runs
    return _worst(value_d, grads_d, value_h, grads_h, "loss", label=str)


def proposition1_errors(b: Backend, seed: int = 3) -> tuple[float, float]:
    """Proposition 1 on ``b``: (max error of slots under a permutation of the initial slots,
    max error of slots and attention under a permutation of the inputs), float64."""
    b = dataclasses.replace(b, dtype=np.dtype(np.float64))
    rng = backend.host_rng(seed)
    config = sa.SlotAttentionConfig()
    params = b.tree_asarray(sa.init_slot_attention(rng, config))
    x, slots = rng.standard_normal((2, 256, 64)), rng.standard_normal((2, 7, 64))
    pi_inputs, pi_slots = rng.permutation(256), rng.permutation(7)
    out, attn = sa.slot_attention(params, b.asarray(x), b.asarray(slots), 3, config, True)
    out_p, attn_p = sa.slot_attention(params, b.asarray(x[:, pi_inputs]), b.asarray(slots[:, pi_slots]), 3,
                                      config, True)
    out, attn, out_p, attn_p = (to_host(a) for a in (out, attn, out_p, attn_p))
    equivariance = float(np.max(np.abs(out[:, pi_slots] - out_p)))
    invariance = float(np.max(np.abs(attn[:, :, pi_inputs][:, :, :, pi_slots] - attn_p)))
    return equivariance, invariance
