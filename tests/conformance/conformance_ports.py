"""A gallery of Slot Attention ports, each with one known porting slip (or none).

Written as a porter would, in plain array code (autograd's NumPy for the
gradients) and independently of ``slotref.conformance.catalogue``: the tests
check that the conformance kit recognises each slip from what the port computes.
"""

import autograd
import autograd.numpy as np
from autograd.tracer import getval

# Every slip a port below can make: (name in the catalogue, line of Algorithm 1 it breaks).
GALLERY = {
    "mu_sigma_without_gradient": 1, "sigma_not_exponentiated": 1, "layer_norm_epsilon": 3,
    "layer_norm_without_scale_offset": 3, "projection_bias": 7, "linear_weight_not_transposed": 7,
    "missing_inverse_sqrt_d": 7, "softmax_over_inputs": 7, "epsilon_after_normalisation": 8,
    "epsilon_in_denominator": 8, "weighted_sum_not_mean": 8, "gru_gate_order": 9, "gru_reset_before": 9,
    "gru_biases_summed": 9, "gru_state_and_input_swapped": 9, "mlp_without_layer_norm": 10,
    "mlp_without_residual": 10, "slots_detached_between_iterations": 5, "one_iteration_too_many": 4,
}


def make_port(slip=None, traced=True):
    """(forward, grad) of a port with ``slip`` (a GALLERY name, or None for a right port)."""

    def layer_norm(p, x, affine=True):
        mean = np.mean(x, axis=-1, keepdims=True)
        var = np.var(x, axis=-1, keepdims=True)
        y = (x - mean) / np.sqrt(var + (1e-5 if slip == "layer_norm_epsilon" else 1e-3))
        return y * p["scale"] + p["offset"] if affine else y

    def dense(p, x, transposed=False):
        w = p["w"].T if transposed else p["w"]
        bias = 0.1 * np.cos(np.arange(w.shape[1])) if slip == "projection_bias" else 0.0
        return x @ w + bias

    def gru(p, x, h):
        d = h.shape[-1]
        b_in, b_h = p["b_input"], p["b_hidden"]
        if slip == "gru_biases_summed":
            b_in, b_h = b_in + b_h, 0 * b_h
        gx, gh = x @ p["w_input"] + b_in, h @ p["w_hidden"] + b_h
        z_, r_ = (1, 0) if slip == "gru_gate_order" else (0, 1)     # PyTorch's [r, z, n] read as-is
        z = 1 / (1 + np.exp(-(gx[..., z_ * d:(z_ + 1) * d] + gh[..., z_ * d:(z_ + 1) * d])))
        r = 1 / (1 + np.exp(-(gx[..., r_ * d:(r_ + 1) * d] + gh[..., r_ * d:(r_ + 1) * d])))
        if slip == "gru_reset_before":
            n = np.tanh(gx[..., 2 * d:] + (r * h) @ p["w_hidden"][:, 2 * d:] + b_h[2 * d:])
        else:
            n = np.tanh(gx[..., 2 * d:] + r * gh[..., 2 * d:])
        return (1 - z) * n + z * h

    def forward(params, inputs, noise, num_iterations, trace=False, epsilon=1e-8):
        p, rec = params, {}
        mu, log_sigma = p["slots_mu"], p["slots_log_sigma"]
        if slip == "mu_sigma_without_gradient":
            mu, log_sigma = getval(mu), getval(log_sigma)
        sigma = log_sigma if slip == "sigma_not_exponentiated" else np.exp(log_sigma)
        slots = rec["slots_init"] = mu + sigma * noise
        x = rec["inputs_norm"] = layer_norm(p["norm_inputs"], inputs, slip != "layer_norm_without_scale_offset")
        k = rec["k"] = dense(p["project_k"], x, slip == "linear_weight_not_transposed")
        v = rec["v"] = dense(p["project_v"], x)
        for _ in range(num_iterations + (slip == "one_iteration_too_many")):
            slots_prev = getval(slots) if slip == "slots_detached_between_iterations" else slots
            s = layer_norm(p["norm_slots"], slots)
            q = dense(p["project_q"], s, slip == "linear_weight_not_transposed")
            logits = np.einsum("bnd,bkd->bnk", k, q)
            logits = logits if slip == "missing_inverse_sqrt_d" else logits / q.shape[-1] ** 0.5
            axis = 1 if slip == "softmax_over_inputs" else 2
            e = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
            attn = e / np.sum(e, axis=axis, keepdims=True)
            if slip == "epsilon_after_normalisation":
                weights = attn / np.sum(attn, axis=1, keepdims=True) + epsilon
            elif slip == "epsilon_in_denominator":
                weights = attn / (np.sum(attn, axis=1, keepdims=True) + epsilon)
            elif slip == "weighted_sum_not_mean":
                weights = attn + epsilon
            else:
                weights = (attn + epsilon) / np.sum(attn + epsilon, axis=1, keepdims=True)
            updates = np.einsum("bnk,bnd->bkd", weights, v)
            gru_out = gru(p["gru"], slots_prev, updates) if slip == "gru_state_and_input_swapped" \
                else gru(p["gru"], updates, slots_prev)
            h = gru_out if slip == "mlp_without_layer_norm" else layer_norm(p["norm_mlp"], gru_out)
            mlp_out = np.maximum(h @ p["mlp"][0]["w"] + p["mlp"][0]["b"], 0) @ p["mlp"][1]["w"] + p["mlp"][1]["b"]
            slots = mlp_out if slip == "mlp_without_residual" else gru_out + mlp_out
            for name, value in (("slots_norm", s), ("q", q), ("logits", logits), ("attn", attn),
                                ("attn_weights", weights), ("updates", updates), ("slots_gru", gru_out),
                                ("slots", slots)):
                rec.setdefault(name, []).append(value)
        for name in ("slots_norm", "q", "logits", "attn", "attn_weights", "updates", "slots_gru", "slots"):
            rec.setdefault(name, [])
        return (slots, rec) if trace else slots

    def grad(params, inputs, noise, num_iterations, probe, epsilon=1e-8):
        def scalar(p, x):
            return np.sum(forward(p, x, noise, num_iterations, epsilon=epsilon) * probe)
        return autograd.grad(scalar, (0, 1))(params, inputs)

    if not traced:
        def forward_untraced(params, inputs, noise, num_iterations, epsilon=1e-8):
            return forward(params, inputs, noise, num_iterations, epsilon=epsilon)
        return forward_untraced, grad
    return forward, grad


