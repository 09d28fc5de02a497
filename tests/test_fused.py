"""Fused chains: each NumPy twin computes what slotref/layers.py computes (forward
and VJP, float64 and float32); each twin's VJP agrees with finite differences;
each CuPy kernel's source, compiled for the CPU, agrees with its twin; and
the launch-count proxy counts what a step calls."""

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import make_vjp
from hypothesis import given
from hypothesis import strategies as st

import cuda_emulator
from slotref import backend, fused, layers, profile_gpu
from slotref.flat import FlatTree
from slotref.optim import Adam

DTYPES = [np.float64, np.float32]


def shapes(min_dims=1):
    return st.lists(st.integers(1, 5), min_size=min_dims, max_size=3).map(tuple)


def data(seed, shape, dtype, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(want)))))


def directional_fd(f, x, u, h=1e-6):
    return (f(x + h * u) - f(x - h * u)) / (2 * h)


# --------------------------------------------------------------------------
# Twins against slotref/layers.py.

@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), shapes())
def test_normalize_vjp_twin_equals_the_layers_vjp(dtype, seed, shape):
    # (the forward twin is layers.normalize itself)
    x, g = data(seed, shape, dtype, 3.0), data(seed + 1, shape, dtype)
    vjp, y = make_vjp(layers.normalize)(x)
    np.testing.assert_array_equal(fused.normalize_vjp(g, x, y), vjp(g))
    assert fused.normalize(x).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), shapes(), st.integers(-1, 0))
def test_softmax_twin_equals_layers_forward_and_vjp(dtype, seed, shape, axis):
    x, g = data(seed, shape, dtype, 3.0), data(seed + 1, shape, dtype)
    vjp, y = make_vjp(lambda a: layers.softmax(a, axis))(x)
    np.testing.assert_array_equal(fused.softmax(x, axis), y)
    np.testing.assert_array_equal(fused.softmax_vjp(g, y, axis), vjp(g))


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), shapes(), st.sampled_from([0.5, 1.0, 2.0]))
def test_huber_twin_equals_layers_forward_and_vjp(dtype, seed, shape, delta):
    x, g = data(seed, shape, dtype, 2.0), data(seed + 1, shape, dtype)
    vjp, y = make_vjp(lambda a: layers.huber(a, delta))(x)
    np.testing.assert_array_equal(fused.huber(x, delta), y)
    np.testing.assert_array_equal(fused.huber_vjp(g, x, delta), vjp(g))


def gru_params(seed, d_in, d, dtype):
    p = layers.init_gru(np.random.default_rng(seed), d_in, d)
    p["b_input"] = np.random.default_rng(seed + 7).normal(size=3 * d)   # non-zero biases: every term counts
    p["b_hidden"] = np.random.default_rng(seed + 8).normal(size=3 * d)
    return {k: v.astype(dtype) for k, v in p.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))
