"""GPU-readiness without a GPU.

A full forward and backward pass through every layer and through the Slot
Attention module on the stand-in device of tests/standin.py, which refuses
implicit conversion to NumPy as CuPy does. For each: the loss and every
gradient equal the NumPy run (float32 and float64), the gradients are device
arrays of the input dtype, nothing crossed to or from the host, and the
float32 run created no float64 array.

The first half checks the stand-in itself: that it refuses and counts what
CuPy would refuse, so a clean run means something.
"""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad

import standin
from slotref import backend, dispatch, layers, selfcheck
from slotref.kernels import im2col
from standin import StandinArray, assert_same_on_standin, standin_xp

sa = importlib.import_module("slotref.slot_attention")  # the module; slotref.slot_attention is its function


@pytest.fixture
def dev(rng):
    """A float32 stand-in array and its host twin."""
    host = rng.standard_normal((3, 4)).astype(np.float32)
    return standin.standin_backend(np.float32).asarray(host), host


# --------------------------------------------------------------------------
# The stand-in behaves like CuPy.

def test_standin_refuses_implicit_conversion_to_numpy(dev):
    x, _ = dev
    with standin.watch() as stats:
        for convert in (np.asarray, np.array, float, bool, lambda a: np.testing.assert_allclose(a, 0)):
            with pytest.raises(TypeError):
                convert(x if convert is np.asarray or convert is np.array else standin_xp.sum(x))
    assert len(stats.conversions) >= 4


def test_standin_refuses_numpy_operands(dev):
    x, host = dev
    with standin.watch() as stats:
        with pytest.raises(TypeError):
            x + host
        with pytest.raises(TypeError):
            host * x
        with pytest.raises(TypeError):
            np.concatenate([x, host])
        with pytest.raises(TypeError):
            standin_xp.exp(host)
    assert len(stats.host_operands) == 4


def test_standin_counts_host_index_arrays_and_values(dev):
    x, _ = dev
    with standin.watch() as stats:
        x[np.array([0, 2])]
        x[0] = np.zeros(4, np.float32)
    assert len(stats.host_operands) == 2


def test_standin_counts_float64_arrays_and_upcasts(dev):
    x, _ = dev
    with standin.watch() as stats:
        x * 2.0                      # Python scalars are weak: stays float32
        standin_xp.zeros((2, 2), dtype=np.float32)
    assert not stats.float64_created
    with standin.watch() as stats:
        x * np.float64(2.0)          # a NumPy float64 scalar upcasts (NEP 50)
        standin_xp.zeros((2, 2))     # creation without a dtype is float64
        x.astype(np.float64)
    assert len(stats.float64_created) == 3 and len(stats.upcasts) == 2
    assert "test_standin_device.py" in stats.upcasts[0]  # events say where they happened


def test_standin_results_stay_on_the_device(dev):
    x, host = dev
    for result in (x + 1, np.exp(x), np.sum(x), x.sum(axis=0), x[0, 1], x.T @ x, standin_xp.pad(x, 1),
                   np.swapaxes(x, 0, 1), standin_xp.random.default_rng(0).standard_normal(3),
                   standin_xp.lib.stride_tricks.as_strided(x, (2, 2), x.strides)):
        assert isinstance(result, StandinArray)
    assert np.sum(x).shape == ()  # reductions give 0-d device arrays, not NumPy scalars
    got = x.get()
    assert type(got) is np.ndarray and np.array_equal(got, host)
    got[0, 0] = 99.0
    assert x.get()[0, 0] != 99.0  # .get() copies


def test_standin_counts_explicit_transfers_separately(rng):
    with standin.watch() as stats:
        standin_xp.asarray(rng.standard_normal(3))
        standin_xp.asarray(standin_xp.zeros(3, dtype=np.float32))  # already on the device: no transfer
    assert len(stats.explicit_transfers) == 1 and not stats.conversions


def test_standin_ufunc_at_and_order_none_follow_cupy(dev):
    x, _ = dev
    target = standin_xp.zeros(4, dtype=np.float32)
    standin_xp.add.at(target, standin_xp.asarray(np.array([0, 0, 3])), 1.0)
    np.testing.assert_array_equal(target.get(), [2, 0, 0, 1])
    with pytest.raises(TypeError):
        np.add.at(target, slice(0, 2), 1.0)  # CuPy takes device index arrays only here
    with pytest.raises(TypeError):
        np.reshape(x, (4, 3), order=None)   # CuPy: "object of type 'NoneType' has no len()"


def test_autograd_traces_through_raw_device_arrays(dev):
    """device_array + box defers to the box (CuPy's _should_use_rop rule), so it traces."""
    x, host = dev
    g = grad(lambda w: backend.sum(x * w) + backend.sum(x @ anp.transpose(w)))(standin_xp.ones((3, 4), dtype=np.float32))
    assert isinstance(g, StandinArray)


