"""Convolutions as shifted GEMMs: the fast kernels of ``convolution.conv2d_same`` and
``convolution.conv_transpose2d_same``.

NHWC, SAME padding with TF semantics (``convolution.same_padding``), kernels
(kh, kw, in, out). Three functions do all the work:
  _conv_forward          y = conv(x, w)
  _conv_backward_input   dx = conv^T(dy, w)   (the adjoint; also conv_transpose2d)
  _conv_backward_weight  dw = sum over positions of x-patch^T dy

All three are "shifted GEMMs" instead of im2col. Flatten the zero-padded
input to rows (B * Hp * Wp, C). Output pixel (y, x) sits in row y * Wp + x of
the same layout, and kernel tap (i, j) reads row (y + i) * Wp + (x + j), i.e.
the output row shifted by i * Wp + j. So
    out_rows[q] = sum over taps t of in_rows[q + offset_t] @ w_t,
one GEMM per tap over a contiguous slice: no patch matrix is ever built.
Rows that fall on padding columns compute garbage and are cropped away.
Stride 2 splits the padded input into its four (row, column) parity phases,
each a stride-1 problem on a grid of half the size. The adjoint (input
gradient) runs the same sums with negative offsets; the weight gradient
takes, per tap, in_rows[shifted]^T @ out_rows. For few input channels, and
for every layer on accelerators, the forward pass and the weight gradient use
a patch matrix instead (``slotref.kernels.im2col``).
"""

from __future__ import annotations

import numpy as np
from autograd.extend import defvjp, primitive

from slotref import convolution
from slotref.backend import xp_of
from slotref.convolution import same_padding
from slotref.dispatch import implements
from slotref.kernels.im2col import patch_chunks, patch_matrix, use_patches

# Rows per block of the shifted GEMMs: blocks that stay in cache on CPUs; one
# block (the whole array, few large kernels) on GPUs.
BLOCK_ROWS = 4096


