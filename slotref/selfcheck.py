"""Device self-check: every layer's gradient and its agreement with NumPy.

``run_selfcheck("gpu")`` (wired to ``python cli.py selfcheck --device gpu``)
runs, on the chosen device, for every layer and for the Slot Attention module:

1. ``grad-fd``: the float64 gradient of a scalar loss against central finite
   differences, one random direction per parameter/input array, evaluated on
   the device and compared on the host;
2. ``numpy float64``: forward output and every gradient against the NumPy
   run on the same inputs (relative error < 1e-9);
3. ``numpy float32``: the same in float32; the error is reported, and fails
   only above 1e-3 (float32 GEMMs on a GPU sum in another order than BLAS);
4. ``kernel==spec`` (layers with a fast kernel of ``slotref.kernels``): the
   fast kernel against the specification of ``slotref.layers``, forward and
   every gradient, float64, both on the device (relative error < 1e-9).

Then, for one training step of every task (set prediction, the three
discovery architectures, the Slot MLP): the loss and every gradient on the
device against NumPy (float64 < 1e-9; float32 reported, fails above 1e-3);
and Proposition 1 on the device: Slot Attention is equivariant to permuting
the initial slots and invariant to permuting the inputs (float64, < 1e-10).
Last, on CuPy, each fused kernel of ``slotref.fused`` against its NumPy twin.

Relative errors are ``max |a - b| / max |b|`` per array (for a gradient, the
denominator at least 1e-3 of the largest gradient entry, so that a gradient
that is zero up to rounding is not compared with its own noise); the worst
array is named. On the CPU the NumPy comparisons are trivially exact; the
finite-difference checks are not. ``tests/test_selfcheck.py`` runs it on the
CPU and on the stand-in device.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

import numpy as np
from autograd import value_and_grad

from slotref import backend, fused, kernels, layers
from slotref import slot_attention as sa
from slotref.backend import Backend, get_backend, to_float, to_host, tree_leaves, tree_map

FD_STEP = 1e-5
FD_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-9
FLOAT32_TOLERANCE = 1e-3
PROPOSITION1_TOLERANCE = 1e-10


@dataclasses.dataclass
class Case:
    """``fn(params, *inputs) -> array``; params and inputs are host float64 trees."""

    name: str
    fn: Callable
    params: Any
    inputs: tuple
    kernel: bool = False            # runs through a registered fast kernel: compare it with the specification


def _conv_case(rng, kernel, stride, shape, c_out):
    b, h, w, c_in = shape
    return Case(f"conv2d k{kernel} s{stride} {h}x{w}", lambda p, x: layers.conv2d(p, x, stride),
                layers.init_conv2d(rng, kernel, c_in, c_out), (rng.standard_normal(shape),), kernel=True)


def _conv_t_case(rng, kernel, stride, shape, c_out):
    b, h, w, c_in = shape
    return Case(f"conv_transpose2d k{kernel} s{stride} {h}x{w}", lambda p, x: layers.conv_transpose2d(p, x, stride),
                layers.init_conv_transpose2d(rng, kernel, c_in, c_out), (rng.standard_normal(shape),), kernel=True)


def _broadcast_case(rng, kernel, stride, resolution, d, c_out):
    h, w = resolution
    return Case(f"broadcast_embed_conv_t k{kernel} s{stride} {h}x{w}",
                lambda p, slots: layers.broadcast_embed_conv_transpose2d(p[0], p[1], slots, resolution, stride),
                [layers.init_soft_position_embed(rng, d), layers.init_conv_transpose2d(rng, kernel, d, c_out)],
                (rng.standard_normal((2, 2, d)),), kernel=True)


def _randomize(rng, tree):
    """Non-trivial values for zero/one-initialised leaves (biases, LayerNorm scale/offset)."""
    return tree_map(lambda a: a + 0.3 * rng.standard_normal(np.shape(a)), tree)


def layer_cases(seed: int = 0) -> list[Case]:
    """Small instances of every layer and of the Slot Attention module."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    config = sa.SlotAttentionConfig(input_size=6, slot_size=5, mlp_hidden_size=8)

    def slot_attention(p, inputs, noise):
        slots = sa.sample_initial_slots(p, noise)
        return sa.slot_attention(p, inputs, slots, num_iterations=2, config=config)

    cases = [
        Case("linear", layers.linear, layers.init_linear(rng, 5, 4), (normal((2, 3, 5)),)),
        Case("mlp", layers.mlp, layers.init_mlp(rng, [5, 7, 3]), (normal((2, 3, 5)),)),
        Case("relu", lambda p, x: backend.relu(x), {}, (normal((3, 4)),)),
        Case("sigmoid", lambda p, x: backend.sigmoid(x), {}, (normal((3, 4)),)),
        Case("layer_norm", layers.layer_norm, layers.init_layer_norm(6), (normal((2, 3, 6)),)),
        Case("softmax axis=1", lambda p, x: layers.softmax(x, axis=1), {}, (normal((2, 4, 3)),)),
        Case("huber", lambda p, x: layers.huber(x), {}, (2.0 * normal((3, 5)),)),
        Case("gru_cell", layers.gru_cell, layers.init_gru(rng, 5, 4), (normal((3, 5)), normal((3, 4)))),
        _conv_case(rng, 3, 1, (2, 5, 6, 3), 4),
        _conv_case(rng, 5, 2, (1, 7, 8, 2), 3),
        _conv_case(rng, 1, 2, (1, 4, 5, 2), 2),
        _conv_t_case(rng, 5, 2, (1, 3, 4, 3), 2),
        _conv_t_case(rng, 3, 1, (2, 4, 5, 2), 3),
        _broadcast_case(rng, 5, 1, (3, 4), 3, 2),
        _broadcast_case(rng, 5, 2, (2, 3), 3, 2),
        Case("soft_position_embed", layers.soft_position_embed, layers.init_soft_position_embed(rng, 3),
             (normal((2, 5, 4, 3)),)),
        Case("spatial_broadcast+flatten",
             lambda p, slots: layers.spatial_flatten(layers.spatial_broadcast(slots, (3, 4))), {},
             (normal((2, 3, 5)),)),
        Case("slot_attention", slot_attention, sa.init_slot_attention(rng, config),
             (normal((2, 7, 6)), normal((2, 3, 5)))),
    ]
    for case in cases:
        case.params = _randomize(rng, case.params)
    return cases