def test_gru_gates_twin_equals_layers_gru_cell(dtype, seed, batch, d_in, d):
    p = gru_params(seed, d_in, d, dtype)
    x, h = data(seed, (batch, d_in), dtype), data(seed + 1, (batch, d), dtype)
    gates_x, gates_h = x @ p["w_input"] + p["b_input"], h @ p["w_hidden"] + p["b_hidden"]
    np.testing.assert_array_equal(fused.gru_gates(gates_x, gates_h, h), layers.gru_cell(p, x, h))


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))
def test_gru_gates_vjp_gives_layers_gru_cell_gradients(dtype, seed, batch, d_in, d):
    """Chained through the two matmuls, the twin's VJP gives autograd's gradient of gru_cell."""
    p = gru_params(seed, d_in, d, dtype)
    x, h, g = data(seed, (batch, d_in), dtype), data(seed + 1, (batch, d), dtype), data(seed + 2, (batch, d), dtype)
    vjp, _ = make_vjp(lambda args: layers.gru_cell(*args))((p, x, h))
    d_p, d_x, d_h = vjp(g)
    gates_x, gates_h = x @ p["w_input"] + p["b_input"], h @ p["w_hidden"] + p["b_hidden"]
    d_gx, d_gh, d_h_direct = fused.gru_gates_vjp(g, gates_x, gates_h, h)
    assert_close(x.T @ d_gx, d_p["w_input"], dtype)
    assert_close(h.T @ d_gh, d_p["w_hidden"], dtype)
    assert_close(d_gx.sum(axis=0), d_p["b_input"], dtype)
    assert_close(d_gh.sum(axis=0), d_p["b_hidden"], dtype)
    assert_close(d_gx @ p["w_input"].T, d_x, dtype)
    assert_close(d_gh @ p["w_hidden"].T + d_h_direct, d_h, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_twin_is_adam_update_on_one_leaf(rng, dtype):
    p, g = rng.normal(size=7).astype(dtype), rng.normal(size=7).astype(dtype)
    params, adam = {"p": p.copy()}, Adam()
    state = adam.init(params)
    adam.update(params, {"p": g}, state, 3e-3)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fused.adam_update(p, g, m, v, 3e-3 / (1 - 0.9), 1 / (1 - 0.999), 0.9, 0.999, 1e-8)
    np.testing.assert_array_equal(p, params["p"])
    np.testing.assert_array_equal(m, state["m"]["p"])
    np.testing.assert_array_equal(v, state["v"]["p"])


# --------------------------------------------------------------------------
# Twin VJPs against central finite differences (float64).

@given(st.integers(0, 2 ** 16), shapes())
def test_twin_vjps_match_finite_differences(seed, shape):
    x, g, u = data(seed, shape, np.float64, 2.0), data(seed + 1, shape, np.float64), data(seed + 2, shape, np.float64)
    for forward, backward in [
        (fused.normalize, lambda g, x: fused.normalize_vjp(g, x, fused.normalize(x))),
        (fused.softmax, lambda g, x: fused.softmax_vjp(g, fused.softmax(x))),
        (fused.huber, lambda g, x: fused.huber_vjp(g, x + 0.0)),
    ]:
        fd = np.sum(g * directional_fd(forward, x, u))
        assert np.sum(backward(g, x) * u) == pytest.approx(fd, rel=1e-6, abs=1e-7), forward.__name__


@given(st.integers(0, 2 ** 16), st.integers(1, 3), st.integers(1, 4))
def test_gru_gates_vjp_matches_finite_differences(seed, batch, d):
    gx, gh, h = (data(seed + i, s, np.float64) for i, s in enumerate([(batch, 3 * d), (batch, 3 * d), (batch, d)]))
    g = data(seed + 5, (batch, d), np.float64)
    d_gx, d_gh, d_h = fused.gru_gates_vjp(g, gx, gh, h)
    ux, uh, u = data(seed + 6, gx.shape, np.float64), data(seed + 7, gh.shape, np.float64), data(seed + 8, h.shape,
                                                                                                  np.float64)
    fd = np.sum(g * directional_fd(lambda t: fused.gru_gates(gx + t * ux, gh + t * uh, h + t * u), 0.0, 1.0))
    assert np.sum(d_gx * ux) + np.sum(d_gh * uh) + np.sum(d_h * u) == pytest.approx(fd, rel=1e-6, abs=1e-8)


# --------------------------------------------------------------------------
# Device kernels: the registry, check_fused, and the CuPy sources run on the CPU.

def test_the_registry_has_every_hot_chain_and_lookup_gives_the_twin_off_cupy():
    assert set(fused.FUSED) == {"normalize", "normalize_vjp", "softmax", "softmax_vjp", "gru_gates",
                                "gru_gates_vjp", "huber", "huber_vjp", "adam_update"}
    for name, op in fused.FUSED.items():
        assert fused.lookup(name, np, enabled=True) is op.twin
        assert fused.device_kernel(name, np) is None
    with pytest.raises(KeyError, match="softmax"):
        fused.lookup("sofmax", np)


def test_check_fused_passes_the_twins_and_catches_a_wrong_kernel():
    twins = {name: op.twin for name, op in fused.FUSED.items()}
    results = fused.check_fused(np, kernels=twins)
    assert len(results) == 2 * len(fused.FUSED) and all(r.ok and r.max_error == 0 for r in results)
    wrong = dict(twins, softmax=lambda x, axis=-1: fused.softmax(x, axis) * (1 + 1e-4))
    failed = [(r.name, r.dtype) for r in fused.check_fused(np, kernels=wrong) if not r.ok]
    assert failed == [("softmax", "float32"), ("softmax", "float64")]
    nan = dict(twins, huber=lambda x, delta=1.0: fused.huber(x, delta) * np.nan)
    assert [r.name for r in fused.check_fused(np, kernels=nan) if not r.ok] == ["huber", "huber"]
    assert fused.check_fused(np) == []          # no device kernels on NumPy


@pytest.mark.skipif(not cuda_emulator.available(), reason="needs g++ to compile the kernel sources")
def test_the_cupy_kernel_sources_compiled_for_the_cpu_agree_with_their_twins():
    cp = cuda_emulator.emulated_cupy()
    kernels = {name: op.build(cp) for name, op in fused.FUSED.items()}
    results = fused.check_fused(np, kernels=kernels, shape=(2, 3, 17))
    assert len(results) == 2 * len(fused.FUSED)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    # Without fused multiply-adds the Adam kernel is the twin, bit for bit.
    assert all(r.max_error == 0 for r in results if r.name in ("adam_update", "huber", "huber_vjp"))


def test_the_cupy_kernels_pass_check_fused_on_a_gpu():
    cupy = pytest.importorskip("cupy")
    try:
        backend.get_backend("gpu")
    except backend.BackendError as err:
        pytest.skip(str(err))
    results = fused.check_fused(cupy)
    assert len(results) == 2 * len(fused.FUSED) and all(r.ok for r in results), results


# --------------------------------------------------------------------------
# The launch-count proxy.

def test_count_calls_counts_each_array_call_once_by_name(rng):
    x = rng.normal(size=(3, 8))
    y, counts = profile_gpu.count_calls(fused.normalize, x)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, fused.normalize(x))
    # mean, subtract, multiply, mean, add, sqrt, divide: np.mean's own sum and divide are not recounted.
    assert counts == {"mean": 2, "subtract": 1, "multiply": 1, "add": 1, "sqrt": 1, "divide": 1}
    assert counts.total == 7
    _, counts = profile_gpu.count_calls(lambda a: (np.shape(a), a.sum(), np.concatenate([a, a])), x)
    assert counts == {"add.reduce": 1, "concatenate": 1}   # metadata calls make no array


