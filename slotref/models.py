"""The paper's two models (appendix E) as pure functions over parameter trees.

- ``set_prediction``: CNN encoder (Table 4, strides 1, 2, 2, 1) -> position
  embedding -> flatten -> LayerNorm -> per-location MLP -> Slot Attention ->
  per-slot MLP with sigmoid (Table 8): (B, K, 19).
- ``autoencoder`` (object discovery): CNN encoder (Table 4 or 5) -> ... ->
  Slot Attention -> spatial broadcast decoder per slot (Table 6 or 7) ->
  alpha softmax across slots -> recombination.
- The Slot MLP baseline (Tables 9, 10) replaces Slot Attention with an MLP on
  the 16x16-resized image (``slot_mlp``).

Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from slotref import backend, paper
from slotref.backend import relu, sigmoid, xp_of
from slotref.layers import (broadcast_embed_conv_transpose2d, conv2d, conv_transpose2d, init_conv2d,
                            init_conv_transpose2d, init_layer_norm, init_mlp, init_soft_position_embed, layer_norm,
                            mlp, soft_position_embed, softmax, spatial_flatten)
from slotref.slot_attention import (SlotAttentionConfig, init_slot_attention, sample_initial_slots,
                                    slot_attention)

TASKS = ("setpred", "discovery")
MODELS = ("slot-attention", "slot-mlp")
INITS = ("glorot", "torch")
NUM_PROPERTIES = paper.NUM_PROPERTIES


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (appendix E). Defaults: set prediction on CLEVR."""

    task: str = "setpred"
    model: str = "slot-attention"              # or the "slot-mlp" baseline (E.5)
    resolution: tuple[int, int] = (128, 128)
    encoder_channels: int = 64                 # Table 4: 64; Table 5: 32
    encoder_strides: tuple[int, ...] = (1, 2, 2, 1)  # Table 4 with * = 2 for property prediction
    encoder_kernel: int = paper.CONV_KERNEL
    mlp_size: int = 64                         # per-location MLP (E.1): 64, or 32 for Table 5
    position_embedding: bool = True            # Figure 8 ablation
    num_slots: int = 10                        # K at training time
    num_iterations: int = 3                    # T at training time
    slot_attention: SlotAttentionConfig = field(default_factory=SlotAttentionConfig)
    # Set prediction head (Table 8).
    head_hidden: int = paper.SETPRED_HEAD_HIDDEN
    output_size: int = NUM_PROPERTIES
    # Discovery decoder (Table 6 "clevr": 8x8 broadcast + 4 stride-2 deconvs; Table 7 "full").
    decoder: str = "clevr"
    decoder_channels: int = 64
    decoder_init_resolution: tuple[int, int] = (8, 8)
    init: str = "glorot"                       # "glorot" (Keras, the official code) | "torch" (PyTorch defaults)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.task == "discovery":
            h, w = self.decoder_output_resolution()
            if (h, w) != tuple(self.resolution):
                raise ValueError(f"the {self.decoder!r} decoder produces {h}x{w} images, "
                                 f"not the dataset's {self.resolution[0]}x{self.resolution[1]}")

    def decoder_output_resolution(self) -> tuple[int, int]:
        if self.decoder == "full":
            return tuple(self.resolution)
        if self.decoder == "clevr":
            return (self.decoder_init_resolution[0] * 16, self.decoder_init_resolution[1] * 16)
        raise ValueError(f"decoder must be 'clevr' or 'full', got {self.decoder!r}")

    def feature_resolution(self) -> tuple[int, int]:
        h, w = self.resolution
        for s in self.encoder_strides:
            h, w = -(-h // s), -(-w // s)
        return h, w


def setpred_config(resolution=paper.SETPRED_ARCHITECTURE.resolution, **overrides) -> ModelConfig:
    """Set prediction on CLEVR (Table 4 with strides 1,2,2,1; Table 8; K = 10)."""
    arch = paper.SETPRED_ARCHITECTURE
    base = ModelConfig(resolution=(resolution, resolution), encoder_channels=arch.encoder_channels,
                       encoder_strides=arch.encoder_strides, mlp_size=arch.encoder_channels,
                       num_slots=arch.num_slots, head_hidden=paper.SETPRED_HEAD_HIDDEN)
    return replace(base, **overrides)


def discovery_config(dataset: str, **overrides) -> ModelConfig:
    """Object discovery (Tables 4-7) for 'clevr6', 'tetrominoes' or 'multi-dsprites'
    (``paper.discovery_architecture`` reads the name)."""
    name = paper.discovery_architecture(dataset)
    if name is None:
        raise ValueError(f"no discovery architecture for dataset {dataset!r}")
    arch = paper.DISCOVERY_ARCHITECTURES[name]
    base = ModelConfig(task="discovery", resolution=(arch.resolution, arch.resolution),
                       encoder_channels=arch.encoder_channels, encoder_strides=arch.encoder_strides,
                       mlp_size=arch.encoder_channels, num_slots=arch.num_slots,
                       slot_attention=SlotAttentionConfig(input_size=arch.encoder_channels),
                       decoder=arch.decoder, decoder_channels=arch.decoder_channels)
    if "slot_attention" not in overrides:
        overrides["slot_attention"] = replace(base.slot_attention, input_size=overrides.get("mlp_size", base.mlp_size))
    return replace(base, **overrides)


# --------------------------------------------------------------------------
# Encoder (Tables 4 and 5, E.1, E.2).

def init_encoder(rng, config: ModelConfig) -> dict:
    c = config.encoder_channels
    params = {"convs": [init_conv2d(rng, config.encoder_kernel, 3 if i == 0 else c, c)
                        for i in range(len(config.encoder_strides))]}
    if config.position_embedding:
        params["position_embed"] = init_soft_position_embed(rng, c)
    params["norm"] = init_layer_norm(c)
    params["mlp"] = init_mlp(rng, [c, config.mlp_size, config.mlp_size])
    return params


def encoder(params: dict, images, config: ModelConfig):
    """Images (B, H, W, 3) -> a set of features (B, N, mlp_size), N = H' * W'."""
    x = images
    for conv, stride in zip(params["convs"], config.encoder_strides):
        x = relu(conv2d(conv, x, stride))                       # (B, H', W', C)
    if config.position_embedding:
        x = soft_position_embed(params["position_embed"], x)    # (B, H', W', C)
    x = spatial_flatten(x)                                      # (B, N, C)
    return mlp(params["mlp"], layer_norm(params["norm"], x))    # (B, N, mlp_size)


# --------------------------------------------------------------------------
# Spatial broadcast decoder (Tables 6 and 7, E.3).

def decoder_layers(config: ModelConfig) -> list[tuple[int, int, int]]:
    """(kernel, stride, output channels) of each transposed convolution."""
    c = config.decoder_channels
    if config.decoder == "clevr":
        return [(5, 2, c)] * 4 + [(5, 1, c), (3, 1, 4)]
    return [(5, 1, c)] * 3 + [(3, 1, 4)]


def init_decoder(rng, config: ModelConfig) -> dict:
    d = config.slot_attention.slot_size
    layers, c_in = [], d
    for kernel, _, c_out in decoder_layers(config):
        layers.append(init_conv_transpose2d(rng, kernel, c_in, c_out))
        c_in = c_out
    return {"position_embed": init_soft_position_embed(rng, d), "deconvs": layers}


def decoder(params: dict, slots, config: ModelConfig):
    """Slots (B, K, D) -> per-slot RGB (B, K, H, W, 3) and alpha logits (B, K, H, W, 1).

    Table 6 (CLEVR) or Table 7, row by row.
    """
    b, k, _ = slots.shape
    init_res = config.resolution if config.decoder == "full" else config.decoder_init_resolution
    rows = decoder_layers(config)                               # the table's Conv rows: (kernel, stride, channels)
    deconvs = params["deconvs"]
    # Spatial Broadcast, Position Embedding and the first Conv row: (B*K, h, w, c).
    x = broadcast_embed_conv_transpose2d(params["position_embed"], deconvs[0], slots, init_res, rows[0][1])
    for layer, (_, stride, _) in zip(deconvs[1:], rows[1:]):   # the other Conv rows, after the ReLU of the previous
        x = conv_transpose2d(layer, relu(x), stride)            # (B*K, h, w, c); the last row: c = 4, no ReLU
    h, w = x.shape[1], x.shape[2]
    x = x.reshape(b, k, h, w, 4)                                # (B, K, H, W, 4)
    rgb = backend.index(x, (Ellipsis, slice(0, 3)))             # Split Channels: RGB (B, K, H, W, 3)
    alpha_logits = backend.index(x, (Ellipsis, slice(3, 4)))    # and alpha mask (B, K, H, W, 1)
    return rgb, alpha_logits


# --------------------------------------------------------------------------
# Slot MLP baseline (E.5, Tables 9 and 10).

def init_slot_mlp(rng, config: ModelConfig) -> dict:
    d, k = config.slot_attention.slot_size, config.num_slots
    pixels = paper.SLOT_MLP_RESIZE ** 2 * 3
    params = {"mlp": init_mlp(rng, [pixels, *paper.SLOT_MLP_HIDDEN[config.task], d * k])}
    if config.task == "discovery":
        # Table 10's per-slot MLP 64 -> 64 ends at the slot size (64 in the paper) the decoder reads.
        params["slot_mlp"] = init_mlp(rng, [d, paper.SLOT_MLP_PER_SLOT_HIDDEN, d])
    return params


def resize_16(images):
    """Average-pool or nearest-sample (B, H, W, 3) to (B, 16, 16, 3) (Tables 9, 10: 'Resize 16x16')."""
    b, h, w, c = images.shape
    ys = (np.arange(16) * h) // 16
    xs = (np.arange(16) * w) // 16
    xp = xp_of(images)
    rows = images[:, xp.asarray(ys)] if xp is not np else images[:, ys]
    return rows[:, :, xp.asarray(xs)] if xp is not np else rows[:, :, xs]


def slot_mlp(params: dict, images, config: ModelConfig):
    """Images -> slots (B, K, D) without attention (the baseline); K is fixed by the parameters."""
    b = images.shape[0]
    x = resize_16(images).reshape(b, 16 * 16 * 3)
    x = mlp(params["mlp"], x)  # Tables 9, 10: no activation on the slot size x num slots layer
    slots = x.reshape(b, config.num_slots, config.slot_attention.slot_size)
    if "slot_mlp" in params:
        slots = mlp(params["slot_mlp"], slots)
    return slots


# --------------------------------------------------------------------------
# The two models.

def torch_default_init(rng: np.random.Generator, params):
    """The same parameter tree redrawn with PyTorch's default initialisers.

    PyTorch's nn.Linear / nn.Conv2d / nn.ConvTranspose2d draw kernels and biases
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5));
    nn.GRUCell draws everything from U(-1/sqrt(hidden), 1/sqrt(hidden)).
    Kernels here are (d_in, d_out), (k, k, c_in, c_out) or, transposed,
    (k, k, c_out, c_in): PyTorch's fan_in is k * k * shape[2] for both 4-D forms.
    LayerNorm and the slot distribution keep their values. For comparing with
    PyTorch implementations (``--init torch``); the default is Glorot (Keras).
    """
    if isinstance(params, list):
        return [torch_default_init(rng, p) for p in params]
    if not isinstance(params, dict):
        return params
    if "w_hidden" in params:  # GRU cell
        bound = 1.0 / np.sqrt(params["w_hidden"].shape[0])
        return {k: rng.uniform(-bound, bound, size=v.shape) for k, v in params.items()}
    if "w" in params:  # linear or convolution
        w = params["w"]
        fan_in = w.shape[0] if w.ndim == 2 else w.shape[0] * w.shape[1] * w.shape[2]
        bound = 1.0 / np.sqrt(fan_in)
        return {k: rng.uniform(-bound, bound, size=v.shape) for k, v in params.items()}
    return {k: torch_default_init(rng, v) for k, v in params.items()}


def init_model(rng, config: ModelConfig, dtype=None) -> dict:
    """All parameters of the model described by ``config`` (host NumPy; float64, or ``dtype``)."""
    params = {}
    if config.model == "slot-attention":
        params["encoder"] = init_encoder(rng, config)
        params["slot_attention"] = init_slot_attention(rng, replace(config.slot_attention,
                                                                    num_train_slots=config.num_slots))
    else:
        params["slot_mlp"] = init_slot_mlp(rng, config)
    if config.task == "setpred":
        d = config.slot_attention.slot_size
        params["head"] = init_mlp(rng, [d, config.head_hidden, config.output_size])
    else:
        params["decoder"] = init_decoder(rng, config)
    if config.init == "torch":
        params = torch_default_init(rng, params)
    return backend.tree_astype(params, dtype)


def infer_slots(params: dict, images, noise, config: ModelConfig, num_iterations: int | None = None,
                return_attention: bool = False, module=slot_attention):
    """Images (B, H, W, 3) and slot noise (B, K, D) -> slots (B, K, D) [, attention (B, T, N, K)].

    ``module``: the function that runs Slot Attention, Algorithm 1's ``slot_attention``; training may
    pass one of the same signature and values whose gradient differs (``training.implicit``)."""
    _check_images(images, config)
    if config.model == "slot-mlp":
        slots = slot_mlp(params["slot_mlp"], images, config)
        return (slots, None) if return_attention else slots
    inputs = encoder(params["encoder"], images, config)                       # (B, N, D_in)
    slots = sample_initial_slots(params["slot_attention"], noise)             # (B, K, D)
    t = config.num_iterations if num_iterations is None else num_iterations
    return module(params["slot_attention"], inputs, slots, t, config.slot_attention, return_attention)


def set_prediction(params: dict, images, noise, config: ModelConfig, num_iterations=None, return_attention=False,
                   module=slot_attention):
    """Images (B, H, W, 3) -> predictions (B, K, 19) in [0, 1] [, attention (B, T, N, K)]."""
    out = infer_slots(params, images, noise, config, num_iterations, return_attention, module)
    slots, attn = out if return_attention else (out, None)
    predictions = sigmoid(mlp(params["head"], slots))                        # (B, K, 19)
    return (predictions, attn) if return_attention else predictions


def autoencoder(params: dict, images, noise, config: ModelConfig, num_iterations=None, module=slot_attention):
    """Object discovery. Returns a dict: recon_combined (B, H, W, 3), recons (B, K, H, W, 3),
    masks (B, K, H, W, 1) softmax-normalised over slots, slots (B, K, D), attention (B, T, N, K)."""
    slots, attn = infer_slots(params, images, noise, config, num_iterations, return_attention=True, module=module)
    recons, alpha_logits = decoder(params["decoder"], slots, config)         # (B, K, H, W, 3|1)
    masks = softmax(alpha_logits, axis=1)                                    # (B, K, H, W, 1)
    recon_combined = backend.sum(recons * masks, axis=1)                     # (B, H, W, 3)
    return {"recon_combined": recon_combined, "recons": recons, "masks": masks, "slots": slots,
            "attention": attn}


def _check_images(images, config: ModelConfig):
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"the model expects NHWC images (B, H, W, 3), got shape {tuple(images.shape)}")
    if config.task == "discovery" and tuple(images.shape[1:3]) != tuple(config.resolution):
        raise ValueError(f"the decoder produces {config.resolution[0]}x{config.resolution[1]} images, "
                         f"got images of {images.shape[1]}x{images.shape[2]}")
