"""slotref command line: train, eval, viz, bench, data, info, selfcheck, experiment, import-tf, conformance, docs.

    slotref train --task setpred          # the main job, on built-in data
    slotref eval runs/setpred-...         # AP / FG-ARI of a run
    slotref --help                        # everything else

``python cli.py`` and ``python -m slotref`` run the same commands. Each
command imports NumPy, the models and the data code when it runs, so
``--help`` stays quick.
"""

from __future__ import annotations

import click

from slotref import __version__
from slotref.cli.bench import bench
from slotref.cli.conformance import conformance
from slotref.cli.data import data
from slotref.cli.docs import docs
from slotref.cli.eval import evaluate
from slotref.cli.experiment import experiment
from slotref.cli.import_tf import import_tf
from slotref.cli.info import info
from slotref.cli.selfcheck import selfcheck
from slotref.cli.train import train
from slotref.cli.viz import viz


class _Group(click.Group):
    """The command group; remembers the arguments it was given (``command.txt`` of a run)."""

    def parse_args(self, ctx, args):
        ctx.meta["slotref.argv"] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slotref")
def main():
    """slotref: a readable, tested reference implementation of Slot Attention."""
    from slotref.cli.common import quiet_unless_root
    from slotref.kernels.allocator import keep_freed_host_memory

    quiet_unless_root()
    keep_freed_host_memory()  # every command's arrays reuse freed host pages (docs/kernels.md)


for command in (info, train, evaluate, viz, bench, selfcheck, data, experiment, import_tf, conformance, docs):
    main.add_command(command)
