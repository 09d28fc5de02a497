"""A PyTorch twin of the paper's architectures: a benchmark aid, not part of the reference.

``python cli.py bench --what step`` times slotref's training step; when PyTorch is
installed (``pip install "slotref[torch]"``) it also times this module's step on the
same machine, with the same architecture, batch and thread count, and prints the
ratio. Nothing in slotref imports this module except the benchmark, and no result
of slotref depends on it.

What is the same as slotref's step: the layer shapes of Tables 4-8 (encoder
convolutions with their strides, position embeddings, LayerNorm, the per-location
MLP, Slot Attention with its GRU and residual MLP, T = 3, the set-prediction head
or the spatial broadcast decoder with its transposed convolutions, alpha softmax
over slots), the losses (Hungarian-matched Huber with SciPy on the host, or MSE),
float32, and one Adam update. What differs, as it does not change the work:
PyTorch's symmetric padding instead of TF's SAME split (same output sizes), and
PyTorch's default initialisers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

from slotref.bench.timing import best_seconds, blas_threads


def available() -> bool:
    """Whether PyTorch is installed (without importing it here: it runs in a process of its own)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    def position_grid(h, w):
        ys, xs = torch.linspace(0, 1, h), torch.linspace(0, 1, w)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([y, x, 1 - y, 1 - x], dim=-1)            # (H, W, 4)

    class PositionEmbed(nn.Module):
        def __init__(self, channels, h, w):
            super().__init__()
            self.linear = nn.Linear(4, channels)
            self.register_buffer("grid", position_grid(h, w))

        def forward(self, x):                                        # (B, C, H, W)
            return x + self.linear(self.grid).permute(2, 0, 1)[None]

    class SlotAttention(nn.Module):
        def __init__(self, input_size, slot_size=64, mlp_hidden=128, iterations=3):
            super().__init__()
            self.iterations, self.scale = iterations, slot_size ** -0.5
            self.norm_inputs, self.norm_slots, self.norm_mlp = (nn.LayerNorm(input_size), nn.LayerNorm(slot_size),
                                                                nn.LayerNorm(slot_size))
            self.q = nn.Linear(slot_size, slot_size, bias=False)
            self.k = nn.Linear(input_size, slot_size, bias=False)
            self.v = nn.Linear(input_size, slot_size, bias=False)
            self.gru = nn.GRUCell(slot_size, slot_size)
            self.mlp = nn.Sequential(nn.Linear(slot_size, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_size))
            self.mu = nn.Parameter(torch.zeros(slot_size))
            self.log_sigma = nn.Parameter(torch.zeros(slot_size))

        def forward(self, inputs, noise):
            b, k, d = noise.shape
            inputs = self.norm_inputs(inputs)
            keys, values = self.k(inputs), self.v(inputs)
            slots = self.mu + self.log_sigma.exp() * noise
            for _ in range(self.iterations):
                prev = slots
                q = self.q(self.norm_slots(slots))
                attn = torch.softmax(torch.einsum("bnd,bkd->bnk", keys, q) * self.scale, dim=-1) + 1e-8
                attn = attn / attn.sum(dim=1, keepdim=True)
                updates = torch.einsum("bnk,bnd->bkd", attn, values)
                slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, k, d)
                slots = slots + self.mlp(self.norm_mlp(slots))
            return slots

    class Encoder(nn.Module):
        def __init__(self, resolution, channels, strides, mlp_size):
            super().__init__()
            convs, c_in, h, w = [], 3, *resolution
            for s in strides:
                convs.append(nn.Conv2d(c_in, channels, 5, stride=s, padding=2))
                c_in, h, w = channels, -(-h // s), -(-w // s)
            self.convs = nn.ModuleList(convs)
            self.pos = PositionEmbed(channels, h, w)
            self.norm = nn.LayerNorm(channels)
            self.mlp = nn.Sequential(nn.Linear(channels, mlp_size), nn.ReLU(), nn.Linear(mlp_size, mlp_size))

        def forward(self, images):                                   # (B, 3, H, W)
            x = images
            for conv in self.convs:
                x = F.relu(conv(x))
            x = self.pos(x).flatten(2).transpose(1, 2)               # (B, N, C)
            return self.mlp(self.norm(x))

    class Decoder(nn.Module):
        def __init__(self, slot_size, channels, init_resolution, layers):
            super().__init__()
            self.init_resolution = init_resolution
            self.pos = PositionEmbed(slot_size, *init_resolution)
            deconvs, c_in = [], slot_size
            for kernel, stride, c_out in layers:
                deconvs.append(nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                                                  output_padding=stride - 1))
                c_in = c_out
            self.deconvs = nn.ModuleList(deconvs)

        def forward(self, slots):                                    # (B, K, D)
            b, k, d = slots.shape
            x = slots.reshape(b * k, d, 1, 1).expand(-1, -1, *self.init_resolution)
            x = self.pos(x)
            for i, deconv in enumerate(self.deconvs):
                x = deconv(x if i == 0 else F.relu(x))
            x = x.reshape(b, k, 4, *x.shape[2:])
            rgb, alpha = x[:, :, :3], torch.softmax(x[:, :, 3:], dim=1)
            return (rgb * alpha).sum(dim=1)                          # (B, 3, H, W)

    return torch, nn, SlotAttention, Encoder, Decoder


