"""The paper's two models (appendix E) as a specification.

* Architecture: the encoder of Table 4 (CLEVR; strides 1, 2, 2, 1 for property
  prediction) and Table 5 (Tetrominoes / Multi-dSprites), the decoders of
  Tables 6 and 7, the set-prediction head of Table 8, the Slot MLP baseline of
  Tables 9 and 10: read off the parameter shapes at the paper's sizes; and
  Tables 4-8 row by row from the layer calls the models make (``LayerTrace``):
  each row's activation (ReLU where the table says, none on the last layer,
  the sigmoid of the head, the softmax of the alpha masks across slots) and
  its stride, as the spatial size after it at the paper's image sizes.
* Output shapes and ranges of ``set_prediction`` and ``autoencoder`` at tiny
  sizes; K and T as call arguments; alpha masks that sum to one over slots.
* Proposition 1 at model level: permuting the initial slot noise permutes the
  output set.
* float64 gradients of both training losses against finite differences, and
  the same forward and backward on the stand-in device as on NumPy.
* Bad input: a ValueError that names the shapes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotref import layers, models
from slotref.backend import host_rng, tree_leaves
from slotref.losses import hungarian_huber_loss, mse
from slotref.models import (ModelConfig, autoencoder, decoder_layers, discovery_config, encoder, init_model,
                            set_prediction, setpred_config, slot_mlp)
from slotref.slot_attention import SlotAttentionConfig

TINY_SA = SlotAttentionConfig(input_size=8, slot_size=8, mlp_hidden_size=16)
DISCOVERY = ("tetrominoes", "multi-dsprites", "clevr6")


def tiny_setpred(**overrides) -> ModelConfig:
    """Table 4 + Table 8 with 8 channels everywhere, 16x16 images, K = 3."""
    base = dict(resolution=(16, 16), encoder_channels=8, mlp_size=8, num_slots=3, head_hidden=8,
                slot_attention=TINY_SA)
    return replace(setpred_config(16), **{**base, **overrides})


def tiny_discovery(name: str, **overrides) -> ModelConfig:
    """Tables 4/5 + 6/7 with 8 channels; the CLEVR decoder broadcast to 1x1 so that it ends at 16x16."""
    size = dict(resolution=(16, 16), decoder_init_resolution=(1, 1)) if name == "clevr6" else dict(resolution=(10, 10))
    return discovery_config(name, encoder_channels=8, mlp_size=8, decoder_channels=8, slot_attention=TINY_SA,
                            **{**size, **overrides})


def images_for(config: ModelConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(batch, *config.resolution, 3))


def noise_for(config: ModelConfig, batch: int = 2, num_slots: int | None = None, seed: int = 1) -> np.ndarray:
    k = num_slots or config.num_slots
    return np.random.default_rng(seed).standard_normal((batch, k, config.slot_attention.slot_size))


def random_targets(rng, batch: int, m: int) -> np.ndarray:
    """Valid 19-number targets: coords in [0, 1], one-hots, presence 1."""
    t = np.zeros((batch, m, 19))
    t[..., :3] = rng.uniform(size=(batch, m, 3))
    for start, n in ((3, 2), (5, 2), (7, 3), (10, 8)):
        t[..., start:start + n] = np.eye(n)[rng.integers(n, size=(batch, m))]
    t[..., 18] = 1.0
    return t


# --------------------------------------------------------------------------
# Architecture read off the parameters (full paper sizes; initialisation only).

def conv_shapes(params):
    return [(c["w"].shape, c["b"].shape) for c in params["convs"]]


def test_setpred_encoder_is_table_4_with_strides_1_2_2_1():
    config = setpred_config(128)
    assert config.encoder_strides == (1, 2, 2, 1)
    assert config.feature_resolution() == (32, 32)
    p = init_model(host_rng(0, 0), config)["encoder"]
    assert conv_shapes(p) == [((5, 5, 3, 64), (64,))] + [((5, 5, 64, 64), (64,))] * 3
    assert p["position_embed"]["w"].shape == (4, 64) and p["position_embed"]["b"].shape == (64,)
    assert p["norm"]["scale"].shape == (64,)
    assert [(l["w"].shape, l["b"].shape) for l in p["mlp"]] == [((64, 64), (64,)), ((64, 64), (64,))]


def test_clevr6_encoder_is_table_4_with_stride_1():
    config = discovery_config("clevr6")
    assert config.encoder_strides == (1, 1, 1, 1) and config.num_slots == 7
    p = init_model(host_rng(0, 0), config)["encoder"]
    assert conv_shapes(p) == [((5, 5, 3, 64), (64,))] + [((5, 5, 64, 64), (64,))] * 3
    assert [l["w"].shape for l in p["mlp"]] == [(64, 64), (64, 64)]


@pytest.mark.parametrize("name, resolution, k", [("tetrominoes", 35, 4), ("multi-dsprites", 64, 6)])
def test_tetrominoes_and_multi_dsprites_encoder_is_table_5(name, resolution, k):
    config = discovery_config(name)
    assert config.resolution == (resolution, resolution) and config.num_slots == k
    assert config.encoder_strides == (1, 1, 1, 1)
    p = init_model(host_rng(0, 0), config)["encoder"]
    assert conv_shapes(p) == [((5, 5, 3, 32), (32,))] + [((5, 5, 32, 32), (32,))] * 3
    assert [l["w"].shape for l in p["mlp"]] == [(32, 32), (32, 32)]
    assert config.slot_attention.input_size == 32 and config.slot_attention.slot_size == 64


def test_clevr_decoder_is_table_6():
    config = discovery_config("clevr6")
    assert config.decoder_init_resolution == (8, 8) and config.decoder_output_resolution() == (128, 128)
    assert decoder_layers(config) == [(5, 2, 64)] * 4 + [(5, 1, 64), (3, 1, 4)]
    p = init_model(host_rng(0, 0), config)["decoder"]
    assert p["position_embed"]["w"].shape == (4, 64)
    # Transposed kernels stored as Keras does: (kh, kw, out, in).
    assert [l["w"].shape for l in p["deconvs"]] == [(5, 5, 64, 64)] * 5 + [(3, 3, 4, 64)]


@pytest.mark.parametrize("name", ["tetrominoes", "multi-dsprites"])
def test_full_resolution_decoder_is_table_7(name):
    config = discovery_config(name)
    assert config.decoder == "full" and config.decoder_output_resolution() == config.resolution
    assert decoder_layers(config) == [(5, 1, 32)] * 3 + [(3, 1, 4)]
    p = init_model(host_rng(0, 0), config)["decoder"]
    assert [l["w"].shape for l in p["deconvs"]] == [(5, 5, 32, 64)] + [(5, 5, 32, 32)] * 2 + [(3, 3, 4, 32)]


def test_set_prediction_head_is_table_8():
    p = init_model(host_rng(0, 0), setpred_config(128))["head"]
    assert [(l["w"].shape, l["b"].shape) for l in p] == [((64, 64), (64,)), ((64, 19), (19,))]


def test_slot_attention_defaults_are_the_papers():
    config = setpred_config(128)
    assert (config.num_slots, config.num_iterations) == (10, 3)
    assert (config.slot_attention.slot_size, config.slot_attention.mlp_hidden_size) == (64, 128)


def test_slot_mlp_baseline_is_tables_9_and_10():
    p = init_model(host_rng(0, 0), setpred_config(128, model="slot-mlp"))
    assert "encoder" not in p and "slot_attention" not in p
    assert [l["w"].shape for l in p["slot_mlp"]["mlp"]] == [(768, 512), (512, 512), (512, 640)]
    p = init_model(host_rng(0, 0), discovery_config("clevr6", model="slot-mlp"))
    assert [l["w"].shape for l in p["slot_mlp"]["mlp"]] == [(768, 512), (512, 1024), (1024, 1024), (1024, 448)]
    assert [l["w"].shape for l in p["slot_mlp"]["slot_mlp"]] == [(64, 64), (64, 64)]


# --------------------------------------------------------------------------
# Activations and strides, table by table: the layer calls of the model traced.
#
# Each table is written out below as the rows the model must call, in order: the
# layer, the shape of its output (batch 1; 8 channels, which the tests above
# check at the paper's sizes, keep these cheap) and the activation applied to
# that output (None: it goes on as it is). Strides show as the spatial size after
# each row, at the paper's image sizes.

C = 8   # channels of every layer here


class LayerTrace:
    """Records the layer calls the model functions make: (layer, output shape, activation of that output).

    Layers are spied where ``slotref.models`` calls them, and ``layers.linear`` where ``layers.mlp``
    calls it; a call made inside a spied layer (the linear map of a position embedding) is part of that
    row. An activation belongs to a row when it is applied to that row's output array itself.
    """

    LAYERS = ((models, "conv2d"), (models, "conv_transpose2d"), (models, "broadcast_embed_conv_transpose2d"),
              (models, "soft_position_embed"), (models, "layer_norm"), (layers, "linear"))
    ACTIVATIONS = ((models, "relu"), (layers, "relu"), (models, "sigmoid"))

    def __init__(self, monkeypatch):
        self.calls, self.activated, self.softmax, self.depth = [], {}, [], 0
        for module, name in self.LAYERS:
            monkeypatch.setattr(module, name, self._layer(name, getattr(module, name)))
        for module, name in self.ACTIVATIONS:
            monkeypatch.setattr(module, name, self._activation(name, getattr(module, name)))
        real_softmax = models.softmax

        def softmax(x, axis=-1):
            self.softmax.append((x.shape, axis))
            return real_softmax(x, axis)
        monkeypatch.setattr(models, "softmax", softmax)

    def _layer(self, name, fn):
        def spy(*args, **kwargs):
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            if self.depth == 0:
                self.calls.append((name, out))   # the reference keeps the array's id unique
            return out
        return spy

    def _activation(self, name, fn):
        def spy(x):
            self.activated.setdefault(id(x), []).append(name)
            return fn(x)
        return spy

    def rows(self):
        return [(name, tuple(out.shape), "+".join(self.activated.get(id(out), [])) or None)
                for name, out in self.calls]


def narrow(config: ModelConfig) -> ModelConfig:
    """``config`` with C channels in the encoder, its MLP and the decoder (Slot Attention reads C inputs)."""
    return replace(config, encoder_channels=C, mlp_size=C, decoder_channels=C,
                   slot_attention=replace(config.slot_attention, input_size=C))


def spatial_sizes(size: int, strides) -> list[int]:
    """The output size of each SAME row of a CNN with these strides: ceil(size / stride), row by row."""
    sizes = []
    for s in strides:
        size = -(-size // s)
        sizes.append(size)
    return sizes


# Tables 4 and 5, the encoder's Conv 5x5 rows: the image size and each row's stride (Table 4's rows
# marked * have stride 2 for property prediction); every Conv row ReLU.
ENCODER_TABLES = {
    "table 4, set prediction": (setpred_config(128), 128, (1, 2, 2, 1)),
    "table 4, clevr6": (discovery_config("clevr6"), 128, (1, 1, 1, 1)),
    "table 5, tetrominoes": (discovery_config("tetrominoes"), 35, (1, 1, 1, 1)),
    "table 5, multi-dsprites": (discovery_config("multi-dsprites"), 64, (1, 1, 1, 1)),
}


@pytest.mark.parametrize("table", list(ENCODER_TABLES))
def test_encoder_rows_have_the_tables_strides_and_activations(monkeypatch, table):
    config, size, strides = ENCODER_TABLES[table]
    config = narrow(config)
    params = init_model(host_rng(0, 0), config)["encoder"]
    trace = LayerTrace(monkeypatch)
    encoder(params, images_for(config, batch=1), config)
    h = spatial_sizes(size, strides)[-1]
    assert trace.rows() == [
        *[("conv2d", (1, s, s, C), "relu") for s in spatial_sizes(size, strides)],  # Conv 5x5, ReLU
        ("soft_position_embed", (1, h, h, C), None),                                 # Position Embedding
        ("layer_norm", (1, h * h, C), None),                                         # Flatten, Layer Norm
        ("linear", (1, h * h, C), "relu"),                                           # MLP (per location), ReLU
        ("linear", (1, h * h, C), None),                                             # MLP (per location), -
    ]


# Tables 6 and 7, the decoder: the broadcast grid, then each Conv row's stride; ReLU on every row
# but the last (Conv 3x3 to RGB and alpha), whose alpha masks get a softmax across the slots.
DECODER_TABLES = {
    "table 6, clevr6": (discovery_config("clevr6"), 8, (2, 2, 2, 2, 1, 1)),
    "table 7, tetrominoes": (discovery_config("tetrominoes"), 35, (1, 1, 1, 1)),
    "table 7, multi-dsprites": (discovery_config("multi-dsprites"), 64, (1, 1, 1, 1)),
}


@pytest.mark.parametrize("table", list(DECODER_TABLES))
def test_decoder_rows_have_the_tables_strides_and_activations(monkeypatch, table):
    config, grid, strides = DECODER_TABLES[table]
    config = replace(narrow(config), num_slots=2)
    params = init_model(host_rng(0, 0), config)
    slots = noise_for(config, batch=1)                                         # (1, K, D)
    monkeypatch.setattr(models, "infer_slots", lambda *args, **kwargs: (slots, None))
    trace = LayerTrace(monkeypatch)
    out = autoencoder(params, images_for(config, batch=1), noise_for(config, batch=1), config)
    sizes = [grid * int(np.prod(strides[:i + 1])) for i in range(len(strides))]
    k, size = config.num_slots, sizes[-1]
    assert trace.rows() == [
        ("broadcast_embed_conv_transpose2d", (k, sizes[0], sizes[0], C), "relu"),  # Spatial Broadcast, Position
        *[("conv_transpose2d", (k, s, s, C), "relu") for s in sizes[1:-1]],       # Embedding, Conv 5x5: ReLU
        ("conv_transpose2d", (k, size, size, 4), None),                             # Conv 3x3, no activation
    ]
    assert trace.softmax == [((1, k, size, size, 1), 1)]                            # alpha masks, across slots
    assert out["recon_combined"].shape == (1, size, size, 3)


def test_set_prediction_head_rows_have_table_8s_activations(monkeypatch):
    config = narrow(setpred_config(128))
    params = init_model(host_rng(0, 0), config)
    slots = noise_for(config, batch=1)                                          # (1, K, D)
    monkeypatch.setattr(models, "infer_slots", lambda *args, **kwargs: slots)
    trace = LayerTrace(monkeypatch)
    predictions = set_prediction(params, images_for(config, batch=1), noise_for(config, batch=1), config)
    k = config.num_slots
    assert trace.rows() == [
        ("linear", (1, k, 64), "relu"),        # MLP (per slot), 64, ReLU
        ("linear", (1, k, 19), "sigmoid"),     # MLP (per slot), output size, Sigmoid
    ]
    assert trace.softmax == [] and predictions.shape == (1, k, 19)


def test_the_trace_sees_a_wrong_activation_or_stride(monkeypatch):
    # The tracer itself: a model with one activation or one stride changed gives other rows.
    config = narrow(setpred_config(32))
    params = init_model(host_rng(0, 0), config)["encoder"]
    traces = []
    for strides, last_relu in [((1, 2, 2, 1), False), ((1, 2, 1, 1), False), ((1, 2, 2, 1), True)]:
        with monkeypatch.context() as m:
            trace = LayerTrace(m)
            if last_relu:
                mlp = models.mlp
                m.setattr(models, "mlp", lambda p, x: models.relu(mlp(p, x)))
            encoder(params, images_for(config, batch=1), replace(config, encoder_strides=strides))
            traces.append(trace.rows())
    assert traces[0] != traces[1] and traces[0] != traces[2]
    assert traces[0][-1][2] is None and traces[2][-1][2] == "relu"


@pytest.mark.parametrize("init", ["glorot", "torch"])
@pytest.mark.parametrize("config", [setpred_config(32), discovery_config("tetrominoes")], ids=["setpred", "discovery"])
def test_parameters_are_float64_and_c_contiguous(config, init):
    config = replace(config, init=init)
    # C order is how a checkpoint reloads them; BLAS rounds other layouts
    # differently, which would break bitwise-exact resume.
    for path, leaf in tree_leaves(init_model(host_rng(0, 0), config)):
        assert leaf.dtype == np.float64 and leaf.flags.c_contiguous, path


@pytest.mark.parametrize("config", [setpred_config(32), discovery_config("tetrominoes"), discovery_config("clevr6")],
                         ids=["setpred", "tetrominoes", "clevr6"])
def test_torch_init_draws_every_kernel_and_bias_within_pytorchs_fan_in_bound(config):
    glorot = dict(tree_leaves(init_model(host_rng(0, 0), config)))
    torch = dict(tree_leaves(init_model(host_rng(0, 0), replace(config, init="torch"))))
    assert glorot.keys() == torch.keys()
    redrawn = 0
    for path, leaf in torch.items():
        group, name = path.rsplit("/", 1)
        assert leaf.shape == glorot[path].shape, path
        if group.endswith("gru"):  # nn.GRUCell: everything U(+-1/sqrt(hidden))
            bound = 1.0 / np.sqrt(torch[group + "/w_hidden"].shape[0])
        elif name in ("w", "b"):  # nn.Linear / nn.Conv2d / nn.ConvTranspose2d: U(+-1/sqrt(fan_in))
            kernel = torch[group + "/w"]
            bound = 1.0 / np.sqrt(kernel.shape[0] if kernel.ndim == 2 else np.prod(kernel.shape[:3]))
        else:  # LayerNorm and the slot distribution keep their values
            np.testing.assert_array_equal(leaf, glorot[path], err_msg=path)
            continue
        assert np.abs(leaf).max() <= bound, path
        assert leaf.size < 4 or np.abs(leaf).max() > 0.5 * bound, path  # drawn, not left at zero
        redrawn += 1
    assert redrawn > 10


def test_unknown_init_is_a_value_error():
    with pytest.raises(ValueError, match="init"):
        replace(setpred_config(32), init="he")


# --------------------------------------------------------------------------
# Forward passes at tiny sizes.

def test_set_prediction_outputs_a_set_of_19_numbers_in_0_1():
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    predictions, attn = set_prediction(params, images_for(config), noise_for(config), config, return_attention=True)
    assert predictions.shape == (2, 3, 19)
    assert np.all((predictions >= 0) & (predictions <= 1))
    # Strides 1, 2, 2, 1 of a 16x16 image: N = 4 * 4 inputs; attention (B, T, N, K), a softmax over slots.
    assert attn.shape == (2, 3, 16, 3)
    np.testing.assert_allclose(attn.sum(axis=-1), 1.0, rtol=1e-12)


def test_encoder_output_is_a_set_over_the_strided_feature_map():
    config = tiny_setpred(resolution=(17, 13))  # SAME padding: ceil(17/4) x ceil(13/4)
    params = init_model(host_rng(0, 0), config)
    features = encoder(params["encoder"], images_for(config), config)
    assert config.feature_resolution() == (5, 4)
    assert features.shape == (2, 20, 8)


@pytest.mark.parametrize("name", DISCOVERY)
def test_autoencoder_outputs_and_masks_sum_to_one_over_slots(name):
    config = tiny_discovery(name)
    params = init_model(host_rng(0, 0), config)
    images = images_for(config)
    k, (h, w) = config.num_slots, config.resolution
    out = autoencoder(params, images, noise_for(config), config)
    assert out["recon_combined"].shape == (2, h, w, 3)
    assert out["recons"].shape == (2, k, h, w, 3)
    assert out["masks"].shape == (2, k, h, w, 1)
    assert out["slots"].shape == (2, k, 8)
    assert out["attention"].shape == (2, 3, h * w, k)  # stride-1 encoder: one input per pixel
    np.testing.assert_allclose(out["masks"].sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(out["masks"] >= 0)
    np.testing.assert_allclose(out["recon_combined"], (out["recons"] * out["masks"]).sum(axis=1), rtol=1e-12)


def test_slots_and_iterations_are_call_arguments_for_set_prediction():
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    predictions, attn = set_prediction(params, images_for(config), noise_for(config, num_slots=6), config,
                                       num_iterations=5, return_attention=True)
    assert predictions.shape == (2, 6, 19)
    assert attn.shape == (2, 5, 16, 6)


@pytest.mark.parametrize("name", ["tetrominoes", "clevr6"])
def test_slots_and_iterations_are_call_arguments_for_discovery(name):
    config = tiny_discovery(name)
    params = init_model(host_rng(0, 0), config)
    k = config.num_slots + 2
    out = autoencoder(params, images_for(config), noise_for(config, num_slots=k), config, num_iterations=1)
    assert out["masks"].shape[1] == k and out["slots"].shape[1] == k
    assert out["attention"].shape[1] == 1
    np.testing.assert_allclose(out["masks"].sum(axis=1), 1.0, rtol=1e-12)


def test_more_iterations_change_the_output():
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    images, noise = images_for(config), noise_for(config)
    three = set_prediction(params, images, noise, config)
    assert np.array_equal(three, set_prediction(params, images, noise, config, num_iterations=3))
    assert not np.allclose(three, set_prediction(params, images, noise, config, num_iterations=4))


@given(perm=st.permutations(range(4)), seed=st.integers(0, 2**16))
def test_set_prediction_output_set_is_invariant_to_a_permutation_of_the_slot_noise(perm, seed):
    # Proposition 1 at model level: permuting the initial slots permutes the
    # predicted set in the same way, so the set (up to order) is unchanged.
    config = tiny_setpred(num_slots=4)
    params = init_model(host_rng(0, 0), config)
    images, noise = images_for(config, seed=seed), noise_for(config, seed=seed + 1)
    perm = list(perm)
    predictions = set_prediction(params, images, noise, config)
    permuted = set_prediction(params, images, noise[:, perm], config)
    np.testing.assert_allclose(permuted, predictions[:, perm], rtol=1e-10, atol=1e-12)


@given(perm=st.permutations(range(4)))
def test_autoencoder_reconstruction_is_invariant_to_a_permutation_of_the_slot_noise(perm):
    config = tiny_discovery("tetrominoes")
    params = init_model(host_rng(0, 0), config)
    images, noise = images_for(config), noise_for(config)
    perm = list(perm)
    out = autoencoder(params, images, noise, config)
    permuted = autoencoder(params, images, noise[:, perm], config)
    np.testing.assert_allclose(permuted["recon_combined"], out["recon_combined"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(permuted["masks"], out["masks"][:, perm], rtol=1e-10, atol=1e-12)


def test_slot_mlp_baseline_outputs():
    config = tiny_setpred(model="slot-mlp")
    params = init_model(host_rng(0, 0), config)
    images = images_for(config)
    slots = slot_mlp(params["slot_mlp"], images, config)
    assert slots.shape == (2, 3, 8)
    # Table 9: the last layer (slot size x num slots) has no activation.
    assert np.any(slots < 0)
    predictions = set_prediction(params, images, noise_for(config), config)
    assert predictions.shape == (2, 3, 19) and np.all((predictions >= 0) & (predictions <= 1))
    # Any input resolution: the baseline resizes to 16x16 first.
    assert set_prediction(params, images_for(tiny_setpred(resolution=(37, 20))), noise_for(config),
                          config).shape == (2, 3, 19)


def test_slot_mlp_baseline_for_discovery():
    config = tiny_discovery("tetrominoes", model="slot-mlp")
    params = init_model(host_rng(0, 0), config)
    out = autoencoder(params, images_for(config), noise_for(config), config)
    assert out["slots"].shape == (2, 4, 8)
    assert out["recon_combined"].shape == (2, 10, 10, 3)
    assert out["attention"] is None


# --------------------------------------------------------------------------
# Gradients (float64, finite differences) and the device path.

def assert_gradient_matches_finite_differences(loss, params, eps=1e-7, rtol=1e-5, atol=1e-9, seed=0):
    """Per parameter leaf: the directional derivative along a random unit vector, autograd vs central
    differences. (autograd's check_grads perturbs the whole tree at once along a direction whose norm
    grows with the parameter count, which crosses ReLU kinks of a real model; one unit direction per
    leaf does not, and a wrong leaf cannot hide behind a right one.)"""
    from autograd import grad

    rng = np.random.default_rng(seed)
    # Move off the initialisation's zero biases: a decoder broadcast from 1x1 has
    # pre-activations that are exactly 0 there, where ReLU has no derivative.
    for _, leaf in tree_leaves(params):
        leaf += 0.05 * rng.standard_normal(leaf.shape)
    g = dict(tree_leaves(grad(loss)(params)))
    failures = []
    for path, leaf in tree_leaves(params):
        d = rng.standard_normal(leaf.shape)
        d /= np.linalg.norm(d)
        original = leaf.copy()
        leaf += eps * d            # the tree's own arrays, restored below
        plus = float(loss(params))
        leaf[...] = original - eps * d
        minus = float(loss(params))
        leaf[...] = original
        numeric, exact = (plus - minus) / (2 * eps), float(np.sum(g[path] * d))
        if abs(numeric - exact) > atol + rtol * max(abs(exact), abs(numeric)):
            failures.append(f"{path}: finite differences {numeric:.10g}, autograd {exact:.10g}")
    assert not failures, "\n".join(failures)


def test_set_prediction_loss_gradient_matches_finite_differences(rng):
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    images, noise = images_for(config), noise_for(config)
    targets = random_targets(rng, 2, 2)  # M = 2 < K = 3: padded with "no object" rows
    assert_gradient_matches_finite_differences(
        lambda p: hungarian_huber_loss(set_prediction(p, images, noise, config), targets), params)


@pytest.mark.parametrize("name", ["tetrominoes", "clevr6"])
def test_discovery_loss_gradient_matches_finite_differences(name):
    config = tiny_discovery(name, resolution=(6, 6)) if name != "clevr6" else tiny_discovery(name)
    params = init_model(host_rng(0, 0), config)
    images, noise = images_for(config), noise_for(config)
    loss = lambda p: mse(autoencoder(p, images, noise, config)["recon_combined"], images)  # noqa: E731
    # Central differences divide the loss's rounding error by 2 eps: a leaf whose true derivative is
    # ~0 (here slot_attention/norm_slots/offset) reads a few ulps of |loss| / eps, and which ulps
    # depends on the BLAS summation order. Allow 16 ulps of the loss, ~4e-8 at |loss| ~ 1.
    eps, ulps = 1e-7, 16
    atol = 1e-9 + ulps * np.finfo(np.float64).eps * abs(float(loss(params))) / eps
    assert_gradient_matches_finite_differences(loss, params, eps=eps, atol=atol)


def test_slot_mlp_loss_gradient_matches_finite_differences(rng):
    config = tiny_setpred(model="slot-mlp")
    params = init_model(host_rng(0, 0), config)
    images, noise, targets = images_for(config), noise_for(config), random_targets(rng, 2, 3)
    assert_gradient_matches_finite_differences(
        lambda p: hungarian_huber_loss(set_prediction(p, images, noise, config), targets), params)


def test_gradient_reaches_every_parameter(rng):
    from autograd import grad

    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    images, noise, targets = images_for(config), noise_for(config), random_targets(rng, 2, 3)
    g = grad(lambda p: hungarian_huber_loss(set_prediction(p, images, noise, config), targets))(params)
    zero = [path for path, leaf in tree_leaves(g) if not np.any(leaf)]
    assert zero == []


try:
    from standin import assert_same_on_standin  # tests/ is on sys.path, as for test_standin_device.py
except ImportError:  # the stand-in device is optional
    assert_same_on_standin = None

needs_standin = pytest.mark.skipif(assert_same_on_standin is None, reason="tests/standin.py not available")


@needs_standin
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_set_prediction_forward_and_backward_on_the_standin_device_match_numpy(rng, dtype):
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    targets = random_targets(rng, 2, 3)

    def loss(p, images, noise, t):
        return hungarian_huber_loss(set_prediction(p, images, noise, config), t)

    # The matching runs on the host and its 0/1 result goes back: one explicit transfer per step.
    assert_same_on_standin(loss, params, images_for(config), noise_for(config), targets, dtype=dtype,
                           allow_explicit_transfers=True, rtol=1e-4 if dtype == np.float32 else None)


@needs_standin
@pytest.mark.parametrize("name", ["tetrominoes", "clevr6"])
def test_autoencoder_forward_and_backward_on_the_standin_device_match_numpy(name):
    config = tiny_discovery(name)
    params = init_model(host_rng(0, 0), config)

    def loss(p, images, noise):
        return mse(autoencoder(p, images, noise, config)["recon_combined"], images)

    assert_same_on_standin(loss, params, images_for(config), noise_for(config), dtype=np.float32, rtol=1e-4)


# --------------------------------------------------------------------------
# Bad input.

def test_nchw_images_raise_value_error_naming_the_shape():
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    nchw = images_for(config).transpose(0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"NHWC.*\(2, 3, 16, 16\)"):
        set_prediction(params, nchw, noise_for(config), config)
    dconfig = tiny_discovery("clevr6")
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        autoencoder(init_model(host_rng(0, 0), dconfig), nchw, noise_for(dconfig), dconfig)


def test_images_of_the_wrong_resolution_for_the_decoder_raise_value_error():
    config = tiny_discovery("clevr6")
    params = init_model(host_rng(0, 0), config)
    with pytest.raises(ValueError, match=r"16x16.*32x32"):
        autoencoder(params, np.zeros((1, 32, 32, 3)), noise_for(config, batch=1), config)


def test_a_decoder_that_cannot_produce_the_resolution_is_a_config_error():
    with pytest.raises(ValueError, match=r"128x128.*64x64"):
        discovery_config("clevr6", resolution=(64, 64))
    with pytest.raises(ValueError, match=r"16x16.*20x20"):
        discovery_config("clevr6", resolution=(20, 20), decoder_init_resolution=(1, 1))


def test_slot_noise_of_the_wrong_size_raises_value_error():
    config = tiny_setpred()
    params = init_model(host_rng(0, 0), config)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\)"):
        set_prediction(params, images_for(config), np.zeros((2, 3, 5)), config)


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="task"):
        ModelConfig(task="detection")
    with pytest.raises(ValueError, match="model"):
        ModelConfig(model="transformer")
    with pytest.raises(ValueError, match="clevrtex"):
        discovery_config("clevrtex")
    with pytest.raises(ValueError, match="decoder"):
        replace(discovery_config("tetrominoes"), decoder="bilinear")
