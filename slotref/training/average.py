"""The parameter average (``TrainConfig.ema``, ``train --ema D``): a training choice beyond the paper."""

from __future__ import annotations

from dataclasses import dataclass

from slotref.flat import FlatTree


@dataclass(frozen=True)
class ParameterAverage:
    """An exponential moving average of the parameters (Polyak averaging), a training choice beyond the paper.

    After each step ``average <- decay * average + (1 - decay) * params``, so
    the average weighs the last ~1 / (1 - decay) steps; it starts as a copy
    of the parameters (``start``). Training goes on from the parameters;
    evaluation reads the average, which smooths the step-to-step noise of
    the last steps (``docs/curriculum.md``).
    """

    decay: float

    def __post_init__(self):
        if not 0 < self.decay < 1:
            raise ValueError(f"the parameter average's decay must be in (0, 1), got {self.decay!r}")

    @staticmethod
    def start(params: FlatTree) -> FlatTree:
        """A new average: a copy of ``params`` in its own flat buffers."""
        return params.layout.copy_in(params.tree, params.xp)

    def update(self, average: FlatTree, params: FlatTree) -> FlatTree:
        """One step, in place: ``average += (1 - decay) * (params - average)``, buffer by buffer."""
        for dtype, a in average.buffers.items():
            a += (1 - self.decay) * (params.buffers[dtype] - a)
        return average
