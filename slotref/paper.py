"""The paper's numbers in one place (Locatello et al. 2020, appendix E and the results tables).

Everything else imports from here: the architectures (Tables 4-10), the
training hyperparameters (Table 11), the 19-number set-prediction target
layout and the CLEVR vocabulary it encodes, the AP thresholds (E.9), and the
results the paper reports, which the tables of this package print beside
their own numbers. Plain Python data: importing it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------
# Table 11: hyperparameters.

# (a) Shared.
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8
LEARNING_RATE = 4e-4
DECAY_RATE = 0.5                 # lr * DECAY_RATE ** (step / decay_steps), after a linear warm-up
SLOT_SIZE = 64
ATTENTION_EPSILON = 1e-8         # Algorithm 1, line 8


@dataclass(frozen=True)
class TaskHyperparameters:
    """Table 11 (b) and (c): the schedule and budget of one task."""

    warmup_steps: int
    decay_steps: int
    batch_size: int
    steps: int


HYPERPARAMETERS = {
    "discovery": TaskHyperparameters(warmup_steps=10_000, decay_steps=100_000, batch_size=64, steps=500_000),
    "setpred": TaskHyperparameters(warmup_steps=1_000, decay_steps=50_000, batch_size=512, steps=150_000),
}

# --------------------------------------------------------------------------
# Tables 4-10: architectures.

CONV_KERNEL = 5                  # Tables 4-7: 5x5 convolutions (the decoders end with a 3x3)
SLOT_MLP_RESIZE = 16             # Tables 9, 10: images resized to 16x16 before the Slot MLP


@dataclass(frozen=True)
class Architecture:
    """One row of the architecture tables: encoder (Table 4 or 5), slots, decoder (Table 6 or 7)."""

    resolution: int
    encoder_channels: int        # also the per-location MLP's width (E.1)
    encoder_strides: tuple[int, ...]
    num_slots: int
    decoder: str | None          # "clevr" (Table 6), "full" (Table 7), None: the property head (Table 8)
    decoder_channels: int = 64


# Set prediction on CLEVR10: Table 4 with stride 2 on the layers marked *, Table 8's head (64 hidden units).
SETPRED_ARCHITECTURE = Architecture(resolution=128, encoder_channels=64, encoder_strides=(1, 2, 2, 1),
                                    num_slots=10, decoder=None)
SETPRED_HEAD_HIDDEN = 64

# Object discovery: Tables 4 and 6 on CLEVR6, Tables 5 and 7 on Tetrominoes and Multi-dSprites.
DISCOVERY_ARCHITECTURES = {
    "tetrominoes": Architecture(resolution=35, encoder_channels=32, encoder_strides=(1, 1, 1, 1), num_slots=4,
                                decoder="full", decoder_channels=32),
    "multi-dsprites": Architecture(resolution=64, encoder_channels=32, encoder_strides=(1, 1, 1, 1), num_slots=6,
                                   decoder="full", decoder_channels=32),
    "clevr6-shapes": Architecture(resolution=128, encoder_channels=64, encoder_strides=(1, 1, 1, 1), num_slots=7,
                                  decoder="clevr", decoder_channels=64),
}
DISCOVERY_DATASETS = tuple(DISCOVERY_ARCHITECTURES)


def paper_num_slots(dataset: str) -> int:
    """K the paper uses on a dataset: its discovery architecture's (Tetrominoes 4, Multi-dSprites 6,
    CLEVR6 7), else set prediction's on CLEVR10 (10)."""
    arch = discovery_architecture(dataset)
    return (DISCOVERY_ARCHITECTURES[arch] if arch else SETPRED_ARCHITECTURE).num_slots

# Tables 9 and 10: hidden widths of the Slot MLP baseline (then slot size x num slots).
SLOT_MLP_HIDDEN = {"setpred": (512, 512), "discovery": (512, 1024, 1024)}
SLOT_MLP_PER_SLOT_HIDDEN = 64    # Table 10's per-slot MLP


def discovery_architecture(name: str) -> str | None:
    """The discovery architecture a dataset calls for, from its name (a generator, a file's ``name``
    attribute or a DeepMind dataset name), or None for a name none of them fits."""
    name = name.lower()
    if "tetromino" in name:
        return "tetrominoes"
    if "dsprites" in name:
        return "multi-dsprites"
    if "clevr6" in name or "clevr_with_masks" in name:
        return "clevr6-shapes"
    return None


