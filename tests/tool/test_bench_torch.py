"""The PyTorch twin used by ``bench --what step`` has slotref's architecture (skipped without PyTorch)."""

import numpy as np
import pytest

from slotref.backend import tree_leaves
from slotref.models import discovery_config, init_model, setpred_config

torch = pytest.importorskip("torch")
from slotref.bench import torch_twin  # noqa: E402


@pytest.mark.parametrize("config", [setpred_config(64), setpred_config(128), discovery_config("tetrominoes"),
                                    discovery_config("multi-dsprites"), discovery_config("clevr6")],
                         ids=["setpred-64", "setpred-128", "tetrominoes", "multi-dsprites", "clevr6"])
def test_twin_has_the_same_parameter_count_and_output_shape(config):
    ours = sum(leaf.size for _, leaf in tree_leaves(init_model(np.random.default_rng(0), config)))
    _, model = torch_twin.build(config)
    assert sum(p.numel() for p in model.parameters()) == ours
    h, w = config.resolution
    out = model(torch.zeros(2, 3, h, w), torch.zeros(2, config.num_slots, config.slot_attention.slot_size))
    expected = (2, config.num_slots, 19) if config.task == "setpred" else (2, 3, h, w)
    assert tuple(out.shape) == expected


def test_hungarian_huber_matches_slotref_loss():
    from slotref.losses import hungarian_huber_loss

    rng = np.random.default_rng(0)
    predictions, targets = rng.uniform(0, 1, (3, 4, 19)), rng.uniform(0, 1, (3, 4, 19))
    ours = float(hungarian_huber_loss(predictions, targets))
    theirs = float(torch_twin.hungarian_huber(torch, torch.tensor(predictions), torch.tensor(targets)))
    assert theirs == pytest.approx(ours, rel=1e-12)


def test_the_twin_is_timed_in_a_process_of_its_own():
    seconds = torch_twin.step_seconds_apart("setpred", 16, 2, repeats=1)
    assert 0 < seconds < 60