def _phase_span(p, pad, size, s):
    """Phase p of a padded axis: (first phase index i0, first input index, count) of
    the input pixels it holds; padded index i * s + p is input index i * s + p - pad."""
    i0 = max(0, -(-(pad - p) // s))
    first = i0 * s + p - pad
    return i0, first, max(0, -(-(size - first) // s))


class _Geometry:
    """Padding and phase layout of one SAME convolution."""

    def __init__(self, x_shape, kernel_shape, stride):
        b, h, w, _ = x_shape
        kh, kw = kernel_shape[:2]
        self.batch, self.h, self.w, self.kh, self.kw, self.stride = b, h, w, kh, kw, stride
        self.ho, self.pt, pb = same_padding(h, kh, stride)
        self.wo, self.pl, pr = same_padding(w, kw, stride)
        # Padded size rounded up to a multiple of the stride, so that every
        # phase has the same (hq, wq) grid.
        self.hq, self.wq = -(-(h + self.pt + pb) // stride), -(-(w + self.pl + pr) // stride)
        self.hp, self.wp = self.hq * stride, self.wq * stride
        self.rows = b * self.hq * self.wq

    def taps(self):
        """(i, j, phase index, row offset, column offset) of every kernel tap;
        the tap reads rows shifted by row offset + column offset."""
        s = self.stride
        return [(i, j, (i % s) * s + (j % s), (i // s) * self.wq, j // s)
                for i in range(self.kh) for j in range(self.kw)]

    def phases(self, x):
        """The padded input split into stride^2 phases, each (rows, C), contiguous.

        Phase (py, px) holds padded pixels (py + s*i, px + s*j); each is filled
        straight from a strided view of x, without building the padded input.
        """
        xp = xp_of(x)
        s, c = self.stride, x.shape[3]
        if s == 1:
            x_pad = xp.pad(x, ((0, 0), (self.pt, self.hp - self.h - self.pt),
                               (self.pl, self.wp - self.w - self.pl), (0, 0)))
            return [x_pad.reshape(self.rows, c)]
        out = []
        for py in range(s):
            i0, y0, ny = _phase_span(py, self.pt, self.h, s)
            for px in range(s):
                j0, x0, nx = _phase_span(px, self.pl, self.w, s)
                ph = xp.zeros((self.batch, self.hq, self.wq, c), dtype=x.dtype)
                ph[:, i0:i0 + ny, j0:j0 + nx] = x[:, y0::s, x0::s][:, :ny, :nx]
                out.append(ph.reshape(self.rows, c))
        return out

    def to_rows(self, y):
        """An output-shaped array (B, ho, wo, C) placed in the (rows, C) layout, zeros elsewhere."""
        xp = xp_of(y)
        full = xp.zeros((self.batch, self.hq, self.wq, y.shape[3]), dtype=y.dtype)
        full[:, :self.ho, :self.wo] = y
        return full.reshape(self.rows, y.shape[3])

    def from_rows(self, rows):
        """(rows, C) -> the valid outputs (B, ho, wo, C)."""
        c = rows.shape[1]
        return rows.reshape(self.batch, self.hq, self.wq, c)[:, :self.ho, :self.wo]

    def unphase(self, rows, c):
        """Inverse of ``phases`` with the phases side by side: (rows, stride^2 * C) -> the
        unpadded input (B, H, W, C)."""
        s = self.stride
        x_pad = rows.reshape(self.batch, self.hq, self.wq, s, s, c).transpose(0, 1, 3, 2, 4, 5)
        x_pad = x_pad.reshape(self.batch, self.hp, self.wp, c)
        return x_pad[:, self.pt:self.pt + self.h, self.pl:self.pl + self.w]


def _pair_layout(taps):
    """Where the column-shifted copies of a block go, for taps (source, row offset, column offset, ...).

    Every (source, column offset) pair read by some tap gets C columns of one
    buffer, in sorted order; a row offset's taps then read the column range
    [lo, hi) of pairs (its taps' pairs and any between them). Returns the pairs,
    {pair: its index} and {row offset: (lo, hi)}. For a stride-2 5x5 kernel the four phases give
    10 pairs and three row offsets of K = 10, 10 and 5 pairs x C: three wide
    GEMMs instead of nine narrow ones per phase.
    """
    pairs = sorted({(t[0], t[2]) for t in taps})
    index = {pair: n for n, pair in enumerate(pairs)}
    spans = {}
    for t in taps:
        n = index[(t[0], t[2])]
        lo, hi = spans.get(t[1], (n, n + 1))
        spans[t[1]] = (min(lo, n), max(hi, n + 1))
    return pairs, index, spans


def _shifted_block(sources, pairs, r0, ext, buf):
    """buf[r, k*C:(k+1)*C] = sources[src_k][r0 + r + col_k] for pairs k = (src_k, col_k)
    (zero outside the source)."""
    for k, (src, col) in enumerate(pairs):
        source = sources[src]
        rows, c = source.shape
        a0, a1 = r0 + col, r0 + col + ext
        lo, hi = max(a0, 0), min(a1, rows)
        part = buf[:, k * c:(k + 1) * c]
        if lo >= hi:
            part[...] = 0
            continue
        part[lo - a0:hi - a0] = source[lo:hi]
        part[:lo - a0] = 0
        part[hi - a0:] = 0
    return buf


def _shifted_sum(sources, terms, rows, c_out, xp, dtype, n_out=1):
    """out[q, d] = sum over terms (source, row_off, col_off, weight, d) of
    sources[source][q + row_off + col_off] @ weight, where out[q, d] is the
    d-th block of C_out columns of row q; rows outside a source read zeros. Returns (rows, n_out * C_out)."""
    out = xp.zeros((rows, n_out * c_out), dtype=dtype)
    if xp is not np:
        # Accelerators: one large GEMM per tap over all rows.
        for src, row_off, col_off, weight, d in terms:
            off = row_off + col_off
            a0, a1 = max(0, off), min(rows, rows + off)
            if a0 < a1:
                out[a0 - off:a1 - off, d * c_out:(d + 1) * c_out] += sources[src][a0:a1] @ weight
        return out
    if not terms:
        return out
    # CPUs: in row blocks that stay in cache, copy the column-shifted rows of
    # every (source, column offset) pair side by side into one buffer; then
    # each row offset is one GEMM over a row-shifted slice of that buffer, with
    # K = its pairs x C and N = its outputs x C_out (zero blocks where a pair
    # does not feed an output), instead of one thin GEMM (K = C, N = C_out) per tap.
    c = sources[0].shape[1]
    pairs, index, spans = _pair_layout(terms)
    outs = {}
    for _, row_off, _, _, d in terms:
        lo, hi = outs.get(row_off, (d, d + 1))
        outs[row_off] = (min(lo, d), max(hi, d + 1))
    stacked = {r: xp.zeros(((hi - lo) * c, (outs[r][1] - outs[r][0]) * c_out), dtype=dtype)
               for r, (lo, hi) in spans.items()}
    for src, row_off, col_off, weight, d in terms:
        k = index[(src, col_off)] - spans[row_off][0]
        e = d - outs[row_off][0]
        stacked[row_off][k * c:(k + 1) * c, e * c_out:(e + 1) * c_out] = weight
    lo_row, hi_row = min(spans), max(spans)
    buf = xp.empty((BLOCK_ROWS + hi_row - lo_row, len(pairs) * c), dtype=dtype)
    # Stride 1 with thin outputs: every row offset reads the same columns of the
    # buffer, so their weights go side by side (N = row offsets x C_out) and a
    # block is one GEMM whose column blocks are added at their row shifts.
    wide = n_out == 1 and c_out <= WIDE_GEMM_MAX_CHANNELS and len(set(spans.values())) == 1
    if wide:
        offsets = sorted(stacked)
        (lo, hi), = set(spans.values())
        wide_weight = xp.concatenate([stacked[r] for r in offsets], axis=1)   # (K, row offsets x C_out)
    for r0 in range(0, rows, BLOCK_ROWS):
        n = min(rows, r0 + BLOCK_ROWS) - r0
        block = _shifted_block(sources, pairs, r0 + lo_row, n + hi_row - lo_row, buf[:n + hi_row - lo_row])
        if wide:
            product = block[:, lo * c:hi * c] @ wide_weight
            for i, row_off in enumerate(offsets):
                out[r0:r0 + n] += product[row_off - lo_row:row_off - lo_row + n, i * c_out:(i + 1) * c_out]
            continue
        for row_off, weight in stacked.items():
            (lo, hi), (d0, d1) = spans[row_off], outs[row_off]
            out[r0:r0 + n, d0 * c_out:d1 * c_out] += block[row_off - lo_row:row_off - lo_row + n, lo * c:hi * c] @ weight
    return out


# Thin outputs (C_out <= this) at stride 1: OpenBLAS runs a GEMM with N = 32
# columns well below one with N = 160 (docs/performance.md).
WIDE_GEMM_MAX_CHANNELS = 32

def _conv_forward(x, w, stride):
    xp = xp_of(x)
    geo = _Geometry(x.shape, w.shape, stride)
    if use_patches(xp, x.shape[3]):
        w_mat = w.reshape(-1, w.shape[3])
        out = xp.empty((geo.batch, geo.ho, geo.wo, w.shape[3]), dtype=x.dtype)
        for b0, b1 in patch_chunks(geo, x.shape[3], x.itemsize):
            out[b0:b1] = (patch_matrix(x[b0:b1], geo, b1 - b0) @ w_mat).reshape(b1 - b0, geo.ho, geo.wo, -1)
        return out
    terms = [(phase, row_off, col_off, w[i, j], 0) for i, j, phase, row_off, col_off in geo.taps()]
    rows = _shifted_sum(geo.phases(x), terms, geo.rows, w.shape[3], xp, x.dtype)
    return xp.ascontiguousarray(geo.from_rows(rows))


def _conv_backward_input(g, w, stride, x_shape):
    """The adjoint of ``_conv_forward`` with respect to its input."""
    xp = xp_of(g)
    geo = _Geometry(x_shape, w.shape, stride)
    # Input row r of phase p received out row r - offset through each tap of
    # phase p; all phases come out side by side as column blocks of one sum.
    terms = [(0, -row_off, -col_off, w[i, j].T, phase) for i, j, phase, row_off, col_off in geo.taps()]
    rows = _shifted_sum([geo.to_rows(g)], terms, geo.rows, x_shape[3], xp, g.dtype, n_out=stride * stride)
    return xp.ascontiguousarray(geo.unphase(rows, x_shape[3]))


def _conv_backward_weight(x, g, stride, w_shape):
    """The gradient of ``_conv_forward`` with respect to its kernel."""
    xp = xp_of(x)
    geo = _Geometry(x.shape, w_shape, stride)
    if use_patches(xp, x.shape[3]):
        dw = xp.zeros((geo.kh * geo.kw * x.shape[3], w_shape[3]), dtype=x.dtype)
        for b0, b1 in patch_chunks(geo, x.shape[3], x.itemsize):
            dw += patch_matrix(x[b0:b1], geo, b1 - b0).T @ g[b0:b1].reshape(-1, w_shape[3])
        return dw.reshape(w_shape)
    phases, g_rows = geo.phases(x), geo.to_rows(g)
    dw = xp.zeros(w_shape, dtype=x.dtype)
    c_in = w_shape[2]
    # CPUs: the buffer of column-shifted copies of _shifted_sum; per row
    # offset, a slice of a block times the block of dy gives all of its taps.
    taps = [(phase, row_off, col_off, i, j) for i, j, phase, row_off, col_off in geo.taps()]
    pairs, index, spans = _pair_layout(taps)
    lo_row, hi_row = min(spans), max(spans)
    buf = xp.empty((BLOCK_ROWS + hi_row - lo_row, len(pairs) * c_in), dtype=x.dtype)
    grads = {r: xp.zeros(((hi - lo) * c_in, w_shape[3]), dtype=x.dtype) for r, (lo, hi) in spans.items()}
    for r0 in range(0, geo.rows, BLOCK_ROWS):
        n = min(geo.rows, r0 + BLOCK_ROWS) - r0
        block = _shifted_block(phases, pairs, r0 + lo_row, n + hi_row - lo_row, buf[:n + hi_row - lo_row])
        for r, (lo, hi) in spans.items():
            grads[r] += block[r - lo_row:r - lo_row + n, lo * c_in:hi * c_in].T @ g_rows[r0:r0 + n]
    for phase, row_off, col_off, i, j in taps:
        k = index[(phase, col_off)] - spans[row_off][0]
        dw[i, j] = grads[row_off][k * c_in:(k + 1) * c_in]
    return dw


@implements(convolution.conv2d_same)
@primitive
def conv2d_same(x, w, stride=1):
    """SAME convolution without bias. x: (B, H, W, Cin), w: (kh, kw, Cin, Cout)."""
    return _conv_forward(x, w, stride)


defvjp(conv2d_same,
       lambda ans, x, w, stride=1: lambda g: _conv_backward_input(g, w, stride, x.shape),
       lambda ans, x, w, stride=1: lambda g: _conv_backward_weight(x, g, stride, w.shape))


@implements(convolution.conv_transpose2d_same)
@primitive
def conv_transpose2d_same(x, w, stride=1):
    """SAME transposed convolution: the adjoint of ``conv2d_same`` in its input.

    x: (B, H, W, Cin), w: (kh, kw, Cout, Cin) as Keras' Conv2DTranspose
    -> (B, H * stride, W * stride, Cout).
    """
    b, h, wd, _ = x.shape
    return _conv_backward_input(x, w, stride, (b, h * stride, wd * stride, w.shape[2]))


defvjp(conv_transpose2d_same,
       lambda ans, x, w, stride=1: lambda g: _conv_forward(g, w, stride),
       lambda ans, x, w, stride=1: lambda g: _conv_backward_weight(g, x, stride, w.shape))
