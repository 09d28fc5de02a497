"""A run's logs, in formats any tool reads.

- ``metrics.jsonl``: one JSON object per line (training records and evaluations; ``eval --curve`` reads it);
- ``train.csv``: step, loss, lr, images_per_s, time (seconds since the epoch), elapsed_s (seconds since
  this start of training: a resumed run counts again from 0) and the gradient norms through Slot Attention
  and the encoder (mean over the steps since the previous row; ``training.binding.GradientNorms``), every
  ``log_every`` steps;
- ``eval.csv``: step, time and every scalar metric of each evaluation (lists flattened as name_1, name_2, ...),
  and the binding diagnostics of the last iteration (``binding_entropy``, ``binding_slot_cosine``,
  ``binding_slot_change``; metrics.jsonl has every iteration's under ``binding``, docs/binding.md);
- with ``tensorboard=True``: TensorBoard event files in the run directory, written with tensorboardX
  (``pip install "slotref[tensorboard]"``): the scalars (``train/loss``, ``eval/fg_ari``, ...), at each start
  the config (text ``config``) and the hyperparameters (the HParams tab: every config field, against the
  headline metric), the gradient norms (``train/grad_norm_slot_attention``, ...) and the last iteration's
  binding diagnostics (``eval/binding_entropy``, ...), and at each evaluation the picture ``slotref viz``
  draws (image ``eval/figure``);
- ``command.txt``: the command line, slotref's version, the git commit of its source, and the versions of
  Python and the packages it runs on, one block per start;
- ``console.log``: the lines training printed (evaluations, warnings), as the terminal showed them.
"""

from __future__ import annotations

import csv
import io as io_text
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from slotref import __version__, io
from slotref.training.config import TrainingError

GRAD_COLUMNS = ("grad_norm_slot_attention", "grad_norm_encoder")   # ``binding.GradientNorms``
LOG_NAMES = ("metrics.jsonl", "train.csv", "eval.csv", "command.txt", "console.log")  # appended to by a run
TRAIN_COLUMNS = ("step", "loss", "lr", "images_per_s", "time", "elapsed_s", *GRAD_COLUMNS)
# The packages whose versions command.txt records (those whose numbers a run's results depend on).
PACKAGES = ("numpy", "scipy", "autograd", "h5py", "cupy-cuda12x", "cupy-cuda13x", "mpi4py")


def flat_scalars(result: dict) -> dict:
    """The numbers of an evaluation as flat columns: lists become name_1, name_2, ...; the binding
    diagnostics (a dict of per-iteration lists) their last iteration's, ``binding_entropy``, ..."""
    out = {}
    for k, v in result.items():
        if isinstance(v, (list, tuple)):
            out.update({f"{k}_{i + 1}": x for i, x in enumerate(v) if isinstance(x, (int, float))})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    out.update({f"binding_{k}": v for k, v in last_iteration(result.get("binding") or {}).items()})
    return out


def last_iteration(binding: dict) -> dict:
    """{diagnostic: its number at the last iteration} of an evaluation's ``binding`` lists."""
    return {k: v[-1] for k, v in binding.items() if isinstance(v, list) and v and isinstance(v[-1], (int, float))}


def _csv_line(values) -> str:
    buffer = io_text.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _append_csv(path: Path, row: dict) -> None:
    """One whole row (``slotref.io.append_line``); the header is written with the first row."""
    columns = list(row)
    if not path.is_symlink() and path.is_file() and path.stat().st_size:  # a link is refused by append_line
        with open(path, newline="") as f:
            columns = next(csv.reader(f), columns)
    else:
        io.append_line(path, _csv_line(columns))
    io.append_line(path, _csv_line(["" if row.get(c) is None else row.get(c) for c in columns]))


def git_commit() -> str | None:
    """The commit of slotref's source checkout (with '+dirty' for local changes), or None outside git."""
    src = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def check_logs(run_dir: Path) -> None:
    """Refuse a run directory whose log is a symbolic link, a FIFO or a device (``io.WriteError``, one
    line) before anything is written: found at its first append, it would cost what was written before."""
    for name in LOG_NAMES:
        path = Path(run_dir) / name
        if path.is_symlink() or path.exists():
            os.close(io.open_log(path))  # opened to append, never written: the file stays as it is


