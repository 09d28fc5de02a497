"""clevr-shapes: a 2.5D CLEVR stand-in, ray cast through a perspective camera.

Cubes, spheres and cylinders in CLEVR's sizes, materials and colours on a
grey floor, seen from CLEVR's camera; labels as CLEVR's scenes (coords, size,
material, shape, color), object j is mask id j + 1.
"""

from __future__ import annotations

import functools

import numpy as np

from slotref.data.sampling import redraw_until, uniforms

# CLEVR's properties.json, in the order of slotref.paper.CLEVR_COLORS (the label
# orderings of tensorflow_datasets clevr:3.1.0, the official code's source).
COLOR_RGB = np.array(
    [
        (87, 87, 87),  # gray
        (42, 75, 215),  # blue
        (129, 74, 25),  # brown
        (255, 238, 51),  # yellow
        (173, 35, 35),  # red
        (29, 105, 20),  # green
        (129, 38, 192),  # purple
        (41, 208, 208),  # cyan
    ],
    dtype=np.uint8,
)
SIZE_RADIUS = np.array([0.35, 0.7])  # small, large (CLEVR's size_mapping)

CAMERA_POSITION = np.array([7.5, -6.5, 5.3])  # CLEVR's camera, looking at the origin
# CLEVR's frame is 480x320 with a 49.1 degree horizontal field of view. This
# frame is square with square pixels (spheres stay round): 42 degrees keeps the
# corners of the (-3, 3)^2 placement area in view, and the window is moved down
# (an off-axis crop of the same camera: the perspective is unchanged) by this
# much in tangent units (~1.4 degrees) to centre the objects.
CAMERA_FOV_DEGREES = 42.0
CAMERA_WINDOW_SHIFT = -0.025
# ``zoom`` (an option of the CLEVR generators, default 1) narrows the field of
# view by that factor and places the objects in (-3/zoom, 3/zoom)^2: the same
# camera looking at the middle of the floor, so objects are zoom times larger
# in pixels. A CPU preset uses it to get objects of CLEVR-at-128x128 size in
# smaller images.
MAX_ZOOM = 4.0
LIGHT_DIRECTION = np.array([1.0, -3.0, 4.0]) / np.sqrt(26.0)  # towards the key light
MIN_GAP = 0.25  # CLEVR's --min_dist
CLEVR_MIN_PIXELS = 200  # CLEVR's --min_pixels_per_object, at 480x320
PLACEMENT_TRIES = 24  # candidate positions per object and attempt


@functools.lru_cache(maxsize=8)
def _camera(resolution, zoom=1.0):
    """Camera basis, per-pixel ray directions (H*W, 3) float32 and the background (H*W, 3)."""
    forward = -CAMERA_POSITION / np.linalg.norm(CAMERA_POSITION)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    half_width = np.tan(np.radians(CAMERA_FOV_DEGREES) / 2) / zoom
    centres = (np.arange(resolution) + 0.5) / resolution * 2 - 1  # pixel centres in [-1, 1]
    sx = centres[None, :] * half_width
    sy = -centres[:, None] * half_width + CAMERA_WINDOW_SHIFT / zoom
    rays = forward + sx[..., None] * right + sy[..., None] * up  # (H, W, 3)
    # Grey ground with a soft light pool, as CLEVR's area lights give.
    u, v = np.meshgrid(centres, centres)
    shade = 0.42 + 0.16 * np.exp(-((u + 0.1) ** 2 + (v - 0.1) ** 2) / 1.2)
    background = shade[..., None] * np.array([1.0, 1.0, 1.02])
    basis = (forward, right, up, half_width, CAMERA_WINDOW_SHIFT / zoom)
    return basis, rays.reshape(-1, 3).astype(np.float32), background.reshape(-1, 3).astype(np.float32)


def _project(points, resolution, zoom=1.0):
    """World points (..., 3) -> (row, col) float pixel coordinates."""
    (forward, right, up, half_width, shift), _, _ = _camera(resolution, zoom)
    d = points - CAMERA_POSITION
    depth = d @ forward
    x = (d @ right) / depth / half_width
    y = ((d @ up) / depth - shift) / half_width
    return (1 - y) / 2 * resolution - 0.5, (x + 1) / 2 * resolution - 0.5


