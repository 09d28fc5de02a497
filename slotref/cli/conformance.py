"""``conformance``: check another implementation of Slot Attention against the golden cases."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from slotref.cli.common import fail


MODEL_ADAPTERS = ("setpred", "set_loss", "setpred_grad", "autoencoder", "autoencoder_grad", "average_precision")


def load_module(module_name: str):
    """'package.module' or 'path/to/file.py' -> the module."""
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise click.BadParameter(f"no such file: {path}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[path.stem] = module
        loader_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    return module


def load_callable(spec: str):
    """'package.module:function' or 'path/to/file.py:function' -> the function."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    module = load_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"{module_name} has no {attribute!r}") from None


@click.command()
@click.option("--adapter", metavar="MODULE:FUNCTION",
              help="forward(params, inputs, noise, num_iterations) -> slots; a FILE.py:FUNCTION works too. "
                   "Its .grad attribute, if any, is the gradient function.")
@click.option("--grad", "grad_spec", metavar="MODULE:FUNCTION", default=None,
              help="grad(params, inputs, noise, num_iterations, probe) -> (d_params, d_inputs).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="The dtype the arrays are given in; picks the tolerance.")
@click.option("--models", "models_spec", metavar="MODULE", default=None,
              help="A module (or FILE.py) defining any of " + ", ".join(MODEL_ADAPTERS)
                   + ": the whole-model checks.")
@click.option("--case", "cases", multiple=True, metavar="NAME", help="Only these golden cases (repeatable).")
@click.option("--no-properties", is_flag=True, help="Skip Proposition 1 and K, T at call time.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--regenerate", is_flag=True, help="Write the golden files anew (no adapter needed).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="With --regenerate: the folder to write module.h5 and models.h5 to (default: the package's).")
def conformance(adapter, grad_spec, models_spec, dtype, cases, no_properties, as_json, regenerate, out):
    """Check a Slot Attention implementation against slotref's golden cases.

    One line per check: status, check, case, worst error, tolerance, the first line of
    Algorithm 1 that differs and the likely cause. Exits 1 if a check fails.

        slotref conformance --adapter my_port.py:forward

    What an adapter looks like, for NumPy, PyTorch, JAX and Keras ports: slotref docs conformance.
    """
    from slotref.conformance import golden, model_cases

    if regenerate:
        folder = out or golden.GOLDEN_DIR
        path = golden.write_module_cases(Path(folder) / golden.MODULE_FILE)
        models = model_cases.write_model_cases(Path(folder) / model_cases.MODELS_FILE)
        golden.write_numerics(folder)
        click.echo(f"wrote {len(golden.CASES)} module cases to {path}, "
                   f"{len(model_cases.CASE_NAMES)} model cases to {models}")
        return
    if adapter is None and models_spec is None:
        fail("give --adapter MODULE:FUNCTION and/or --models MODULE (or --regenerate)")
    unknown = [c for c in cases if c not in golden.CASE_NAMES]
    if unknown:
        fail(f"no golden case {', '.join(unknown)}; the cases are {', '.join(golden.CASE_NAMES)}")
    from slotref.conformance import Report, check, check_models

    report = Report()
    if adapter is not None:
        grad = load_callable(grad_spec) if grad_spec else None
        report = check(load_callable(adapter), grad, dtype=dtype, cases=list(cases) or None,
                       properties=not no_properties)
    if models_spec is not None:
        module = load_module(models_spec)
        found = {name: getattr(module, name) for name in MODEL_ADAPTERS if hasattr(module, name)}
        if not found:
            fail(f"{models_spec} defines none of {', '.join(MODEL_ADAPTERS)}")
        report.results += check_models(dtype=dtype, **found).results
    click.echo(report.to_json() if as_json else str(report))
    if not report.ok:
        sys.exit(1)