def test_count_calls_follows_autograd_through_the_backward_pass(rng):
    x = rng.normal(size=(4, 8))

    def loss(x):
        return backend.sum(layers.softmax(x) ** 2)
    (value, grad), counts = profile_gpu.count_calls(autograd.value_and_grad(loss), x)
    assert type(grad) is np.ndarray
    assert value == pytest.approx(np.sum(layers.softmax(x) ** 2))
    _, forward = profile_gpu.count_calls(loss, x)
    assert counts.total > forward.total >= 5


def test_flat_adam_makes_far_fewer_calls_than_per_leaf_adam(rng):
    """The launch proxy of the whole-buffer update: a handful of calls instead of a handful per leaf."""
    tree = {f"layer{i}": {"w": rng.normal(size=(4, 4)), "b": rng.normal(size=4)} for i in range(10)}
    grads = {k: {n: rng.normal(size=a.shape) for n, a in v.items()} for k, v in tree.items()}
    adam = Adam()
    per_leaf = profile_gpu.counting({k: {n: a.copy() for n, a in v.items()} for k, v in tree.items()})
    state = adam.init(per_leaf)
    _, leaf_counts = profile_gpu.count_calls(adam.update, per_leaf, grads, state, 1e-3)
    flat = FlatTree.from_tree(tree)

    def counted(flat_tree):
        return flat_tree.layout.wrap({k: profile_gpu.counting(v) for k, v in flat_tree.buffers.items()})
    params = counted(flat)
    flat_state = adam.init(params)
    flat_state["flat"] = {k: counted(v) for k, v in flat_state["flat"].items()}
    _, flat_counts = profile_gpu.count_calls(adam.update, params, counted(flat.layout.flatten(grads)),
                                             flat_state, 1e-3)
    assert leaf_counts.total == 13 * 20             # 13 calls per leaf, 20 leaves
    assert flat_counts.total == 13                  # 13 calls in all
    np.testing.assert_array_equal(flat.tree["layer3"]["w"], per_leaf["layer3"]["w"])


def test_profile_step_on_numpy_reports_calls_and_no_device_time(rng):
    result, profile = profile_gpu.profile_step(lambda a: anp.exp(a) + a, rng.normal(size=3))
    assert profile.device_ms is None and profile.calls == {"exp": 1, "add": 1}
    assert "2 array calls" in profile.summary()