def _sample_clevr_scenes(seed, indices, attempts, min_objects, max_objects, zoom=1.0):
    """Scene parameters as (B, M) arrays, M = max_objects; ok=False where placement failed."""
    m, tries = max_objects, PLACEMENT_TRIES
    u = uniforms(seed, indices, attempts, 1 + 5 * m + 2 * m * tries)
    n = min_objects + np.minimum((u[:, 0] * (max_objects - min_objects + 1)).astype(int), max_objects - min_objects)
    attrs = u[:, 1 : 1 + 5 * m].reshape(-1, m, 5)
    size = (attrs[..., 0] * 2).astype(np.int8)
    material = (attrs[..., 1] * 2).astype(np.int8)
    shape = (attrs[..., 2] * 3).astype(np.int8)
    color = (attrs[..., 3] * 8).astype(np.int8)
    rotation = attrs[..., 4] * 2 * np.pi
    candidates = (u[:, 1 + 5 * m :].reshape(-1, m, tries, 2) * 6 - 3) / zoom  # x, y uniform in (-3, 3) / zoom
    radius = SIZE_RADIUS[size]
    b = np.arange(len(indices))
    xy = np.zeros((len(indices), m, 2))
    ok = np.ones(len(indices), dtype=bool)
    for j in range(m):
        # CLEVR: reject a position closer than MIN_GAP to any earlier object's radius.
        dist = np.linalg.norm(candidates[:, j, :, None, :] - xy[:, None, :j, :], axis=-1)  # (B, T, j)
        gap = dist - radius[:, None, j : j + 1] - radius[:, None, :j]
        free = (gap >= MIN_GAP).all(axis=-1)  # (B, T)
        xy[:, j] = candidates[b, j, free.argmax(axis=1)]
        ok &= free.any(axis=1) | (j >= n)
    real = np.arange(m)[None, :] < n[:, None]
    scenes = dict(n=n, size=size, material=material, shape=shape, color=color, rotation=rotation, xy=xy, real=real)
    return scenes, ok


# Ray casting. Each intersect function takes one ray per pixel, in the
# coordinates of the pixel's object (object centre at 0): origin o and
# direction d as (x, y, z) tuples of (P,) arrays. It returns the ray parameter
# t of the first hit (inf for a miss) and the unit normal there.


def _intersect_sphere(o, d, r):
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - r * r
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    normal = tuple((o[k] + t * d[k]) / r for k in range(3))
    return np.where(disc >= 0, t, np.inf), normal


def _intersect_cylinder(o, d, r):
    """Vertical cylinder of radius r and height 2r; the camera is above its top."""
    a = d[0] * d[0] + d[1] * d[1]
    b = o[0] * d[0] + o[1] * d[1]
    c = o[0] * o[0] + o[1] * o[1] - r * r
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    side = (disc >= 0) & (np.abs(o[2] + t_side * d[2]) <= r)
    t_top = (r - o[2]) / d[2]
    top = (o[0] + t_top * d[0]) ** 2 + (o[1] + t_top * d[1]) ** 2 <= r * r
    t = np.where(top, t_top, np.where(side, t_side, np.inf))
    normal = (
        np.where(top, 0, (o[0] + t_side * d[0]) / r),
        np.where(top, 0, (o[1] + t_side * d[1]) / r),
        top.astype(r.dtype),
    )
    return t, normal


def _intersect_cube(o, d, half, rotation):
    """Cube of half-side ``half`` turned by ``rotation`` about z (slab method)."""
    cos, sin = np.cos(rotation), np.sin(rotation)
    o = (cos * o[0] + sin * o[1], -sin * o[0] + cos * o[1], o[2])  # into the cube's frame
    d = (cos * d[0] + sin * d[1], -sin * d[0] + cos * d[1], d[2])
    t_enter = np.full_like(half, -np.inf)
    t_exit = np.full_like(half, np.inf)
    axis = np.zeros(half.shape, dtype=np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            t1, t2 = (-half - o[k]) / d[k], (half - o[k]) / d[k]
            near = np.minimum(t1, t2)
            axis = np.where(near > t_enter, k, axis)
            t_enter = np.maximum(t_enter, near)
            t_exit = np.minimum(t_exit, np.maximum(t1, t2))
    hit = (t_enter <= t_exit) & (t_exit > 0)
    nx, ny, nz = ((axis == k) * -np.sign(d[k]) for k in range(3))  # the face the ray enters
    normal = (cos * nx - sin * ny, sin * nx + cos * ny, nz)
    return np.where(hit, t_enter, np.inf), normal


def _shade(normal, d, base, metal):
    """Rubber: diffuse. Metal: darker diffuse, an environment reflection and a sharp highlight.

    normal, d: (x, y, z) tuples of (P,) arrays; base (P, 3) RGB in [0, 1]; metal (P,) bool.
    Returns (P, 3) RGB.
    """
    light = LIGHT_DIRECTION.astype(np.float32)
    inv = 1 / np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    view = (-d[0] * inv, -d[1] * inv, -d[2] * inv)
    n_dot_l = np.maximum(normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2], 0)
    n_dot_v = normal[0] * view[0] + normal[1] * view[1] + normal[2] * view[2]
    halfway = tuple(light[k] + view[k] for k in range(3))
    n_dot_h = np.maximum(sum(normal[k] * halfway[k] for k in range(3)), 0)
    n_dot_h /= np.sqrt(sum(h * h for h in halfway))
    reflected_z = 2 * n_dot_v * normal[2] - view[2]  # the sky is brighter than the ground
    environment = 0.5 + 0.5 * np.clip(reflected_z, -1, 1)
    m = metal.astype(np.float32)
    lighting = (0.3 - 0.15 * m) + (0.7 - 0.3 * m) * n_dot_l + 0.55 * m * environment
    highlight = np.where(metal, 0.9 * n_dot_h**60, 0.06 * n_dot_h**8)
    return base * lighting[:, None] + highlight[:, None]


