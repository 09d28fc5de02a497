"""The conformance kit's whole-model cases: set prediction, the autoencoder on both decoders, AP."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from conformance_ports import make_average_precision
from test_conformance import assert_same_golden_file
from slotref.conformance import check_models, golden, model_cases
from slotref.conformance.model_checks import (reference_autoencoder, reference_autoencoder_grad, reference_setpred,
                                              reference_setpred_grad, symmetric_padding)
from slotref.losses import hungarian_huber_loss
from slotref.metrics import average_precision

ROOT = Path(__file__).resolve().parents[2]
EVERYTHING = dict(setpred=reference_setpred, set_loss=hungarian_huber_loss, setpred_grad=reference_setpred_grad,
                  autoencoder=reference_autoencoder, autoencoder_grad=reference_autoencoder_grad,
                  average_precision=average_precision)


def test_model_golden_file_regenerates_bit_for_bit(tmp_path):
    fresh = model_cases.write_model_cases(tmp_path / "models.h5")
    assert_same_golden_file(fresh, golden.GOLDEN_DIR / model_cases.MODELS_FILE)


def test_model_cases_hold_outputs_losses_and_gradients():
    setpred = model_cases.read_model_case("setpred")
    assert setpred["predictions"].shape == (2, 3, 19) and setpred["loss"].shape == ()
    assert [p for p, _ in golden.leaves(setpred["grads"])] == [p for p, _ in golden.leaves(setpred["params"])]
    for name in ("discovery_clevr", "discovery_full"):
        case = model_cases.read_model_case(name)
        assert case["recons"].shape[:2] == case["masks"].shape[:2] == (2, 3)
        np.testing.assert_allclose(case["masks"].sum(axis=1), 1.0)
    ties = model_cases.read_model_case("ap_confidence_ties")["predictions"][..., 18].ravel()
    assert len(np.unique(ties)) < len(ties)


def test_slotref_itself_passes_every_model_check():
    report = check_models(**EVERYTHING)
    assert report.ok and len(report.results) == 10, str(report)


def test_a_float32_run_of_the_models_passes():
    report = check_models(setpred=reference_setpred, autoencoder=reference_autoencoder, dtype="float32")
    assert report.ok, str(report)
    assert max(r.error for r in report.results) > 1e-9


def test_symmetric_padding_is_caught_and_named():
    with symmetric_padding():
        report = check_models(setpred=reference_setpred, autoencoder=reference_autoencoder)
    failed = {r.case: r for r in report.failures}
    assert set(failed) == {"setpred", "discovery_clevr"}   # stride 1, odd kernels: SAME is symmetric
    assert all(r.slip == "symmetric_padding" for r in failed.values())


def test_an_independent_ap_port_passes_and_each_wrong_rule_fails_its_case():
    assert check_models(average_precision=make_average_precision()).ok
    unmatched = check_models(average_precision=make_average_precision(rule="nearest_unmatched"))
    assert [r.case for r in unmatched.failures] == ["ap_identical_objects"]
    unstable = check_models(average_precision=make_average_precision(stable_ties=False))
    assert [r.case for r in unstable.failures] == ["ap_confidence_ties"]


def test_a_set_loss_that_averages_the_matched_pairs_fails():
    def mean_loss(predictions, targets):
        return hungarian_huber_loss(predictions, targets) / predictions.shape[1]
    assert [r.check for r in check_models(set_loss=mean_loss).failures] == ["set_loss"]


def test_cli_runs_the_model_adapters():
    done = subprocess.run([sys.executable, "-m", "slotref", "conformance", "--models",
                           "examples/conformance/models_adapter.py", "--json"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(json.loads(done.stdout)["results"]) == 10
    done = subprocess.run([sys.executable, "-m", "slotref", "conformance", "--models", "tests/conformance/conformance_ports.py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "ap_confidence_ties" in done.stdout
