"""What the commands share: one-line errors, the result table beside the paper's numbers."""

from __future__ import annotations

import os
from pathlib import Path

import click

from slotref import paper


def _select_kernels(ctx, param, value):
    if value is not None:
        from slotref import dispatch

        dispatch.use(value)
        os.environ[dispatch.KERNELS_ENV] = value     # and for the processes this command starts
    return value


kernels_option = click.option(
    "--kernels", type=click.Choice(["fast", "all", "reference"]), default=None, callback=_select_kernels,
    expose_value=False, is_eager=True,
    help="fast: the measured optimised kernels (default); all: also the device kernels not yet measured "
         "faster; reference: every function as written in the specification (slower; the same results "
         "to rounding). Default: $SLOTREF_KERNELS or fast.")


# What each preset costs (docs/performance.md has the step times behind these figures).
PRESET_COSTS = (
    "cpu: set prediction ~15 min on 2 CPU cores; discovery on Tetrominoes ~45 min, Multi-dSprites ~5 h "
    "(1.6 s/step), CLEVR6 ~1.6 days (~12.5 s/step at 128x128); paper: Table 11's 150k-500k steps, "
    "for a GPU (hours to days)")

BUILT_IN = ("clevr-shapes", "clevr6-shapes", "tetrominoes", "multi-dsprites")


def canonical_dataset(value: str | None) -> str | None:
    """A built-in dataset's name as slotref spells it: multi_dsprites, Multi-dSprites -> multi-dsprites;
    file names and other values unchanged."""
    if value is None or value.endswith((".h5", ".hdf5")):
        return value
    name = value.lower().replace("_", "-")
    return name if name in BUILT_IN else value


def dataset_name(ctx, param, value):
    """click callback: ``canonical_dataset``."""
    return canonical_dataset(value)


class DatasetChoice(click.Choice):
    """A Choice of dataset names that also accepts other spellings (``canonical_dataset``)."""

    def convert(self, value, param, ctx):
        return super().convert(canonical_dataset(value) if isinstance(value, str) else value, param, ctx)


def fail(err: Exception) -> None:
    """Raise ``err`` as a one-line click error (printed by rank 0 alone under mpiexec; every rank exits 1)."""
    from slotref.paths import shown  # a path's undecodable bytes as \xNN, never a codec error

    raise click.ClickException(shown(str(err).splitlines()[0]) if str(err) else type(err).__name__)


def quiet_unless_root() -> None:
    """Under ``mpiexec -n N`` (N > 1): ranks other than 0 print nothing (a failing rank's line still shows)."""
    import os
    import sys

    from slotref.training import launch

    if launch.launched_size() > 1 and not launch.world().is_root:
        sys.stdout = sys.stderr = open(os.devnull, "w")


def result_table(task, config, result, test_iterations=None) -> str:
    """The result's table against the paper's, and how it was trained and evaluated
    (``test_iterations``: T of the evaluation, default the run's)."""
    if task == "setpred":
        names = ["inf", "1", "0.5", "0.25", "0.125"]
        lines = ["AP (%)                  " + "".join(f"{'AP_' + n:>13}" for n in names),
                 "slotref (this run)      " + "".join(f"{100 * result.get('ap_' + n, float('nan')):>13.1f}"
                                                      for n in names),
                 "paper, CLEVR10 (Table 3)" + "".join(f"{m:>7.1f} ± {s:<3.1f}" for m, s in
                                                      (paper.paper_ap(n) for n in names))]
        if config.preset != "paper":
            lines.append("(the cpu preset is a smaller problem than CLEVR10: see `slotref docs results`)")
        if getattr(config, "curriculum", ""):
            lines.append(f"trained with the curriculum {config.curriculum!r} (`slotref docs curriculum`)")
    else:
        ari = 100 * result.get("fg_ari", float("nan"))
        reported = paper.paper_fg_ari(Path(config.dataset).stem)
        line = f"FG-ARI (%): slotref {ari:.1f}"
        if reported:
            line += f"; paper (Table 1) {reported[0]:.1f} ± {reported[1]:.1f}"
        lines = [line]
    if getattr(config, "grad", "all") == "last":
        lines.append("trained with the last iteration's gradient, --grad last (`slotref docs binding`)")
    if getattr(config, "ema", 0):
        lines.append(f"evaluated with the parameter average, ema {config.ema:g} (`slotref docs curriculum`)")
    t = test_iterations or config.test_iterations
    if t != config.model.num_iterations:
        lines.append(f"evaluated with T = {t} iterations, trained with T = {config.model.num_iterations} "
                     "(as the paper's Figure 22; `slotref docs results`)")
    return "\n".join(lines)
