"""Training: one loop for both tasks; a task supplies the model, loss and metric.

- ``config``: ``TrainConfig``, the checks every config goes through, and the errors (``ConfigError``,
  ``TrainingError``, ``DivergenceError``);
- ``presets``: the 'cpu' and 'paper' presets, ``fit_to_file``, ``scale_budget``;
- ``resolve``: a run's configuration decided once (``resolve_config``), the resume policy, the ranks to start;
- ``curriculum``: training stages (``--curriculum``);
- ``data``: the run's file, splits, batch order, preprocessing, slot noise;
- ``tasks``: set prediction and object discovery;
- ``setpred_loss``: the set loss with weighted coordinates, built on ``slotref.losses``;
- ``average``: the parameter average (``--ema``);
- ``diagnostics``: collapse diagnostics and the position readout, beside the paper's metrics;
- ``checkpoint``: HDF5 checkpoints, written atomically; ``load_model``/``save_model``;
- ``launch``: starting the ranks (``--procs``, mpiexec) and the world of this process;
- ``collectives``: what the ranks exchange (batch slices, the gradient's allreduce);
- ``loop``: ``train``; ``restart``: new initial weights for slots that have not bound;
- ``evaluation``: ``load_run`` and ``evaluate_run`` (``slotref eval``).
"""

from slotref.training.config import DivergenceError, TrainConfig, TrainingError
from slotref.training.data import load_file, resolve_dataset
from slotref.training.evaluation import load_run
from slotref.training.loop import train
from slotref.training.presets import fit_to_file, preset_config
from slotref.training.tasks import threshold_name

__all__ = ["DivergenceError", "TrainConfig", "TrainingError", "fit_to_file", "load_file", "load_run",
           "preset_config", "resolve_dataset", "threshold_name", "train"]
