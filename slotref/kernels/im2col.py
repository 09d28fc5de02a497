"""Patch matrices (im2col) for the convolution kernels of ``slotref.kernels.conv``.

A per-tap GEMM has K = C_in: with few input channels (the RGB layer) that
starves the matrix unit, and on accelerators one large GEMM with
K = kh * kw * C_in beats kh * kw thin ones. There the forward pass and the
weight gradient multiply a patch matrix instead, built in batch chunks of at
most ``DEVICE_PATCH_BYTES``.
"""

from __future__ import annotations

import numpy as np

from slotref.backend import xp_of

# Below this many input channels a per-tap GEMM (K = C_in) starves the
# matrix unit; the first layer (RGB, C_in = 3) builds a small patch matrix
# (K = kh * kw * C_in) instead.
IM2COL_MAX_CHANNELS = 8


def patch_matrix(x, geo, batch=None):
    """(B * ho * wo, kh * kw * C) patches of the padded input, for the geometry ``geo``
    (``slotref.kernels.conv._Geometry``).

    Within an image row, kw neighbouring pixels x C channels are contiguous, so
    a strided view (B, ho, wo, kh, kw * C) needs no copy until the reshape.
    """
    xp = xp_of(x)
    x_pad = xp.ascontiguousarray(
        xp.pad(x, ((0, 0), (geo.pt, geo.hp - geo.h - geo.pt), (geo.pl, geo.wp - geo.w - geo.pl), (0, 0))))
    s, c = geo.stride, x.shape[3]
    sb, sh, sw, sc = x_pad.strides
    view = xp.lib.stride_tricks.as_strided(
        x_pad, (batch or geo.batch, geo.ho, geo.wo, geo.kh, geo.kw * c), (sb, s * sh, s * sw, sh, sc))
    return view.reshape(-1, geo.kh * geo.kw * c)


# On accelerators one large GEMM (K = kh * kw * C_in) beats 25 thin ones: the
# patch matrix is built there for every layer, in batch chunks of at most this
# many bytes.
DEVICE_PATCH_BYTES = 1 << 30


def use_patches(xp, c_in) -> bool:
    """Whether a convolution with ``c_in`` input channels on array module ``xp`` multiplies patch matrices."""
    return c_in <= IM2COL_MAX_CHANNELS or xp is not np


def patch_chunks(geo, c_in, itemsize):
    """(first, last + 1) example of each batch chunk whose patch matrix fits ``DEVICE_PATCH_BYTES``."""
    per_example = geo.ho * geo.wo * geo.kh * geo.kw * c_in * itemsize
    step = max(1, DEVICE_PATCH_BYTES // max(per_example, 1))
    for b0 in range(0, geo.batch, step):
        yield b0, min(geo.batch, b0 + step)


