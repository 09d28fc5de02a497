"""The golden module cases: made in float64 by slotref itself, shipped as HDF5.

Each case (``CASES``) holds, under one HDF5 group named after it:

- ``params``: the parameter tree of ``init_slot_attention`` with every leaf
  drawn at random (LayerNorm scales and offsets and GRU biases included, so a
  slip in any of them shows), stored as nested groups (a list's items under
  "0", "1", ...);
- ``inputs`` (B, N, D_inputs), ``noise`` (B, K, D) and ``probe`` (B, K, D);
  attributes ``num_iterations`` (T) and ``epsilon``;
- ``trace``: every quantity of ``walk.QUANTITIES`` (per-iteration ones stacked
  to (T, ...) arrays), and ``slots`` (B, K, D), the final slots;
- ``grads``: the gradients of the scalar ``sum(slots * probe)`` with respect to
  ``inputs`` (``grads/inputs``) and every parameter (``grads/params``).

``python -m slotref conformance --regenerate`` rewrites this file and the model cases' file,
and records in ``numerics.txt`` what decides their last bits (NumPy, its BLAS and the CPU
kernel the BLAS picked, HDF5). ``tests/conformance/test_conformance.py`` checks that a fresh generation
equals them bit for bit where those match, and to 1e-12 (relative) where they do not: another
BLAS kernel may sum a matrix product in another order.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import autograd
import autograd.numpy as anp
import h5py
import numpy as np

from slotref import dispatch
from slotref.conformance.walk import PER_ITERATION, walk
from slotref.slot_attention import SlotAttentionConfig, init_slot_attention, sample_initial_slots, slot_attention

GOLDEN_DIR = Path(__file__).parent / "data"
MODULE_FILE = "module.h5"
NUMERICS_FILE = "numerics.txt"


def numerics() -> str:
    """One line naming what decides the golden files' last bits on this machine."""
    from threadpoolctl import threadpool_info
    blas = sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                  for i in threadpool_info() if i.get("user_api") == "blas")
    return (f"numpy {np.__version__}; blas {', '.join(blas) or 'none'}; "
            f"hdf5 {h5py.version.hdf5_version}; {platform.machine()}")


def write_numerics(folder: Path | str) -> Path:
    """Record ``numerics()`` beside freshly written golden files."""
    path = Path(folder) / NUMERICS_FILE
    path.write_text(numerics() + "\n")
    return path


def same_numerics(folder: Path | str = GOLDEN_DIR) -> bool:
    """Whether the golden files in ``folder`` were made with this machine's numerics."""
    path = Path(folder) / NUMERICS_FILE
    return path.is_file() and path.read_text().strip() == numerics()


@dataclass(frozen=True)
class ModuleCase:
    """One golden case of the Slot Attention module; ``input_scale`` scales the inputs
    (small inputs make LayerNorm's epsilon visible), ``epsilon`` is line 8's offset."""

    name: str
    batch: int
    num_inputs: int
    num_slots: int
    num_iterations: int
    input_size: int
    slot_size: int
    mlp_hidden_size: int
    epsilon: float = 1e-8
    input_scale: float = 1.0

    def config(self) -> SlotAttentionConfig:
        return SlotAttentionConfig(input_size=self.input_size, slot_size=self.slot_size,
                                   mlp_hidden_size=self.mlp_hidden_size, epsilon=self.epsilon)


CASES = (
    ModuleCase("paper_like", 2, 16, 7, 3, 16, 16, 32),
    ModuleCase("inputs_wider_than_slots", 2, 20, 4, 2, 24, 8, 16),
    ModuleCase("large_epsilon", 2, 12, 5, 3, 8, 8, 16, epsilon=0.05),
    ModuleCase("small_inputs", 3, 9, 3, 2, 6, 10, 12, input_scale=0.02),
    ModuleCase("many_slots_and_iterations", 1, 10, 11, 5, 8, 8, 8),
    ModuleCase("one_slot", 2, 6, 1, 2, 4, 4, 8),
    ModuleCase("one_input", 2, 1, 3, 2, 4, 6, 8),
    ModuleCase("no_iterations", 2, 5, 3, 0, 4, 4, 8),
)
CASE_NAMES = tuple(case.name for case in CASES)


