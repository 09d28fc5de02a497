"""Pictures: the paper's Figure 3 (discovery) and Table 2 / Figure 4 style (set prediction)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from slotref import paper  # noqa: E402

# Slot colours: a qualitative palette of distinct hues (no light/dark pairs of one hue, as tab20 has); each
# pair of colours at least 25 apart in CIELAB (tests/tool/test_viz.py). More slots reuse them in order.
SLOT_PALETTE = np.array([to_rgb(c) for c in (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#ffe119", "#469990",
    "#9a6324", "#800000", "#000075", "#bfef45", "#fabed4", "#808000", "#dcbeff", "#aaffc3")])


def slot_colour(j: int) -> np.ndarray:
    """Slot j's colour (RGB in [0, 1])."""
    return SLOT_PALETTE[j % len(SLOT_PALETTE)]


def describe_object(row: np.ndarray) -> str:
    """A 19-number prediction or target as text: 'large red metal cube (x, y, z)'."""
    xyz = paper.unit_to_coords(row[paper.COORDS])
    size, material, shape, color = (names[int(np.argmax(row[s]))] for _, s, names in paper.ATTRIBUTES)
    return f"{size} {color} {material} {shape} ({xyz[0]:.2f}, {xyz[1]:.2f}, {xyz[2]:.2f})"


def _image(ax, img, title=None):
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


PICTURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpeg", ".jpeg": "jpeg"}


def picture_format(path) -> str:
    """The format a picture at ``path`` is written in, from its suffix; ``ValueError`` (one line) for
    a suffix that names no format matplotlib writes here."""
    suffix = Path(path).suffix.lower()
    if suffix not in PICTURE_FORMATS:
        raise ValueError(f"{path}: unknown picture format {suffix or '(no suffix)'!r}; "
                         f"end the name in one of {', '.join(PICTURE_FORMATS)}")
    return PICTURE_FORMATS[suffix]


def draw_run(path: Path, config, be, params, task, split, num_slots=None, num_iterations=None,
             title: str | None = None):
    """Write a picture of the first images of ``split`` in the format of ``path``'s suffix
    (``picture_format``); ``title`` (the run and step) heads the picture.

    Returns, for set prediction, the matching drawn: (example, object row, slot, distance) (``matching``)."""
    from slotref.io import atomic_path, write_error

    path = Path(path)
    fmt = picture_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    with atomic_path(path) as tmp:  # the old picture stays whole until the new one is on disk
        if config.task == "discovery":
            return _draw_discovery(tmp, config, be, params, task, split, num_slots, num_iterations, title, fmt=fmt)
        return _draw_setpred(tmp, config, be, params, task, split, num_slots, num_iterations, title, fmt=fmt)


def _slot_header(ax, j, title=True):
    """Slot j's frame, and with ``title`` (True: "slot j") its header, in its colour (the colour of the
    mask column and the attention maps)."""
    colour = slot_colour(j)
    ink = "black" if colour @ np.array([0.299, 0.587, 0.114]) > 0.5 else "white"
    if title:
        ax.set_title(f"slot {j + 1}" if title is True else title, fontsize=6.5, color=ink, pad=3,
                     bbox=dict(facecolor=colour, edgecolor="none", boxstyle="round,pad=0.2"))
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2)


