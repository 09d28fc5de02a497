"""``selfcheck``: gradient checks of every layer on a device, and agreement with NumPy."""

from __future__ import annotations

import sys

import click

from slotref.cli.common import fail, kernels_option


@click.command()
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Default: $SLOTREF_DEVICE or cpu; gpu also checks agreement with NumPy.")
@kernels_option
def selfcheck(device):
    """Gradient checks of every layer on DEVICE and agreement with NumPy."""
    import os

    from slotref import backend

    device = (device or os.environ.get(backend.DEVICE_ENV) or "cpu").lower()
    from slotref.backend import BackendError
    from slotref.selfcheck import run_selfcheck

    try:
        ok = run_selfcheck(device, out=click.echo)
    except BackendError as err:
        fail(err)
    if not ok:
        sys.exit(1)
