"""Data-parallel training over MPI, as a specification.

In one process: batch slices, flat buffers, the single-process world, and the
identity that makes N ranks train as one (the sum over slices of the slice
gradients, each weighted by slice/global, is the full-batch gradient). Under
``mpiexec -n 2`` (skipped where mpiexec or mpi4py is missing): the collectives,
one data-parallel training step against the full batch, a divergence caught by
the checksum compare, and a failing rank that ends the job with one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import autograd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import standin
from slotref.backend import get_backend, host_rng
from slotref.bench import allreduce as bench_allreduce
from slotref.training.collectives import DistributedError, GradientSync, World, checksum, local_slice, shard_range
from slotref.training.launch import SIZE_ENV, launched_size
from slotref.flat import FlatLayout, FlatTree
from slotref.models import discovery_config, init_model, setpred_config
from slotref.slot_attention import SlotAttentionConfig
from slotref.training.config import TrainConfig
from slotref.training.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]
SA8 = SlotAttentionConfig(input_size=8, slot_size=8, mlp_hidden_size=16)


# --------------------------------------------------------------------------
# Batch slices and evaluation shards.

@given(st.integers(1, 16), st.integers(1, 8))
def test_local_slices_tile_the_global_batch_in_rank_order(per_rank, size):
    global_batch = per_rank * size
    slices = [local_slice(global_batch, r, size) for r in range(size)]
    assert np.concatenate([np.arange(global_batch)[s] for s in slices]).tolist() == list(range(global_batch))
    assert {s.stop - s.start for s in slices} == {per_rank}


def test_a_batch_not_divisible_by_the_world_size_is_a_one_line_error():
    with pytest.raises(DistributedError, match=r"--batch-size 10 is not divisible by the world size 4") as err:
        local_slice(10, 0, 4)
    assert "\n" not in str(err.value)


@given(st.integers(0, 200), st.integers(1, 9), st.integers(1, 64))
def test_shards_cover_the_items_once_in_whole_blocks(n, size, align):
    ranges = [shard_range(n, r, size, align) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % align == 0 or start == n for start, _ in ranges)


# --------------------------------------------------------------------------
# Parameter checksums (flat buffers themselves: tests/kernels/test_flat_buffers.py).

def leaves_of_two_dtypes(rng):
    return {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal(5),
            "c": [np.asarray(rng.standard_normal(), dtype=np.float32), rng.standard_normal((4, 1, 2)).astype(np.float32)]}


def test_the_checksum_of_device_buffers_stays_on_the_device_and_equals_the_hosts(rng):
    host = leaves_of_two_dtypes(rng)
    dev = FlatTree.from_tree(host, standin.standin_xp)
    with standin.watch() as stats:
        sums = checksum(dev.buffers)
    assert not stats.host_operands, stats.report()
    assert sums == checksum(FlatTree.from_tree(host).buffers)


def test_the_checksum_sees_a_change_of_one_element(rng):
    buffers = FlatTree.from_tree(leaves_of_two_dtypes(rng)).buffers
    before = checksum(buffers)
    buffers["float32"][3] = np.nextafter(buffers["float32"][3], np.float32(np.inf))
    assert checksum(buffers) != before


# --------------------------------------------------------------------------
# The single-process world.

def test_the_single_process_world_is_rank_0_of_1_and_its_collectives_are_the_identity():
    w = World()
    assert (w.rank, w.size, w.local_rank, w.is_root) == (0, 1, 0, True)
    buf = np.arange(4.0)
    assert w.allreduce_sum_(buf) is buf
    np.testing.assert_array_equal(buf, np.arange(4.0))
    assert w.gather("x") == ["x"] and w.allgather("x") == ["x"] and w.broadcast(3) == 3
    w.check_same((1.0, 2.0))
    assert "1 process" in w.describe()


def test_in_one_process_the_gradient_seam_takes_the_whole_batch_and_returns_its_inputs():
    sync = GradientSync(World(), 8)
    loss, grads = np.float32(2.0), {"w": np.ones(3, np.float32)}
    assert sync.slice == slice(0, 8)
    assert sync.reduce(loss, grads, stop=True) == (loss, grads, True)


def test_the_single_process_world_lets_exceptions_through_unchanged():
    with pytest.raises(ValueError, match="boom"), World().fail_fast():
        raise ValueError("boom")
    with pytest.raises(SystemExit, match="rank"):
        World().abort("rank 0 cannot go on")


def test_launched_size_reads_the_launchers_variables(monkeypatch):
    for name in SIZE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert launched_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_size() == 1  # a size alone may be left over in a shell: the launcher sets all three
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    assert launched_size() == 4


def test_one_process_never_imports_mpi4py():
    env = {k: v for k, v in os.environ.items() if k not in SIZE_ENV and k != "SLOTREF_MPI"}
    code = ("import sys; from slotref.training.launch import world; w = world(); "
            "assert w.size == 1 and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


# --------------------------------------------------------------------------
# Why N ranks equal one: slice gradients weighted by slice/global sum to the full-batch gradient.

def tiny_task(task):
    if task == "setpred":
        model = setpred_config(16, num_slots=3, encoder_channels=8, mlp_size=8, head_hidden=8, slot_attention=SA8)
        return TrainConfig(task="setpred", max_objects=3, model=model)
    model = discovery_config("tetrominoes", resolution=(12, 12), encoder_channels=8, mlp_size=8,
                             decoder_channels=8, num_slots=3, slot_attention=SA8)
    return TrainConfig(task="discovery", model=model)


def global_batch(be, config, batch, rng):
    """Images in [-1, 1], targets (set prediction) and slot noise for the whole global batch."""
    m = config.model
    images = be.asarray(rng.uniform(-1, 1, (batch, *m.resolution, 3)))
    targets = be.asarray(rng.uniform(0, 1, (batch, config.max_objects, m.output_size)))
    noise = be.asarray(rng.standard_normal((batch, m.num_slots, m.slot_attention.slot_size)))
    return images, (targets if config.task == "setpred" else None), noise


@pytest.mark.parametrize("task", ["setpred", "discovery"])
def test_weighted_slice_gradients_sum_to_the_full_batch_gradient(task, rng):
    be = get_backend("cpu", "float64")
    config = tiny_task(task)
    params = be.tree_asarray(init_model(host_rng(0, 0), config.model))
    loss_fn = make_task(config).loss
    batch, size = 6, 2
    images, targets, noise = global_batch(be, config, batch, rng)
    loss, grads = autograd.value_and_grad(loss_fn)(params, images, targets, noise)
    layout = FlatLayout(params)

    got, got_loss = 0, 0
    for rank in range(size):
        s = local_slice(batch, rank, size)
        share = (s.stop - s.start) / batch
        part_loss, part = autograd.value_and_grad(loss_fn)(params, images[s], None if targets is None else targets[s],
                                                           noise[s])
        got = got + layout.flatten(part).buffers["float64"] * share
        got_loss = got_loss + float(part_loss) * share

    want = layout.flatten(grads).buffers["float64"]
    assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))
    assert abs(got_loss - float(loss)) <= 1e-12 * abs(float(loss))


# --------------------------------------------------------------------------
# Allreduce timing and the scaling projection.

def test_the_allreduce_timing_reports_each_buffer_under_one_process():
    rows = bench_allreduce.time_allreduce(World(), [{"name": "tiny", "params": 10}], repeats=2)
    assert rows[0]["bytes"] == 11 * 4 and rows[0]["ranks"] == 1 and rows[0]["ms"] >= 0
    assert "tiny" in bench_allreduce.format_timing(rows)


def test_the_paper_presets_are_counted_from_the_models():
    runs = {r["name"]: r for r in bench_allreduce.paper_runs()}
    assert (runs["setpred"]["batch"], runs["setpred"]["steps"]) == (512, 150_000)
    assert (runs["clevr6"]["batch"], runs["clevr6"]["steps"]) == (64, 500_000)
    assert runs["clevr6"]["params"] > runs["setpred"]["params"] > runs["tetrominoes"]["params"] > 0


def test_the_ring_allreduce_sends_2_n_minus_1_over_n_of_the_buffer():
    ring = bench_allreduce.ring_allreduce_seconds
    assert ring(1e9, 1, 1e9, 1e-3) == 0
    assert ring(1e9, 2, 1e9, 0) == pytest.approx(1.0)
    assert ring(1e9, 512, 1e9, 0) == pytest.approx(2 * 511 / 512)
    assert ring(0, 8, 1e9, 1e-6) == pytest.approx(14e-6)


RUN = {"name": "x", "params": 10**6, "batch": 64, "steps": 1000, "images_per_s": 100.0}


def test_with_no_overhead_and_free_communication_the_projection_scales_linearly():
    rows = bench_allreduce.project([RUN], ranks=(1, 8, 64), links={"free": (math.inf, 0.0)}, overhead=0.0)
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 1.0, 1.0])
    assert rows[-1]["days"] == pytest.approx(rows[0]["days"] / 64)


def test_projected_efficiency_falls_with_overhead_and_bandwidth_and_ranks_stop_at_the_global_batch():
    links = {"fast": (300e9, 2e-6), "slow": (1e9, 5e-6)}
    rows = bench_allreduce.project([RUN], ranks=(8, 64, 128), links=links, overhead=0.05)
    eff = {(r["link"], r["ranks"]): r.get("efficiency") for r in rows}
    assert 1 > eff["fast", 8] > eff["fast", 64] and eff["fast", 8] > eff["slow", 8]
    assert eff["fast", 128] is None and "global batch 64" in bench_allreduce.format_projection(rows)


# --------------------------------------------------------------------------
# Under mpiexec -n 2.

def mpiexec() -> str | None:
    from slotref.training import launch

    return launch.mpiexec_path() if launch.can_launch() else None


needs_mpi = pytest.mark.skipif(mpiexec() is None, reason="needs mpiexec and mpi4py (pip install 'slotref[mpi]')")


# A failed assertion on one rank ends every rank at once instead of leaving the others waiting.
ABORT_ON_UNCAUGHT = """\
import sys, traceback
from slotref.training.launch import world
def abort_on_uncaught(kind, err, tb):
    traceback.print_exception(kind, err, tb)
    world().abort(f"{kind.__name__}: {err}")