def _draw_discovery(path, config, be, params, task, split, num_slots, num_iterations, title=None, fmt="png"):
    out = task.outputs(be, params, split, num_slots, num_iterations, with_recons=True)
    masks, recon = out["masks"], out["recon_combined"]                # (N, K, H, W), (N, H, W, 3)
    recons = out["recons"]                                            # (N, K, H, W, 3)
    attn = out["attention"]                                           # (N, T, N_in, K)
    n, k = masks.shape[:2]
    t = attn.shape[1] if attn is not None else 0
    feature_hw = config.model.feature_resolution()
    cols = 3 + k + t
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.4 * n), squeeze=False)
    for i in range(n):
        _image(axes[i, 0], split.images[i] / 255.0, "image" if i == 0 else None)
        _image(axes[i, 1], (recon[i] + 1) / 2, "recon." if i == 0 else None)
        winner = np.argmax(masks[i], axis=0)
        _image(axes[i, 2], SLOT_PALETTE[winner % len(SLOT_PALETTE)], "mask" if i == 0 else None)
        for j in range(k):
            slot_img = (recons[i, j] + 1) / 2 * masks[i, j][..., None] + (1 - masks[i, j][..., None])
            _image(axes[i, 3 + j], slot_img)
            _slot_header(axes[i, 3 + j], j, title=i == 0)
        for it in range(t):
            mix = (attn[i, it][:, :, None] * SLOT_PALETTE[np.arange(k) % len(SLOT_PALETTE)][None]).sum(1)
            _image(axes[i, 3 + k + it], mix.reshape(*feature_hw, 3), f"attn t={it + 1}" if i == 0 else None)
    head = "Object discovery" + (f": {title}" if title else "")
    fig.suptitle(f"{head}\nimage, reconstruction, mask (each slot's colour), slots (recon. x alpha), "
                 "attention mixed in the slots' colours", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120, format=fmt)
    finally:
        plt.close(fig)