def build(config):
    """A PyTorch model with the layer shapes of slotref's ``ModelConfig`` (Slot Attention models only)."""
    from slotref.models import decoder_layers

    torch, nn, SlotAttention, Encoder, Decoder = _modules()
    if config.model != "slot-attention":
        raise ValueError("the PyTorch twin covers the Slot Attention models only")
    sa = config.slot_attention

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder(config.resolution, config.encoder_channels, config.encoder_strides, config.mlp_size)
            self.slot_attention = SlotAttention(config.mlp_size, sa.slot_size, sa.mlp_hidden_size,
                                                config.num_iterations)
            if config.task == "setpred":
                self.head = nn.Sequential(nn.Linear(sa.slot_size, config.head_hidden), nn.ReLU(),
                                          nn.Linear(config.head_hidden, config.output_size), nn.Sigmoid())
            else:
                init = config.resolution if config.decoder == "full" else config.decoder_init_resolution
                self.decoder = Decoder(sa.slot_size, config.decoder_channels, tuple(init), decoder_layers(config))

        def forward(self, images, noise):
            slots = self.slot_attention(self.encoder(images), noise)
            return self.head(slots) if config.task == "setpred" else self.decoder(slots)

    return torch, Model()


def hungarian_huber(torch, predictions, targets):
    """Per example: pairwise Huber (delta 1, mean over the 19 numbers), matched by SciPy, summed; mean over B."""
    p, t = torch.broadcast_tensors(predictions[:, :, None], targets[:, None])    # (B, K, M, 19)
    cost = torch.nn.functional.huber_loss(p, t, reduction="none", delta=1.0)
    cost = cost.mean(-1)                                             # (B, K, M)
    host = cost.detach().numpy()
    total = 0
    for i in range(host.shape[0]):
        rows, cols = linear_sum_assignment(host[i])
        total = total + cost[i, rows, cols].sum()
    return total / host.shape[0]


def step_seconds(config, batch_size: int, repeats: int = 3, seed: int = 0) -> float:
    """Best wall time of one PyTorch training step (forward, loss, backward, Adam) after a warm-up."""
    torch, model = build(config)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = config.resolution
    images = torch.tensor(rng.uniform(-1, 1, (batch_size, 3, h, w)), dtype=torch.float32)
    noise = torch.tensor(rng.standard_normal((batch_size, config.num_slots, config.slot_attention.slot_size)),
                         dtype=torch.float32)
    targets = np.zeros((batch_size, 10, config.output_size))
    targets[:, :5] = rng.uniform(0, 1, (batch_size, 5, config.output_size))
    targets = torch.tensor(targets, dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = model(images, noise)
        loss = hungarian_huber(torch, out, targets) if config.task == "setpred" else ((out - images) ** 2).mean()
        loss.backward()
        optimiser.step()

    return best_seconds(step, np, repeats)


def step_seconds_apart(task: str, dataset, batch_size: int, repeats: int = 3) -> float:
    """``step_seconds`` in a process of its own, so PyTorch's memory and threads stay out of slotref's
    measurement (peak memory is per process); as many threads as slotref's BLAS has."""
    command = [sys.executable, "-m", "slotref.bench.torch_twin", task, str(dataset), str(batch_size), str(repeats),
               str(blas_threads() or 1)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError("the PyTorch benchmark failed: " + (result.stderr.strip().splitlines() or ["?"])[-1])
    return float(result.stdout.split()[-1])


def _main(argv):
    import torch

    from slotref.models import discovery_config, setpred_config

    task, dataset, batch, repeats, threads = argv
    torch.set_num_threads(int(threads))
    config = setpred_config(int(dataset)) if task == "setpred" else discovery_config(dataset)
    print(step_seconds(config, int(batch), int(repeats)))


if __name__ == "__main__":
    _main(sys.argv[1:])