sys.excepthook = abort_on_uncaught
"""


def run_ranks(tmp_path, script: str, n: int = 2, timeout: int = 60, args=()) -> subprocess.CompletedProcess:
    path = tmp_path / "ranks.py"
    path.write_text(ABORT_ON_UNCAUGHT + textwrap.dedent(script))
    pythonpath = os.pathsep.join(str(p) for p in (ROOT, ROOT / "tests", ROOT / "tests" / "training"))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, str(path), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_mpi
def test_two_ranks_sum_host_and_device_buffers_gather_broadcast_and_catch_a_divergence(tmp_path):
    result = run_ranks(tmp_path, """
        import numpy as np
        import standin
        from slotref.training.collectives import DistributedError, MPIWorld, local_slice
        from slotref.training.launch import world
        from slotref.flat import FlatTree

        w = world()
        assert isinstance(w, MPIWorld) and w.size == 2 and w.local_size == 2
        flat = FlatTree.from_tree([np.full((2, 3), w.rank + 1, np.float32), np.arange(4.0) * (w.rank + 1),
                                   np.asarray(w.rank, np.float32)])
        for b in flat.buffers.values():
            w.allreduce_sum_(b)
        a, b, c = flat.tree
        assert (a == 3).all() and (b == 3 * np.arange(4.0)).all() and c == 1, (a, b, c)
        device = standin.standin_xp.asarray(np.arange(5, dtype=np.float32) * (w.rank + 1))
        assert w.allreduce_sum_(device) is device and isinstance(device, standin.StandinArray)
        assert (device.get() == 3 * np.arange(5)).all(), device.get()
        shards = w.gather({"rank": w.rank, "rows": np.arange(w.rank + 1)})
        assert shards is None if w.rank else [s["rank"] for s in shards] == [0, 1]
        assert w.broadcast(10 * w.rank + 7) == 7
        assert local_slice(8, w.rank, w.size) == slice(4 * w.rank, 4 * w.rank + 4)
        w.check_same((1.0, float("nan")))
        try:
            w.check_same(float(w.rank))
        except DistributedError as err:
            print(f"rank {w.rank} caught: {err}")
        print(w.describe())
        print(f"done {w.rank}", flush=True)  # one write: the ranks share the pipe
        """)
    assert result.returncode == 0, result.stderr
    assert "done 0" in result.stdout and "done 1" in result.stdout
    for rank in (0, 1):
        assert f"rank {rank} caught: parameters diverged across ranks: ranks [1] differ from rank 0" in result.stdout
    assert "world: 2 ranks on 1 host(s)" in result.stdout
    assert "allreduce: host (MPI)" in result.stdout or "allreduce: nccl" in result.stdout


@needs_mpi
def test_a_failing_rank_ends_the_job_with_one_line_naming_it(tmp_path):
    result = run_ranks(tmp_path, """
        import numpy as np
        from slotref.training.launch import world

        w = world()
        with w.fail_fast():
            if w.rank == 1:
                raise FloatingPointError("loss became nan at step 3")
            w.allreduce_sum_(np.ones(3))  # rank 0 waits for rank 1 here
            print("rank 0 went on")
        """)
    assert result.returncode != 0
    assert "rank 1 of 2: FloatingPointError: loss became nan at step 3" in result.stderr
    assert "went on" not in result.stdout


@needs_mpi
def test_two_ranks_reduce_the_full_batch_gradient_and_stay_identical_after_adam(tmp_path):
    result = run_ranks(tmp_path, """
        import autograd
        import numpy as np
        from slotref.backend import get_backend, host_rng, tree_leaves
        from slotref.training.collectives import GradientSync, checksum
        from slotref.training.launch import world
        from slotref.flat import FlatTree
        from slotref.models import init_model
        from slotref.optim import Adam
        from slotref.training.tasks import make_task
        from test_distributed import global_batch, tiny_task

        w, be, config, batch = world(), get_backend("cpu", "float64"), tiny_task("setpred"), 4
        params = FlatTree.from_tree(be.tree_asarray(init_model(host_rng(0, 0), config.model)))
        task = make_task(config)
        images, targets, noise = global_batch(be, config, batch, np.random.default_rng(1))
        sync = GradientSync(w, batch, params.layout)
        s = sync.slice
        loss, grads = autograd.value_and_grad(task.loss)(params.tree, images[s], targets[s], noise[s])
        total, summed, stops = sync.reduce(loss, grads, stop=w.rank == 1)
        assert stops == 1, stops
        assert isinstance(summed, FlatTree) and summed.layout is params.layout
        if w.is_root:  # the full batch in one process
            ref_loss, ref_grads = autograd.value_and_grad(task.loss)(params.tree, images, targets, noise)
            want = params.layout.flatten(ref_grads).buffers["float64"]
            worst = np.max(np.abs(summed.buffers["float64"] - want)) / np.max(np.abs(want))
            print("largest difference from the full-batch gradient, relative", worst)
            assert worst <= 1e-12 and abs(float(total) - float(ref_loss)) <= 1e-12 * abs(float(ref_loss))
        adam = Adam()
        state = adam.init(params)
        adam.update(params, summed, state, 1e-3)
        w.check_same(checksum(params.buffers))
        print("parameters after Adam", checksum(params.buffers))
        print(f"done {w.rank}", flush=True)  # one write: the ranks share the pipe
        """)
    assert result.returncode == 0, result.stderr
    assert "done 0" in result.stdout and "done 1" in result.stdout


# --------------------------------------------------------------------------
# The training loop under mpiexec -n 2 against one process at the same global batch.

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The tiny files of tests/training/test_train.py: CLEVR-like scenes at 32x32, Tetrominoes at 35x35."""
    from slotref.data.hdf5 import write_dataset

    d = tmp_path_factory.mktemp("data")
    write_dataset("clevr-shapes", d / "clevr.h5", 96, 0, resolution=32, min_objects=2, max_objects=4,
                  progress=False, workers=1)
    write_dataset("tetrominoes", d / "tetrominoes.h5", 48, 0, progress=False, workers=1)
    return d


