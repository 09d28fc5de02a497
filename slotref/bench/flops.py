"""FLOPs of the paper's models, counted from their configuration (a multiply-add counts 2)."""

from __future__ import annotations


def conv_flops(batch, h_out, w_out, kernel, c_in, c_out) -> float:
    """FLOPs of a convolution producing ``(batch, h_out, w_out, c_out)`` with a ``kernel`` x ``kernel`` kernel."""
    return 2.0 * batch * h_out * w_out * kernel * kernel * c_in * c_out


def model_flops(config) -> dict:
    """Forward FLOPs per image of each part of a model."""
    from slotref.models import decoder_layers

    parts = {}
    h, w = config.resolution
    c_in, convs = 3, 0.0
    if config.model == "slot-attention":
        for s in config.encoder_strides:
            h, w = -(-h // s), -(-w // s)
            convs += conv_flops(1, h, w, config.encoder_kernel, c_in, config.encoder_channels)
            c_in = config.encoder_channels
        n, c = h * w, config.encoder_channels
        parts["encoder convs"] = convs
        parts["encoder MLPs"] = 2.0 * n * (4 * c + c * config.mlp_size + config.mlp_size ** 2)
        sa, d, k = config.slot_attention, config.slot_attention.slot_size, config.num_slots
        per_iter = 2.0 * (k * d * d + 2 * n * k * d + k * d * 6 * d + 2 * k * d * sa.mlp_hidden_size)
        parts["slot attention"] = 2.0 * 2 * n * sa.input_size * d + config.num_iterations * per_iter
    else:
        parts["slot MLP"] = 2.0 * (16 * 16 * 3 * 512 + 512 * 512 + 512 * config.num_slots * 64)
    if config.task == "setpred":
        parts["head"] = 2.0 * config.num_slots * (64 * config.head_hidden + config.head_hidden * config.output_size)
    else:
        h0, w0 = config.resolution if config.decoder == "full" else config.decoder_init_resolution
        dec, c = 0.0, config.slot_attention.slot_size
        for kernel, stride, c_out in decoder_layers(config):
            dec += conv_flops(1, h0, w0, kernel, c, c_out)  # a transposed conv: every input pixel x kernel
            h0, w0, c = h0 * stride, w0 * stride, c_out
        parts["decoder (all slots)"] = config.num_slots * dec
    return parts


def step_flops(config, batch: int) -> float:
    """FLOPs of one training step: forward, backward (twice the forward) and Adam (negligible)."""
    return 3 * batch * sum(model_flops(config).values())


def print_model_flops(echo=print, peak=None):
    """FLOPs of the paper's configurations and the step time they imply at the matmul peak."""
    from slotref.models import discovery_config, setpred_config

    echo(f"{'model (paper configuration)':<34}{'GFLOP/image fwd':>16}{'~step GFLOP/image':>19}"
         + (f"{'floor ms/image':>16}" if peak else ""))
    for name, config in (("set prediction 128x128", setpred_config(128)), ("set prediction 64x64", setpred_config(64)),
                         ("discovery Tetrominoes", discovery_config("tetrominoes")),
                         ("discovery Multi-dSprites", discovery_config("multi-dsprites")),
                         ("discovery CLEVR6", discovery_config("clevr6-shapes"))):
        fwd = sum(model_flops(config).values()) / 1e9
        line = f"{name:<34}{fwd:>16.3f}{3 * fwd:>19.3f}"
        if peak:
            line += f"{1e3 * 3 * fwd / peak:>16.2f}"
        echo(line)
