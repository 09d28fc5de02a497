"""Pictures: the paper's Figure 3 (discovery) and Table 2 / Figure 4 style (set prediction)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slotref import paper  # noqa: E402

# Distinct colours for slot masks.
SLOT_PALETTE = np.array(plt.get_cmap("tab20").colors)


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


def draw_run(path: Path, config, be, params, task, split, num_slots=None, num_iterations=None,
             title: str | None = None) -> None:
    """Write a PNG for the first images of ``split``; ``title`` (the run and step) heads the picture."""
    from slotref.io import atomic_path, write_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    with atomic_path(path) as tmp:  # the old picture stays whole until the new one is on disk
        if config.task == "discovery":
            _draw_discovery(tmp, config, be, params, task, split, num_slots, num_iterations, title)
        else:
            _draw_setpred(tmp, config, be, params, task, split, num_slots, num_iterations, title)


def _slot_header(ax, j, title=True):
    """Slot j's frame, and with ``title`` its column header, in its mask colour (the colour of the
    mask column and the attention maps)."""
    colour = SLOT_PALETTE[j % len(SLOT_PALETTE)]
    ink = "black" if colour @ np.array([0.299, 0.587, 0.114]) > 0.5 else "white"
    if title:
        ax.set_title(f"slot {j + 1}", fontsize=7, color=ink,
                     bbox=dict(facecolor=colour, edgecolor="none", boxstyle="round,pad=0.2"))
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2)


def _draw_discovery(path, config, be, params, task, split, num_slots, num_iterations, title=None):
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
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)


def _draw_setpred(path, config, be, params, task, split, num_slots, num_iterations, title=None):
    from slotref.models import set_prediction
    from slotref.backend import to_host
    from slotref.training.data import eval_noise, preprocess

    n = len(split)
    k = num_slots or config.model.num_slots
    images = preprocess(be, split.images)
    preds, attn = set_prediction(params, images, eval_noise(be, config, n, k, 0), config.model,
                                 num_iterations or config.test_iterations, return_attention=True)
    preds, attn = to_host(preds), to_host(attn)                       # (N, K, 19), (N, T, N_in, K)
    t = attn.shape[1]
    feature_hw = config.model.feature_resolution()
    # Per example: a header row (slot number and presence) above T rows of attention maps.
    heights = ([0.45] + [1.0] * t) * n
    width = 1.4 + 1.0 * k + 3.6 + 0.5
    height = 1.0 * sum(heights) + 0.9
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(len(heights), 3 + k, height_ratios=heights,
                            width_ratios=[1.3] + [1] * k + [3.4, 0.12], wspace=0.12, hspace=0.08,
                            left=0.02, right=0.93, top=1 - 0.75 / height, bottom=0.2 / height)
    shown = None
    for i in range(n):
        top = i * (t + 1)
        order = np.argsort(-preds[i, :, paper.PRESENCE])
        ax = fig.add_subplot(grid[top + 1:top + 1 + t, 0])
        _image(ax, split.images[i] / 255.0)
        ax.set_ylabel(f"example {i + 1}", fontsize=7)
        for col, j in enumerate(order):
            head = fig.add_subplot(grid[top, 1 + col])
            head.axis("off")
            head.text(0.5, 0.0, f"slot {j + 1}, p={preds[i, j, paper.PRESENCE]:.2f}", fontsize=6.5,
                      ha="center", va="bottom")
            for it in range(t):
                ax = fig.add_subplot(grid[top + 1 + it, 1 + col])
                shown = ax.imshow(attn[i, it, :, j].reshape(feature_hw), cmap="magma", vmin=0, vmax=1,
                                  interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(f"t={it + 1}", fontsize=6.5)
        ax = fig.add_subplot(grid[top + 1:top + 1 + t, 1 + k])
        ax.axis("off")
        real = split.targets[i][split.targets[i][:, paper.PRESENCE] > 0.5]
        predicted = [describe_object(preds[i, j]) for j in order if preds[i, j, paper.PRESENCE] > 0.5]
        lines = ["predicted (p > 0.5):"] + (predicted or ["  (none)"])
        lines += ["", "true:"] + [describe_object(r) for r in real]
        ax.text(0.02, 1, "\n".join(lines), fontsize=6, va="top", family="monospace")
    cax = fig.add_subplot(grid[1:1 + t, 2 + k])
    bar = fig.colorbar(shown, cax=cax)
    bar.set_label("attention (share of the input location)", fontsize=6.5)
    bar.ax.tick_params(labelsize=6)
    head = "Set prediction" + (f": {title}" if title else "")
    fig.suptitle(f"{head}\nattention of each slot (columns, most present first) at each iteration t (rows)",
                 fontsize=8, y=1 - 0.1 / height, va="top")
    try:
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)
