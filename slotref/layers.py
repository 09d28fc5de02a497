"""Hand-written layers: pure functions over parameter dicts.

Each layer is a pair ``init_<layer>(rng, ...) -> params`` (NumPy arrays on the
host, float64; ``Backend.tree_asarray`` casts and moves them) and
``<layer>(params, x)``. Layout: sets are ``(batch, set, features)``, images NHWC.

Initialisation follows the reference framework (TF/Keras, which the official
code uses): Glorot-uniform kernels, zero biases, an orthogonal GRU recurrent
kernel, LayerNorm scale 1 and offset 0.

Where autograd would trace many small operations (LayerNorm, softmax, Huber)
or has no gradient at all (convolutions), the layer is an autograd primitive
with its VJP written next to it; ``tests/test_layers.py`` checks each VJP
against finite differences and against a plainly traced version.
"""

from __future__ import annotations

import functools
import os

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from slotref import backend
from slotref.backend import relu, sigmoid, xp_of

# Keras' LayerNormalization default, as in the official implementation.
LAYER_NORM_EPS = 1e-3


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------
# Initialisers (host NumPy, float64).

def glorot_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Keras' Orthogonal initialiser for a 2-D kernel."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # make the decomposition unique
    # C order, as a checkpoint reloads it: BLAS rounds F-ordered operands differently (exact resume).
    return np.ascontiguousarray(q if rows >= cols else q.T)


def torch_default_init(rng: np.random.Generator, params):
    """The same parameter tree redrawn with PyTorch's default initialisers.

    PyTorch's nn.Linear / nn.Conv2d / nn.ConvTranspose2d draw kernels and biases
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5));
    nn.GRUCell draws everything from U(-1/sqrt(hidden), 1/sqrt(hidden)).
    Kernels here are (d_in, d_out), (k, k, c_in, c_out) or, transposed,
    (k, k, c_out, c_in): PyTorch's fan_in is k * k * shape[2] for both 4-D forms.
    LayerNorm and the slot distribution keep their values. For comparing with
    PyTorch implementations (``--init torch``); the default is Glorot (Keras).
    """
    if isinstance(params, list):
        return [torch_default_init(rng, p) for p in params]
    if not isinstance(params, dict):
        return params
    if "w_hidden" in params:  # GRU cell
        bound = 1.0 / np.sqrt(params["w_hidden"].shape[0])
        return {k: rng.uniform(-bound, bound, size=v.shape) for k, v in params.items()}
    if "w" in params:  # linear or convolution
        w = params["w"]
        fan_in = w.shape[0] if w.ndim == 2 else w.shape[0] * w.shape[1] * w.shape[2]
        bound = 1.0 / np.sqrt(fan_in)
        return {k: rng.uniform(-bound, bound, size=v.shape) for k, v in params.items()}
    return {k: torch_default_init(rng, v) for k, v in params.items()}


# --------------------------------------------------------------------------
# Dense layers.

def init_linear(rng, d_in: int, d_out: int, bias: bool = True) -> dict:
    params = {"w": glorot_uniform(rng, (d_in, d_out), d_in, d_out)}
    if bias:
        params["b"] = np.zeros(d_out)
    return params


def linear(params: dict, x):
    """x @ w (+ b). x: (..., d_in) -> (..., d_out)."""
    w = params["w"]
    _check(x.ndim >= 1 and x.shape[-1] == w.shape[0],
           f"linear expects input (..., {w.shape[0]}), got shape {tuple(x.shape)}")
    # One (rows, d_in) @ (d_in, d_out) GEMM: a batched matmul's weight gradient
    # would be B small products and a sum.
    y = (x.reshape(-1, w.shape[0]) @ w).reshape(x.shape[:-1] + (w.shape[1],))
    return y + params["b"] if "b" in params else y