def checkpoint_params(path, group="params") -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f[group].visititems(lambda name, item: out.__setitem__(name, item[()]) if hasattr(item, "shape") else None)
        return {"step": int(f.attrs["step"]), "params": out}


def assert_close_checkpoints(a, b, rtol):
    """Same step; every parameter within ``rtol`` of the largest parameter.

    Except where the gradient is zero but for rounding (Adam's first moment below 1e-6 of its largest:
    e.g. the offset of the slots' LayerNorm, a shift common to all slots that a softmax over slots
    ignores). Adam divides such a gradient by its own size and steps by up to lr whichever its sign,
    so there the ranks' and the process's rounding may differ by the sum of the learning rates.
    """
    ca, cb = checkpoint_params(a), checkpoint_params(b)
    assert ca["step"] == cb["step"] and sorted(ca["params"]) == sorted(cb["params"])
    m = checkpoint_params(b, "adam/m")["params"]
    m_scale = max(np.max(np.abs(v)) for v in m.values())
    scale = max(np.max(np.abs(v)) for v in cb["params"].values())
    worst = 0.0
    for k, want in cb["params"].items():
        diff = np.abs(ca["params"][k] - want)
        noise = np.abs(m[k]) <= 1e-6 * m_scale
        assert np.all(diff[noise] <= 2 * 4e-4 * ca["step"]), k  # base learning rate 4e-4 or less
        worst = max(worst, float(np.max(diff[~noise], initial=0.0)) / scale)
    assert worst <= rtol, f"parameters differ by {worst:.2e} of the largest, more than {rtol:g}"
    return worst