# --------------------------------------------------------------------------
# Device-agnostic pieces.

def _as_backend(device) -> Backend:
    return device if isinstance(device, Backend) else get_backend(device)


def _max_abs(a) -> float:
    return float(np.max(np.abs(np.asarray(to_host(a), dtype=np.float64)), initial=0.0))


def _rel_err(a, b, floor: float = 0.0) -> float:
    """max |a - b| / max |b|, the denominator at least ``floor``."""
    a = np.asarray(to_host(a), dtype=np.float64)
    b = np.asarray(to_host(b), dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)) / max(_max_abs(b), floor, 1e-30)


def _projection(case: Case, seed: int) -> np.ndarray:
    """A fixed random cotangent, so the scalar loss weighs every output entry differently."""
    out = case.fn(case.params, *case.inputs)
    return np.random.default_rng(seed).standard_normal(np.shape(out))


def _loss(case: Case, r):
    def loss(wrt):
        params, inputs = wrt
        return backend.sum(case.fn(params, *inputs) * r)
    return loss


def _on(b: Backend, case: Case, r: np.ndarray):
    """(loss function, (params, inputs)) on backend ``b``."""
    wrt = (b.tree_asarray(case.params), [b.asarray(x) for x in case.inputs])
    return _loss(case, b.asarray(r)), wrt


def _label(path: str) -> str:
    """'0/gru/w_input' -> 'gru/w_input', '1/0' -> 'input 0' (paths in the (params, inputs) pair)."""
    head, _, rest = path.partition("/")
    return f"input {rest}" if head == "1" else rest


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


def compare_with_numpy(b: Backend, case: Case, r: np.ndarray) -> tuple[float, str, list[str]]:
    """Worst relative error of forward output and gradients on ``b`` against NumPy.

    Also returns problems that are not numbers: gradients that came back as
    host arrays on a device, or in the wrong dtype.
    """
    host = Backend("cpu", np, b.dtype)
    results = []
    for bk in (host, b):
        loss, wrt = _on(bk, case, r)
        params, inputs = wrt
        out = case.fn(params, *inputs)
        _, grads = value_and_grad(loss)(wrt)
        results.append((out, grads))
    (out_h, grads_h), (out_d, grads_d) = results
    problems = []
    worst, worst_path = _rel_err(out_d, out_h), "output"
    # A gradient that is zero up to rounding (Slot Attention's slot LayerNorm
    # offset: softmax over slots cancels it) is compared at the scale of the
    # whole gradient, not at its own.
    floor = 1e-3 * max((_max_abs(g) for _, g in tree_leaves(grads_h)), default=0.0)
    for (path, g_d), (_, g_h) in zip(tree_leaves(grads_d), tree_leaves(grads_h)):
        if b.xp is not np and backend.is_host_array(g_d):
            problems.append(f"gradient {_label(path)} is a host array")
        if g_d.dtype != b.dtype:
            problems.append(f"gradient {_label(path)} has dtype {g_d.dtype}")
        err = _rel_err(g_d, g_h, floor)
        if err >= worst:
            worst, worst_path = err, f"d/d {_label(path)}"
    if out_d.dtype != b.dtype:
        problems.append(f"output has dtype {out_d.dtype}")
    return worst, worst_path, problems


