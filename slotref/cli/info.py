"""``info``: versions, BLAS, the default device, CuPy/GPU status, the fast kernels, and the MPI world."""

from __future__ import annotations

import click


@click.command()
def info():
    """Versions, BLAS, the default device, CuPy/GPU status, the fast kernels, and (under mpiexec) the ranks."""
    import importlib.metadata
    import platform

    import autograd
    import h5py
    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info

    from slotref import __version__, backend

    click.echo(f"slotref {__version__} (Python {platform.python_version()}, {platform.machine()})")
    click.echo(f"numpy {np.__version__}, scipy {scipy.__version__}, autograd {autograd.__version__ if hasattr(autograd, '__version__') else '1.9.x'}, "
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
    click.echo(w.describe())
    ranks = w.layout()  # collective: every rank answers
    if w.size > 1:
        for host in sorted({r["host"] for r in ranks}):
            on_host = [r for r in ranks if r["host"] == host]
            click.echo(f"  {host}: ranks " + ", ".join(f"{r['rank']} (local {r['local_rank']})" for r in on_host))