TRAIN_ON_RANKS = """
    import os, signal, sys
    from dataclasses import replace
    from pathlib import Path
    from slotref.training.launch import world
    from slotref.training.loop import train
    from slotref.training.tasks import DiscoveryTask, SetPredictionTask
    from test_train import discovery_run, setpred_run

    w = world()
    data, out = Path(sys.argv[1]), Path(sys.argv[2])

    def on_rank(rank, task_cls, call, action):
        # ``action()`` on one rank in its ``call``-th loss evaluation (step ``call`` + 1)
        original, calls = task_cls.loss, []
        def loss(task, *args):
            calls.append(1)
            if w.rank == rank and len(calls) == call + 1:
                action()
            return original(task, *args)
        task_cls.loss = loss
"""


def train_on_ranks(tmp_path, data, body: str) -> subprocess.CompletedProcess:
    """``body`` after TRAIN_ON_RANKS's preamble, under mpiexec -n 2, with ``data`` and ``out`` = tmp_path."""
    return run_ranks(tmp_path, textwrap.dedent(TRAIN_ON_RANKS) + textwrap.dedent(body), args=[data, tmp_path],
                     timeout=120)


@needs_mpi
def test_two_ranks_train_set_prediction_as_one_process_and_one_process_resumes_them(tmp_path, tiny_data):
    from test_train import setpred_run
    from slotref.training.loop import train

    config = setpred_run(tiny_data, steps=4, eval_every=4)
    result = train_on_ranks(tmp_path, tiny_data, """
        config = setpred_run(data, steps=4, eval_every=4)
        two = train(config, out / "two", progress=False)
        train(replace(config, dtype="float64"), out / "two64", progress=False)
        on_rank(1, SetPredictionTask, 2, lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C in step 3
        try:
            train(config, out / "interrupted", progress=False)
        except KeyboardInterrupt as err:
            print(f"rank {w.rank}: {err}")
        if w.is_root:
            print("evaluation", two)
        """)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):  # one rank's Ctrl-C stops both after the same step
        assert re.search(rf"rank {rank}: interrupted( \(Ctrl-C\))? after step 3; checkpoint saved", result.stdout)
    one = tmp_path / "one"
    train(config, one, progress=False)
    print("float32", assert_close_checkpoints(tmp_path / "two" / "checkpoint.h5", one / "checkpoint.h5", 1e-5))
    train(replace(config, dtype="float64"), tmp_path / "one64", progress=False)
    print("float64", assert_close_checkpoints(tmp_path / "two64" / "checkpoint.h5", tmp_path / "one64" / "checkpoint.h5",
                                              1e-12))
    metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 4]  # rank 0 alone writes
    assert metrics[-1]["eval"].keys() == json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])["eval"].keys()

    resumed = tmp_path / "interrupted"
    assert checkpoint_params(resumed / "checkpoint.h5")["step"] == 3
    train(config, resumed, resume=True, progress=False)  # one process continues the two ranks' run
    assert_close_checkpoints(resumed / "checkpoint.h5", one / "checkpoint.h5", 1e-5)