def compare_kernels(b: Backend, case: Case, r: np.ndarray) -> tuple[float, str]:
    """Worst relative error of the fast kernels' forward output and gradients against the
    specification's, both on ``b``."""
    results = []
    for choice in ("fast", "reference"):
        with kernels.using(choice):
            loss, wrt = _on(b, case, r)
            out = case.fn(*wrt[:1], *wrt[1])
            results.append((out, value_and_grad(loss)(wrt)[1]))
    (out_f, grads_f), (out_r, grads_r) = results
    worst, worst_path = _rel_err(out_f, out_r), "output"
    floor = 1e-3 * max((_max_abs(g) for _, g in tree_leaves(grads_r)), default=0.0)
    for (path, g_f), (_, g_r) in zip(tree_leaves(grads_f), tree_leaves(grads_r)):
        err = _rel_err(g_f, g_r, floor)
        if err >= worst:
            worst, worst_path = err, f"d/d {_label(path)}"
    return worst, worst_path


# --------------------------------------------------------------------------
# A training step of every task, and Proposition 1.

# (name, task, dataset, batch): the paper's configurations; ``small`` versions for CPUs.
STEP_CASES = [("setpred", "setpred", 128, 2), ("tetrominoes", "discovery", "tetrominoes", 2),
              ("multi-dsprites", "discovery", "multi-dsprites", 2), ("clevr6", "discovery", "clevr6", 1),
              ("slot-mlp setpred", "setpred", 128, 2), ("slot-mlp tetrominoes", "discovery", "tetrominoes", 2)]


def step_problem(name: str, task: str, dataset, batch: int, small: bool = False, seed: int = 0):
    """(loss(params), host float64 parameters) of one synthetic batch; ``small``: set prediction
    at 32x32 and the CLEVR6 decoder broadcast to 2x2 (32x32 images), batch 1."""
    from slotref.losses import hungarian_huber_loss, mse
    from slotref.models import autoencoder, discovery_config, init_model, set_prediction, setpred_config

    model = {"model": "slot-mlp"} if name.startswith("slot-mlp") else {}
    if task == "setpred":
        config = setpred_config(32 if small else dataset, **model)
    elif small and dataset == "clevr6":
        config = discovery_config(dataset, resolution=(32, 32), decoder_init_resolution=(2, 2), **model)
    else:
        config = discovery_config(dataset, **model)
    batch = 1 if small else batch
    rng = backend.host_rng(seed)
    # Off the zero biases (ReLU kinks), by less than _randomize: large weights saturate the deep models.
    params = tree_map(lambda a: a + 0.05 * rng.standard_normal(np.shape(a)), init_model(rng, config))
    images = rng.uniform(-1.0, 1.0, (batch, *config.resolution, 3))
    noise = rng.standard_normal((batch, config.num_slots, config.slot_attention.slot_size))
    targets = np.zeros((batch, config.num_slots, 19))
    targets[:, :3] = rng.uniform(0.0, 1.0, (batch, 3, 19))
    targets[:, :3, -1] = 1.0

    def loss(b: Backend):
        x, z, t = b.asarray(images), b.asarray(noise), b.asarray(targets)
        if task == "setpred":
            return lambda p: hungarian_huber_loss(set_prediction(p, x, z, config), t)
        return lambda p: mse(autoencoder(p, x, z, config)["recon_combined"], x)
    return loss, params


def compare_step(b: Backend, loss, params) -> tuple[float, str]:
    """Worst relative error of the loss and every gradient of one training step on ``b`` against NumPy."""
    runs = []
    for bk in (Backend("cpu", np, b.dtype), b):
        value, grads = value_and_grad(loss(bk))(bk.tree_asarray(params))
        runs.append((to_float(value), grads))
    (value_h, grads_h), (value_d, grads_d) = runs
    worst, worst_path = abs(value_d - value_h) / max(abs(value_h), 1e-30), "loss"
    floor = 1e-3 * max(_max_abs(g) for _, g in tree_leaves(grads_h))
    for (path, g_d), (_, g_h) in zip(tree_leaves(grads_d), tree_leaves(grads_h)):
        err = _rel_err(g_d, g_h, floor)
        if err >= worst:
            worst, worst_path = err, f"d/d {path}"
    return worst, worst_path


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


