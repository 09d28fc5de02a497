"""SAME convolutions, the specification: a sum over kernel taps, with its adjoint beside it.

NHWC images, kernels (kh, kw, in, out), SAME padding with TF semantics:
output = ceil(in / stride), and the padding that makes the last window fit
split evenly, the odd pixel at the bottom/right.

    conv:   y[b, p, q] = sum over taps (i, j) of x_pad[b, s*p + i, s*q + j] @ w[i, j]

Each tap is one strided window of the padded input times a (C_in, C_out)
matrix. The transposed convolution is the adjoint of conv in its input: each
tap's window receives y @ w[i, j]^T, and the padding is cropped. The weight
gradient of tap (i, j) is the window's pixels^T @ dy.

The layers with bias (``layers.conv2d``, ``layers.conv_transpose2d``) call
``conv2d_same`` and ``conv_transpose2d_same``; both are ``@replaceable`` by the
fast kernels of ``slotref.kernels.conv`` (``docs/kernels.md``).
"""

from __future__ import annotations

from autograd.extend import defvjp, primitive

from slotref.backend import xp_of
from slotref.dispatch import replaceable


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of TF's SAME padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def _windows(x_shape, kernel_shape, stride):
    """Padding ((top, bottom), (left, right)) and {tap (i, j): the window of the
    padded input that tap reads at every output pixel: rows i, i + s, ..., columns j, j + s, ...}."""
    (kh, kw), (_, h, w, _) = kernel_shape[:2], x_shape
    ho, top, bottom = same_padding(h, kh, stride)
    wo, left, right = same_padding(w, kw, stride)
    windows = {(i, j): (slice(None), slice(i, i + stride * (ho - 1) + 1, stride),
                        slice(j, j + stride * (wo - 1) + 1, stride))
               for i in range(kh) for j in range(kw)}
    return ((top, bottom), (left, right)), windows


def _conv(x, w, stride):
    """y = sum over taps of window(x_pad) @ w[tap]: (B, H, W, C_in) -> (B, ceil(H/s), ceil(W/s), C_out)."""
    padding, windows = _windows(x.shape, w.shape, stride)
    x_pad = xp_of(x).pad(x, ((0, 0), *padding, (0, 0)))
    y = 0
    for tap, window in windows.items():
        y = y + x_pad[window] @ w[tap]
    return y


def _conv_adjoint(y, w, stride, x_shape):
    """The adjoint of ``_conv`` in x: every tap's window of x_pad receives y @ w[tap]^T; crop the padding."""
    padding, windows = _windows(x_shape, w.shape, stride)
    (top, bottom), (left, right) = padding
    b, h, wd, c = x_shape
    x_pad = xp_of(y).zeros((b, top + h + bottom, left + wd + right, c), dtype=y.dtype)
    for tap, window in windows.items():
        x_pad[window] += y @ w[tap].T
    return x_pad[:, top:top + h, left:left + wd]


def _conv_weight_grad(x, dy, stride, w_shape):
    """d<dy, conv(x, w)>/dw: for each tap, window(x_pad)^T @ dy summed over batch and pixels."""
    padding, windows = _windows(x.shape, w_shape, stride)
    xp = xp_of(x)
    x_pad = xp.pad(x, ((0, 0), *padding, (0, 0)))
    dw = xp.zeros(w_shape, dtype=x.dtype)
    dy_rows = dy.reshape(-1, w_shape[3])
    for tap, window in windows.items():
        dw[tap] = x_pad[window].reshape(-1, w_shape[2]).T @ dy_rows
    return dw


@primitive
def conv2d_same(x, w, stride=1):
    """SAME convolution without bias. x: (B, H, W, Cin), w: (kh, kw, Cin, Cout)."""
    return _conv(x, w, stride)


defvjp(conv2d_same,
       lambda ans, x, w, stride=1: lambda g: _conv_adjoint(g, w, stride, x.shape),
       lambda ans, x, w, stride=1: lambda g: _conv_weight_grad(x, g, stride, w.shape))


@primitive
def conv_transpose2d_same(x, w, stride=1):
    """SAME transposed convolution: the adjoint of ``conv2d_same`` in its input.

    x: (B, H, W, Cin), w: (kh, kw, Cout, Cin) as Keras' Conv2DTranspose
    -> (B, H * stride, W * stride, Cout).
    """
    b, h, wd, _ = x.shape
    return _conv_adjoint(x, w, stride, (b, h * stride, wd * stride, w.shape[2]))


# The adjoint's own gradients: conv in its input, and the weight gradient of
# conv with the roles of input and output exchanged.
defvjp(conv_transpose2d_same,
       lambda ans, x, w, stride=1: lambda g: _conv(g, w, stride),
       lambda ans, x, w, stride=1: lambda g: _conv_weight_grad(g, x, stride, w.shape))

# With their gradients defined, both may be replaced by registered fast kernels.
conv2d_same = replaceable(conv2d_same)
conv_transpose2d_same = replaceable(conv_transpose2d_same)
