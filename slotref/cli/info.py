"""``info``: versions, BLAS, the default device, CuPy/GPU status, the fast kernels, and the MPI world."""

from __future__ import annotations

import click


def program(ctx: click.Context) -> str:
    """The command as the user invoked it: ``slotref``, ``python -m slotref`` or ``python cli.py``."""
    root = ctx.find_root().info_name or "slotref"
    return f"python {root}" if root.endswith(".py") else root


def training_ranks(prog: str) -> str:
    """One line: the ranks ``train`` starts from this terminal on the CPU (``--procs auto``), as it decides."""
    from slotref.training import launch
    from slotref.training.presets import preset_config

    batch = preset_config("setpred").batch_size
    if not launch.can_launch():
        return (f"world: 1 process; {prog} train runs in it (mpi4py or mpiexec not found: "
                "pip install 'slotref[mpi]' for data-parallel training)")
    n = launch.auto_procs(batch, launch.usable_cores())
    if n == 1:
        return f"world: 1 process; {prog} train runs in it ({launch.usable_cores()} usable core)"
    error = launch.launch_error(n)
    if error:
        return f"world: 1 process; {prog} train runs in it (mpiexec -n {n} could not start ranks here: {error})"
    return (f"world: 1 process here; {prog} train on the CPU starts {n} ranks under mpiexec (--procs auto: one "
            f"single-threaded rank per usable core, for the cpu preset's batch of {batch}; --procs 1 runs one; "
            "slotref docs scale)")


@click.command()
@click.pass_context
def info(ctx):
    """Versions, BLAS, the default device, CuPy/GPU status, the fast kernels, and the ranks `train` starts."""
    import importlib.metadata
    import platform

    import h5py
    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info

    from slotref import __version__, backend

    click.echo(f"slotref {__version__} (Python {platform.python_version()}, {platform.machine()})")
    click.echo(f"numpy {np.__version__}, scipy {scipy.__version__}, autograd {importlib.metadata.version('autograd')}, "
               f"h5py {h5py.__version__}, click {importlib.metadata.version('click')}")
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            click.echo(f"BLAS: {pool.get('internal_api')} {pool.get('version')} ({pool.get('threading_layer')}, "
                       f"{pool.get('num_threads')} threads, {pool.get('architecture')})")
    import os
    click.echo(f"default device: {os.environ.get(backend.DEVICE_ENV) or 'cpu'} (set {backend.DEVICE_ENV} or --device)")
    click.echo(f"GPU: {backend.gpu_status()}")
    from slotref import dispatch

    try:
        click.echo("\n".join(dispatch.status()))   # every fast kernel beside the function it replaces
    except ValueError as err:  # a bad $SLOTREF_KERNELS
        click.echo(f"kernels: {err}")
    from slotref.training.launch import world

    w = world()
    click.echo(w.describe() if w.size > 1 else training_ranks(program(ctx)))
    ranks = w.layout()  # collective: every rank answers
    if w.size > 1:
        for host in sorted({r["host"] for r in ranks}):
            on_host = [r for r in ranks if r["host"] == host]
            click.echo(f"  {host}: ranks " + ", ".join(f"{r['rank']} (local {r['local_rank']})" for r in on_host))
