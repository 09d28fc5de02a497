"""The fast kernels (slotref/kernels) equal the specification (slotref/layers.py, convolution.py, optim.py).

- the registry (slotref/dispatch.py): which kernel implements which
  specification function, how the implementation is chosen
  (``SLOTREF_KERNELS``, ``use``, ``using``), and that the choice reaches the
  layer calls;
- every registered kernel against its specification function, forward and
  the gradient of every argument, float64 (the CuPy kernels compiled for the
  CPU by tests/cuda_emulator.py); a kernel registered without an example here
  fails;
- the convolution kernels again: Hypothesis over shapes, strides, kernel
  sizes, channel counts and the kernels' own tuning constants (row blocks,
  the wide path, the patch-matrix threshold), and every layer shape of the
  paper's models (Tables 4-7);
- one full training step of every task and architecture: the same loss and
  gradients on both paths;
- the allocator setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, value_and_grad
from hypothesis import given
from hypothesis import strategies as st

import cuda_emulator
from slotref import backend, convolution, dispatch, layers, optim
from slotref.backend import host_rng, tree_leaves
from slotref.kernels import allocator, broadcast, conv, im2col
from slotref.losses import hungarian_huber_loss, mse
from slotref.models import autoencoder, discovery_config, init_model, set_prediction, setpred_config

seeds = st.integers(0, 2**32 - 1)
kernel_sizes = st.sampled_from([1, 3, 5])
strides = st.sampled_from([1, 2])
spatial = st.integers(1, 7)
# Input channels on both sides of IM2COL_MAX_CHANNELS (patch matrix / shifted GEMMs).
conv_channels = st.sampled_from([1, 3, im2col.IM2COL_MAX_CHANNELS + 1, 12])
# Row blocks small enough that one convolution spans several (the CPU blocking).
block_rows = st.sampled_from([3, 7, conv.BLOCK_ROWS])
# Both CPU paths of a stride-1 shifted sum: one GEMM per row offset (0), or all row offsets in one.
wide_limits = st.sampled_from([0, conv.WIDE_GEMM_MAX_CHANNELS])


@contextlib.contextmanager
def blocks_of(rows, wide=conv.WIDE_GEMM_MAX_CHANNELS):
    saved = conv.BLOCK_ROWS, conv.WIDE_GEMM_MAX_CHANNELS
    conv.BLOCK_ROWS, conv.WIDE_GEMM_MAX_CHANNELS = rows, wide
    try:
        yield
    finally:
        conv.BLOCK_ROWS, conv.WIDE_GEMM_MAX_CHANNELS = saved


def on_both_paths(fn, args, seed=0):
    """{'all' | 'reference': (fn(*args), gradient of <fn(*args), r> in every leaf of args)}:
    every registered kernel against the specification."""
    results = {}
    for choice in ("all", "reference"):
        with dispatch.using(choice):
            out = fn(*args)
            r = np.random.default_rng(seed).standard_normal(np.shape(out))
            grads = grad(lambda a: anp.sum(fn(*a) * r))(tuple(args))
        results[choice] = (out, grads)
    return results


def assert_close(fast, reference, what, rtol=1e-10):
    """Equal up to rounding: max |fast - reference| <= rtol * max |reference|."""
    scale = max(float(np.max(np.abs(reference), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(np.asarray(fast) - np.asarray(reference)), initial=0.0))
    assert np.shape(fast) == np.shape(reference), what
    assert err <= rtol * scale, f"{what}: max |fast - reference| = {err:.3e}, max |reference| = {scale:.3e}"


def assert_kernel_matches_specification(fn, args, rtol=1e-10):
    both = on_both_paths(fn, args)
    (out_f, grads_f), (out_r, grads_r) = both["all"], both["reference"]
    assert_close(out_f, out_r, "output", rtol)
    for (path, g_f), (_, g_r) in zip(tree_leaves(grads_f), tree_leaves(grads_r)):
        assert_close(g_f, g_r, f"gradient {path}", rtol)


def normal(rng, *shape):
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------
# The registry.

def test_every_fast_kernel_implements_a_specification_function():
    fused = {f"slotref.{spec}": (f"slotref.kernels.fused_cupy.{spec.rsplit('.', 1)[1]}", "cupy")
             for spec in ("layers.normalize", "layers.softmax", "layers.huber", "layers.gru_gates", "optim.adam_step")}
    assert dispatch.registered() == {
        "slotref.convolution.conv2d_same": ("slotref.kernels.conv.conv2d_same", None),
        "slotref.convolution.conv_transpose2d_same": ("slotref.kernels.conv.conv_transpose2d_same", None),
        "slotref.layers.broadcast_embed_conv_transpose2d":
            ("slotref.kernels.broadcast.broadcast_embed_conv_transpose2d", None),
        **fused,
    }
    assert dispatch.kernel_for(convolution.conv2d_same) is conv.conv2d_same
    assert dispatch.kernel_for(layers.broadcast_embed_conv_transpose2d) is broadcast.broadcast_embed_conv_transpose2d


def test_info_lists_every_kernel_beside_the_function_it_replaces():
    lines = dispatch.status()
    for spec, (kernel, on) in dispatch.registered().items():
        assert any(spec in line and kernel in line and (on is None or f"on {on} arrays only" in line)
                   for line in lines[1:]), spec


def test_the_choice_reaches_the_layer_calls(monkeypatch, rng):
    calls = []
    fast_forward = conv._conv_forward
    monkeypatch.setattr(conv, "_conv_forward", lambda *a: calls.append(a) or fast_forward(*a))
    params, x = layers.init_conv2d(rng, 3, 2, 4), normal(rng, 1, 5, 5, 2)
    with dispatch.using("fast"):
        fast = layers.conv2d(params, x)
    with dispatch.using("reference"):
        reference = layers.conv2d(params, x)
    assert len(calls) == 1
    np.testing.assert_allclose(fast, reference, rtol=1e-12, atol=1e-14)


def test_the_environment_chooses_and_use_overrides_it(monkeypatch):
    previous = dispatch.use(None)
    try:
        monkeypatch.delenv(dispatch.KERNELS_ENV, raising=False)
        assert dispatch.active() == "fast"
        monkeypatch.setenv(dispatch.KERNELS_ENV, "reference")
        assert dispatch.active() == "reference"
        dispatch.use("fast")
        assert dispatch.active() == "fast"
        with dispatch.using("reference"):
            assert dispatch.active() == "reference"
        assert dispatch.active() == "fast"
        dispatch.use(None)
        assert dispatch.active() == "reference"
        assert dispatch.status()[0].startswith("kernels: reference (every function as written")
    finally:
        dispatch.use(previous)


def test_a_bad_choice_is_a_one_line_error(monkeypatch):
    previous = dispatch.use(None)
    try:
        monkeypatch.setenv(dispatch.KERNELS_ENV, "turbo")
        with pytest.raises(ValueError, match=r"^\$SLOTREF_KERNELS must be one of reference, fast, all, got 'turbo'$"):
            dispatch.active()
        with pytest.raises(ValueError, match="kernels must be one of reference, fast, all"):
            dispatch.use("turbo")
    finally:
        dispatch.use(previous)


def test_only_a_replaceable_function_can_get_a_kernel():
    with pytest.raises(TypeError, match="layer_norm is not marked @replaceable"):
        dispatch.implements(layers.layer_norm)


# --------------------------------------------------------------------------
# Each kernel equals its specification function (float64, forward and every gradient).

@given(seed=seeds, batch=st.integers(1, 2), h=spatial, w=spatial, c_in=conv_channels,
       c_out=st.integers(1, 3), kernel=kernel_sizes, stride=strides, rows=block_rows, wide=wide_limits)
def test_fast_conv2d_equals_the_specification(seed, batch, h, w, c_in, c_out, kernel, stride, rows, wide):
    rng = np.random.default_rng(seed)
    x, k = normal(rng, batch, h, w, c_in), normal(rng, kernel, kernel, c_in, c_out)
    with blocks_of(rows, wide):
        assert_kernel_matches_specification(lambda a, b: convolution.conv2d_same(a, b, stride), (x, k))


@given(seed=seeds, batch=st.integers(1, 2), h=st.integers(1, 4), w=st.integers(1, 4), c_in=conv_channels,
       c_out=conv_channels, kernel=kernel_sizes, stride=strides, rows=block_rows, wide=wide_limits)
def test_fast_conv_transpose2d_equals_the_specification(seed, batch, h, w, c_in, c_out, kernel, stride, rows,
                                                        wide):
    rng = np.random.default_rng(seed)
    x, k = normal(rng, batch, h, w, c_in), normal(rng, kernel, kernel, c_out, c_in)
    with blocks_of(rows, wide):
        assert_kernel_matches_specification(lambda a, b: convolution.conv_transpose2d_same(a, b, stride), (x, k))


def broadcast_layer(stride, resolution):
    def first_decoder_layer(embed, conv_params, slots):
        return layers.broadcast_embed_conv_transpose2d(embed, conv_params, slots, resolution, stride)
    return first_decoder_layer


def broadcast_args(rng, batch, k, d, c_out, kernel):
    embed, conv_params = layers.init_soft_position_embed(rng, d), layers.init_conv_transpose2d(rng, kernel, d, c_out)
    embed["b"], conv_params["b"] = normal(rng, d), normal(rng, c_out)
    return embed, conv_params, normal(rng, batch, k, d)


@given(seed=seeds, batch=st.integers(1, 2), k=st.integers(1, 3), d=st.integers(1, 4), c_out=st.integers(1, 4),
       h=spatial, w=spatial, kernel=kernel_sizes, stride=strides)
def test_fast_broadcast_decoder_layer_equals_the_specification(seed, batch, k, d, c_out, h, w, kernel, stride):
    rng = np.random.default_rng(seed)
    assert_kernel_matches_specification(broadcast_layer(stride, (h, w)),
                                        broadcast_args(rng, batch, k, d, c_out, kernel))


# Every registered kernel: one example per specification function it replaces.

def _adam_arguments(rng):
    p, g, m, v = normal(rng, 4, 23)
    return p, g, m, np.abs(v), 1e-3 / (1 - 0.9 ** 3), 1 / (1 - 0.999 ** 3), 0.9, 0.999, 1e-8


# spec function -> (function of the arguments, arguments(rng)); None for the arguments' gradients: the
# function updates its array arguments in place (the Adam step) and those are compared instead.
EXAMPLES = {
    "slotref.convolution.conv2d_same": (lambda x, w: convolution.conv2d_same(x, w, 2),
                                        lambda rng: (normal(rng, 2, 5, 6, 3), normal(rng, 3, 3, 3, 4))),
    "slotref.convolution.conv_transpose2d_same": (lambda x, w: convolution.conv_transpose2d_same(x, w, 2),
                                                  lambda rng: (normal(rng, 2, 3, 4, 3), normal(rng, 5, 5, 2, 3))),
    "slotref.layers.broadcast_embed_conv_transpose2d": (broadcast_layer(2, (3, 4)),
                                                        lambda rng: broadcast_args(rng, 2, 2, 3, 2, 5)),
    "slotref.layers.normalize": (layers.normalize, lambda rng: (normal(rng, 3, 4, 33),)),
    "slotref.layers.softmax": (lambda x: layers.softmax(x, axis=1), lambda rng: (normal(rng, 2, 6, 5),)),
    "slotref.layers.huber": (layers.huber, lambda rng: (2 * normal(rng, 4, 9),)),
    "slotref.layers.gru_gates": (layers.gru_gates, lambda rng: (normal(rng, 3, 2, 15), normal(rng, 3, 2, 15),
                                                                normal(rng, 3, 2, 5))),
    "slotref.optim.adam_step": (optim.adam_step, _adam_arguments),
}


@pytest.mark.parametrize("spec", sorted(dispatch.registered()))
def test_every_registered_kernel_equals_its_specification(spec):
    assert spec in EXAMPLES, f"{spec} has a fast kernel but no example in EXAMPLES"
    fn, arguments = EXAMPLES[spec]
    kernel, on = dispatch.registered()[spec]
    if on is not None and not cuda_emulator.available():
        pytest.skip("needs g++ to compile the CuPy kernel sources")
    specification = dispatch.specifications()[spec]
    calls = []
    with cuda_emulator.cupy_kernels_on_numpy() if on == "cupy" else contextlib.nullcontext():
        entry = dispatch._fast[specification]
        counted = lambda *a, **k: calls.append(1) or entry.fn(*a, **k)  # noqa: E731
        dispatch._fast[specification] = dataclasses.replace(entry, fn=counted)
        try:
            if specification is optim.adam_step:       # in place: compare the updated p, m, v
                results = {}
                for choice in ("all", "reference"):
                    args = arguments(np.random.default_rng(0))
                    with dispatch.using(choice):
                        fn(*args)
                    results[choice] = args[:4]
                for name, f, r in zip("pgmv", results["all"], results["reference"]):
                    assert_close(f, r, name, rtol=1e-14)
            else:
                assert_kernel_matches_specification(fn, arguments(np.random.default_rng(0)))
        finally:
            dispatch._fast[specification] = entry
    assert calls, f"{kernel} was not called"


# Every convolution of the paper's models, batch 1: (kind, input size, kernel, stride, C_in, C_out).
PAPER_LAYERS = {
    "Table 4 set prediction conv 1": ("conv", 128, 5, 1, 3, 64),
    "Table 4 set prediction conv 2": ("conv", 128, 5, 2, 64, 64),
    "Table 4 set prediction conv 3": ("conv", 64, 5, 2, 64, 64),
    "Table 4 set prediction conv 4": ("conv", 32, 5, 1, 64, 64),
    "Table 4 CLEVR6 conv 2-4": ("conv", 128, 5, 1, 64, 64),
    "Table 5 Tetrominoes conv 1": ("conv", 35, 5, 1, 3, 32),
    "Table 5 Tetrominoes conv 2-4": ("conv", 35, 5, 1, 32, 32),
    "Table 5 Multi-dSprites conv 1": ("conv", 64, 5, 1, 3, 32),
    "Table 5 Multi-dSprites conv 2-4": ("conv", 64, 5, 1, 32, 32),
    "Table 6 broadcast 8x8 + conv 1": ("broadcast", 8, 5, 2, 64, 64),
    "Table 6 conv 2": ("deconv", 16, 5, 2, 64, 64),
    "Table 6 conv 3": ("deconv", 32, 5, 2, 64, 64),
    "Table 6 conv 4": ("deconv", 64, 5, 2, 64, 64),
    "Table 6 conv 5": ("deconv", 128, 5, 1, 64, 64),
    "Table 6 conv 6": ("deconv", 128, 3, 1, 64, 4),
    "Table 7 Tetrominoes broadcast + conv 1": ("broadcast", 35, 5, 1, 64, 32),
    "Table 7 Tetrominoes conv 2-3": ("deconv", 35, 5, 1, 32, 32),
    "Table 7 Tetrominoes conv 4": ("deconv", 35, 3, 1, 32, 4),
    "Table 7 Multi-dSprites broadcast + conv 1": ("broadcast", 64, 5, 1, 64, 32),
    "Table 7 Multi-dSprites conv 2-3": ("deconv", 64, 5, 1, 32, 32),
    "Table 7 Multi-dSprites conv 4": ("deconv", 64, 3, 1, 32, 4),
}


# 128x128 layers run at 40x40 by default (the same kernels, strides and channels; the row blocking
# is exercised above) and at their own size with -m slow.
LAYER_CASES = [pytest.param(name, PAPER_LAYERS[name][1], id=name) for name in PAPER_LAYERS]
LAYER_CASES += [pytest.param(name, 40, id=f"{name} at 40x40") for name in PAPER_LAYERS if PAPER_LAYERS[name][1] > 64]
LAYER_CASES = [pytest.param(*case.values, id=case.id, marks=[pytest.mark.slow] if case.values[1] > 64 else [])
               for case in LAYER_CASES]


@pytest.mark.parametrize("name, size", LAYER_CASES)
def test_fast_kernels_equal_the_specification_at_the_papers_layer_shapes(name, size):
    kind, _, kernel, stride, c_in, c_out = PAPER_LAYERS[name]
    rng = np.random.default_rng(0)
    if kind == "broadcast":
        assert_kernel_matches_specification(broadcast_layer(stride, (size, size)),
                                            broadcast_args(rng, 1, 2, c_in, c_out, kernel))
    elif kind == "conv":
        x, k = normal(rng, 1, size, size, c_in), 0.1 * normal(rng, kernel, kernel, c_in, c_out)
        assert_kernel_matches_specification(lambda a, b: convolution.conv2d_same(a, b, stride), (x, k))
    else:
        x, k = normal(rng, 1, size, size, c_in), 0.1 * normal(rng, kernel, kernel, c_out, c_in)
        assert_kernel_matches_specification(lambda a, b: convolution.conv_transpose2d_same(a, b, stride), (x, k))


def test_broadcast_taps_count_the_kernel_taps_that_reach_each_pixel():
    # 5x5 kernel, stride 1, a 3x3 input: the centre pixel is reached by 3 x 3 taps, a corner by 3 x 3 too
    # (SAME pads 2 on each side), and a 7x7 input's centre by all 25 and its corner by 3 x 3.
    taps = broadcast._broadcast_taps((7, 7), (5, 5), 1).reshape(7, 7, 25)
    assert taps[3, 3].sum() == 25 and taps[0, 0].sum() == 9 and taps[0, 3].sum() == 15
    assert set(np.unique(taps)) <= {0.0, 1.0}
    # stride 2 doubles the output; away from the border an output pixel is reached by the taps of
    # one phase of the kernel: 3 x 3, 3 x 2, 2 x 3 or 2 x 2 of them.
    taps2 = broadcast._broadcast_taps((6, 6), (5, 5), 2).reshape(12, 12, 25)
    assert sorted(taps2[6:8, 6:8].sum(axis=-1).ravel()) == [4, 6, 6, 9]


def test_the_fast_broadcast_layer_rejects_slots_that_are_not_a_set(rng):
    embed, conv_params, _ = broadcast_args(rng, 1, 2, 3, 2, 3)
    with dispatch.using("fast"), pytest.raises(ValueError, match=r"slots \(B, K, D\), got shape \(6, 3\)"):
        layers.broadcast_embed_conv_transpose2d(embed, conv_params, np.zeros((6, 3)), (4, 4), 1)


# --------------------------------------------------------------------------
# One training step of every task: the same loss and gradients on both paths.

def task_problem(name: str, batch: int):
    """(config, loss of the parameters) for one synthetic batch of a task and architecture."""
    if name == "setpred":
        config = setpred_config(32)
    elif name == "slot-mlp setpred":
        config = setpred_config(32, model="slot-mlp")
    elif name == "clevr6 at 128x128":
        config = discovery_config("clevr6")
    elif name == "clevr6":      # Tables 4 and 6 unchanged, the broadcast grid 2x2 so that it ends at 32x32
        config = discovery_config("clevr6", resolution=(32, 32), decoder_init_resolution=(2, 2))
    elif name == "slot-mlp tetrominoes":
        config = discovery_config("tetrominoes", model="slot-mlp")
    else:
        config = discovery_config(name)
    rng = host_rng(0)
    images = rng.uniform(-1.0, 1.0, (batch, *config.resolution, 3))
    noise = rng.standard_normal((batch, config.num_slots, config.slot_attention.slot_size))
    if config.task == "setpred":
        targets = np.zeros((batch, config.num_slots, 19))
        targets[:, :3] = rng.uniform(0.0, 1.0, (batch, 3, 19))
        targets[:, :3, -1] = 1.0
        return config, lambda p: hungarian_huber_loss(set_prediction(p, images, noise, config), targets)
    return config, lambda p: mse(autoencoder(p, images, noise, config)["recon_combined"], images)


def assert_same_training_step(name, batch):
    config, loss = task_problem(name, batch)
    params = init_model(host_rng(1), config)
    rng = np.random.default_rng(2)
    params = backend.tree_map(lambda a: a + 0.05 * rng.standard_normal(a.shape), params)  # off the zero biases
    results = {}
    for choice in ("fast", "reference"):
        with dispatch.using(choice):
            results[choice] = value_and_grad(loss)(params)
    (loss_f, grads_f), (loss_r, grads_r) = results["fast"], results["reference"]
    assert loss_f == pytest.approx(loss_r, rel=1e-12)
    # Leaves are compared at their own scale, but at least at 1e-6 of the largest gradient: some are zero
    # up to rounding (softmax over slots cancels the slot LayerNorm's offset).
    scale = max(float(np.max(np.abs(g))) for _, g in tree_leaves(grads_r))
    for (path, g_f), (_, g_r) in zip(tree_leaves(grads_f), tree_leaves(grads_r)):
        err = float(np.max(np.abs(g_f - g_r)))
        assert err <= 1e-10 * max(float(np.max(np.abs(g_r))), 1e-6 * scale), f"{name}: gradient {path}, {err:.2e}"


@pytest.mark.parametrize("name, batch", [("setpred", 2), ("tetrominoes", 2), ("multi-dsprites", 1), ("clevr6", 1),
                                         ("slot-mlp setpred", 2), ("slot-mlp tetrominoes", 2)])
def test_a_training_step_has_the_same_loss_and_gradients_on_both_paths(name, batch):
    assert_same_training_step(name, batch)


@pytest.mark.slow
def test_a_clevr6_training_step_at_full_resolution_is_the_same_on_both_paths():
    assert_same_training_step("clevr6 at 128x128", 1)


# --------------------------------------------------------------------------
# The allocator setting (applied by the entry points, not by get_backend).

def test_the_command_line_keeps_freed_host_memory_on_glibc_and_get_backend_does_not(monkeypatch):
    from click.testing import CliRunner

    from slotref.cli import main

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1
    monkeypatch.setattr(allocator, "_allocator_tuned", None)
    monkeypatch.setattr("ctypes.CDLL", lambda name: FakeLibc())
    backend.get_backend("cpu")
    assert calls == []
    monkeypatch.setattr(main.commands["selfcheck"], "callback", lambda **kw: None)
    for _ in range(2):                               # once per process
        assert CliRunner().invoke(main, ["selfcheck"]).exit_code == 0
    assert calls == [(allocator._M_MMAP_MAX, 0), (allocator._M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD_BYTES)]
    assert allocator.keep_freed_host_memory() is True


def test_without_glibc_the_allocator_is_left_alone(monkeypatch):
    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(allocator, "_allocator_tuned", None)
    monkeypatch.setattr("ctypes.CDLL", no_libc)
    assert allocator.keep_freed_host_memory() is False
    assert backend.get_backend("cpu").xp is np      # the backend works all the same


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_real_glibc_accepts_the_settings(monkeypatch):
    monkeypatch.setattr(allocator, "_allocator_tuned", None)
    assert allocator.keep_freed_host_memory() is True