def write_command(run_dir: Path, argv: list[str] | None = None) -> None:
    """Append the command line, version and commit to ``run_dir/command.txt``."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "__main__.py":
        argv[0:1] = ["python", "-m", "slotref"]
    lines = [f"# {time.strftime('%Y-%m-%d %H:%M:%S')}", shlex.join(argv),
             f"slotref {__version__}", f"git {git_commit() or '(not a git checkout)'}", package_versions()]
    # Never through a symbolic link; a path's undecodable bytes are written back as they came.
    with open(io.open_log(Path(run_dir) / "command.txt"), "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\n".join(lines) + "\n\n")


def package_versions() -> str:
    """One line: Python's version and the installed versions of ``PACKAGES`` (those installed)."""
    import importlib.metadata
    import platform

    found = [f"python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def require_tensorboard():
    """The tensorboardX module; TrainingError (one line) where it is not installed."""
    try:
        import tensorboardX
    except ImportError:
        raise TrainingError("--logger tensorboard needs tensorboardX: pip install "
                            "\"slotref[tensorboard]\" (or pip install tensorboardX)") from None
    return tensorboardX


class RunLog:
    """The writers of one run; ``train`` and ``eval`` append a record to every format, ``console`` a
    printed line to console.log."""

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.started = time.time()
        self.writer = None
        self._session_end = None  # the hyperparameters' closing record (``hyperparameters``)
        if tensorboard:
            self.writer = require_tensorboard().SummaryWriter(str(self.run_dir))

    def _jsonl(self, record: dict) -> None:
        io.append_line(self.run_dir / "metrics.jsonl", json.dumps(record))

    def train(self, record: dict) -> None:
        self._jsonl(record)
        elapsed = round(record["time"] - self.started, 3) if "time" in record else None
        _append_csv(self.run_dir / "train.csv", {**{k: record.get(k) for k in TRAIN_COLUMNS}, "elapsed_s": elapsed})
        if self.writer is not None:
            for k in ("loss", "lr", "images_per_s", *GRAD_COLUMNS):
                if k in record:
                    self.writer.add_scalar(f"train/{k}", record[k], record["step"])

    def hyperparameters(self, config) -> None:
        """The run's config (``TrainConfig``) as text and as hyperparameters, once per start."""
        if self.writer is None:
            return
        import dataclasses

        from tensorboardX.summary import hparams

        self.writer.add_text("config", "\n".join("    " + line for line in config.to_json().splitlines()), 0)
        flat = {k: str(v) if isinstance(v, (list, tuple)) else v
                for k, v in _flat_fields(dataclasses.asdict(config)).items()}
        # Written into this run's event file (tensorboardX's add_hparams would open a sub-run for them).
        experiment, start, self._session_end = hparams(flat, {f"eval/{config.headline}": None})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def figure(self, step: int, draw) -> None:
        """The picture ``draw(path)`` writes as a PNG, logged as the image ``eval/figure`` of ``step``."""
        if self.writer is None:
            return
        import tempfile

        import numpy as np
        from PIL import Image

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "figure.png"
            draw(path)
            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))               # (H, W, 3) uint8
        self.writer.add_image("eval/figure", pixels, step, dataformats="HWC")

    def console(self, line: str) -> None:
        io.append_line(self.run_dir / "console.log", line)

    def redraw(self, step: int, draw: int, signs: list[str]) -> None:
        """New initial weights (``training.restart``): draw ``draw`` (0 the first) from ``step`` on."""
        self._jsonl({"step": step, "redraw": draw, "signs": signs, "time": time.time()})

    def eval(self, step: int, result: dict) -> None:
        now = time.time()
        self._jsonl({"step": step, "eval": result, "time": now})
        scalars = flat_scalars(result)
        _append_csv(self.run_dir / "eval.csv", {"step": step, "time": now, **scalars})
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"eval/{k}", v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            if self._session_end is not None:
                self.writer.file_writer.add_summary(self._session_end)
            self.writer.close()
            self.writer = None