def case_seed(name: str) -> int:
    """A seed fixed by the case's name alone (stable across Python runs, unlike hash())."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _randomise(rng, params):
    """Every leaf moved off its initial value: scales near 1, offsets, biases and the rest near 0."""
    def draw(path, x):
        if path.endswith("scale"):
            return 1.0 + 0.2 * rng.standard_normal(x.shape)
        if path.split("/")[-1] in ("offset", "b", "b_input", "b_hidden", "slots_mu", "slots_log_sigma"):
            return 0.2 * rng.standard_normal(x.shape)
        return x
    return _map_paths(draw, params)


def _map_paths(fn, tree, prefix=""):
    if isinstance(tree, dict):
        return {k: _map_paths(fn, v, f"{prefix}{k}/") for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_paths(fn, v, f"{prefix}{i}/") for i, v in enumerate(tree)]
    return fn(prefix.rstrip("/"), tree)


def make_case(case: ModuleCase) -> dict:
    """Every array of one case, computed in float64 by the spec (see the module docstring)."""
    rng = np.random.default_rng(case_seed(case.name))
    config = case.config()
    params = _randomise(rng, init_slot_attention(rng, config))
    inputs = case.input_scale * rng.standard_normal((case.batch, case.num_inputs, case.input_size))
    noise = rng.standard_normal((case.batch, case.num_slots, case.slot_size))
    probe = rng.standard_normal((case.batch, case.num_slots, case.slot_size))
    trace = {}
    slots = walk(params, inputs, noise, case.num_iterations, case.epsilon, record=trace)
    for name in PER_ITERATION:  # (T, ...); T = 0 keeps the shape of one iteration's quantity
        shape = (0, *(slots.shape if name not in ("logits", "attn", "attn_weights")
                      else (case.batch, case.num_inputs, case.num_slots)))
        trace[name] = np.stack(trace[name]) if trace[name] else np.zeros(shape)

    def scalar(p, x):  # the documented scalar of the slots, through the spec itself
        final = slot_attention(p, x, sample_initial_slots(p, noise), case.num_iterations, config)
        return anp.sum(final * probe)
    d_params, d_inputs = autograd.grad(scalar, (0, 1))(params, inputs)
    return {"params": params, "inputs": inputs, "noise": noise, "probe": probe, "trace": trace,
            "slots": slots, "grads": {"params": d_params, "inputs": d_inputs},
            "attrs": {"num_iterations": case.num_iterations, "epsilon": case.epsilon}}


# --------------------------------------------------------------------------
# Files.

def _write_tree(group, tree):
    items = enumerate(tree) if isinstance(tree, list) else tree.items()
    for key, value in items:
        if isinstance(value, (dict, list)):
            _write_tree(group.create_group(str(key)), value)
        else:
            group.create_dataset(str(key), data=np.asarray(value, dtype=np.float64), track_times=False)


def _read_tree(group):
    tree = {k: _read_tree(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}
    if tree and all(k.isdigit() for k in tree):
        return [tree[str(i)] for i in range(len(tree))]
    return tree


def write_module_cases(path: Path | str, cases=CASES) -> Path:
    """Generate every case and write them to ``path`` (one group per case)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _one_blas_thread(), dispatch.using("reference"), h5py.File(path, "w", libver="latest", track_order=True) as f:
        for case in cases:
            data = make_case(case)
            group = f.create_group(case.name, track_order=True)
            group.attrs.update(data.pop("attrs"))
            _write_tree(group, data)
    return path


def read_module_case(name: str, path: Path | str | None = None) -> dict:
    """One case as written (nested dicts and lists of float64 arrays, ``attrs`` for T and epsilon)."""
    path = GOLDEN_DIR / MODULE_FILE if path is None else Path(path)
    with h5py.File(path, "r") as f:
        if name not in f:
            raise KeyError(f"no golden case {name!r}; the cases are {', '.join(f)}")
        group = f[name]
        data = _read_tree(group)
        data["attrs"] = {"num_iterations": int(group.attrs["num_iterations"]),
                         "epsilon": float(group.attrs["epsilon"])}
    return data


def _one_blas_thread():
    """One BLAS thread while generating: threaded GEMMs may sum in another order."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1)


def leaves(tree, prefix=""):
    """(path, array) pairs of a parameter tree, paths like 'gru/w_input' and 'mlp/0/w'."""
    found = []
    _map_paths(lambda path, x: found.append((path, x)), tree, prefix)
    return found