def test_the_check_catches_host_arrays_and_upcasts(rng):
    """What assert_same_on_standin is for: each of these layers works on NumPy and fails on a GPU."""
    params, x = {"w": rng.standard_normal(4)}, rng.standard_normal((3, 4))
    bad_layers = {
        "host constant": lambda p, x: backend.sum(x * p["w"] + np.ones(4)),
        "host creation": lambda p, x: backend.sum(x * p["w"] + anp.ones(4)),
        "autograd's own mean": lambda p, x: anp.mean(x * p["w"]),
        "slicing a traced array": lambda p, x: backend.sum(x[:, :2] * p["w"][:2]),
        "float64 scalar": lambda p, x: backend.sum(x * p["w"] * np.float64(0.5)),
        "raw module on a box": lambda p, x: backend.sum(backend.xp_of(x).tanh(x * p["w"])),
    }
    for name, loss in bad_layers.items():
        with pytest.raises((AssertionError, TypeError)):
            assert_same_on_standin(loss, params, x, dtype=np.float32)
            pytest.fail(f"{name} passed")
    assert_same_on_standin(lambda p, x: backend.sum(x * p["w"] * 0.5), params, x, dtype=np.float32)


# --------------------------------------------------------------------------
# Every layer and the Slot Attention module on the stand-in.

CASES = selfcheck.layer_cases()


def projected(fn):
    """A scalar loss <fn(params, *inputs), r>, with r the last input."""
    def loss(params, *inputs_and_r):
        *inputs, r = inputs_and_r
        return backend.sum(fn(params, *inputs) * r)
    return loss


def projection_for(case, rng):
    return rng.standard_normal(np.shape(case.fn(case.params, *case.inputs)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_forward_and_backward_on_the_device_match_numpy(case, dtype, rng):
    assert_same_on_standin(projected(case.fn), case.params, *case.inputs, projection_for(case, rng), dtype=dtype)


KERNEL_CASES = [c for c in CASES if c.kernel]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c.name for c in KERNEL_CASES])
def test_the_specification_of_each_kernel_layer_runs_on_the_device(case, dtype, rng):
    with dispatch.using("reference"):
        assert_same_on_standin(projected(case.fn), case.params, *case.inputs, projection_for(case, rng), dtype=dtype)


ABLATIONS = [
    {},
    {"aggregation": "sum"},
    {"aggregation": "sum_layernorm"},
    {"softmax_axis": "inputs"},
    {"slot_init": "per_slot", "num_train_slots": 3},
    {"update": "none"},
    {"layer_norms": False},
    {"residual_mlp": False},
    {"temperature": "one"},
    {"epsilon_placement": "denominator"},
    {"projections": "identity", "input_size": 5},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_slot_attention_and_its_ablations_run_on_the_device(overrides, rng):
    config = sa.SlotAttentionConfig(**{"input_size": 6, "slot_size": 5, "mlp_hidden_size": 8, **overrides})
    params = sa.init_slot_attention(rng, config)

    def loss(p, inputs, noise, r):
        slots = sa.sample_initial_slots(p, noise)
        slots, attn = sa.slot_attention(p, inputs, slots, num_iterations=3, config=config, return_attention=True)
        assert backend.xp_of(attn) is backend.xp_of(slots)  # attention maps on the same device
        return backend.sum(slots * r)

    inputs = rng.standard_normal((2, 9, config.input_size))
    assert_same_on_standin(loss, params, inputs, rng.standard_normal((2, 3, 5)),
                           rng.standard_normal((2, 3, 5)), dtype=np.float32)


def test_slot_noise_is_drawn_on_the_device_by_the_device_generator():
    b = standin.standin_backend(np.float32)
    with standin.watch() as stats:
        noise = sa.slot_noise(b.rng(0, 1), 2, 7, 64, b.dtype)
    assert isinstance(noise, StandinArray) and noise.dtype == np.float32 and noise.shape == (2, 7, 64)
    assert not stats.explicit_transfers and not stats.float64_created


def test_position_grid_is_built_on_the_device():
    with standin.watch() as stats:
        grid = layers.build_grid(4, 5, standin_xp, np.float32)
    assert isinstance(grid, StandinArray) and grid.dtype == np.float32
    assert not stats.explicit_transfers and not stats.float64_created
    # The official code's recipe: ramps cast to float32, then the mirrors 1 - ramp in float32.
    ramps = layers.build_grid(4, 5)[..., :2].astype(np.float32)
    np.testing.assert_array_equal(grid.get(), np.concatenate([ramps, 1.0 - ramps], axis=-1))


def test_a_failure_names_the_source_line(rng):
    params, x = {"w": rng.standard_normal(4)}, rng.standard_normal((3, 4))
    with pytest.raises(AssertionError, match=r"float64_created(.|\n)*test_standin_device.py"):
        assert_same_on_standin(lambda p, x: backend.sum(x * p["w"] * np.float64(0.5)), params, x, dtype=np.float32)


@pytest.mark.parametrize("choice", dispatch.CHOICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_device_convolutions_agree_with_numpy_on_either_kernel_choice(monkeypatch, choice, stride):
    # The fast device path builds patch matrices in batch chunks (one example
    # per chunk here); it and the specification must equal the CPU path.
    monkeypatch.setattr(im2col, "DEVICE_PATCH_BYTES", 1)
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((3, 7, 6, 10))
    conv = {"w": rng.standard_normal((5, 5, 10, 9)), "b": rng.standard_normal(9)}
    deconv = {"w": rng.standard_normal((3, 3, 4, 9)), "b": rng.standard_normal(4)}

    def loss(p, images):
        y = layers.conv_transpose2d(p["deconv"], layers.conv2d(p["conv"], images, stride), stride)
        return backend.sum(y * y)

    with dispatch.using(choice):
        assert_same_on_standin(loss, {"conv": conv, "deconv": deconv}, x, dtype=np.float64)
