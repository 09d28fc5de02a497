"""Flat 2D scenes: tetrominoes and multi-dsprites (colored_on_grayscale)."""

from __future__ import annotations

import numpy as np

from slotref.data.sampling import redraw_until, uniforms

# --------------------------------------------------------------------------
# tetrominoes: 3 flat-coloured tetrominoes on black, no overlaps.
# --------------------------------------------------------------------------

# The 19 fixed tetrominoes less the two straight (I) pieces: 17 shapes and
# orientations, as many as the real dataset has (its exact list is unpublished).
_TETROMINO_ROWS = [
    ("##", "##"),  # O
    ("###", ".#."), (".#", "##", ".#"), (".#.", "###"), ("#.", "##", "#."),  # T
    (".##", "##."), ("#.", "##", ".#"),  # S
    ("##.", ".##"), (".#", "##", "#."),  # Z
    ("#.", "#.", "##"), ("###", "#.."), ("##", ".#", ".#"), ("..#", "###"),  # L
    (".#", ".#", "##"), ("#..", "###"), ("##", "#.", "#."), ("###", "..#"),  # J
]
TETROMINO_SHAPES = np.zeros((len(_TETROMINO_ROWS), 3, 3), dtype=bool)  # block patterns
for _k, _rows in enumerate(_TETROMINO_ROWS):
    for _r, _line in enumerate(_rows):
        TETROMINO_SHAPES[_k, _r, : len(_line)] = [c == "#" for c in _line]
TETROMINO_COLORS = np.array(
    [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)], dtype=np.uint8
)


