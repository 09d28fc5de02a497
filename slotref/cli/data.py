"""``data``: make a built-in dataset, describe a file, convert the paper's real datasets."""

from __future__ import annotations

import time

import click

from slotref.data import generators
from slotref.cli.common import DatasetChoice
from slotref.data.convert import MULTI_OBJECT
from slotref.paths import shown


class _Error(click.ClickException):
    """One line; a path's undecodable bytes are shown as \\xNN rather than failing to print."""

    def __init__(self, message):
        super().__init__(shown(message))


def _echo(text):
    click.echo(shown(text))


@click.group()
def data():
    """Make and inspect HDF5 datasets (slotref docs datasets)."""


@data.command()
@click.argument("name", type=DatasetChoice(list(generators.GENERATORS)))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of examples.")
@click.option("--resolution", type=click.IntRange(8, 1024), default=None,
              help="Square image size (default: the dataset's own).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Example i depends only on (seed, i).")
@click.option("--min-objects", type=click.IntRange(min=1), default=None, help="Fewest objects per scene.")
@click.option("--max-objects", type=click.IntRange(min=1), default=None, help="Most objects per scene.")
@click.option("--zoom", type=click.FloatRange(1.0, generators.MAX_ZOOM), default=None,
              help="CLEVR generators: narrow the camera's view by this factor (objects this much larger).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Rendering processes (default: up to 2).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (only once the new one is whole).")
def make(name, out_path, n, resolution, seed, min_objects, max_objects, zoom, workers, progress, overwrite):
    """Generate dataset NAME into --out (resumes an interrupted run with the same options)."""
    import os

    from slotref import paper
    from slotref.data import hdf5
    from slotref.io import write_error


    try:
        options = dict(min_objects=min_objects, max_objects=max_objects, zoom=zoom)
        config = hdf5.generator_config(name, seed, resolution, **options)
        if os.path.exists(out_path) and not overwrite:
            raise _Error(f"{out_path}: exists; pass --overwrite to replace it or choose another --out")
        start = time.perf_counter()
        hdf5.write_dataset(name, out_path, n, seed, resolution, progress=progress, workers=workers, **options)
    except OSError as e:
        raise _Error(str(write_error(out_path, e))) from None
    except (ValueError, RuntimeError) as e:  # DatasetError is a ValueError
        raise _Error(str(e).splitlines()[0]) from None
    seconds = time.perf_counter() - start
    res = config["resolution"]
    _echo(f"wrote {out_path}: {n} x {res}x{res} {name} in {seconds:.1f} s ({n / seconds:.0f} images/s); "
               f"{config['min_objects']}-{config['max_objects']} objects, the paper uses K={paper.paper_num_slots(name)} slots on it")


@data.command()
@click.argument("path", type=click.Path(dir_okay=False))
def info(path):
    """Describe a dataset file: attributes, fields, object counts."""
    from slotref.data import hdf5

    try:
        _echo(hdf5.describe(path))
    except hdf5.DatasetError as e:
        raise _Error(str(e)) from None


def _run(fn, *args, **kwargs):
    from slotref.data.convert import ConvertError

    from slotref.io import write_error

    try:
        summary = fn(*args, **kwargs)
    except ConvertError as e:
        raise _Error(str(e)) from None
    except OSError as e:  # a full disk, no permission: one line naming the output
        raise _Error(str(write_error(kwargs.get("out", args[2]), e)).splitlines()[0]) from None
    except ValueError as e:  # a file that is not what it claims (FIFO, device)
        raise _Error(str(e).splitlines()[0]) from None
    except ImportError as e:
        raise _Error(
            f"{e}; the multi-object converter needs: pip install protobuf google-crc32c"
        ) from None
    _echo(f"wrote {summary['num_examples']} examples to {summary['out']} "
               f"(source records read up to index {summary['records']})")


@data.group()
def convert():
    """Convert the paper's real datasets into slotref's HDF5 schema."""




@convert.command("clevr")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False),
              help="The CLEVR_v1.0 directory (with images/ and scenes/).")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@click.option("--resolution", type=click.IntRange(8, 1024), default=128, show_default=True)
@click.option("--max-objects", type=click.IntRange(1, 10), default=10, show_default=True,
              help="Keep scenes with at most this many objects.")
@click.option("--part", type=click.Choice(["all", "train", "monitor"]), default="all", show_default=True,
              help="With --split train: 'monitor' = the first 512 images (the official code's AP "
                   "monitoring set), 'train' = the rest, 'all' = both.")
def clevr_command(src, split, out, resolution, max_objects, part):
    """CLEVR v1.0 -> set-prediction file (images, objects/*)."""
    from slotref.data.convert import convert_clevr

    _run(convert_clevr, src, split, out, resolution=resolution, max_objects=max_objects, part=part)


@convert.command("multi-object")
@click.option("--src", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A DeepMind multi-object .tfrecords file (GZIP).")
@click.option("--dataset", required=True, type=click.Choice(list(MULTI_OBJECT)))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@click.option("--skip", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many records of the file first.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Read at most this many records after the skipped ones (before the CLEVR6 filter).")
@click.option("--max-examples", type=click.IntRange(1), default=None,
              help="Stop after writing this many examples (after the CLEVR6 filter).")
@click.option("--resolution", type=click.IntRange(8, 1024), default=128, show_default=True,
              help="clevr_with_masks only: side of the resized crop.")
def multi_object_command(src, dataset, out, skip, limit, max_examples, resolution):
    """DeepMind multi-object TFRecords -> object-discovery file (images, masks).

    Paper splits: --limit 70000 (clevr_with_masks) or 60000 (the others) for
    training; --skip 70000 (60000) --max-examples 320 for evaluation.
    """
    from slotref.data.convert import convert_multi_object

    _run(convert_multi_object, src, dataset, out, skip=skip, limit=limit,
         max_examples=max_examples, resolution=resolution)
