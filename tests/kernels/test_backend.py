"""Specification of the backend shim (slotref/backend.py).

Device selection and its errors, the dtype policy, seeded generators, host
transfer and tree helpers, and the shim's primitives (sum, mean, relu,
sigmoid, index): gradients against finite differences in float64, and dtype
kept (float32 in, float32 gradient, no float64 intermediate, counted on the
stand-in device of tests/standin.py).
"""

import sys
import types

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.core import vspace
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

import standin
from slotref import backend
from slotref.backend import Backend, BackendError, get_backend

# --------------------------------------------------------------------------
# Device selection.


@pytest.fixture
def no_device_env(monkeypatch):
    monkeypatch.delenv(backend.DEVICE_ENV, raising=False)


@pytest.fixture
def without_cupy(monkeypatch):
    """Make ``import cupy`` fail, whether or not CuPy is installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def fake_cupy(device_count):
    """A module that looks like CuPy to ``_import_cupy`` but reports ``device_count`` GPUs."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime), __version__="0-fake")


def test_cpu_is_numpy_and_float32_by_default(no_device_env):
    b = get_backend()
    assert (b.device, b.xp, b.dtype) == ("cpu", np, np.float32)
    assert get_backend("cpu").xp is np


def test_float64_on_request():
    assert get_backend("cpu", "float64").dtype == np.float64
    assert get_backend("cpu", np.float64).dtype == np.float64


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex64"])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(BackendError, match="float32 or float64"):
        get_backend("cpu", dtype)


def test_gpu_without_cupy_is_a_one_line_error_naming_cupy(without_cupy):
    with pytest.raises(BackendError) as info:
        get_backend("gpu")
    message = str(info.value)
    assert "\n" not in message
    assert "cupy" in message.lower() and "pip install" in message


@pytest.mark.parametrize("count", [0, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")])
def test_gpu_with_cupy_but_no_visible_gpu_is_a_one_line_error(monkeypatch, count):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count))
    with pytest.raises(BackendError) as info:
        get_backend("gpu")
    assert "\n" not in str(info.value)
    assert "GPU" in str(info.value)


@pytest.mark.parametrize("name", ["tpu", "cuda", "", "  "])
def test_unknown_device_names_the_choices(name, no_device_env):
    if not name:
        assert get_backend(name).device == "cpu"  # empty means 'the default'
        return
    with pytest.raises(BackendError, match="cpu, gpu"):
        get_backend(name)


def test_device_names_are_case_insensitive():
    assert get_backend("CPU").device == "cpu"


def test_device_comes_from_the_environment(monkeypatch, without_cupy):
    monkeypatch.setenv(backend.DEVICE_ENV, "cpu")
    assert get_backend().device == "cpu"
    monkeypatch.setenv(backend.DEVICE_ENV, "gpu")
    with pytest.raises(BackendError, match="(?i)cupy"):
        get_backend()
    assert get_backend("cpu").device == "cpu"  # an explicit argument wins over the environment
    monkeypatch.setenv(backend.DEVICE_ENV, "quantum")
    with pytest.raises(BackendError, match="quantum"):
        get_backend()


def test_gpu_status_is_one_line_without_cupy(without_cupy):
    status = backend.gpu_status()
    assert "\n" not in status and "cupy" in status.lower()


# --------------------------------------------------------------------------
# dtype policy and transfers.

def test_asarray_casts_floats_to_the_policy_dtype_and_keeps_integers():
    b32 = get_backend("cpu", "float32")
    assert b32.asarray(np.ones(3)).dtype == np.float32
    assert b32.asarray(1.5).dtype == np.float32
    assert b32.asarray([1.0, 2.0]).dtype == np.float32
    assert b32.asarray(np.arange(3)).dtype == np.arange(3).dtype
    assert b32.asarray(np.ones(2), dtype=np.float64).dtype == np.float64
    assert get_backend("cpu", "float64").asarray(np.ones(3, np.float32)).dtype == np.float64


