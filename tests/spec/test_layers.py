"""Specification of the hand-written layers (slotref/layers.py), run as written
(``dispatch.using("reference")``; tests/kernels/test_kernels.py holds the fast kernels to it).

- every layer's gradient against central finite differences in float64
  (``autograd.test_util.check_grads``: a random projection of the VJP against
  a central difference), Hypothesis drawing batch, spatial and channel sizes,
  kernel sizes 1/3/5 and strides 1/2;
- every hand-written VJP (conv2d, conv_transpose2d, normalize, softmax, huber,
  sigmoid, relu) against a naive autograd-traced version, forward and gradient;
- the convolutions' TF SAME semantics, the transposed convolution as the exact
  adjoint of the strided convolution, LayerNorm statistics, the GRU equations,
  the position-embedding grid, the spatial reshapes, bad-input errors and the
  initialisers.
"""

import math
import re

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

from slotref import backend, convolution, dispatch, layers

seeds = st.integers(0, 2**32 - 1)
kernel_sizes = st.sampled_from([1, 3, 5])
strides = st.sampled_from([1, 2])
small = st.integers(1, 4)
spatial = st.integers(1, 7)  # odd and even sizes


@pytest.fixture(autouse=True)
def specification():
    """Every test here runs the functions of slotref/layers.py, not a registered fast kernel."""
    with dispatch.using("reference"):
        yield


def check_all_grads(f, *args):
    """Finite-difference check of ``f`` with respect to every argument (float64)."""
    check_grads(lambda packed: f(*packed), modes=["rev"], order=1)(tuple(args))


def normal(rng, *shape):
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------
# Naive reference implementations, traced by autograd.

def naive_conv2d(x, w, stride):
    """SAME convolution as a loop over kernel taps, each a strided slice of the padded input."""
    _, h, wd, _ = x.shape
    kh, kw, _, _ = w.shape
    ho, pt, pb = convolution.same_padding(h, kh, stride)
    wo, pl, pr = convolution.same_padding(wd, kw, stride)
    x_pad = anp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), "constant")
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = x_pad[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            out = out + patch @ w[i, j]
    return out


def loop_conv2d(x, w, stride):
    """SAME convolution as a plain loop over output positions (NumPy, forward only)."""
    b, h, wd, _ = x.shape
    kh, kw, _, c_out = w.shape
    ho, pt, pb = convolution.same_padding(h, kh, stride)
    wo, pl, pr = convolution.same_padding(wd, kw, stride)
    x_pad = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((b, ho, wo, c_out))
    for y in range(ho):
        for xx in range(wo):
            patch = x_pad[:, y * stride:y * stride + kh, xx * stride:xx * stride + kw, :]  # (B, kh, kw, Cin)
            out[:, y, xx] = np.einsum("bijc,ijco->bo", patch, w)
    return out


def naive_conv_transpose2d(x, w, stride):
    """SAME transposed convolution as a scatter: input pixel a adds x[a] @ w[i, j]^T at padded output a*s + i.

    w: (kh, kw, Cout, Cin) as Keras' Conv2DTranspose.
    """
    b, h, wd, _ = x.shape
    kh, kw, c_out, _ = w.shape
    out_h, out_w = h * stride, wd * stride
    _, pt, _ = convolution.same_padding(out_h, kh, stride)
    _, pl, _ = convolution.same_padding(out_w, kw, stride)
    full_h, full_w = out_h + kh - 1, out_w + kw - 1
    # Zero insertion: u[:, s*a, s*c] = contribution[:, a, c], zeros between.
    corner = np.zeros((1, 1, stride, 1, stride, 1))
    corner[0, 0, 0, 0, 0, 0] = 1.0
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            contribution = x @ w[i, j].T                                           # (B, H, W, Cout)
            u = anp.reshape(contribution[:, :, None, :, None, :] * corner, (b, out_h, out_w, c_out))
            out = out + anp.pad(u, ((0, 0), (i, full_h - i - out_h), (j, full_w - j - out_w), (0, 0)), "constant")
    return out[:, pt:pt + out_h, pl:pl + out_w, :]


def naive_normalize(x, eps=layers.LAYER_NORM_EPS):
    return (x - anp.mean(x, axis=-1, keepdims=True)) / anp.sqrt(anp.var(x, axis=-1, keepdims=True) + eps)


def naive_softmax(x, axis=-1):
    e = anp.exp(x)
    return e / anp.sum(e, axis=axis, keepdims=True)


def naive_huber(x, delta=1.0):
    a = anp.abs(x)
    return anp.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))


