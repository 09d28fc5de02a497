"""The conformance kit (docs/conformance.md): golden cases, checks, diagnosis by line, entry points."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conformance_ports import GALLERY, make_port
from slotref.conformance import TOLERANCES, check, golden, layouts
from slotref.conformance.catalogue import BY_NAME, SLIPS
from slotref.conformance.pytest_plugin import slotref_conformance  # noqa: F401 - the fixture under test
from slotref.conformance.walk import PER_ITERATION, QUANTITIES, reference_forward, walk
from slotref.layers import gru_cell
from slotref.slot_attention import SlotAttentionConfig, init_slot_attention, sample_initial_slots, slot_attention

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "conformance"
sys.path.insert(0, str(EXAMPLES))


# --------------------------------------------------------------------------
# The golden cases.

@pytest.mark.parametrize("case", golden.CASES, ids=golden.CASE_NAMES)
def test_walk_final_slots_equal_slot_attention_bit_for_bit(case):
    data = golden.read_module_case(case.name)
    initial = sample_initial_slots(data["params"], data["noise"])
    expected = slot_attention(data["params"], data["inputs"], initial, case.num_iterations, case.config())
    got = walk(data["params"], data["inputs"], data["noise"], case.num_iterations, case.epsilon)
    assert np.array_equal(got, expected)
    assert np.array_equal(data["slots"], expected)


def test_walk_equals_slot_attention_bit_for_bit_at_paper_size(rng):
    config = SlotAttentionConfig()
    params = init_slot_attention(rng, config)
    inputs, noise = rng.standard_normal((2, 64, 64)), rng.standard_normal((2, 7, 64))
    expected = slot_attention(params, inputs, sample_initial_slots(params, noise), 3, config)
    assert np.array_equal(walk(params, inputs, noise, 3, config.epsilon), expected)


def assert_same_golden_file(fresh, shipped):
    """Bit for bit where the shipped files were made with this machine's numerics (``numerics.txt``);
    otherwise the same names, attributes and dtypes, and every value to 1e-12 relative."""
    exact = golden.same_numerics()
    with h5py.File(fresh) as a, h5py.File(shipped) as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert names_a == names_b
        for name in names_a:
            assert dict(a[name].attrs) == dict(b[name].attrs), name
            if not isinstance(a[name], h5py.Dataset):
                continue
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if exact:
                assert x.tobytes() == y.tobytes(), name
            else:
                assert np.max(np.abs(x - y), initial=0.0) <= 1e-12 * max(1.0, np.max(np.abs(y), initial=0.0)), name
    if exact:
        assert Path(fresh).read_bytes() == Path(shipped).read_bytes()


def test_golden_files_regenerate_bit_for_bit(tmp_path):
    fresh = golden.write_module_cases(tmp_path / "module.h5")
    assert_same_golden_file(fresh, golden.GOLDEN_DIR / golden.MODULE_FILE)


def test_golden_cases_hold_every_intermediate_and_gradient():
    for case in golden.CASES:
        data = golden.read_module_case(case.name)
        assert set(data["trace"]) == set(QUANTITIES)
        for name in PER_ITERATION:
            assert data["trace"][name].shape[0] == case.num_iterations
        assert [p for p, _ in golden.leaves(data["grads"]["params"])] == [p for p, _ in golden.leaves(data["params"])]
        assert data["grads"]["inputs"].shape == data["inputs"].shape
    assert (golden.GOLDEN_DIR / golden.MODULE_FILE).stat().st_size < 1_000_000


# --------------------------------------------------------------------------
# Right ports pass.

def test_the_reference_itself_passes_every_check():
    report = check(reference_forward)
    assert report.ok, str(report)
    # Bit for bit on the golden cases (the permutation properties reorder sums: rounding).
    assert max(r.error for r in report.results if r.check in ("forward", "gradients")) == 0.0


def test_a_float64_port_passes():
    import numpy_port
    report = check(numpy_port.forward)
    assert report.ok, str(report)
    assert max(r.error for r in report.results) < TOLERANCES["float64"] / 1000


def test_a_float32_port_passes():
    import numpy_port
    report = check(numpy_port.forward, dtype="float32")
    assert report.ok, str(report)
    assert max(r.error for r in report.results) > 1e-8  # it really ran in float32


def test_a_port_that_promotes_float32_to_float64_is_told_so():
    forward, _ = make_port(None)

    def promoting(params, inputs, noise, num_iterations, epsilon=1e-8):
        return forward(params, inputs.astype(np.float64), noise, num_iterations, epsilon=epsilon)
    result = check(promoting, dtype="float32", cases=["paper_like"], properties=False).results[0]
    assert result.status == "pass" and "did not compute in float32" in result.hint


def test_the_gallery_port_without_slip_passes():
    assert check(*make_port(None)).ok


# --------------------------------------------------------------------------
# The gallery of wrong ports: each caught and diagnosed at its line, with its hint.

# The cases on which every catalogued slip shows, in float32 too (epsilon: large_epsilon; LayerNorm: small_inputs).
FEW = ["paper_like", "large_epsilon", "small_inputs"]


def _first_failure(report):
    assert not report.ok, "the slip went unnoticed"
    return report.failures[0]


# A port that detaches mu and sigma has, at T = 0, no input that reaches its output: autograd says so.
@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@pytest.mark.parametrize("slip", list(GALLERY))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_traced_port_with_a_slip_is_diagnosed_at_its_line(slip, dtype):
    cases = None if dtype == "float64" else FEW   # every case once; float32 on those that show every slip
    failure = _first_failure(check(*make_port(slip), dtype=dtype, cases=cases, properties=False))
    assert (failure.slip, failure.line) == (slip, GALLERY[slip]), str(failure)
    assert failure.hint == BY_NAME[slip].hint
    assert BY_NAME[slip].line == GALLERY[slip]


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@pytest.mark.parametrize("slip", [s for s in GALLERY if BY_NAME[s].ops is not None])
def test_an_untraced_port_with_a_slip_is_named_by_its_outputs(slip):
    failure = _first_failure(check(*make_port(slip, traced=False), cases=FEW, properties=False))
    assert (failure.slip, failure.line) == (slip, GALLERY[slip]), str(failure)


def test_an_untraced_biased_port_still_fails_with_a_pointer_to_the_trace():
    failure = _first_failure(check(make_port("projection_bias", traced=False)[0], properties=False))
    assert failure.check == "forward" and "trace" in failure.hint


def test_the_first_traced_quantity_that_differs_is_named():
    failure = _first_failure(check(make_port("gru_gate_order")[0], cases=["paper_like"], properties=False))
    assert failure.quantity == "slots_gru, iteration 1" and failure.line == 9
    failure = _first_failure(check(make_port("layer_norm_epsilon")[0], cases=["paper_like"], properties=False))
    assert failure.quantity == "inputs_norm"


def test_every_catalogued_slip_is_in_the_gallery():
    assert {s.name for s in SLIPS} == set(GALLERY)


def test_a_parameter_without_gradient_is_named():
    forward, grad = make_port(None)

    def grad_without_gru(*args, **kwargs):
        d_params, d_inputs = grad(*args, **kwargs)
        return {k: v for k, v in d_params.items() if k != "gru"}, d_inputs
    failure = _first_failure(check(forward, grad_without_gru, cases=["paper_like"], properties=False))
    assert failure.check == "gradients" and failure.line == 9
    assert "no gradient reaches gru/" in failure.hint


def test_a_port_that_raises_fails_its_checks_without_stopping_the_others():
    def broken(params, inputs, noise, num_iterations):
        raise RuntimeError("shape mismatch in my port")
    report = check(broken)
    assert all(r.status in ("fail", "skip") for r in report.results)
    assert "shape mismatch in my port" in report.failures[0].hint


# --------------------------------------------------------------------------
# Proposition 1 and call-time K, T against an adapter.

def test_a_port_that_sees_input_positions_breaks_proposition_1():
    forward, _ = make_port(None)

    def positional(params, inputs, noise, num_iterations, epsilon=1e-8):
        # A position code over the features (one constant per input would vanish in the LayerNorm).
        ramp = 0.1 * np.linspace(0, 1, inputs.shape[1])[None, :, None] * np.cos(np.arange(inputs.shape[2]))
        return forward(params, inputs + ramp, noise, num_iterations, epsilon=epsilon)
    report = check(positional, cases=["paper_like"])
    assert {r.check for r in report.failures} == {"forward", "permute_inputs", "call_time_k_t"}


def test_a_port_with_slot_positions_breaks_proposition_1():
    forward, _ = make_port(None)

    def indexed(params, inputs, noise, num_iterations, epsilon=1e-8):
        slots = forward(params, inputs, noise, num_iterations, epsilon=epsilon)
        return slots + 0.01 * np.arange(slots.shape[1])[None, :, None]
    report = check(indexed, cases=["paper_like"])
    assert "permute_slots" in {r.check for r in report.failures}
    assert "permute_inputs" not in {r.check for r in report.failures}


def test_a_port_that_fixes_k_and_t_fails_the_call_time_check():
    forward, _ = make_port(None)

    def fixed_t(params, inputs, noise, num_iterations, epsilon=1e-8):
        return forward(params, inputs, noise, 3, epsilon=epsilon)
    report = check(fixed_t, cases=["paper_like"])
    assert [r.check for r in report.failures] == ["call_time_k_t"]


# --------------------------------------------------------------------------
# Layout converters.

def test_torch_gru_layout_computes_pytorchs_equations(rng):
    params = init_slot_attention(rng, SlotAttentionConfig(input_size=4, slot_size=5))["gru"]
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    x, h = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    t = layouts.to_torch_gru_cell(params)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    gi, gh = x @ t["weight_ih"].T + t["bias_ih"], h @ t["weight_hh"].T + t["bias_hh"]
    (i_r, i_z, i_n), (h_r, h_z, h_n) = np.split(gi, 3, axis=1), np.split(gh, 3, axis=1)  # PyTorch: [r, z, n]
    r, z = sig(i_r + h_r), sig(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    np.testing.assert_allclose((1 - z) * n + z * h, gru_cell(params, x, h), rtol=1e-13, atol=1e-13)
    back = layouts.from_torch_gru_cell(**t)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_keras_and_linear_layouts_round_trip(rng):
    gru = init_slot_attention(rng, SlotAttentionConfig(input_size=4, slot_size=5))["gru"]
    back = layouts.from_keras_gru_cell(*layouts.to_keras_gru_cell(gru))
    assert all(np.array_equal(back[k], gru[k]) for k in gru)
    linear = {"w": rng.standard_normal((4, 6)), "b": rng.standard_normal(6)}
    t = layouts.to_torch_linear(linear)
    assert t["weight"].shape == (6, 4)
    back = layouts.from_torch_linear(t["weight"], t["bias"])
    assert np.array_equal(back["w"], linear["w"]) and np.array_equal(back["b"], linear["b"])


# --------------------------------------------------------------------------
# Entry points: the command, the pytest fixture, the framework examples.

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "slotref", "conformance", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli_passes_the_numpy_example_and_prints_one_line_per_check():
    done = _cli("--adapter", "examples/conformance/numpy_port.py:forward", "--case", "paper_like",
                "--dtype", "float32")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["PASS", "forward"], ["PASS", "gradients"]]
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("OK")


def test_cli_fails_a_wrong_port_naming_the_line_and_slip():
    done = _cli("--adapter", "tests/conformance/conformance_ports.py:softmax_over_inputs", "--case", "paper_like",
                "--no-properties", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    forward = next(r for r in report["results"] if r["check"] == "forward")
    assert (forward["status"], forward["line"], forward["slip"]) == ("fail", 7, "softmax_over_inputs")


def test_cli_regenerates_the_golden_files(tmp_path):
    done = _cli("--regenerate", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in ("module.h5", "models.h5"):
        assert_same_golden_file(tmp_path / name, golden.GOLDEN_DIR / name)
    assert (tmp_path / golden.NUMERICS_FILE).read_text().strip() == golden.numerics()


def test_the_pytest_fixture_passes_a_right_port_and_fails_a_wrong_one(slotref_conformance):  # noqa: F811
    assert slotref_conformance(*make_port(None), cases=["paper_like"]).ok
    with pytest.raises(AssertionError, match="line 8 .*epsilon_after_normalisation"):
        slotref_conformance(*make_port("epsilon_after_normalisation"), cases=["large_epsilon"])


def test_the_pytorch_example_conforms():
    pytest.importorskip("torch")
    import torch_port
    assert check(torch_port.forward, cases=["paper_like", "no_iterations"]).ok
    assert check(torch_port.forward, dtype="float32", cases=["paper_like"], properties=False).ok


def test_the_keras_example_conforms():
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    import keras_port
    assert check(keras_port.forward, cases=["paper_like", "no_iterations"]).ok