def test_tree_asarray_keeps_the_tree_and_moves_every_leaf():
    tree = {"a": np.ones(2), "layers": [{"w": np.zeros((2, 2))}, {"w": np.ones(1)}], "t": (np.ones(1),)}
    sb = standin.standin_backend(np.float32)
    moved = sb.tree_asarray(tree)
    assert isinstance(moved["layers"], list) and isinstance(moved["t"], tuple)
    assert [path for path, _ in backend.tree_leaves(moved)] == ["a", "layers/0/w", "layers/1/w", "t/0"]
    for _, leaf in backend.tree_leaves(moved):
        assert isinstance(leaf, standin.StandinArray) and leaf.dtype == np.float32


def test_to_host_and_to_float_on_every_kind_of_array():
    x = np.arange(3.0)
    assert backend.to_host(x) is x
    assert backend.to_host(2.5) == 2.5
    dev = standin.standin_backend(np.float64).asarray(x)
    host = backend.to_host(dev)
    assert type(host) is np.ndarray and np.array_equal(host, x)
    assert backend.to_float(standin.standin_xp.sum(dev)) == 3.0
    seen = []
    grad(lambda v: seen.append(backend.to_host(v)) or anp.sum(v))(x)
    assert type(seen[0]) is np.ndarray  # through an autograd box
    with pytest.raises(TypeError):
        backend.to_host(object())


def test_xp_of_finds_the_array_module_through_boxes():
    dev = standin.standin_backend().asarray(np.ones(2))
    assert backend.xp_of(np.ones(2)) is np
    assert backend.xp_of(1.0) is np
    assert backend.xp_of(dev) is standin.standin_xp
    seen = []
    grad(lambda v: seen.append(backend.xp_of(v)) or backend.sum(v))(dev)
    assert seen == [standin.standin_xp]
    assert backend.is_host_array(np.ones(1)) and not backend.is_host_array(dev)


def test_registered_device_vspace_makes_device_zeros_and_ones():
    backend.register_array_type(standin.StandinArray, standin.standin_xp)  # idempotent
    dev = standin.standin_backend(np.float32).asarray(np.ones((2, 3)))
    vs = vspace(dev)
    for made in (vs.zeros(), vs.ones()):
        assert isinstance(made, standin.StandinArray)
        assert made.shape == (2, 3) and made.dtype == np.float32


# --------------------------------------------------------------------------
# Seeded generators.

def test_same_seed_same_draws_bit_for_bit():
    b = get_backend("cpu")
    first = b.rng(42, 7).standard_normal((5, 4), dtype=np.float32)
    second = b.rng(42, 7).standard_normal((5, 4), dtype=np.float32)
    assert first.dtype == np.float32 and first.tobytes() == second.tobytes()
    assert b.rng(42, 8).standard_normal(3).tobytes() != b.rng(42, 7).standard_normal(3).tobytes()
    assert b.rng(43, 7).standard_normal(3).tobytes() != b.rng(42, 7).standard_normal(3).tobytes()
    assert backend.host_rng(1, 2).random(4).tobytes() == backend.host_rng(1, 2).random(4).tobytes()
    assert backend.host_rng(1, 2).random(4).tobytes() != backend.host_rng(2, 1).random(4).tobytes()


def test_device_generator_draws_on_the_device():
    draws = standin.standin_backend().rng(42, 7).standard_normal((5, 4), dtype=np.float32)
    assert isinstance(draws, standin.StandinArray)
    # The stand-in wraps the same generator, so the draws equal the CPU's.
    assert draws.get().tobytes() == get_backend("cpu").rng(42, 7).standard_normal((5, 4), dtype=np.float32).tobytes()


# --------------------------------------------------------------------------
# Tree helpers.

def test_tree_map_keeps_structure():
    tree = {"b": [np.ones(1), (np.zeros(2),)], "a": np.ones(3)}
    doubled = backend.tree_map(lambda x: 2 * x, tree)
    assert list(doubled) == ["b", "a"] and isinstance(doubled["b"][1], tuple)
    np.testing.assert_array_equal(doubled["a"], 2 * np.ones(3))
    np.testing.assert_array_equal(doubled["b"][0], [2.0])


def test_tree_leaves_paths_follow_the_nesting():
    tree = {"slot_attention": {"gru": {"w_input": 1, "b": 2}, "mlp": [{"w": 3}, {"w": 4}]}}
    assert backend.tree_leaves(tree) == [
        ("slot_attention/gru/w_input", 1), ("slot_attention/gru/b", 2),
        ("slot_attention/mlp/0/w", 3), ("slot_attention/mlp/1/w", 4)]
    assert backend.tree_leaves(5) == [("", 5)]