def naive_sigmoid(x):
    return 1.0 / (1.0 + anp.exp(-x))


def naive_relu(x):
    return anp.maximum(x, 0.0)


def assert_same_forward_and_gradient(hand, naive, args, rng, rtol=1e-10, atol=1e-12):
    """Forward outputs equal, and gradients of <f(args), r> for a random r equal, for every argument."""
    out_hand, out_naive = hand(*args), naive(*args)
    np.testing.assert_allclose(out_hand, out_naive, rtol=rtol, atol=atol)
    r = rng.standard_normal(np.shape(out_naive))
    g_hand = grad(lambda a: anp.sum(hand(*a) * r))(tuple(args))
    g_naive = grad(lambda a: anp.sum(naive(*a) * r))(tuple(args))
    for i, (gh, gn) in enumerate(zip(g_hand, g_naive)):
        np.testing.assert_allclose(gh, gn, rtol=rtol, atol=atol, err_msg=f"gradient of argument {i}")


# --------------------------------------------------------------------------
# Gradients against finite differences.

@given(seed=seeds, batch=small, n=small, d_in=small, d_out=small)
def test_linear_gradient_matches_finite_differences(seed, batch, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    params = layers.init_linear(rng, d_in, d_out)
    params["b"] = normal(rng, d_out)
    check_all_grads(layers.linear, params, normal(rng, batch, n, d_in))


@given(seed=seeds, batch=small, sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4))
def test_mlp_gradient_matches_finite_differences(seed, batch, sizes):
    rng = np.random.default_rng(seed)
    params = layers.init_mlp(rng, sizes)
    for layer in params:
        layer["b"] = normal(rng, *layer["b"].shape)
    check_all_grads(layers.mlp, params, normal(rng, batch, sizes[0]))


@given(seed=seeds, batch=small, n=small, d=st.integers(2, 6))
def test_layer_norm_gradient_matches_finite_differences(seed, batch, n, d):
    rng = np.random.default_rng(seed)
    params = {"scale": normal(rng, d), "offset": normal(rng, d)}
    check_all_grads(layers.layer_norm, params, normal(rng, batch, n, d))


@given(seed=seeds, shape=st.tuples(small, small, small), axis=st.sampled_from([0, 1, 2, -1]))
def test_softmax_gradient_matches_finite_differences(seed, shape, axis):
    rng = np.random.default_rng(seed)
    check_all_grads(lambda x: layers.softmax(x, axis=axis), 2.0 * normal(rng, *shape))


@given(seed=seeds, shape=st.tuples(small, small), delta=st.sampled_from([0.5, 1.0, 2.0]))
def test_huber_gradient_matches_finite_differences(seed, shape, delta):
    rng = np.random.default_rng(seed)
    check_all_grads(lambda x: layers.huber(x, delta), 3.0 * normal(rng, *shape))


@given(seed=seeds, shape=st.tuples(small, small))
def test_relu_and_sigmoid_gradients_match_finite_differences(seed, shape):
    rng = np.random.default_rng(seed)
    x = normal(rng, *shape)
    check_all_grads(backend.relu, x)
    check_all_grads(backend.sigmoid, 3.0 * x)