@needs_mpi
def test_two_ranks_train_tetrominoes_discovery_as_one_process(tmp_path, tiny_data):
    from test_train import discovery_run
    from slotref.training.loop import train

    result = train_on_ranks(tmp_path, tiny_data, """
        print("evaluation", train(discovery_run(data), out / "two", progress=False))
        """)
    assert result.returncode == 0, result.stderr
    one = train(discovery_run(tiny_data), tmp_path / "one", progress=False)
    assert_close_checkpoints(tmp_path / "two" / "checkpoint.h5", tmp_path / "one" / "checkpoint.h5", 1e-5)
    two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    assert two.keys() == one.keys() and two["mse"] == pytest.approx(one["mse"], rel=1e-4)


@needs_mpi
def test_a_failing_rank_ends_training_with_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_data):
    result = train_on_ranks(tmp_path, tiny_data, """
        def fail():
            raise RuntimeError("injected failure in step 3")
        on_rank(1, SetPredictionTask, 2, fail)
        train(setpred_run(data, steps=4), out / "run", progress=False)
        print("rank", w.rank, "finished")
        """)
    assert result.returncode != 0 and "finished" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("rank 1 of 2:")]
    assert lines == ["rank 1 of 2: RuntimeError: injected failure in step 3"], result.stderr
    assert checkpoint_params(tmp_path / "run" / "checkpoint.h5")["step"] == 2  # checkpoint_every 2