def init_mlp(rng, sizes: list[int]) -> list:
    """An MLP with layer widths ``sizes`` (input first), ReLU between layers."""
    return [init_linear(rng, a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def mlp(params: list, x):
    """Linear layers with ReLU between them, none after the last."""
    for i, layer in enumerate(params):
        x = linear(layer, x)
        if i < len(params) - 1:
            x = relu(x)
    return x


# --------------------------------------------------------------------------
# LayerNorm (Ba et al. 2016), normalising over the last axis.

@primitive
def normalize(x, eps=LAYER_NORM_EPS):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xp = xp_of(x)
    mu = xp.mean(x, axis=-1, keepdims=True)
    centred = x - mu
    var = xp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / xp.sqrt(var + eps)


def _normalize_vjp(ans, x, eps=LAYER_NORM_EPS):
    # y = (x - mu) / sigma  =>  dx = (g - mean(g) - y * mean(g * y)) / sigma.
    xp = xp_of(x)
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    inv_sigma = 1 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + eps)

    def vjp(g):
        g_mean = xp.mean(g, axis=-1, keepdims=True)
        gy_mean = xp.mean(g * ans, axis=-1, keepdims=True)
        return (g - g_mean - ans * gy_mean) * inv_sigma
    return vjp


defvjp(normalize, _normalize_vjp)


def init_layer_norm(d: int) -> dict:
    return {"scale": np.ones(d), "offset": np.zeros(d)}


def layer_norm(params: dict, x, eps: float = LAYER_NORM_EPS):
    """LayerNorm over the last axis with learned scale and offset."""
    _check(x.shape[-1] == params["scale"].shape[0],
           f"layer_norm expects input (..., {params['scale'].shape[0]}), got shape {tuple(x.shape)}")
    return normalize(x, eps) * params["scale"] + params["offset"]


# --------------------------------------------------------------------------
# Softmax and Huber.

@primitive
def softmax(x, axis=-1):
    xp = xp_of(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


defvjp(softmax, lambda ans, x, axis=-1: lambda g: ans * (g - xp_of(g).sum(g * ans, axis=axis, keepdims=True)))


@primitive
def huber(x, delta=1.0):
    """Elementwise Huber loss of a residual: x^2/2 inside |x| <= delta, linear outside."""
    xp = xp_of(x)
    a = xp.abs(x)
    quad = xp.minimum(a, delta)
    return 0.5 * quad * quad + delta * (a - quad)


defvjp(huber, lambda ans, x, delta=1.0: lambda g: g * xp_of(x).clip(x, -delta, delta))


# --------------------------------------------------------------------------
# GRU cell, reset-after form (Keras default GRUCell, cuDNN, PyTorch):
#   z = s(W_iz x + b_iz + W_hz h + b_hz)
#   r = s(W_ir x + b_ir + W_hr h + b_hr)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
#   h' = (1 - z) * n + z * h
# The three gates' kernels are stored side by side in Keras' order [z, r, n].

def init_gru(rng, d_input: int, d_hidden: int) -> dict:
    return {
        "w_input": glorot_uniform(rng, (d_input, 3 * d_hidden), d_input, 3 * d_hidden),
        "w_hidden": orthogonal(rng, (d_hidden, 3 * d_hidden)),
        "b_input": np.zeros(3 * d_hidden),
        "b_hidden": np.zeros(3 * d_hidden),
    }


def gru_cell(params: dict, x, h):
    """One GRU step. x: (..., d_input), h: (..., d_hidden) -> h' (..., d_hidden)."""
    d = params["w_hidden"].shape[0]
    _check(h.shape[-1] == d and x.shape[-1] == params["w_input"].shape[0],
           f"gru_cell expects x (..., {params['w_input'].shape[0]}) and h (..., {d}), "
           f"got {tuple(x.shape)} and {tuple(h.shape)}")
    gates_x = x @ params["w_input"] + params["b_input"]   # (..., 3d)
    gates_h = h @ params["w_hidden"] + params["b_hidden"]  # (..., 3d)
    z_x, r_x, n_x = (backend.index(gates_x, (Ellipsis, slice(i * d, (i + 1) * d))) for i in range(3))
    z_h, r_h, n_h = (backend.index(gates_h, (Ellipsis, slice(i * d, (i + 1) * d))) for i in range(3))
    z = sigmoid(z_x + z_h)
    r = sigmoid(r_x + r_h)
    n = anp.tanh(n_x + r * n_h)  # autograd.numpy: CuPy's own tanh cannot take a traced value
    return (1 - z) * n + z * h


# --------------------------------------------------------------------------
# Convolutions: NHWC, SAME padding with TF semantics (output = ceil(in / s),
# the odd pixel of padding at the bottom/right), kernels (kh, kw, in, out).
#
# Three kernels do all the work:
#   _conv_forward          y = conv(x, w)
#   _conv_backward_input   dx = conv^T(dy, w)   (the adjoint; also conv_transpose2d)
#   _conv_backward_weight  dw = sum over positions of x-patch^T dy
#
# All three are "shifted GEMMs" instead of im2col. Flatten the zero-padded
# input to rows (B * Hp * Wp, C). Output pixel (y, x) sits in row y * Wp + x of
# the same layout, and kernel tap (i, j) reads row (y + i) * Wp + (x + j), i.e.
# the output row shifted by i * Wp + j. So
#     out_rows[q] = sum over taps t of in_rows[q + offset_t] @ w_t,
# one GEMM per tap over a contiguous slice: no patch matrix is ever built.
# Rows that fall on padding columns compute garbage and are cropped away.
# Stride 2 splits the padded input into its four (row, column) parity phases,
# each a stride-1 problem on a grid of half the size. The adjoint (input
# gradient) runs the same sums with negative offsets; the weight gradient
# takes, per tap, in_rows[shifted]^T @ out_rows. ``tests/test_layers.py``
# checks all three against loops over output positions and kernel taps.

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of TF's SAME padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


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
# columns well below one with N = 160 (docs/performance.md, change 8).
WIDE_GEMM_MAX_CHANNELS = 32


# Below this many input channels a per-tap GEMM (K = C_in) starves the
# matrix unit; the first layer (RGB, C_in = 3) builds a small patch matrix
# (K = kh * kw * C_in) instead.
IM2COL_MAX_CHANNELS = 8


def _patch_matrix(x, geo, batch=None):
    """im2col for few input channels: (B * ho * wo, kh * kw * C) patches of the padded input.

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
# many bytes ("shifted" keeps the per-tap GEMMs on the device too).
DEVICE_CONV = os.environ.get("SLOTREF_DEVICE_CONV", "im2col")
DEVICE_PATCH_BYTES = 1 << 30


def _use_patches(xp, c_in) -> bool:
    return c_in <= IM2COL_MAX_CHANNELS or (xp is not np and DEVICE_CONV == "im2col")


def _patch_chunks(geo, c_in, itemsize):
    per_example = geo.ho * geo.wo * geo.kh * geo.kw * c_in * itemsize
    step = max(1, DEVICE_PATCH_BYTES // max(per_example, 1))
    for b0 in range(0, geo.batch, step):
        yield b0, min(geo.batch, b0 + step)


def _conv_forward(x, w, stride):
    xp = xp_of(x)
    geo = _Geometry(x.shape, w.shape, stride)
    if _use_patches(xp, x.shape[3]):
        w_mat = w.reshape(-1, w.shape[3])
        out = xp.empty((geo.batch, geo.ho, geo.wo, w.shape[3]), dtype=x.dtype)
        for b0, b1 in _patch_chunks(geo, x.shape[3], x.itemsize):
            out[b0:b1] = (_patch_matrix(x[b0:b1], geo, b1 - b0) @ w_mat).reshape(b1 - b0, geo.ho, geo.wo, -1)
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
    if _use_patches(xp, x.shape[3]):
        dw = xp.zeros((geo.kh * geo.kw * x.shape[3], w_shape[3]), dtype=x.dtype)
        for b0, b1 in _patch_chunks(geo, x.shape[3], x.itemsize):
            dw += _patch_matrix(x[b0:b1], geo, b1 - b0).T @ g[b0:b1].reshape(-1, w_shape[3])
        return dw.reshape(w_shape)
    phases, g_rows = geo.phases(x), geo.to_rows(g)
    dw = xp.zeros(w_shape, dtype=x.dtype)
    c_in = w_shape[2]
    if xp is not np:
        for i, j, phase, row_off, col_off in geo.taps():
            off = row_off + col_off
            dw[i, j] = phases[phase][off:].T @ g_rows[:geo.rows - off]
        return dw
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


@primitive
def conv2d_same(x, w, stride=1):
    """SAME convolution without bias. x: (B, H, W, Cin), w: (kh, kw, Cin, Cout)."""
    return _conv_forward(x, w, stride)


defvjp(conv2d_same,
       lambda ans, x, w, stride=1: lambda g: _conv_backward_input(g, w, stride, x.shape),
       lambda ans, x, w, stride=1: lambda g: _conv_backward_weight(x, g, stride, w.shape))


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


def init_conv2d(rng, kernel: int, c_in: int, c_out: int) -> dict:
    fan_in, fan_out = kernel * kernel * c_in, kernel * kernel * c_out
    return {"w": glorot_uniform(rng, (kernel, kernel, c_in, c_out), fan_in, fan_out),
            "b": np.zeros(c_out)}


def init_conv_transpose2d(rng, kernel: int, c_in: int, c_out: int) -> dict:
    # Keras stores transposed kernels as (kh, kw, out, in); fans as Keras computes them.
    fan_in, fan_out = kernel * kernel * c_out, kernel * kernel * c_in
    return {"w": glorot_uniform(rng, (kernel, kernel, c_out, c_in), fan_in, fan_out),
            "b": np.zeros(c_out)}


def _check_image(name, x, channels):
    _check(x.ndim == 4 and x.shape[-1] == channels,
           f"{name} expects NHWC input (B, H, W, {channels}), got shape {tuple(x.shape)}"
           + (" (NCHW?)" if x.ndim == 4 and x.shape[1] == channels else ""))


def conv2d(params: dict, x, stride: int = 1):
    """SAME convolution with bias. x: (B, H, W, Cin) -> (B, ceil(H/s), ceil(W/s), Cout)."""
    _check_image("conv2d", x, params["w"].shape[2])
    return conv2d_same(x, params["w"], stride) + params["b"]


def conv_transpose2d(params: dict, x, stride: int = 1):
    """SAME transposed convolution with bias. x: (B, H, W, Cin) -> (B, H*s, W*s, Cout)."""
    _check_image("conv_transpose2d", x, params["w"].shape[3])
    return conv_transpose2d_same(x, params["w"], stride) + params["b"]


@functools.lru_cache(maxsize=32)
def _broadcast_taps(in_size: tuple[int, int], kernel: tuple[int, int], stride: int, xp=np, dtype="float64"):
    """(H_out * W_out, kh * kw): 1 where kernel tap (a, b) of a SAME transposed
    convolution reaches output pixel (i, j) from inside an input of ``in_size``.

    Read off the transposed convolution itself (an all-ones input and a one-hot
    kernel per tap), so it holds whatever the padding and stride conventions are.
    Made once per shape, backend and dtype, on the device it is used on.
    """
    kh, kw = kernel
    ones = xp.ones((1, *in_size, 1), dtype=dtype)
    taps = []
    for t in range(kh * kw):
        one_hot = xp.zeros((kh * kw, 1, 1), dtype=dtype)
        one_hot[t] = 1.0
        taps.append(_conv_backward_input(ones, one_hot.reshape(kh, kw, 1, 1), stride,
                                         (1, in_size[0] * stride, in_size[1] * stride, 1)).reshape(-1))
    return xp.stack(taps, axis=1)


def conv_transpose2d_broadcast(params: dict, vectors, embedding, stride: int = 1):
    """``conv_transpose2d(params, broadcast(vectors) + embedding, stride)`` without the broadcast.

    The spatial broadcast decoder's first layer sees each slot copied to every
    pixel plus a position embedding shared by all slots. The transposed
    convolution is linear, so it splits: the embedding's part is computed once,
    and a slot's part at output pixel p is slot @ (sum of the kernel taps that
    reach p), a (D x C_out) matrix per pixel (``_broadcast_taps``). For the
    Tetrominoes decoder (N = 128 slot images, 35x35, 64 -> 32 channels) that is
    0.8 GFLOP instead of 16. vectors (N, D), embedding (1, h, w, D) -> (N, h*s, w*s, C_out).
    The plain composition is its test oracle (``tests/test_layers.py``).
    """
    w = params["w"]                                                    # (kh, kw, C_out, D)
    kh, kw, c_out, d = w.shape
    _check(vectors.ndim == 2 and vectors.shape[1] == d and embedding.ndim == 4 and embedding.shape[0] == 1
           and embedding.shape[3] == d,
           f"conv_transpose2d_broadcast expects vectors (N, {d}) and an embedding (1, h, w, {d}), "
           f"got {tuple(vectors.shape)} and {tuple(embedding.shape)}")
    h, wd = embedding.shape[1] * stride, embedding.shape[2] * stride
    dtype = str(getval(vectors).dtype)
    taps = _broadcast_taps(tuple(embedding.shape[1:3]), (kh, kw), stride, xp_of(vectors), dtype)
    per_pixel = taps @ w.reshape(kh * kw, c_out * d)                  # (H*W, C_out*D): summed taps
    per_pixel = anp.swapaxes(per_pixel.reshape(h * wd * c_out, d), 0, 1)  # (D, H*W*C_out)
    out = (vectors @ per_pixel).reshape(vectors.shape[0], h, wd, c_out)
    return out + conv_transpose2d_same(embedding, w, stride) + params["b"]


# --------------------------------------------------------------------------
# Position embedding (appendix E.2) and the set <-> grid reshapes.

def build_grid(height: int, width: int, xp=np, dtype=np.float64):
    """(H, W, 4) ramps [y, x, 1 - y, 1 - x], each linear in [0, 1] across the image.

    Made by the array module ``xp``, so the device path creates no host array.
    """
    y, x = xp.meshgrid(xp.linspace(0.0, 1.0, height, dtype=dtype),
                       xp.linspace(0.0, 1.0, width, dtype=dtype), indexing="ij")
    grid = xp.stack([y, x], axis=-1)
    return xp.concatenate([grid, 1.0 - grid], axis=-1)


def init_soft_position_embed(rng, channels: int) -> dict:
    return init_linear(rng, 4, channels)


def soft_position_embed(params: dict, x):
    """Add a learned linear projection of the 4-ramp grid. x: (B, H, W, C)."""
    _check_image("soft_position_embed", x, params["w"].shape[1])
    grid = build_grid(x.shape[1], x.shape[2], xp_of(x), x.dtype)  # (H, W, 4)
    return x + linear(params, grid)


def spatial_flatten(x):
    """(B, H, W, C) -> (B, H*W, C): the feature map as a set of N = H*W inputs."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def spatial_broadcast(slots, resolution: tuple[int, int]):
    """(B, K, D) -> (B*K, H, W, D): each slot tiled over a grid (Watters et al. 2019)."""
    b, k, d = slots.shape
    xp = xp_of(slots)
    flat = slots.reshape(b * k, 1, 1, d)
    return flat * xp.ones((1, resolution[0], resolution[1], 1), dtype=flat.dtype)
