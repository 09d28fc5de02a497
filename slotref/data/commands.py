"""``data`` commands: make a built-in dataset, describe a dataset file.

Mounted into the top-level CLI with ``cli.add_command(data)``.
"""

import time

import click

from slotref.data import generators, hdf5


@click.group()
def data():
    """Make and inspect HDF5 datasets (docs/datasets.md)."""


@data.command()
@click.argument("name", type=click.Choice(list(generators.GENERATORS)))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of examples.")
@click.option("--resolution", type=click.IntRange(8, 1024), default=None,
              help="Square image size (default: the dataset's own).")
@click.option("--seed", type=int, default=0, show_default=True, help="Example i depends only on (seed, i).")
@click.option("--min-objects", type=click.IntRange(min=1), default=None, help="Fewest objects per scene.")
@click.option("--max-objects", type=click.IntRange(min=1), default=None, help="Most objects per scene.")
@click.option("--zoom", type=click.FloatRange(1.0, generators.MAX_ZOOM), default=None,
              help="CLEVR generators: narrow the camera's view by this factor (objects this much larger).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Rendering processes (default: up to 2).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def make(name, out_path, n, resolution, seed, min_objects, max_objects, zoom, workers, progress):
    """Generate dataset NAME into --out (resumes an interrupted run with the same options)."""
    spec = generators.GENERATORS[name]
    try:
        options = dict(min_objects=min_objects, max_objects=max_objects, zoom=zoom)
        config = hdf5.generator_config(name, seed, resolution, **options)
        start = time.perf_counter()
        hdf5.write_dataset(name, out_path, n, seed, resolution, progress=progress, workers=workers, **options)
    except (ValueError, RuntimeError, OSError) as e:  # DatasetError is a ValueError
        raise click.ClickException(str(e).splitlines()[0]) from None
    seconds = time.perf_counter() - start
    res = config["resolution"]
    click.echo(f"wrote {out_path}: {n} x {res}x{res} {name} in {seconds:.1f} s ({n / seconds:.0f} images/s); "
               f"{config['min_objects']}-{config['max_objects']} objects, paper uses K={spec.num_slots} slots")


@data.command()
@click.argument("path", type=click.Path(dir_okay=False))
def info(path):
    """Describe a dataset file: attributes, fields, object counts."""
    try:
        click.echo(hdf5.describe(path))
    except hdf5.DatasetError as e:
        raise click.ClickException(str(e)) from None