@given(seed=seeds, batch=small, d_in=small, d_hidden=small)
def test_gru_cell_gradient_matches_finite_differences(seed, batch, d_in, d_hidden):
    rng = np.random.default_rng(seed)
    params = layers.init_gru(rng, d_in, d_hidden)
    params["b_input"] = normal(rng, 3 * d_hidden)
    params["b_hidden"] = normal(rng, 3 * d_hidden)
    check_all_grads(layers.gru_cell, params, normal(rng, batch, d_in), normal(rng, batch, d_hidden))


@given(seed=seeds, batch=st.integers(1, 2), h=spatial, w=spatial, c_in=st.integers(1, 3),
       c_out=st.integers(1, 3), kernel=kernel_sizes, stride=strides)
def test_conv2d_gradient_matches_finite_differences(seed, batch, h, w, c_in, c_out, kernel, stride):
    rng = np.random.default_rng(seed)
    params = layers.init_conv2d(rng, kernel, c_in, c_out)
    params["b"] = normal(rng, c_out)
    check_all_grads(lambda p, x: layers.conv2d(p, x, stride), params, normal(rng, batch, h, w, c_in))


@given(seed=seeds, batch=st.integers(1, 2), h=st.integers(1, 4), w=st.integers(1, 4), c_in=st.integers(1, 3),
       c_out=st.integers(1, 3), kernel=kernel_sizes, stride=strides)
def test_conv_transpose2d_gradient_matches_finite_differences(seed, batch, h, w, c_in, c_out, kernel, stride):
    rng = np.random.default_rng(seed)
    params = layers.init_conv_transpose2d(rng, kernel, c_in, c_out)
    params["b"] = normal(rng, c_out)
    check_all_grads(lambda p, x: layers.conv_transpose2d(p, x, stride), params, normal(rng, batch, h, w, c_in))


@given(seed=seeds, batch=st.integers(1, 2), h=spatial, w=spatial, c=small)
def test_soft_position_embed_gradient_matches_finite_differences(seed, batch, h, w, c):
    rng = np.random.default_rng(seed)
    params = layers.init_soft_position_embed(rng, c)
    params["b"] = normal(rng, c)
    check_all_grads(layers.soft_position_embed, params, normal(rng, batch, h, w, c))


@given(seed=seeds, batch=st.integers(1, 2), k=small, d=small, h=spatial, w=spatial)
def test_spatial_broadcast_and_flatten_gradients_match_finite_differences(seed, batch, k, d, h, w):
    rng = np.random.default_rng(seed)
    check_all_grads(lambda s: layers.spatial_flatten(layers.spatial_broadcast(s, (h, w))), normal(rng, batch, k, d))


@given(seed=seeds, batch=st.integers(1, 2), k=st.integers(1, 3), d=small, c_out=small, h=st.integers(1, 4),
       w=st.integers(1, 4), kernel=kernel_sizes, stride=strides)
def test_broadcast_embed_conv_transpose2d_gradient_matches_finite_differences(seed, batch, k, d, c_out, h, w,
                                                                              kernel, stride):
    rng = np.random.default_rng(seed)
    embed, conv = layers.init_soft_position_embed(rng, d), layers.init_conv_transpose2d(rng, kernel, d, c_out)
    embed["b"], conv["b"] = normal(rng, d), normal(rng, c_out)
    check_all_grads(lambda e, c, s: layers.broadcast_embed_conv_transpose2d(e, c, s, (h, w), stride),
                    embed, conv, normal(rng, batch, k, d))


def test_broadcast_embed_conv_transpose2d_is_the_three_decoder_rows(rng):
    embed, conv = layers.init_soft_position_embed(rng, 3), layers.init_conv_transpose2d(rng, 5, 3, 2)
    embed["b"], conv["b"] = normal(rng, 3), normal(rng, 2)
    slots = normal(rng, 2, 4, 3)
    rows = layers.conv_transpose2d(conv, layers.soft_position_embed(embed, layers.spatial_broadcast(slots, (3, 5))), 2)
    np.testing.assert_array_equal(layers.broadcast_embed_conv_transpose2d(embed, conv, slots, (3, 5), 2), rows)
    assert rows.shape == (8, 6, 10, 2)


