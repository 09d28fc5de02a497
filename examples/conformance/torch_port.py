"""A PyTorch Slot Attention module, as public ports write it, and its conformance adapter.

The module is ordinary PyTorch (nn.Linear, nn.GRUCell, nn.LayerNorm); the
adapter loads slotref's parameter tree into it with ``slotref.conformance.layouts``
and hands back the slots and the gradients. Check it (needs torch):

    slotref conformance --adapter examples/conformance/torch_port.py:forward
"""

import numpy as np
import torch
from torch import nn

from slotref.conformance import layouts


class SlotAttention(nn.Module):
    def __init__(self, input_size, slot_size, mlp_hidden_size, epsilon=1e-8):
        super().__init__()
        self.epsilon = epsilon
        self.norm_inputs = nn.LayerNorm(input_size, eps=1e-3)   # Keras' epsilon, not PyTorch's 1e-5
        self.norm_slots = nn.LayerNorm(slot_size, eps=1e-3)
        self.norm_mlp = nn.LayerNorm(slot_size, eps=1e-3)
        self.project_q = nn.Linear(slot_size, slot_size, bias=False)
        self.project_k = nn.Linear(input_size, slot_size, bias=False)
        self.project_v = nn.Linear(input_size, slot_size, bias=False)
        self.gru = nn.GRUCell(slot_size, slot_size)
        self.mlp = nn.Sequential(nn.Linear(slot_size, mlp_hidden_size), nn.ReLU(),
                                 nn.Linear(mlp_hidden_size, slot_size))
        self.slots_mu = nn.Parameter(torch.zeros(slot_size))
        self.slots_log_sigma = nn.Parameter(torch.zeros(slot_size))

    def forward(self, inputs, noise, num_iterations):
        """inputs (B, N, D_in), noise (B, K, D) -> slots (B, K, D)."""
        slots = self.slots_mu + self.slots_log_sigma.exp() * noise
        inputs = self.norm_inputs(inputs)
        k, v = self.project_k(inputs), self.project_v(inputs)
        b, n_slots, d = slots.shape
        for _ in range(num_iterations):
            slots_prev = slots
            q = self.project_q(self.norm_slots(slots))
            attn = torch.softmax(torch.einsum("bnd,bkd->bnk", k, q) * d ** -0.5, dim=-1)
            attn = attn + self.epsilon
            attn = attn / attn.sum(dim=1, keepdim=True)
            updates = torch.einsum("bnk,bnd->bkd", attn, v)
            slots = self.gru(updates.reshape(-1, d), slots_prev.reshape(-1, d)).reshape(b, n_slots, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


def build(params, dtype, epsilon=1e-8):
    """A SlotAttention holding slotref's ``params`` (converted to PyTorch's layouts)."""
    d_in, d = params["project_k"]["w"].shape
    module = SlotAttention(d_in, d, params["mlp"][0]["w"].shape[1], epsilon).to(dtype)
    state = {"slots_mu": params["slots_mu"], "slots_log_sigma": params["slots_log_sigma"]}
    for name in ("norm_inputs", "norm_slots", "norm_mlp"):
        state.update({f"{name}.{k}": v for k, v in layouts.to_torch_layer_norm(params[name]).items()})
    for name in ("project_q", "project_k", "project_v"):
        state.update({f"{name}.{k}": v for k, v in layouts.to_torch_linear(params[name]).items()})
    state.update({f"gru.{k}": v for k, v in layouts.to_torch_gru_cell(params["gru"]).items()})
    for i, layer in zip((0, 2), params["mlp"]):
        state.update({f"mlp.{i}.{k}": v for k, v in layouts.to_torch_linear(layer).items()})
    module.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v), dtype=dtype) for k, v in state.items()})
    return module


def _tensor(x, requires_grad=False):
    return torch.tensor(np.asarray(x), requires_grad=requires_grad)


def forward(params, inputs, noise, num_iterations, epsilon=1e-8):
    inputs = _tensor(inputs)
    with torch.no_grad():
        return build(params, inputs.dtype, epsilon)(inputs, _tensor(noise), num_iterations).numpy()


def grad(params, inputs, noise, num_iterations, probe, epsilon=1e-8):
    """Gradients of sum(slots * probe), converted back to slotref's layouts."""
    inputs = _tensor(inputs, requires_grad=True)
    module = build(params, inputs.dtype, epsilon)
    (module(inputs, _tensor(noise), num_iterations) * _tensor(probe)).sum().backward()
    zero_if_unused = lambda t: (t.grad if t.grad is not None else torch.zeros_like(t)).numpy()  # noqa: E731
    g = {name: zero_if_unused(p) for name, p in module.named_parameters()}
    d_params = {"slots_mu": g["slots_mu"], "slots_log_sigma": g["slots_log_sigma"],
                "gru": layouts.from_torch_gru_cell(g["gru.weight_ih"], g["gru.weight_hh"],
                                                   g["gru.bias_ih"], g["gru.bias_hh"]),
                "mlp": [layouts.from_torch_linear(g[f"mlp.{i}.weight"], g[f"mlp.{i}.bias"]) for i in (0, 2)]}
    for name in ("norm_inputs", "norm_slots", "norm_mlp"):
        d_params[name] = layouts.from_torch_layer_norm(g[f"{name}.weight"], g[f"{name}.bias"])
    for name in ("project_q", "project_k", "project_v"):
        d_params[name] = layouts.from_torch_linear(g[f"{name}.weight"])
    return d_params, zero_if_unused(inputs)


forward.grad = grad


if __name__ == "__main__":
    from slotref.conformance import check

    report = check(forward)
    print(report)
    raise SystemExit(0 if report.ok else 1)