def draw_tetrominoes(seed, indices, resolution, min_objects, max_objects):
    block = max(1, resolution // 7)  # 5 pixels at 35x35
    m, tries = max_objects, 16
    heights = TETROMINO_SHAPES.any(axis=2).sum(axis=1)
    widths = TETROMINO_SHAPES.any(axis=1).sum(axis=1)
    pixels = np.arange(resolution)

    def attempt(idx, attempts):
        batch = len(idx)
        u = uniforms(seed, idx, attempts, 1 + m * tries * 4)
        n = min_objects + np.minimum((u[:, 0] * (m - min_objects + 1)).astype(int), m - min_objects)
        cand = u[:, 1:].reshape(batch, m, tries, 4)
        shape = (cand[..., 0] * len(TETROMINO_SHAPES)).astype(int)
        color = (cand[..., 1] * len(TETROMINO_COLORS)).astype(int)
        top = (cand[..., 2] * (resolution - heights[shape] * block + 1)).astype(int)
        left = (cand[..., 3] * (resolution - widths[shape] * block + 1)).astype(int)
        masks = np.zeros((batch, resolution, resolution), dtype=np.uint8)
        images = np.zeros((batch, resolution, resolution, 3), dtype=np.uint8)
        ok = np.ones(batch, dtype=bool)
        b = np.arange(batch)
        for j in range(m):
            # (B, T, H, W) piece masks of every candidate placement.
            br = (pixels[None, None, :] - top[:, j, :, None]) // block
            bc = (pixels[None, None, :] - left[:, j, :, None]) // block
            in_r, in_c = (br >= 0) & (br < 3), (bc >= 0) & (bc < 3)
            piece = TETROMINO_SHAPES[shape[:, j, :, None, None], np.clip(br, 0, 2)[..., :, None],
                                     np.clip(bc, 0, 2)[..., None, :]]
            piece &= in_r[..., :, None] & in_c[..., None, :]
            # Keep a one-pixel gap so that touching pieces of one colour stay apart.
            occupied = masks > 0
            grown = occupied.copy()
            grown[:, 1:] |= occupied[:, :-1]
            grown[:, :-1] |= occupied[:, 1:]
            grown[:, :, 1:] |= occupied[:, :, :-1]
            grown[:, :, :-1] |= occupied[:, :, 1:]
            free = ~(piece & grown[:, None]).any(axis=(2, 3))  # (B, T)
            pick = free.argmax(axis=1)
            place = free.any(axis=1) & (j < n)
            ok &= free.any(axis=1) | (j >= n)
            chosen = piece[b, pick] & place[:, None, None]
            masks[chosen] = j + 1
            images[chosen] = TETROMINO_COLORS[color[b, j, pick]][np.nonzero(chosen)[0]]
        return {"images": images, "masks": masks, "num_objects": n.astype(np.int32)}, ok

    return redraw_until(attempt, indices)


# --------------------------------------------------------------------------
# multi-dsprites (colored_on_grayscale): 2-5 sprites over a grey background.
# --------------------------------------------------------------------------

SPRITE_SHAPES = ("square", "ellipse", "heart")
SPRITE_HALF_SIZE = 0.15  # half extent of a scale-1 sprite, as a fraction of the frame


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB, all in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(table, i[None, ..., None], axis=0)[0]


def draw_multi_dsprites(seed, indices, resolution, min_objects, max_objects):
    m = max_objects
    batch = len(indices)
    u = uniforms(seed, indices, np.zeros(batch, dtype=np.int64), 2 + 8 * m)
    n = min_objects + np.minimum((u[:, 0] * (m - min_objects + 1)).astype(int), m - min_objects)
    background = u[:, 1]  # grey level, uniform
    s = u[:, 2:].reshape(batch, m, 8)
    shape = (s[..., 0] * 3).astype(int)
    scale = 0.5 + 0.5 * s[..., 1]
    angle = s[..., 2] * 2 * np.pi
    position = s[..., 3:5]  # in [0, 1]^2, mapped inside the frame with a margin
    rgb = _hsv_to_rgb(s[..., 5], 0.5 + 0.5 * s[..., 6], 0.5 + 0.5 * s[..., 7])  # (B, M, 3)

    # Each sprite is evaluated in a square window around its centre that holds
    # it at any rotation, then painted in order: later sprites occlude earlier ones.
    half = int(np.ceil(1.6 * SPRITE_HALF_SIZE * resolution))
    window = np.arange(-half, half + 1)
    centre = 0.1 + 0.8 * position  # (B, M, 2) as (x, y) in [0, 1]
    pixel_centre = np.round(centre * resolution - 0.5).astype(int)
    cols = pixel_centre[..., 0, None] + window  # (B, M, C)
    rows = pixel_centre[..., 1, None] + window
    dx = ((cols + 0.5) / resolution - centre[..., 0, None]).astype(np.float32)[..., None, :]  # (B, M, 1, C)
    dy = ((rows + 0.5) / resolution - centre[..., 1, None]).astype(np.float32)[..., :, None]  # (B, M, C, 1)
    cos = np.cos(angle).astype(np.float32)[..., None, None]
    sin = np.sin(angle).astype(np.float32)[..., None, None]
    size = (SPRITE_HALF_SIZE * scale).astype(np.float32)[..., None, None]
    x = (cos * dx + sin * dy) / size  # sprite coordinates: the sprite fills about [-1, 1]^2
    y = (-sin * dx + cos * dy) / size
    square = np.maximum(np.abs(x), np.abs(y)) <= 1
    ellipse = x * x + (y / 0.55) ** 2 <= 1
    hx, hy = x * 1.15, 0.15 - y * 1.15  # the classic heart curve (x^2+y^2-1)^3 = x^2 y^3
    q = hx * hx + hy * hy - 1
    heart = q * q * q <= hx * hx * hy * hy * hy
    sprite = np.where((shape == 0)[..., None, None], square, np.where((shape == 1)[..., None, None], ellipse, heart))
    sprite &= ((rows >= 0) & (rows < resolution))[..., :, None] & ((cols >= 0) & (cols < resolution))[..., None, :]
    masks = np.zeros((batch, resolution, resolution), dtype=np.int64)
    for j in range(m):
        b, i, k = np.nonzero(sprite[:, j] & (j < n)[:, None, None])
        masks[b, rows[b, j, i], cols[b, j, k]] = j + 1
    palette = np.concatenate([np.repeat(background[:, None, None], 3, -1), rgb], 1)  # (B, M + 1, 3)
    images = palette[np.arange(batch)[:, None, None], masks]
    # Renumber the sprites that are still visible to 1..n in drawing order.
    counts = np.bincount((np.arange(batch)[:, None] * (m + 1) + masks.reshape(batch, -1)).ravel(),
                         minlength=batch * (m + 1)).reshape(batch, m + 1)
    visible = counts[:, 1:] > 0
    relabel = np.concatenate([np.zeros((batch, 1), int), np.cumsum(visible, 1) * visible], 1)
    masks = np.take_along_axis(relabel, masks.reshape(batch, -1), 1).reshape(masks.shape).astype(np.uint8)
    return {
        "images": (images * 255 + 0.5).astype(np.uint8),
        "masks": masks,
        "num_objects": visible.sum(1).astype(np.int32),
    }