def _to_uint8(rgb):
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _draw_clevr_scenes(scenes, resolution, zoom=1.0):
    """Ray cast every object inside its projected bounding box, then z-buffer.

    The pixels of all objects' boxes form one flat list, so the work is
    proportional to the boxes' area, not to objects x image.
    Returns images (B, H, W, 3) uint8, masks (B, H, W) uint8, visible pixel counts (B, M).
    """
    res = resolution
    _, rays, background = _camera(res, zoom)
    batch, m = scenes["size"].shape
    radius = SIZE_RADIUS[scenes["size"]]
    # CLEVR scales the unit cube by r / sqrt(2) so that it is not much bigger than the sphere.
    half_height = np.where(scenes["shape"] == 0, radius / np.sqrt(2), radius)
    b_idx, j_idx = np.nonzero(scenes["real"])  # one row per real object
    order = np.argsort(scenes["shape"][b_idx, j_idx], kind="stable")  # group the pixels by shape
    b_idx, j_idx = b_idx[order], j_idx[order]
    shape = scenes["shape"][b_idx, j_idx]
    r, h = radius[b_idx, j_idx], half_height[b_idx, j_idx]
    centre = np.concatenate([scenes["xy"][b_idx, j_idx], h[:, None]], axis=-1)  # (O, 3)

    # Projected bounding box of each object's prism [x +- r, y +- r, 0 .. 2h].
    corners = np.stack(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij"), -1).reshape(8, 3)
    extent = np.stack([r, r, h], -1)
    rows, cols = _project(centre[:, None, :] + corners * extent[:, None, :], res, zoom)  # (O, 8)
    r0 = np.clip(np.floor(rows.min(1)), 0, res).astype(np.int64)
    r1 = np.clip(np.ceil(rows.max(1)) + 1, 0, res).astype(np.int64)
    c0 = np.clip(np.floor(cols.min(1)), 0, res).astype(np.int64)
    c1 = np.clip(np.ceil(cols.max(1)) + 1, 0, res).astype(np.int64)
    box_w = c1 - c0
    box_area = (r1 - r0) * box_w
    obj = np.repeat(np.arange(len(b_idx)), box_area)  # (P,) the object of each box pixel
    k = np.arange(len(obj)) - np.repeat(np.cumsum(box_area) - box_area, box_area)
    pixel = (r0[obj] + k // box_w[obj]) * res + c0[obj] + k % box_w[obj]  # index into H*W
    d = tuple(np.ascontiguousarray(rays[pixel, k_]) for k_ in range(3))
    o = tuple((CAMERA_POSITION[k_] - centre[:, k_]).astype(np.float32)[obj] for k_ in range(3))
    r32 = r.astype(np.float32)[obj]

    t = np.empty(len(obj), dtype=np.float32)
    normal = tuple(np.empty(len(obj), dtype=np.float32) for _ in range(3))
    bounds = np.searchsorted(shape[obj], [0, 1, 2, 3])  # pixels are sorted by shape
    rotation = scenes["rotation"][b_idx, j_idx].astype(np.float32)[obj]
    for s in range(3):
        part = slice(bounds[s], bounds[s + 1])
        os_, ds_ = tuple(v[part] for v in o), tuple(v[part] for v in d)
        if s == 0:
            t[part], n_ = _intersect_cube(os_, ds_, r32[part] / np.float32(np.sqrt(2)), rotation[part])
        elif s == 1:
            t[part], n_ = _intersect_sphere(os_, ds_, r32[part])
        else:
            t[part], n_ = _intersect_cylinder(os_, ds_, r32[part])
        for k_ in range(3):
            normal[k_][part] = n_[k_]
    hit = np.isfinite(t)
    image_pixel = b_idx[obj] * (res * res) + pixel  # index into B*H*W

    # Contact shadows on the ground pixels of each box: a soft dark spot pushed
    # away from the light. Boxes overlap, so the factors of a pixel multiply.
    ground = np.nonzero(~hit)[0]
    gd = tuple(v[ground] for v in d)
    tg = -CAMERA_POSITION[2] / gd[2]
    away = -LIGHT_DIRECTION[:2] / np.linalg.norm(LIGHT_DIRECTION[:2])
    go = obj[ground]
    shadow_x = (centre[:, 0] + 0.35 * r * away[0]).astype(np.float32)[go]
    shadow_y = (centre[:, 1] + 0.35 * r * away[1]).astype(np.float32)[go]
    d2 = (CAMERA_POSITION[0] + tg * gd[0] - shadow_x) ** 2 + (CAMERA_POSITION[1] + tg * gd[1] - shadow_y) ** 2
    log_shadow = np.log1p(-0.45 * np.exp(-d2 / (0.45 * r32[ground] ** 2)))
    dark = log_shadow < -0.004  # below half a grey level: skip
    shadow_pixel, log_shadow = image_pixel[ground[dark]], log_shadow[dark]
    order = np.argsort(shadow_pixel, kind="stable")
    shadow_pixel, log_shadow = shadow_pixel[order], log_shadow[order]
    starts = np.flatnonzero(np.diff(shadow_pixel, prepend=-1))
    if len(starts):
        shadow_pixel, log_shadow = shadow_pixel[starts], np.add.reduceat(log_shadow, starts)

    image = np.broadcast_to(_to_uint8(background), (batch, res * res, 3)).reshape(-1, 3).copy()
    image[shadow_pixel] = _to_uint8(background[shadow_pixel % (res * res)] * np.exp(log_shadow)[:, None])

    # Z-buffer: per image pixel, the hit with the smallest t wins.
    hp = np.nonzero(hit)[0]
    key = image_pixel[hp] * 64.0 + t[hp]  # t < 64 for anything in view
    hp = hp[np.argsort(key)]
    first = np.ones(len(hp), dtype=bool)
    first[1:] = image_pixel[hp[1:]] != image_pixel[hp[:-1]]
    hp = hp[first]
    o_hp = obj[hp]
    base = (COLOR_RGB[scenes["color"][b_idx, j_idx]].astype(np.float32) / 255)[o_hp]
    metal = (scenes["material"][b_idx, j_idx] == 1)[o_hp]
    image[image_pixel[hp]] = _to_uint8(_shade(tuple(v[hp] for v in normal), tuple(v[hp] for v in d), base, metal))
    mask = np.zeros(batch * res * res, dtype=np.uint8)
    mask[image_pixel[hp]] = j_idx[o_hp] + 1

    images = image.reshape(batch, res, res, 3)
    masks = mask.reshape(batch, res, res)
    counts = np.bincount(b_idx[o_hp] * m + j_idx[o_hp], minlength=batch * m).reshape(batch, m)
    return images, masks, counts


def draw_clevr(seed, indices, resolution, min_objects, max_objects, zoom=1.0):
    # CLEVR re-renders a scene whose objects are too hidden; scaled to this resolution.
    min_pixels = max(1, round(CLEVR_MIN_PIXELS * resolution * resolution / (480 * 320)))

    def attempt(idx, attempts):
        scenes, placed = _sample_clevr_scenes(seed, idx, attempts, min_objects, max_objects, zoom)
        images, masks, counts = _draw_clevr_scenes(scenes, resolution, zoom)
        visible = ((counts >= min_pixels) | ~scenes["real"]).all(axis=1)
        real = scenes["real"]
        # Labels: z is the size's radius (as CLEVR), padding 0 / -1 (schema).
        coords = np.where(real[..., None], np.concatenate(
            [scenes["xy"], SIZE_RADIUS[scenes["size"]][..., None]], -1), 0).astype(np.float32)
        arrays = {
            "images": images,
            "masks": masks,
            "num_objects": scenes["n"].astype(np.int32),
            "objects/coords": coords,
            "objects/size": np.where(real, scenes["size"], -1).astype(np.int8),
            "objects/material": np.where(real, scenes["material"], -1).astype(np.int8),
            "objects/shape": np.where(real, scenes["shape"], -1).astype(np.int8),
            "objects/color": np.where(real, scenes["color"], -1).astype(np.int8),
        }
        return arrays, placed & visible

    return redraw_until(attempt, indices)