def _flat_fields(d: dict, prefix: str = "") -> dict:
    """A nested config dict as flat ``model.num_slots``-style keys."""
    out = {}
    for k, v in d.items():
        out.update(_flat_fields(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


PERCENT_KEYS = ("ap_", "fg_ari", "acc_", "slot_area")


def format_metric(key: str, value) -> str:
    """One metric as printed everywhere: AP, FG-ARI, accuracies and mask areas in % (one decimal),
    other numbers with four significant digits."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_metric(key, v) for v in value) + "]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.startswith(PERCENT_KEYS):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_metrics(result: dict) -> str:
    """``key=value, ...`` of an evaluation (``format_metric``), nested dicts left out."""
    return ", ".join(f"{k}={format_metric(k, v)}" for k, v in result.items() if not isinstance(v, dict))


def curve_table(run_dir: Path) -> str:
    """The evaluations logged during training: step, minutes of training, metrics (%), and where logged,
    the binding diagnostics of the last iteration and the mean gradient norms since the previous evaluation
    (``CURVE_EXTRAS``), and in a run that drew new initial weights, the draw evaluated (1 the first)."""
    import numpy as np

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise TrainingError(f"{run_dir}: no metrics.jsonl (is it a run directory?)")
    records = io.read_jsonl(path)  # a line torn by a crash at the end is left out
    evals = [r for r in records if "eval" in r]
    if not evals:
        return f"{run_dir}: no evaluation logged yet"
    # Minutes of training: the time between log lines, leaving out pauses (resumes): gaps over 10x the median.
    times = np.array([r["time"] for r in records])
    gaps = np.diff(times, prepend=times[0])
    gaps[gaps > 10 * np.median(gaps[1:] if len(gaps) > 1 else gaps)] = 0.0
    elapsed = np.cumsum(gaps) / 60
    keys = [k for k, v in evals[0]["eval"].items() if isinstance(v, float)]
    extras = [(column, key) for column, key in CURVE_EXTRAS.items()
              if any(key in (_curve_extras(r, []) if "eval" in r else r) for r in records)]
    columns = keys + [column for column, _ in extras] + ["draw"] * any("redraw" in r for r in records)
    lines = ["| step | minutes | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    since, draw = [], 0  # the training records since the previous evaluation; the draw trained
    for i, r in enumerate(records):
        draw = r.get("redraw", draw)
        if "eval" not in r:
            since.append(r)
            continue
        values = [f"{100 * r['eval'][k]:.1f}" if k.startswith(("ap_", "fg_ari", "acc_")) else f"{r['eval'][k]:.3f}"
                  for k in keys]
        found = _curve_extras(r, since)
        values += [f"{found[key]:.3g}" if key in found else "" for _, key in extras]
        values += [str(draw + 1)] * ("draw" in columns)
        lines.append(f"| {r['step']} | {elapsed[i]:.1f} | {' | '.join(values)} |")
        since = []
    return "\n".join(lines)


# eval --curve's columns beyond the metrics: column -> its key in ``_curve_extras`` (docs/binding.md).
CURVE_EXTRAS = {"entropy_last": "binding_entropy", "cosine_last": "binding_slot_cosine",
                "change_last": "binding_slot_change", "grad_sa": GRAD_COLUMNS[0], "grad_encoder": GRAD_COLUMNS[1]}


def _curve_extras(record: dict, since: list[dict]) -> dict:
    """The last iteration's binding diagnostics of an evaluation record, and the mean of each gradient norm
    over the training records ``since`` the previous evaluation."""
    found = {f"binding_{k}": v for k, v in last_iteration(record["eval"].get("binding") or {}).items()}
    for key in GRAD_COLUMNS:
        values = [r[key] for r in since if isinstance(r.get(key), (int, float))]
        if values:
            found[key] = sum(values) / len(values)
    return found