# --------------------------------------------------------------------------
# The shim's primitives.

axes = st.sampled_from([None, 0, 1, 2, -1, (0, 2), (1,), (0, 1, 2)])


@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(*[st.integers(1, 3)] * 3), axis=axes, keepdims=st.booleans())
def test_sum_and_mean_gradients_match_finite_differences(seed, shape, axis, keepdims):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_grads(lambda v: backend.sum(v, axis=axis, keepdims=keepdims), modes=["rev"], order=1)(x)
    check_grads(lambda v: backend.mean(v, axis=axis, keepdims=keepdims), modes=["rev"], order=1)(x)
    np.testing.assert_allclose(backend.sum(x, axis, keepdims), np.sum(x, axis, keepdims=keepdims))
    np.testing.assert_allclose(backend.mean(x, axis, keepdims), np.mean(x, axis, keepdims=keepdims))


@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(1, 4), st.integers(1, 4)))
def test_relu_and_sigmoid_gradients_match_finite_differences(seed, shape):
    x = 2.0 * np.random.default_rng(seed).standard_normal(shape)
    check_grads(backend.relu, modes=["rev"], order=1)(x)
    check_grads(backend.sigmoid, modes=["rev"], order=1)(x)


INDICES = [
    (slice(None), 1),
    (Ellipsis, slice(1, 3)),
    (0,),
    (slice(None, None, 2), slice(None), 0),
    (None, slice(1, None)),
    (1, Ellipsis, None),
]


@pytest.mark.parametrize("idx", INDICES, ids=repr)
def test_index_gradient_matches_finite_differences(idx, rng):
    x = rng.standard_normal((3, 4, 2))
    np.testing.assert_array_equal(backend.index(x, idx), x[idx])
    check_grads(lambda v: backend.index(v, idx), modes=["rev"], order=1)(x)


PRIMITIVE_LOSSES = {
    "sum": lambda p, x: backend.sum(backend.sum(x, axis=1) * p["w"]),
    "sum keepdims": lambda p, x: backend.sum(backend.sum(x, axis=(0, 2), keepdims=True) * x),
    "mean": lambda p, x: backend.sum(backend.mean(x * x, axis=-1) @ p["w"]) + backend.mean(x),
    "relu": lambda p, x: backend.sum(backend.relu(x) * x),
    "sigmoid": lambda p, x: backend.sum(backend.sigmoid(x * backend.index(p["w"], (0,)))),
    "index": lambda p, x: backend.sum(backend.index(x, (Ellipsis, slice(1, 3))) * backend.index(p["w"], (1,))),
}


@pytest.mark.parametrize("name", list(PRIMITIVE_LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_primitives_keep_the_dtype_and_the_device(name, dtype, rng):
    """float32 in -> float32 gradient, no float64 array created, gradients on the device (stand-in)."""
    params = {"w": rng.standard_normal(4)}
    standin.assert_same_on_standin(PRIMITIVE_LOSSES[name], params, rng.standard_normal((3, 4, 4)), dtype=dtype)


def test_primitive_gradients_are_float32_on_numpy_too(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for f in (lambda v: backend.mean(v * v), lambda v: backend.sum(backend.relu(v)),
              lambda v: backend.sum(backend.sigmoid(v)), lambda v: backend.sum(backend.index(v, (0,)))):
        assert grad(f)(x).dtype == np.float32


def test_reshape_gradient_spells_out_the_order():
    """autograd's VJP passes order=None, which CuPy refuses; the shim re-registers it (see backend.py)."""
    dev = standin.standin_backend(np.float64).asarray(np.arange(6.0))
    def f(v):
        return backend.sum(v.reshape(2, 3) * v.reshape((3, 2)).T) + backend.sum(anp.ravel(v) * v)
    g = grad(f)(dev)
    assert isinstance(g, standin.StandinArray)
    expected = grad(f)(np.arange(6.0))
    np.testing.assert_allclose(g.get(), expected)


def test_backend_can_be_built_directly_for_another_device():
    b = Backend(device="standin", xp=standin.standin_xp, dtype=np.dtype(np.float32))
    assert isinstance(b.asarray(np.ones(2)), standin.StandinArray)