# For the command line (``--adapter tests/conformance/conformance_ports.py:softmax_over_inputs``).
softmax_over_inputs = make_port("softmax_over_inputs")[0]


def make_average_precision(rule="official", stable_ties=True):
    """An AP port (E.9) written as a loop over detections; ``rule`` 'nearest_unmatched' lets a
    detection take the nearest object not yet matched, ``stable_ties=False`` sorts ties last-first."""
    import numpy

    attributes = (slice(3, 5), slice(5, 7), slice(7, 10), slice(10, 18))

    def average_precision(predictions, targets, threshold):
        predictions, targets = numpy.asarray(predictions), numpy.asarray(targets)
        b, k, _ = predictions.shape
        confidence = predictions[..., 18].reshape(-1)
        order = numpy.argsort(-confidence, kind="stable") if stable_ties else numpy.argsort(confidence)[::-1]
        matched, hits = set(), []
        for flat in order:
            image, slot = divmod(int(flat), k)
            pred = predictions[image, slot]
            best, best_distance = None, numpy.inf
            for j, obj in enumerate(targets[image]):
                if not obj[18] or any(numpy.argmax(pred[s]) != numpy.argmax(obj[s]) for s in attributes):
                    continue
                if rule == "nearest_unmatched" and (image, j) in matched:
                    continue
                distance = numpy.linalg.norm(6 * (pred[:3] - obj[:3]))
                if distance < best_distance:
                    best, best_distance = j, distance
            hit = best is not None and (threshold == numpy.inf or best_distance < threshold) \
                and (image, best) not in matched
            if hit:
                matched.add((image, best))
            hits.append(hit)
        tp = numpy.cumsum(hits)
        recall = numpy.concatenate([[0], tp / numpy.sum(targets[..., 18] != 0), [1]])
        precision = numpy.concatenate([[0], tp / numpy.arange(1, len(hits) + 1), [0]])
        precision = numpy.maximum.accumulate(precision[::-1])[::-1]
        return float(numpy.sum((recall[1:] - recall[:-1]) * precision[1:]))
    return average_precision


average_precision = make_average_precision(stable_ties=False)   # for --models: fails on tied confidences