# --------------------------------------------------------------------------
# Hand-written VJPs against naive traced versions.

@given(seed=seeds, batch=st.integers(1, 2), h=spatial, w=spatial, c_in=st.integers(1, 4),
       c_out=st.integers(1, 3), kernel=kernel_sizes, stride=strides)
def test_conv2d_matches_naive_convolution(seed, batch, h, w, c_in, c_out, kernel, stride):
    rng = np.random.default_rng(seed)
    x, k = normal(rng, batch, h, w, c_in), normal(rng, kernel, kernel, c_in, c_out)
    np.testing.assert_allclose(convolution.conv2d_same(x, k, stride), loop_conv2d(x, k, stride), rtol=1e-10, atol=1e-12)
    assert_same_forward_and_gradient(lambda a, b: convolution.conv2d_same(a, b, stride),
                                     lambda a, b: naive_conv2d(a, b, stride), (x, k), rng)


@given(seed=seeds, batch=st.integers(1, 2), h=st.integers(1, 4), w=st.integers(1, 4), c_in=st.integers(1, 4),
       c_out=st.integers(1, 4), kernel=kernel_sizes, stride=strides)
def test_conv_transpose2d_matches_naive_scatter(seed, batch, h, w, c_in, c_out, kernel, stride):
    rng = np.random.default_rng(seed)
    x, k = normal(rng, batch, h, w, c_in), normal(rng, kernel, kernel, c_out, c_in)
    assert_same_forward_and_gradient(lambda a, b: convolution.conv_transpose2d_same(a, b, stride),
                                     lambda a, b: naive_conv_transpose2d(a, b, stride), (x, k), rng)


@given(seed=seeds, shape=st.tuples(small, small, st.integers(2, 6)))
def test_normalize_matches_naive_layer_norm(seed, shape):
    rng = np.random.default_rng(seed)
    assert_same_forward_and_gradient(layers.normalize, naive_normalize, (normal(rng, *shape),), rng)


@given(seed=seeds, shape=st.tuples(small, small, small), axis=st.sampled_from([0, 1, 2, -1]))
def test_softmax_matches_naive_softmax(seed, shape, axis):
    rng = np.random.default_rng(seed)
    assert_same_forward_and_gradient(lambda x: layers.softmax(x, axis), lambda x: naive_softmax(x, axis),
                                     (2.0 * normal(rng, *shape),), rng)


@given(seed=seeds, shape=st.tuples(small, small), delta=st.sampled_from([0.5, 1.0, 2.0]))
def test_huber_matches_naive_huber(seed, shape, delta):
    rng = np.random.default_rng(seed)
    assert_same_forward_and_gradient(lambda x: layers.huber(x, delta), lambda x: naive_huber(x, delta),
                                     (3.0 * normal(rng, *shape),), rng)


@given(seed=seeds, shape=st.tuples(small, small))
def test_sigmoid_and_relu_match_naive_versions(seed, shape):
    rng = np.random.default_rng(seed)
    x = (3.0 * normal(rng, *shape),)
    assert_same_forward_and_gradient(backend.sigmoid, naive_sigmoid, x, rng)
    assert_same_forward_and_gradient(backend.relu, naive_relu, x, rng)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(layers.softmax(x), [[0.5, 0.5, 0.0]])


def test_sigmoid_does_not_overflow():
    with np.errstate(all="raise"):
        np.testing.assert_allclose(backend.sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


# --------------------------------------------------------------------------
# Convolution semantics.

@given(seed=seeds, batch=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5), c_in=st.integers(1, 3),
       c_out=st.integers(1, 3), kernel=kernel_sizes, stride=strides)
