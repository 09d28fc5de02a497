"""What an experiment is made of: configurations to train, the probes that evaluate them, the tables
their numbers fill, and the options of a command line (``plans`` holds the experiments themselves).
This module imports no array library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from slotref.training.config import TrainConfig

TEST_ITERATIONS = (3, 4, 5, 6, 7)   # Figures 2 (right) and 5 (centre): trained with T = 3
OBJECT_COUNTS = (6, 7, 8, 9, 10)    # Figure 5 (right): exactly N objects, K = N slots


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (unknown configuration, a run directory of another run); one line."""


@dataclass(frozen=True)
class EvalData:
    """A test-only file of built-in scenes at the run's resolution, ``eval_size`` of them."""

    generator: str
    min_objects: int | None = None     # None: the generator's default
    max_objects: int | None = None


@dataclass(frozen=True)
class Probe:
    """One evaluation of a trained run and where its numbers go.

    ``columns`` maps a table column to a metric of ``Task.evaluate`` (a
    fraction; tables hold percentages). ``data`` None is the run's held-out
    validation split; ``num_slots``/``num_iterations`` None are K/T as trained.
    """

    table: str
    row: str
    columns: dict[str, str]
    data: EvalData | None = None
    num_slots: int | None = None
    num_iterations: int | None = None


@dataclass(frozen=True)
class Configuration:
    """One trained configuration of an experiment (a row, or part of one, of its tables)."""

    name: str                                            # the run directories: <name>-seed<k>
    task: str                                            # setpred | discovery
    dataset: str                                         # a built-in generator
    transform: Callable[[TrainConfig], TrainConfig]      # applied to the preset
    probes: tuple[Probe, ...]
    default: bool = True                                 # run without --config naming it


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    row_header: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    paper: dict = field(default_factory=dict)            # (row, column) -> (mean, std)
    note: str = ""


@dataclass(frozen=True)
class Options:
    """The knobs of a command line, as the experiment plans see them."""

    preset: str = "cpu"
    steps: int | None = None                             # None: the preset's
    seeds: int = 3
    device: str = "cpu"
    tasks: tuple[str, ...] = ("setpred", "discovery")
    dataset: str | None = None                           # discovery dataset (iterations, ablations; table1 filter)
    test_iterations: tuple[int, ...] = TEST_ITERATIONS
    object_counts: tuple[int, ...] = OBJECT_COUNTS
    overrides: Callable[[TrainConfig], TrainConfig] | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    paper: str
    plan: Callable[[Options], tuple[list[Configuration], list[Table]]]