@needs_mpi
def test_info_under_mpiexec_names_the_world_the_ranks_and_the_allreduce_path(tmp_path):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "cli.py", "info"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("world: 2 ranks on 1 host(s)") == 1  # rank 0 alone prints
    assert "allreduce: host (MPI)" in result.stdout and "ranks 0 (local 0), 1 (local 1)" in result.stdout


# --------------------------------------------------------------------------
# train --procs: the ranks started by the command itself.

def test_auto_procs_takes_the_largest_divisor_of_the_batch_within_the_cores_and_4_examples_a_rank():
    from slotref.training.launch import auto_procs

    assert [auto_procs(16, cores) for cores in (1, 2, 3, 4, 8, 64)] == [1, 2, 2, 4, 4, 4]
    assert auto_procs(32, 3) == 2 and auto_procs(32, 64) == 8 and auto_procs(512, 12) == 8
    assert auto_procs(4, 8) == 1 and auto_procs(6, 8) == 1 and auto_procs(12, 8) == 3


def test_procs_errors_name_the_option(tmp_path):
    from click.testing import CliRunner

    from slotref.cli import main

    args = ["train", "--task", "setpred", "--fast-dev-run", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args + ["--procs", "two"])
    assert result.exit_code == 2 and "'--procs': 'two': a number of processes (1, 2, ...) or auto" in result.output
    result = CliRunner().invoke(main, args + ["--procs", "3"])  # the fast dev run's batch is 4
    assert result.exit_code == 2 and "--procs: 3: the batch of 4 does not divide among 3" in result.output
    assert not (tmp_path / "r").exists()


def train_command(tmp_path, out, *args, env=None, timeout=120):
    command = [sys.executable, "cli.py", "train", "--task", "setpred", "--quiet", "--data-dir", str(tmp_path / "data"),
               "--out", str(tmp_path / out), *args]
    return subprocess.run(command, cwd=ROOT, env=env or os.environ, capture_output=True, text=True, timeout=timeout)


@needs_mpi
def test_procs_2_starts_two_ranks_that_train_as_the_single_process(tmp_path):
    one = train_command(tmp_path, "one", "--fast-dev-run", "--procs", "1")
    two = train_command(tmp_path, "two", "--fast-dev-run", "--procs", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    note = "note: training on 2 processes"
    assert note not in one.stdout and two.stdout.count(note) == 1  # rank 0 alone prints
    assert two.stdout.count("AP (%)") == 1
    assert_close_checkpoints(tmp_path / "two" / "checkpoint.h5", tmp_path / "one" / "checkpoint.h5", rtol=1e-5)


@needs_mpi
def test_procs_auto_uses_the_cores_for_a_typed_command_and_one_process_in_process(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slotref.cli import main
    from slotref.training.launch import auto_procs, usable_cores

    args = ["--steps", "2", "--data-size", "64", "--batch-size", "8"]
    env = {k: v for k, v in os.environ.items() if k != "SLOTREF_PROCS"}
    typed = train_command(tmp_path, "typed", *args, env=env)
    assert typed.returncode == 0, typed.stderr
    n = auto_procs(8, usable_cores())
    assert (f"note: training on {n} processes" in typed.stdout) == (n > 1)
    monkeypatch.delenv("SLOTREF_PROCS", raising=False)  # a CliRunner call never replaces its process
    result = CliRunner().invoke(main, ["train", "--task", "setpred", "--quiet", *args, "--data-dir",
                                       str(tmp_path / "data"), "--out", str(tmp_path / "runner")])
    assert result.exit_code == 0 and "training on" not in result.output, result.output


def test_a_launcher_that_cannot_start_ranks_is_reported_in_one_line(tmp_path, monkeypatch):
    from slotref.training import launch

    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'starting' >&2\necho 'Fatal error in MPI_Init: no shared memory' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(launch, "mpiexec_path", lambda: str(fake))
    assert launch.launch_error(2) == "Fatal error in MPI_Init: no shared memory"
    fake.write_text("#!/bin/sh\nexit 0\n")
    assert launch.launch_error(2) is None
