"""A small independent port of Slot Attention and its conformance adapter.

Written from the paper and the official code, not from slotref: plain array
code (autograd's NumPy, so ``grad`` comes for free), parameters under slotref's
documented names. Check it:

    slotref conformance --adapter examples/conformance/numpy_port.py:forward
    python examples/conformance/numpy_port.py
"""

import autograd
import autograd.numpy as np


def layer_norm(p, x, eps=1e-3):
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["offset"]


def gru(p, x, h):
    """Reset-after GRU; fused kernels in gate order [z, r, n]."""
    d = h.shape[-1]
    gx = x @ p["w_input"] + p["b_input"]
    gh = h @ p["w_hidden"] + p["b_hidden"]
    z = 1 / (1 + np.exp(-(gx[..., :d] + gh[..., :d])))
    r = 1 / (1 + np.exp(-(gx[..., d:2 * d] + gh[..., d:2 * d])))
    n = np.tanh(gx[..., 2 * d:] + r * gh[..., 2 * d:])
    return (1 - z) * n + z * h


def forward(params, inputs, noise, num_iterations, trace=False, epsilon=1e-8):
    """inputs (B, N, D_in), noise (B, K, D) -> slots (B, K, D) [, trace]."""
    p = params
    record = {name: [] for name in ("slots_norm", "q", "logits", "attn", "attn_weights", "updates",
                                    "slots_gru", "slots")}
    slots = p["slots_mu"] + np.exp(p["slots_log_sigma"]) * noise
    record["slots_init"] = slots
    x = record["inputs_norm"] = layer_norm(p["norm_inputs"], inputs)
    k = record["k"] = x @ p["project_k"]["w"]
    v = record["v"] = x @ p["project_v"]["w"]
    for _ in range(num_iterations):
        slots_prev = slots
        s = layer_norm(p["norm_slots"], slots)
        q = s @ p["project_q"]["w"]
        logits = np.einsum("bnd,bkd->bnk", k, q) / q.shape[-1] ** 0.5
        attn = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        attn = attn / np.sum(attn, axis=-1, keepdims=True)           # softmax over slots
        weights = (attn + epsilon) / np.sum(attn + epsilon, axis=1, keepdims=True)
        updates = np.einsum("bnk,bnd->bkd", weights, v)
        slots = gru(p["gru"], updates, slots_prev)
        h = np.maximum(layer_norm(p["norm_mlp"], slots) @ p["mlp"][0]["w"] + p["mlp"][0]["b"], 0)
        slots_gru, slots = slots, slots + h @ p["mlp"][1]["w"] + p["mlp"][1]["b"]
        for name, value in zip(record, (s, q, logits, attn, weights, updates, slots_gru, slots)):
            record[name].append(value)
    return (slots, record) if trace else slots


def grad(params, inputs, noise, num_iterations, probe, epsilon=1e-8):
    """Gradients of sum(slots * probe) with respect to params and inputs."""
    def scalar(p, x):
        return np.sum(forward(p, x, noise, num_iterations, epsilon=epsilon) * probe)
    return autograd.grad(scalar, (0, 1))(params, inputs)


forward.grad = grad  # the checks find the gradient function here


if __name__ == "__main__":
    from slotref.conformance import check

    report = check(forward)
    print(report)
    raise SystemExit(0 if report.ok else 1)