# --------------------------------------------------------------------------

def run_selfcheck(device: str | Backend = "cpu", out: Callable[[str], Any] = print,
                  cases: list[Case] | None = None, steps: list | None = None, small_steps: bool | None = None,
                  proposition1: bool = True) -> bool:
    """Run the checks on ``device`` ('cpu', 'gpu' or a ``Backend``); True if all pass.

    ``steps``: entries of ``STEP_CASES`` (default: all); ``small_steps``: their small versions
    (default: on NumPy, where the paper's sizes take minutes).
    """
    b = _as_backend(device)
    b64 = dataclasses.replace(b, dtype=np.dtype(np.float64))
    b32 = dataclasses.replace(b, dtype=np.dtype(np.float32))
    cases = layer_cases() if cases is None else cases
    steps = STEP_CASES if steps is None else steps
    small_steps = b.xp is np if small_steps is None else small_steps
    out(f"selfcheck on device {b.device!r} ({getattr(b.xp, '__name__', b.xp)}), {len(cases)} layers, "
        f"{len(steps)} training steps, kernels: {kernels.active()}")
    all_pass = True

    def report(ok: bool, name: str, check: str, text: str):
        nonlocal all_pass
        all_pass &= ok
        out(f"{'PASS' if ok else 'FAIL'}  {name:<34} {check:<15} {text}")

    for i, case in enumerate(cases):
        try:
            r = _projection(case, seed=100 + i)
        except Exception as exc:
            report(False, case.name, "numpy forward", f"{type(exc).__name__}: {exc}")
            continue
        try:
            err, path = finite_difference_check(b64, case, r)
            report(err < FD_TOLERANCE, case.name, "grad-fd", f"rel err {err:.1e} (worst: {path})")
        except Exception as exc:  # a crash is a failed check, not an aborted self-check
            report(False, case.name, "grad-fd", f"{type(exc).__name__}: {exc}")
        for bk, tolerance in ((b64, FLOAT64_TOLERANCE), (b32, FLOAT32_TOLERANCE)):
            check = f"numpy {bk.dtype}"
            try:
                err, path, problems = compare_with_numpy(bk, case, r)
                text = f"rel err {err:.1e} (worst: {path})" + "".join(f"; {p}" for p in problems)
                report(err < tolerance and not problems, case.name, check, text)
            except Exception as exc:
                report(False, case.name, check, f"{type(exc).__name__}: {exc}")
        if case.kernel:
            try:
                err, path = compare_kernels(b64, case, r)
                report(err < FLOAT64_TOLERANCE, case.name, "kernel==spec", f"rel err {err:.1e} (worst: {path})")
            except Exception as exc:
                report(False, case.name, "kernel==spec", f"{type(exc).__name__}: {exc}")
    for name, task, dataset, batch in steps:
        label = f"step {name}" + (" (small)" if small_steps else "")
        for bk, tolerance in ((b64, FLOAT64_TOLERANCE), (b32, FLOAT32_TOLERANCE)):
            try:
                err, path = compare_step(bk, *step_problem(name, task, dataset, batch, small_steps))
                report(err < tolerance, label, f"numpy {bk.dtype}", f"rel err {err:.1e} (worst: {path})")
            except Exception as exc:
                report(False, label, f"numpy {bk.dtype}", f"{type(exc).__name__}: {exc}")
    if proposition1:
        try:
            equivariance, invariance = proposition1_errors(b)
            report(max(equivariance, invariance) < PROPOSITION1_TOLERANCE, "slot_attention", "Proposition 1",
                   f"slot permutation err {equivariance:.1e}, input permutation err {invariance:.1e}")
        except Exception as exc:
            report(False, "slot_attention", "Proposition 1", f"{type(exc).__name__}: {exc}")
    try:
        checks = fused.check_fused(b.xp)
    except Exception as exc:
        report(False, "fused kernels", "twin", f"{type(exc).__name__}: {exc}")
        checks = []
    for c in checks:
        report(c.ok, f"fused {c.name}", f"twin {c.dtype}", f"max error {c.max_error:.2f} of tolerance")
    if not checks:
        out(f"(no fused kernels on {getattr(b.xp, '__name__', b.xp)}: they are CuPy kernels)")
    out(f"selfcheck {'PASSED' if all_pass else 'FAILED'}")
    return all_pass