def test_conv_transpose2d_is_the_adjoint_of_strided_conv2d(seed, batch, h, w, c_in, c_out, kernel, stride):
    """<conv(z, w), y> == <z, conv_T(y, w)>: z (B, H*s, W*s, Cin), y (B, H, W, Cout), w (k, k, Cin, Cout).

    As a transposed-convolution kernel (Keras layout (k, k, out, in)) the same
    w maps Cout channels back to Cin.
    """
    rng = np.random.default_rng(seed)
    k = normal(rng, kernel, kernel, c_in, c_out)
    z = normal(rng, batch, h * stride, w * stride, c_in)
    y = normal(rng, batch, h, w, c_out)
    conv_z = convolution.conv2d_same(z, k, stride)
    assert conv_z.shape == y.shape
    lhs = np.vdot(conv_z, y)
    rhs = np.vdot(z, convolution.conv_transpose2d_same(y, k, stride))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


# TensorFlow's SAME padding ("Notes on padding" in the tf.nn documentation): output = ceil(in / stride),
# the padding total split evenly with the odd pixel at the end. (input, kernel, stride) -> (output, before, after).
TF_SAME_PADDING = {
    (5, 3, 2): (3, 1, 1),
    (4, 3, 2): (2, 0, 1),
    (13, 6, 5): (3, 1, 2),      # 13 inputs, a 6-wide filter, stride 5: 3 windows, pads 1 and 2
    (4, 3, 1): (4, 1, 1),
    (4, 2, 1): (4, 0, 1),
    (4, 5, 2): (2, 1, 2),
    (7, 1, 2): (4, 0, 0),
    (1, 5, 2): (1, 2, 2),
    (2, 1, 2): (1, 0, 0),
    (128, 5, 1): (128, 2, 2),   # Table 4's encoder layers
    (128, 5, 2): (64, 1, 2),
    (35, 5, 1): (35, 2, 2),     # Table 5 on Tetrominoes
    (64, 3, 1): (64, 1, 1),
}


@pytest.mark.parametrize("size, kernel, stride", list(TF_SAME_PADDING))
def test_same_padding_gives_tensorflows_sizes(size, kernel, stride):
    assert convolution.same_padding(size, kernel, stride) == TF_SAME_PADDING[size, kernel, stride]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("h, w", [(1, 1), (4, 4), (5, 5), (6, 7), (7, 6), (8, 3)])
def test_same_output_sizes(h, w, kernel, stride):
    rng = np.random.default_rng(0)
    x = normal(rng, 2, h, w, 3)
    conv = layers.init_conv2d(rng, kernel, 3, 2)
    assert layers.conv2d(conv, x, stride).shape == (2, math.ceil(h / stride), math.ceil(w / stride), 2)
    conv_t = layers.init_conv_transpose2d(rng, kernel, 3, 2)
    assert layers.conv_transpose2d(conv_t, x, stride).shape == (2, h * stride, w * stride, 2)


def one_tap_kernel(kernel, i, j):
    """A (k, k, 1, 1) kernel that reads only tap (i, j)."""
    w = np.zeros((kernel, kernel, 1, 1))
    w[i, j, 0, 0] = 1.0
    return w


