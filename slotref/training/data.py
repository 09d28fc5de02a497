"""A run's data: the HDF5 file (a user's, or built-in data made once), its
train/validation split, the order of the examples, and what a step feeds the
model (images in [-1, 1] on the device, slot noise).

The data order and the slot noise of step s depend only on (seed, s), so a
resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slotref import backend
from slotref.backend import host_rng
from slotref.slot_attention import slot_noise
from slotref.training.config import TrainConfig, TrainingError

TRAIN_NOISE_STREAM = 2     # be.rng(seed, TRAIN_NOISE_STREAM, step): the slot noise of training step ``step``
EVAL_NOISE_STREAM = 999_999  # the slot noise of evaluation: fixed, independent of the step
STAGE_ORDER_STREAM = 7     # host_rng key of the batch orders of curriculum stages that draw from a subset

def resolve_dataset(config: TrainConfig, create: bool = True, progress: bool = True) -> Path:
    """The HDF5 file of the run: the user's file, or the built-in data made once and cached.

    ``create=False`` (evaluating a stored run) never makes data: the cached file must be there.
    ``progress``: a progress bar while the built-in data is made.
    """
    from slotref.data import hdf5

    if hdf5.is_dataset_path(config.dataset):
        path = Path(config.dataset)
        if create and not path.exists():
            raise TrainingError(f"dataset file {path} does not exist")
        return path
    opts = {k: v for k, v in (("min_objects", config.data_min_objects),
                              ("max_objects", config.data_max_objects)) if v is not None}
    suffix = "".join(f"-{k[:3]}{v}" for k, v in sorted(opts.items()))
    if config.data_zoom != 1.0:
        opts["zoom"] = config.data_zoom
        suffix += f"-zoom{config.data_zoom:g}"
    path = Path(config.data_dir) / f"{config.dataset}-{config.data_resolution}px-n{config.data_size}{suffix}-s{config.seed}.h5"
    if not create:
        if not path.exists():
            raise TrainingError(f"{path}: the run's built-in data is not there (evaluation never generates "
                                "data); pass --dataset FILE, or make it with `train` or `data make`")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(hdf5.ensure_dataset(config.dataset, str(path), config.data_size, config.seed,
                                    resolution=config.data_resolution, progress=progress, **opts))


@dataclass
class Split:
    images: np.ndarray                 # uint8 (N, H, W, 3)
    targets: np.ndarray | None         # float32 (N, M, 19), set prediction
    masks: np.ndarray | None           # uint8 (N, H, W), discovery evaluation

    def __len__(self):
        return len(self.images)

    def take(self, idx):
        return Split(self.images[idx], None if self.targets is None else self.targets[idx],
                     None if self.masks is None else self.masks[idx])


def load_file(path: Path, config: TrainConfig, any_object_count: bool = False) -> tuple[Split, str]:
    """All examples of an HDF5 file as the task needs them, and the file's fingerprint.

    Training needs every scene to fit ``max_objects`` target rows; evaluation
    (``any_object_count``) pads the targets to the file's largest scene instead.
    """
    from slotref.data import hdf5

    ds = hdf5.load_dataset(str(path), task=config.task)
    h, w = ds.images.shape[1:3]
    if (h, w) != tuple(config.model.resolution):
        raise TrainingError(f"{path}: images are {h}x{w} but the model expects "
                            f"{config.model.resolution[0]}x{config.model.resolution[1]} (use a file of that size)")
    targets = None
    if config.task == "setpred":
        if ds.objects is None:
            raise TrainingError(f"{path}: has no per-object properties (objects/*), needed for set prediction")
        max_objects = config.max_objects
        if any_object_count:
            max_objects = max(max_objects, int(np.max(ds.num_objects)))
        keep = np.asarray(ds.num_objects) <= max_objects
        if not keep.all():
            raise TrainingError(f"{path}: {int((~keep).sum())} scenes have more than max_objects="
                                f"{config.max_objects} objects")
        targets = hdf5.set_prediction_targets(ds.objects, ds.num_objects, max_objects)
    elif ds.masks is None:
        raise TrainingError(f"{path}: has no instance masks, needed to evaluate object discovery (FG-ARI)")
    return Split(ds.images, targets, ds.masks), ds.fingerprint


def load_splits(path: Path, config: TrainConfig) -> tuple[Split, Split, str]:
    """(train, validation, fingerprint): the first ``eval_size`` examples are held out."""
    full, fingerprint = load_file(path, config)
    n_val = min(config.eval_size, len(full) // 10)
    if len(full) - n_val < config.batch_size:
        raise TrainingError(f"{path}: {len(full)} examples leave fewer than one batch of {config.batch_size} "
                            f"after holding out {n_val}")
    return full.take(slice(n_val, None)), full.take(slice(0, n_val)), fingerprint


class BatchOrder:
    """Example indices of step s: epoch-wise permutations seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:  # keep one epoch's permutation at a time
            self._perms = {epoch: host_rng(self.seed, 1, epoch).permutation(self.n)}
        return self._perms[epoch]

    def __call__(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return np.concatenate([self._perm(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])


def preprocess(be: backend.Backend, images_uint8: np.ndarray):
    """uint8 NHWC on the host -> policy-dtype NHWC in [-1, 1] on the device (as the official code)."""
    from slotref.data.hdf5 import images_to_float

    return images_to_float(images_uint8, be.dtype, be.xp)


# --------------------------------------------------------------------------


def train_noise(be: backend.Backend, config: TrainConfig, step: int, num_slots: int | None = None):
    """The slot noise (B, K, D) of training step ``step`` (``num_slots``: K of a curriculum's stage,
    default the run's)."""
    return slot_noise(be.rng(config.seed, TRAIN_NOISE_STREAM, step), config.batch_size,
                      num_slots or config.model.num_slots, config.model.slot_attention.slot_size, be.dtype)


def eval_noise(be: backend.Backend, config: TrainConfig, batch: int, num_slots: int, start: int):
    """The slot noise (batch, num_slots, D) of evaluating the examples from ``start`` on."""
    return slot_noise(be.rng(config.seed, EVAL_NOISE_STREAM, start), batch, num_slots,
                      config.model.slot_attention.slot_size, be.dtype)


def num_objects(targets: np.ndarray | None) -> np.ndarray | None:
    """Objects per scene from set prediction targets (the last number of a row: 1 for a real object)."""
    return None if targets is None else (np.asarray(targets)[..., -1] > 0.5).sum(axis=1)


class StageBatchOrder:
    """Example indices of step s. A stage that draws from every scene uses the run's plain
    order (a function of (seed, s)); a stage that draws from a subset permutes the subset
    epoch by epoch, seeded by (seed, stage, epoch), counting steps from the stage's start."""

    def __init__(self, curriculum, plain_order, num_objects, batch_size: int, seed: int):
        self.curriculum, self.plain_order, self.batch_size, self.seed = curriculum, plain_order, batch_size, seed
        self.subsets: dict[int, np.ndarray | None] = {}
        for s in curriculum.stages:
            if s.max_objects is None:
                self.subsets[s.index] = None
                continue
            n = np.asarray(num_objects)
            keep = np.flatnonzero((n >= (s.min_objects or 1)) & (n <= s.max_objects))
            if len(keep) < batch_size:
                raise ValueError(f"curriculum stage {s.describe()!r}: only {len(keep)} training scenes have "
                                 f"that many objects, fewer than one batch of {batch_size}")
            self.subsets[s.index] = None if len(keep) == len(n) else keep
        self._perm_key, self._perm = None, None

    def _permutation(self, stage: int, epoch: int, n: int) -> np.ndarray:
        if self._perm_key != (stage, epoch):  # one permutation at a time
            self._perm_key = (stage, epoch)
            self._perm = host_rng(self.seed, STAGE_ORDER_STREAM, stage, epoch).permutation(n)
        return self._perm

    def __call__(self, step: int) -> np.ndarray:
        stage = self.curriculum.stage_at(step)
        subset = self.subsets[stage.index]
        if subset is None:
            return self.plain_order(step)
        positions = (step - stage.start) * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = positions // len(subset), positions % len(subset)
        return np.concatenate([subset[self._permutation(stage.index, int(e), len(subset))[offsets[epochs == e]]]
                               for e in np.unique(epochs)])