def upsample(grid, size) -> np.ndarray:
    """An attention map on the feature grid (h, w) -> (H, W) at the image's resolution, bilinear with
    each feature cell centred on the patch of pixels it covers (Pillow's resize)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def matching(predictions, targets) -> list[tuple[int, int, int, float]]:
    """(example, object row, slot, distance) of every real object and the prediction matched to it, as
    eval's accuracies and median distance match them (``metrics.matched_objects``: the Hungarian
    algorithm on the 19 numbers); distance between the positions in scene units."""
    from slotref.metrics import matched_objects

    return [(b, i, j, float(np.linalg.norm(paper.COORD_SCALE * (targets[b, i, paper.COORDS] -
                                                                 predictions[b, j, paper.COORDS]))))
            for b, i, j in matched_objects(predictions, targets)]


def _attributes(row) -> list[str]:
    """The four attributes of a 19-number row, in the order one says them: size, colour, material, shape."""
    size, material, shape, color = (names[int(np.argmax(row[s]))] for _, s, names in paper.ATTRIBUTES)
    return [size, color, material, shape]


def _caption(pred, true=None, number=None, d=None) -> str:
    """Under a slot: the object it was matched with and how far, what it predicts, and what it got wrong."""
    lines = [" ".join(_attributes(pred))]
    if true is None:
        return "not matched\n" + lines[0]
    wrong = [t for p, t in zip(_attributes(pred), _attributes(true)) if p != t]
    lines.insert(0, f"object {number}, d = {d:.2f}")
    lines.append("true: " + " ".join(wrong) if wrong else "attributes right")
    return "\n".join(lines)


def _scene_from_above(ax, preds, targets, pairs, order):
    """The true objects (numbered discs in their colours) and each present prediction (a cross in its
    slot's colour) at their (x, y) positions, a line from each prediction to the object it was matched with."""
    real = np.flatnonzero(targets[:, paper.PRESENCE] > 0.5)
    true_xy = paper.unit_to_coords(targets[:, :2])
    pred_xy = paper.unit_to_coords(preds[:, :2])
    colours = _clevr_colours()
    for i, j, _ in pairs:
        present = preds[j, paper.PRESENCE] > 0.5
        ax.plot(*zip(pred_xy[j], true_xy[i]), color=slot_colour(j), lw=1.2,
                ls="-" if present else ":", zorder=1)
    for n, i in enumerate(real):
        colour = colours[int(np.argmax(targets[i, paper.COLOR]))]
        ax.scatter(*true_xy[i], s=90, color=colour, edgecolors="black", linewidths=0.6, zorder=2)
        ax.text(*true_xy[i], str(n + 1), fontsize=5.5, ha="center", va="center", zorder=3,
                color="black" if colour @ np.array([0.299, 0.587, 0.114]) > 0.5 else "white")
    for j in order:
        present = preds[j, paper.PRESENCE] > 0.5
        if present or j in [m for _, m, _ in pairs]:
            ax.scatter(*pred_xy[j], s=40 if present else 22, marker="x", color=slot_colour(j),
                       linewidths=1.5 if present else 1.0, alpha=1 if present else 0.6, zorder=4)
    drawn = [j for _, j, _ in pairs] + [j for j in order if preds[j, paper.PRESENCE] > 0.5]
    shown = np.concatenate([true_xy[real], pred_xy[drawn]])
    centre = (shown.max(0) + shown.min(0)) / 2 if len(shown) else np.zeros(2)
    half = max(1.0, (shown.max(0) - shown.min(0)).max() / 2 + 0.6) if len(shown) else 3.0
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal")
    ax.locator_params(nbins=4)
    ax.tick_params(labelsize=5, length=2, pad=1)


def _clevr_colours() -> np.ndarray:
    from slotref.data.clevr_shapes import COLOR_RGB

    return COLOR_RGB / 255.0


def _draw_setpred(path, config, be, params, task, split, num_slots, num_iterations, title=None, fmt="png"):
    """Per example: the image, the scene from above with the matching, and each slot's attention (at the
    last iteration) over the image; slots ordered by presence. Returns the pairs drawn (``matching``)."""
    preds, attn = task.predict(be, params, split, num_slots, num_iterations)   # (N, K, 19), (N, N_in, K)
    n, k = preds.shape[:2]
    h, w = split.images.shape[1:3]
    feature_hw = config.model.feature_resolution()
    pairs = matching(preds, split.targets)
    width = 1.25 * (k + 2) + 0.25                                      # inches: a column per picture
    head = textwrap.wrap(("Set prediction" + (f": {title}" if title else "")), int(width * 15)) + textwrap.wrap(
        "Each slot's attention over the image (last iteration; brightest: the example's highest attention), "
        "slots in order of presence p; under each, the object it was matched with (as eval's accuracies "
        "match) and d, their distance in scene units. From above: the true objects (numbered), the predicted "
        "positions (crosses in the slots' colours) and the matching (lines; dotted for p < 0.5).",
        int(width * 17))
    top, row = 0.16 * len(head) + 0.15, 1.85
    fig = plt.figure(figsize=(width, top + row * n))
    grid = fig.add_gridspec(n, k + 2, wspace=0.1, hspace=0.55, left=0.1 / width, right=1 - 0.05 / width,
                            top=1 - (top + 0.2) / (top + row * n), bottom=0.42 / (top + row * n))
    for b in range(n):
        order = [int(j) for j in np.argsort(-preds[b, :, paper.PRESENCE], kind="stable")]
        mine = [(i, j, d) for e, i, j, d in pairs if e == b]
        _image(fig.add_subplot(grid[b, 0]), split.images[b] / 255.0, f"example {b + 1}")
        above = fig.add_subplot(grid[b, 1])
        _scene_from_above(above, preds[b], split.targets[b], mine, order)
        above.set_title("from above (x, y)", fontsize=7)
        matched = {j: (i, d) for i, j, d in mine}
        real = np.flatnonzero(split.targets[b, :, paper.PRESENCE] > 0.5)
        number = {int(i): m + 1 for m, i in enumerate(real)}          # as numbered in the scene from above
        for col, j in enumerate(order):
            ax = fig.add_subplot(grid[b, 2 + col])
            if attn is None:                                            # the Slot MLP baseline: no attention
                a = np.ones((h, w), np.float32)
            else:
                a = upsample(attn[b, :, j].reshape(feature_hw), (h, w)) / attn[b].max()  # (H, W) in [0, 1]
            _image(ax, split.images[b] / 255.0 * (0.12 + 0.88 * a[..., None]))
            _slot_header(ax, j, f"slot {j + 1}  p = {preds[b, j, paper.PRESENCE]:.2f}")
            i, d = matched.get(j, (None, None))
            true = None if i is None else split.targets[b, i]
            ax.set_xlabel(_caption(preds[b, j], true, number.get(i), d), fontsize=5.5,
                          labelpad=2, linespacing=1.15)
    fig.text(0.5, 1 - 0.08 / (top + row * n), "\n".join(head), fontsize=7.5, ha="center", va="top")
    try:
        fig.savefig(path, dpi=150, format=fmt)
    finally:
        plt.close(fig)
    return [(e, i, j, d) for e, i, j, d in pairs]


def draw_binding(path: Path, records: list[dict], title: str | None = None):
    """The binding diagnostics of a run over its training steps (``records``: its metrics.jsonl), in one
    picture: attention entropy, slot cosine and slot change, a line per iteration, each with the level of
    the warning (``training.binding.BINDING_LEVELS``), the gradient norms through Slot Attention and the
    encoder, and a dotted line at each redraw of the weights. ``ValueError`` where the log holds neither."""
    from slotref.io import atomic_path, write_error
    from slotref.training.binding import BINDING_LEVELS
    from slotref.training.logs import GRAD_COLUMNS

    evals = [(r["step"], r["eval"]["binding"]) for r in records if isinstance(r.get("eval"), dict)
             and isinstance(r["eval"].get("binding"), dict)]
    grads = {key: [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
             for key in GRAD_COLUMNS}
    if not evals and not any(grads.values()):
        raise ValueError("metrics.jsonl holds no binding diagnostics or gradient norms (a run of the Slot MLP, "
                         "or one trained by a slotref that did not log them)")
    fmt = picture_format(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(Path(path).parent, err) from None
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4), squeeze=False)
    labels = {"entropy": "attention entropy / log K", "slot_cosine": "mean slot cosine",
              "slot_change": "slot change ||s_t - s_(t-1)|| / ||s_(t-1)||"}
    iterations = max((len(b.get("entropy", [])) for _, b in evals), default=0)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(iterations, 1)))
    for ax, key in zip(axes.flat, labels):
        for t in range(iterations):
            points = [(s, b[key][t]) for s, b in evals if len(b.get(key, [])) > t]
            ax.plot(*zip(*points), marker="o", ms=3, color=colours[t], label=f"iteration {t + 1}")
        level = BINDING_LEVELS[key][0]
        ax.axhline(level, color="grey", ls="--", lw=1, label=f"warning level {level} (last iteration)")
        ax.set(xlabel="training step", ylabel=labels[key], title=BINDING_LEVELS[key][1].split(" at ")[0])
        ax.set_ylim(*((-0.02, 1.02) if key != "slot_change" else (0, None)))
        ax.legend(fontsize=6.5)
    ax = axes[1, 1]
    for key, colour in zip(GRAD_COLUMNS, ("#e6194b", "#4363d8")):
        if grads[key]:
            ax.plot(*zip(*grads[key]), lw=1, color=colour, label=key.replace("grad_norm_", "").replace("_", " "))
    if any(grads.values()):
        ax.set_yscale("log")
        ax.legend(fontsize=6.5)
    ax.set(xlabel="training step", ylabel="L2 norm of the loss's gradient", title="gradient norm")
    for ax in axes.flat:
        for step in [r["step"] for r in records if "redraw" in r]:  # new initial weights (training.restart)
            ax.axvline(step, color="black", ls=":", lw=1)
        ax.tick_params(labelsize=7)
        ax.title.set_fontsize(9)
        ax.xaxis.label.set_fontsize(8), ax.yaxis.label.set_fontsize(8)
    fig.suptitle("Binding" + (f": {title}" if title else "") + "\nat each evaluation, on its first validation "
                 "scenes (slotref docs binding)", fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        try:
            fig.savefig(tmp, dpi=120, format=fmt)
        finally:
            plt.close(fig)
