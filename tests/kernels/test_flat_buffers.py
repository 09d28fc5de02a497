"""Flat parameter buffers: a tree laid out in one contiguous buffer per dtype,
the tree rebuilt as views into it, and gradient trees flattened by one concatenate."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import standin
from slotref.backend import host_rng, tree_leaves, tree_map
from slotref.flat import FlatLayout, FlatTree, flatten_like
from slotref.models import discovery_config, init_model, setpred_config
from standin import StandinArray, standin_xp


def small_model(task="setpred"):
    """A realistic parameter tree: the whole model, small channel counts."""
    config = (setpred_config(16, encoder_channels=8, mlp_size=8, head_hidden=8) if task == "setpred"
              else discovery_config("tetrominoes", encoder_channels=8, mlp_size=8, decoder_channels=8))
    return init_model(host_rng(0, 0), config)


def make_tree(rng, dtype=np.float64):
    return {"encoder": {"w": rng.normal(size=(2, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)},
            "convs": [{"w": rng.normal(size=(2, 2, 1, 2)).astype(dtype)}, {"w": rng.normal(size=4).astype(dtype)}],
            "scalar": np.asarray(rng.normal()).astype(dtype),
            "mu": rng.normal(size=(5,)).astype(dtype)}


def shapes():
    return st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


def trees():
    leaf = shapes()
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from("abcde"), kids, min_size=1, max_size=3)), max_leaves=8)


def fill(shape_tree, rng, dtype=np.float64):
    """Random arrays in place of the shapes of a Hypothesis tree."""
    if isinstance(shape_tree, tuple):
        return rng.normal(size=shape_tree).astype(dtype)
    if isinstance(shape_tree, dict):
        return {k: fill(v, rng, dtype) for k, v in shape_tree.items()}
    return [fill(v, rng, dtype) for v in shape_tree]


# --------------------------------------------------------------------------
# Layout and views.

@given(trees())
def test_the_flat_tree_equals_the_tree_leaf_by_leaf_in_tree_leaves_order(shape_tree):
    rng = np.random.default_rng(0)
    tree = fill(shape_tree, rng)
    flat = FlatTree.from_tree(tree)
    leaves = tree_leaves(tree)
    assert [p for p, _ in tree_leaves(flat.tree)] == [p for p, _ in leaves]
    for (path, got), (_, want) in zip(tree_leaves(flat.tree), leaves):
        assert got.shape == want.shape and got.dtype == want.dtype, path
        np.testing.assert_array_equal(got, want, err_msg=path)
    # The buffer is the leaves, raveled, in order.
    expected = np.concatenate([leaf.reshape(-1) for _, leaf in leaves]) if leaves else np.zeros(0)
    if leaves:
        np.testing.assert_array_equal(flat.buffers["float64"], expected)
    # And a gradient of the same shape flattens to the same buffer.
    if leaves:
        np.testing.assert_array_equal(flat.layout.flatten(tree).buffers["float64"], expected)


def test_the_leaves_are_views_into_one_buffer(rng):
    tree = make_tree(rng)
    flat = FlatTree.from_tree(tree)
    (buffer,) = flat.buffers.values()
    assert buffer.ndim == 1 and buffer.size == sum(leaf.size for _, leaf in tree_leaves(tree))
    for path, leaf in tree_leaves(flat.tree):
        assert np.shares_memory(leaf, buffer), path
    # Writing the buffer changes the tree, and writing a leaf changes the buffer.
    buffer *= 2
    np.testing.assert_array_equal(flat.tree["encoder"]["w"], 2 * tree["encoder"]["w"])
    flat.tree["mu"][...] = 7.0
    slot = next(s for s in flat.layout.slots if s.path == "mu")
    np.testing.assert_array_equal(buffer[slot.offset:slot.offset + slot.size], 7.0)
    # The source tree was copied, not aliased.
    assert not any(np.shares_memory(a, buffer) for _, a in tree_leaves(tree))


def test_a_model_tree_round_trips_and_keeps_its_structure():
    tree = small_model("discovery")
    flat = FlatTree.from_tree(tree)
    assert tree_map(lambda a: a.shape, flat.to_tree()) == tree_map(lambda a: a.shape, tree)
    for (path, a), (_, b) in zip(tree_leaves(flat.to_tree()), tree_leaves(tree)):
        np.testing.assert_array_equal(a, b, err_msg=path)


def test_each_dtype_gets_its_own_buffer(rng):
    tree = {"a": rng.normal(size=3), "b": rng.normal(size=(2, 2)).astype(np.float32), "c": rng.normal(size=2)}
    flat = FlatTree.from_tree(tree)
    assert {k: v.size for k, v in flat.buffers.items()} == {"float64": 5, "float32": 4}
    assert flat.tree["b"].dtype == np.float32 and np.shares_memory(flat.tree["b"], flat.buffers["float32"])
    np.testing.assert_array_equal(flat.buffers["float64"], np.concatenate([tree["a"], tree["c"]]))


def test_flatten_takes_non_contiguous_leaves_and_casts_to_the_layout_dtype(rng):
    params = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.float32)}
    layout = FlatLayout(params)
    grads = {"w": rng.normal(size=(2, 3)).T, "b": rng.normal(size=8)[::2]}   # float64, strided
    flat = layout.flatten(grads)
    assert flat.buffers["float32"].dtype == np.float32
    np.testing.assert_array_equal(flat.buffers["float32"],
                                  np.concatenate([grads["w"].reshape(-1), grads["b"]]).astype(np.float32))
    np.testing.assert_array_equal(flat.tree["w"], grads["w"].astype(np.float32))


def test_flatten_like_accepts_a_flat_tree_or_a_plain_tree(rng):
    tree = make_tree(rng)
    grads = make_tree(rng)
    a = flatten_like(FlatTree.from_tree(tree), grads).buffers["float64"]
    b = flatten_like(tree, grads).buffers["float64"]
    np.testing.assert_array_equal(a, b)


def test_assign_overwrites_values_in_place(rng):
    flat = FlatTree.from_tree(make_tree(rng))
    (buffer,) = flat.buffers.values()
    other = make_tree(rng)
    flat.assign(other)
    assert next(iter(flat.buffers.values())) is buffer
    for (path, a), (_, b) in zip(tree_leaves(flat.tree), tree_leaves(other)):
        np.testing.assert_array_equal(a, b, err_msg=path)


@pytest.mark.parametrize("bad, message", [
    (lambda t: {**t, "extra": np.zeros(2)}, "leaves"),
    (lambda t: {**t, "mu": np.zeros(6)}, "mu"),
])
def test_a_tree_of_another_shape_is_refused_with_the_leaf_named(rng, bad, message):
    tree = make_tree(rng)
    layout = FlatLayout(tree)
    with pytest.raises(ValueError, match=message):
        layout.flatten(bad(tree))


def test_wrap_refuses_buffers_of_the_wrong_size(rng):
    layout = FlatLayout(make_tree(rng))
    with pytest.raises(ValueError, match="float64 buffer of 27"):
        layout.wrap({"float64": np.zeros(26)})


# --------------------------------------------------------------------------
# On a device: the stand-in refuses implicit host conversions, as CuPy does.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flattening_on_a_device_makes_no_host_array(rng, dtype):
    be = standin.standin_backend(dtype)
    params = be.tree_asarray(small_model())
    grads = be.tree_asarray(tree_map(lambda a: rng.normal(size=a.shape), small_model()))
    with standin.watch() as stats:
        flat = FlatTree.from_tree(params)
        flat_grads = flat.layout.flatten(grads)
        zeros = flat.layout.zeros(flat.xp)
    assert not (stats.conversions or stats.host_operands or stats.explicit_transfers), stats.report()
    if dtype == np.float32:
        assert not stats.float64_created, stats.report()
    for buffers in (flat.buffers, flat_grads.buffers, zeros.buffers):
        (buffer,) = buffers.values()
        assert isinstance(buffer, StandinArray) and buffer.dtype == dtype
    assert flat.xp is standin_xp
    for (path, a), (_, b) in zip(tree_leaves(flat.tree), tree_leaves(params)):
        assert isinstance(a, StandinArray), path
        np.testing.assert_array_equal(a.get(), b.get(), err_msg=path)
    np.testing.assert_array_equal(
        flat_grads.buffers[np.dtype(dtype).name].get(),
        np.concatenate([g.get().reshape(-1) for _, g in tree_leaves(grads)]))