# --------------------------------------------------------------------------
# Set prediction targets (section 4.2, E.4): 19 numbers per object.

CLEVR_COLORS = ("gray", "blue", "brown", "yellow", "red", "green", "purple", "cyan")
CLEVR_MATERIALS = ("rubber", "metal")
CLEVR_SHAPES = ("cube", "sphere", "cylinder")
CLEVR_SIZES = ("small", "large")

COORDS = slice(0, 3)             # [x, y, z] mapped from COORD_RANGE to [0, 1]
SIZE = slice(3, 5)
MATERIAL = slice(5, 7)
SHAPE = slice(7, 10)
COLOR = slice(10, 18)
PRESENCE = 18                    # 1 for a real object, 0 for padding
NUM_PROPERTIES = 19
COORD_RANGE = (-3.0, 3.0)
COORD_SCALE = COORD_RANGE[1] - COORD_RANGE[0]   # E.9 thresholds are in the original units

# The one-hot attributes in target order: (name, its slice, its values).
ATTRIBUTES = (("size", SIZE, CLEVR_SIZES), ("material", MATERIAL, CLEVR_MATERIALS),
              ("shape", SHAPE, CLEVR_SHAPES), ("color", COLOR, CLEVR_COLORS))
ATTRIBUTE_SLICES = tuple(s for _, s, _ in ATTRIBUTES)


def coords_to_unit(coords):
    """Scene coordinates in COORD_RANGE -> [0, 1], as the targets hold them."""
    return (coords - COORD_RANGE[0]) / COORD_SCALE


def unit_to_coords(unit):
    """Target coordinates in [0, 1] -> scene coordinates."""
    return unit * COORD_SCALE + COORD_RANGE[0]


# E.9 / Figure 5 / Table 3: AP_inf, AP_1, AP_0.5, AP_0.25, AP_0.125 (distance thresholds, scene units).
AP_THRESHOLDS = (float("inf"), 1.0, 0.5, 0.25, 0.125)

# --------------------------------------------------------------------------
# Reported results (in %, mean and std over 5 seeds).

# Table 1: FG-ARI of object discovery. Slot Attention's Tetrominoes number
# excludes one outlier seed of five ("stripes", section 4.1).
PAPER_TABLE1 = {
    ("Slot Attention", "clevr6-shapes"): (98.8, 0.3),
    ("Slot Attention", "multi-dsprites"): (91.3, 0.3),
    ("Slot Attention", "tetrominoes"): (99.5, 0.2),
    ("Slot MLP", "clevr6-shapes"): (60.4, 6.6),
    ("Slot MLP", "multi-dsprites"): (60.3, 1.8),
    ("Slot MLP", "tetrominoes"): (25.1, 34.3),
}
# Table 3: AP of set prediction on CLEVR10 (K = 10, T = 3).
PAPER_TABLE3 = {
    "Slot Attention": {"AP_inf": (94.3, 1.1), "AP_1": (86.7, 1.4), "AP_0.5": (56.0, 3.6),
                       "AP_0.25": (10.8, 1.7), "AP_0.125": (0.9, 0.2)},
    "Slot MLP": {"AP_inf": (19.8, 1.6), "AP_1": (1.4, 0.3), "AP_0.5": (0.3, 0.2),
                 "AP_0.25": (0.0, 0.0), "AP_0.125": (0.0, 0.0)},
}
# Appendix B, "Soft k-means": FG-ARI on CLEVR6.
PAPER_SOFT_KMEANS_CLEVR6 = (75.5, 3.8)


def paper_ap(threshold: str) -> tuple[float, float]:
    """Table 3: Slot Attention's AP at ``threshold`` ('inf', '1', '0.5', ...) on CLEVR10."""
    return PAPER_TABLE3["Slot Attention"][f"AP_{threshold}"]


def paper_fg_ari(dataset: str) -> tuple[float, float] | None:
    """Table 1: Slot Attention's FG-ARI on ``dataset``, or None where the paper gives none."""
    return PAPER_TABLE1.get(("Slot Attention", dataset))