def test_extra_padding_goes_to_the_bottom_right():
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    # Kernel 2, stride 1: one pixel of padding, at the bottom/right (TF), not the top/left.
    np.testing.assert_array_equal(convolution.conv2d_same(x, one_tap_kernel(2, 0, 0))[0, :, :, 0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(convolution.conv2d_same(x, one_tap_kernel(2, 1, 1))[0, :, :, 0], [[4, 0], [0, 0]])
    # Kernel 3, stride 2: one output pixel; padding 0 before and 1 after.
    assert convolution.conv2d_same(x, one_tap_kernel(3, 0, 0), 2)[0, 0, 0, 0] == 1.0
    assert convolution.conv2d_same(x, one_tap_kernel(3, 1, 1), 2)[0, 0, 0, 0] == 4.0
    assert convolution.conv2d_same(x, one_tap_kernel(3, 2, 2), 2)[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_each_kernel_tap_reads_the_tf_padded_pixel(size, kernel, stride):
    """Brute force: with a one-hot kernel at tap (i, j), out[y, x] == x_pad[y*s + i, x*s + j]."""
    x = (np.arange(size * (size + 1), dtype=float) + 1).reshape(1, size, size + 1, 1)
    _, pt, pb = convolution.same_padding(size, kernel, stride)
    _, pl, pr = convolution.same_padding(size + 1, kernel, stride)
    x_pad = np.pad(x[0, :, :, 0], ((pt, pb), (pl, pr)))
    for i in range(kernel):
        for j in range(kernel):
            out = convolution.conv2d_same(x, one_tap_kernel(kernel, i, j), stride)[0, :, :, 0]
            expected = x_pad[i::stride, j::stride][:out.shape[0], :out.shape[1]]
            np.testing.assert_array_equal(out, expected, err_msg=f"tap ({i}, {j})")


def test_conv2d_adds_its_bias(rng):
    params = layers.init_conv2d(rng, 3, 2, 4)
    params["b"] = normal(rng, 4)
    x = normal(rng, 1, 3, 3, 2)
    np.testing.assert_allclose(layers.conv2d(params, x), convolution.conv2d_same(x, params["w"]) + params["b"])
    params_t = layers.init_conv_transpose2d(rng, 3, 2, 4)
    params_t["b"] = normal(rng, 4)
    np.testing.assert_allclose(layers.conv_transpose2d(params_t, x, 2),
                               convolution.conv_transpose2d_same(x, params_t["w"], 2) + params_t["b"])


# --------------------------------------------------------------------------
# LayerNorm, GRU, position embedding, reshapes.

@given(seed=seeds, shape=st.tuples(small, small, st.integers(2, 8)), spread=st.sampled_from([0.01, 1.0, 30.0]))
def test_layer_norm_output_has_zero_mean_and_shrunk_unit_variance(seed, shape, spread):
    """mean 0 and var = var_x / (var_x + eps): exactly 1 only as eps -> 0 (Keras eps = 1e-3)."""
    rng = np.random.default_rng(seed)
    x = 5.0 + spread * normal(rng, *shape)
    y = layers.normalize(x)
    var_x = x.var(axis=-1)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), var_x / (var_x + layers.LAYER_NORM_EPS), rtol=1e-10)
    assert np.all(y.var(axis=-1) < 1.0)


def test_layer_norm_applies_scale_and_offset(rng):
    d = 5
    params = {"scale": normal(rng, d), "offset": normal(rng, d)}
    x = normal(rng, 3, 4, d)
    np.testing.assert_allclose(layers.layer_norm(params, x),
                               layers.normalize(x) * params["scale"] + params["offset"], rtol=1e-12)
    # Statistics per feature after the affine map: mean(y) = mean(offset + scale * n) with mean(n) = 0.
    y = layers.layer_norm(params, x)
    n = (y - params["offset"]) / params["scale"]
    np.testing.assert_allclose(n.mean(axis=-1), 0.0, atol=1e-12)


def test_layer_norm_default_eps_is_keras():
    assert layers.LAYER_NORM_EPS == 1e-3


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


@given(seed=seeds, batch=small, d_in=small, d=small)
def test_gru_cell_is_the_reset_after_gru(seed, batch, d_in, d):
    """The reset-after GRU's equations (``docs/spec.md``), transcribed with separate per-gate weights sliced in Keras' [z, r, n] order."""
    rng = np.random.default_rng(seed)
    p = layers.init_gru(rng, d_in, d)
    p["b_input"], p["b_hidden"] = normal(rng, 3 * d), normal(rng, 3 * d)
    x, h = normal(rng, batch, d_in), normal(rng, batch, d)
    W_iz, W_ir, W_in = (p["w_input"][:, g * d:(g + 1) * d] for g in range(3))
    W_hz, W_hr, W_hn = (p["w_hidden"][:, g * d:(g + 1) * d] for g in range(3))
    b_iz, b_ir, b_in = (p["b_input"][g * d:(g + 1) * d] for g in range(3))
    b_hz, b_hr, b_hn = (p["b_hidden"][g * d:(g + 1) * d] for g in range(3))

    r = sigmoid(x @ W_ir + b_ir + h @ W_hr + b_hr)
    z = sigmoid(x @ W_iz + b_iz + h @ W_hz + b_hz)
    n = np.tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))
    h_new = (1 - z) * n + z * h

    np.testing.assert_allclose(layers.gru_cell(p, x, h), h_new, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("h, w", [(2, 2), (3, 5), (8, 8), (7, 4)])
def test_position_grid_ramps_towards_the_four_borders(h, w):
    grid = layers.build_grid(h, w)
    assert grid.shape == (h, w, 4)
    np.testing.assert_allclose(grid[0, 0], [0, 0, 1, 1])
    np.testing.assert_allclose(grid[0, -1], [0, 1, 1, 0])
    np.testing.assert_allclose(grid[-1, 0], [1, 0, 0, 1])
    np.testing.assert_allclose(grid[-1, -1], [1, 1, 0, 0])
    # Linear ramps: y constant along rows, x along columns, [1-y, 1-x] their mirrors.
    np.testing.assert_allclose(grid[:, :, 0], np.linspace(0, 1, h)[:, None] * np.ones(w))
    np.testing.assert_allclose(grid[:, :, 1], np.ones(h)[:, None] * np.linspace(0, 1, w))
    np.testing.assert_allclose(grid[..., 2:], 1.0 - grid[..., :2])


def test_position_grid_is_made_in_the_requested_dtype():
    assert layers.build_grid(3, 4, np, np.float32).dtype == np.float32


def test_soft_position_embed_adds_a_linear_map_of_the_grid(rng):
    params = layers.init_soft_position_embed(rng, 3)
    params["b"] = normal(rng, 3)
    x = normal(rng, 2, 4, 5, 3)
    expected = x + layers.build_grid(4, 5) @ params["w"] + params["b"]
    np.testing.assert_allclose(layers.soft_position_embed(params, x), expected, rtol=1e-12)


def test_spatial_broadcast_tiles_every_slot_over_the_grid(rng):
    slots = normal(rng, 2, 3, 4)
    grid = layers.spatial_broadcast(slots, (5, 6))
    assert grid.shape == (2 * 3, 5, 6, 4)
    for b in range(2):
        for k in range(3):
            np.testing.assert_array_equal(grid[b * 3 + k], np.broadcast_to(slots[b, k], (5, 6, 4)))


def test_spatial_flatten_is_row_major(rng):
    x = normal(rng, 2, 3, 4, 5)
    flat = layers.spatial_flatten(x)
    assert flat.shape == (2, 12, 5)
    np.testing.assert_array_equal(flat[:, 1 * 4 + 2], x[:, 1, 2])


# --------------------------------------------------------------------------
# Bad input.

def raises_naming(expected: str, received: tuple):
    """pytest.raises(ValueError) whose message names the expected and the received shape."""
    return pytest.raises(ValueError, match=re.escape(expected) + ".*" + re.escape(str(received)))


def test_conv2d_rejects_nchw_input(rng):
    params = layers.init_conv2d(rng, 3, 3, 8)
    with raises_naming("(B, H, W, 3)", (2, 3, 16, 16)):
        layers.conv2d(params, np.zeros((2, 3, 16, 16)))
    with raises_naming("(B, H, W, 3)", (16, 16, 3)):
        layers.conv2d(params, np.zeros((16, 16, 3)))


def test_conv_transpose2d_rejects_nchw_input(rng):
    params = layers.init_conv_transpose2d(rng, 5, 4, 2)
    with raises_naming("(B, H, W, 4)", (1, 4, 8, 8)):
        layers.conv_transpose2d(params, np.zeros((1, 4, 8, 8)), 2)


def test_linear_rejects_mismatched_features(rng):
    with raises_naming("(..., 5)", (2, 3, 4)):
        layers.linear(layers.init_linear(rng, 5, 2), np.zeros((2, 3, 4)))


def test_layer_norm_rejects_mismatched_features():
    with raises_naming("(..., 6)", (2, 5)):
        layers.layer_norm(layers.init_layer_norm(6), np.zeros((2, 5)))


def test_gru_cell_rejects_mismatched_input_or_state(rng):
    params = layers.init_gru(rng, 3, 4)
    with raises_naming("(..., 3)", (2, 5)):
        layers.gru_cell(params, np.zeros((2, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=re.escape("(..., 4)") + ".*" + re.escape("(2, 6)")):
        layers.gru_cell(params, np.zeros((2, 3)), np.zeros((2, 6)))


def test_soft_position_embed_rejects_mismatched_channels(rng):
    params = layers.init_soft_position_embed(rng, 8)
    with raises_naming("(B, H, W, 8)", (1, 8, 4, 4)):
        layers.soft_position_embed(params, np.zeros((1, 8, 4, 4)))


# --------------------------------------------------------------------------
# Initialisers (the reference framework's: Glorot-uniform, zeros, orthogonal).

def assert_glorot_uniform(w, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.all(np.abs(w) <= limit)
    assert np.max(np.abs(w)) > 0.9 * limit  # fills the interval (thousands of draws)
    assert abs(np.mean(w)) < 0.05 * limit


def test_dense_and_conv_kernels_are_glorot_uniform_and_biases_zero(rng):
    lin = layers.init_linear(rng, 60, 40)
    assert_glorot_uniform(lin["w"], 60, 40)
    np.testing.assert_array_equal(lin["b"], np.zeros(40))
    conv = layers.init_conv2d(rng, 5, 16, 32)
    assert conv["w"].shape == (5, 5, 16, 32)
    assert_glorot_uniform(conv["w"], 5 * 5 * 16, 5 * 5 * 32)
    np.testing.assert_array_equal(conv["b"], np.zeros(32))
    conv_t = layers.init_conv_transpose2d(rng, 5, 16, 32)
    assert conv_t["w"].shape == (5, 5, 32, 16)  # Keras: (kh, kw, out, in)
    assert_glorot_uniform(conv_t["w"], 5 * 5 * 32, 5 * 5 * 16)
    np.testing.assert_array_equal(conv_t["b"], np.zeros(32))
    assert "b" not in layers.init_linear(rng, 4, 4, bias=False)


def test_gru_kernels_glorot_and_orthogonal_and_biases_zero(rng):
    d_in, d = 40, 24
    p = layers.init_gru(rng, d_in, d)
    assert p["w_input"].shape == (d_in, 3 * d) and p["w_hidden"].shape == (d, 3 * d)
    assert_glorot_uniform(p["w_input"], d_in, 3 * d)
    # Orthonormal along its short side: the d rows of the (d, 3d) recurrent kernel.
    np.testing.assert_allclose(p["w_hidden"] @ p["w_hidden"].T, np.eye(d), atol=1e-12)
    np.testing.assert_array_equal(p["b_input"], np.zeros(3 * d))
    np.testing.assert_array_equal(p["b_hidden"], np.zeros(3 * d))


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (5, 5)])
def test_orthogonal_is_orthonormal_along_its_short_side(shape, rng):
    q = layers.orthogonal(rng, shape)
    assert q.shape == shape
    short = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(short), atol=1e-12)


def test_layer_norm_starts_as_identity_affine():
    p = layers.init_layer_norm(7)
    np.testing.assert_array_equal(p["scale"], np.ones(7))
    np.testing.assert_array_equal(p["offset"], np.zeros(7))


def test_same_seed_gives_the_same_parameters_bit_for_bit():
    a = layers.init_gru(backend.host_rng(7), 5, 4)
    b = layers.init_gru(backend.host_rng(7), 5, 4)
    c = layers.init_gru(backend.host_rng(8), 5, 4)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    assert a["w_input"].tobytes() != c["w_input"].tobytes()
