"""The fused CuPy kernels (slotref/kernels/fused_cupy.py): they apply to CuPy arrays only, so
the CPU runs the specification unchanged; compiled for the CPU (tests/cuda_emulator.py) they
equal the specification functions they replace in float32 and float64, forward and VJP, and
Huber and the Adam step bit for bit. (tests/kernels/test_kernels.py holds every registered kernel,
these included, to its specification in float64.)"""

import numpy as np
import pytest
from autograd import make_vjp
from hypothesis import given
from hypothesis import strategies as st

import cuda_emulator
from slotref import backend, dispatch, layers, optim
from slotref.kernels import fused_cupy

DTYPES = [np.float64, np.float32]
FUSED_SPECS = {"normalize": layers.normalize, "softmax": layers.softmax, "huber": layers.huber,
               "gru_gates": layers.gru_gates, "adam_step": optim.adam_step}
needs_gxx = pytest.mark.skipif(not cuda_emulator.available(), reason="needs g++ to compile the kernel sources")


def data(seed, shape, dtype, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def examples(seed, shape, dtype):
    """(name, function, arguments) of every fused chain, on arrays of ``shape`` (..., d)."""
    d = shape[-1]
    gates = shape[:-1] + (3 * d,)
    x = data(seed, shape, dtype, 2.0)
    return [("normalize", layers.normalize, (x,)),
            ("softmax", layers.softmax, (x,)),
            ("softmax axis 0", lambda a: layers.softmax(a, axis=0), (x,)),
            ("huber", layers.huber, (x,)),
            ("gru_gates", layers.gru_gates, (data(seed + 1, gates, dtype), data(seed + 2, gates, dtype),
                                             data(seed + 3, shape, dtype)))]


def forward_and_vjp(fn, args, seed):
    vjp, out = make_vjp(lambda *a: fn(*a), argnum=tuple(range(len(args))))(*args)
    g = backend.xp_of(out).asarray(data(seed, np.shape(out), out.dtype))
    return (out, *vjp(g))


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(want)))))


def test_every_fused_kernel_is_registered_for_cupy_arrays_only():
    for name, spec in FUSED_SPECS.items():
        kernel = dispatch._fast[spec]
        assert kernel.fn is getattr(fused_cupy, name) and kernel.on == "cupy" and not kernel.measured


@needs_gxx
def test_the_unmeasured_cupy_kernels_run_only_when_all_kernels_are_chosen(monkeypatch):
    x = data(0, (3, 6), np.float64)
    with cuda_emulator.cupy_kernels_on_numpy():
        monkeypatch.setattr(fused_cupy, "_kernel", lambda *a: pytest.fail("an unmeasured kernel ran under fast"))
        with dispatch.using("fast"):
            layers.softmax(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_on_numpy_the_fast_path_runs_the_specification_bit_for_bit(monkeypatch, dtype):
    monkeypatch.setattr(fused_cupy, "_kernel", lambda *a: pytest.fail("a CuPy kernel ran on NumPy arrays"))
    for name, fn, args in examples(0, (3, 4, 6), dtype):
        results = {}
        for choice in dispatch.CHOICES:
            with dispatch.using(choice):
                results[choice] = forward_and_vjp(fn, args, seed=7)
        for choice in ("fast", "all"):
            for fast, reference in zip(results[choice], results["reference"]):
                np.testing.assert_array_equal(fast, reference, err_msg=name)
    p, g, m, v = (data(i, 11, dtype) for i in range(4))
    with dispatch.using("fast"):
        optim.adam_step(p, g, m, np.abs(v), 1e-3, 1.0, 0.9, 0.999, 1e-8)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(0, 2 ** 16), st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
       st.integers(1, 17))
def test_the_compiled_kernels_equal_the_specification(dtype, seed, batch_shape, d):
    shape = batch_shape + (d,)
    for name, fn, args in examples(seed, shape, dtype):
        with dispatch.using("reference"):
            want = forward_and_vjp(fn, args, seed + 9)
        with cuda_emulator.cupy_kernels_on_numpy(), dispatch.using("all"):
            got = forward_and_vjp(fn, args, seed + 9)
        for a, b in zip(got, want):
            assert_close(a, b, dtype)
        if name == "huber":       # elementwise, and no multiply-add contracted: the same rounding
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_compiled_adam_step_is_the_specification_bit_for_bit(dtype):
    results = {}
    for choice in dispatch.CHOICES:
        p, g, m, v = (data(i, 101, dtype) for i in range(4))
        v = np.abs(v)
        with cuda_emulator.cupy_kernels_on_numpy(), dispatch.using(choice):
            optim.adam_step(p, g, m, v, 3e-3 / (1 - 0.9), 1 / (1 - 0.999), 0.9, 0.999, 1e-8)
        results[choice] = (p, m, v)
    for fast, reference in zip(results["all"], results["reference"]):
        np.testing.assert_array_equal(fast, reference)


@needs_gxx
def test_a_nan_goes_through_the_compiled_huber_as_through_the_specification():
    x = np.array([np.nan, -3.0, 0.5])
    with cuda_emulator.cupy_kernels_on_numpy(), dispatch.using("all"):
        got = layers.huber(x)
    np.testing.assert_array_equal(got, layers.huber.specification(x))


def test_the_cupy_kernels_equal_the_specification_on_a_gpu():
    cupy = pytest.importorskip("cupy")
    try:
        backend.get_backend("gpu")
    except backend.BackendError as err:
        pytest.skip(str(err))
    for dtype in DTYPES:
        for name, fn, args in examples(0, (3, 5, 16), dtype):
            device_args = tuple(cupy.asarray(a) for a in args)
            results = {}
            for choice in dispatch.CHOICES:
                with dispatch.using(choice):
                    results[choice] = [backend.to_host(a) for a in forward_and_vjp(fn, device_args, seed=7)]
            for a, b in zip(results["all"], results["reference"]):
                assert_close(a, b, dtype)
