"""A Keras Slot Attention layer, after the official code's, and its conformance adapter.

The layer follows google-research's ``slot_attention/model.py`` (Keras 3 API):
LayerNormalization (epsilon 1e-3), Dense projections without bias, a GRUCell,
a residual MLP; the slot noise is an argument here instead of drawn inside, and
the number of iterations a call argument. The adapter loads slotref's parameter
tree with ``slotref.conformance.layouts``. Check it (needs TensorFlow and Keras 3):

    slotref conformance --adapter examples/conformance/keras_port.py:forward
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from slotref.conformance import layouts


class SlotAttention(layers.Layer):
    def __init__(self, slot_size, mlp_hidden_size, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.slot_size, self.epsilon = slot_size, epsilon
        dtype = self.dtype_policy
        self.norm_inputs = layers.LayerNormalization(dtype=dtype)
        self.norm_slots = layers.LayerNormalization(dtype=dtype)
        self.norm_mlp = layers.LayerNormalization(dtype=dtype)
        self.project_q = layers.Dense(slot_size, use_bias=False, dtype=dtype)
        self.project_k = layers.Dense(slot_size, use_bias=False, dtype=dtype)
        self.project_v = layers.Dense(slot_size, use_bias=False, dtype=dtype)
        self.gru = layers.GRUCell(slot_size, dtype=dtype)
        self.mlp = [layers.Dense(mlp_hidden_size, activation="relu", dtype=dtype), layers.Dense(slot_size, dtype=dtype)]
        self.slots_mu = self.add_weight(shape=(1, 1, slot_size), initializer="glorot_uniform", name="slots_mu")
        self.slots_log_sigma = self.add_weight(shape=(1, 1, slot_size), initializer="glorot_uniform",
                                               name="slots_log_sigma")

    def call(self, inputs, noise, num_iterations):
        """inputs (B, N, D_in), noise (B, K, D) -> slots (B, K, D)."""
        slots = self.slots_mu + ops.exp(self.slots_log_sigma) * noise
        inputs = self.norm_inputs(inputs)
        k, v = self.project_k(inputs), self.project_v(inputs)
        for _ in range(num_iterations):
            slots_prev = slots
            q = self.project_q(self.norm_slots(slots)) * self.slot_size ** -0.5
            attn = ops.softmax(ops.einsum("bnd,bkd->bnk", k, q), axis=-1)
            attn = attn + self.epsilon
            attn = attn / ops.sum(attn, axis=-2, keepdims=True)
            updates = ops.einsum("bnk,bnd->bkd", attn, v)
            b, n_slots = ops.shape(slots)[0], ops.shape(slots)[1]
            flat, _ = self.gru(ops.reshape(updates, (-1, self.slot_size)),
                               [ops.reshape(slots_prev, (-1, self.slot_size))])
            slots = ops.reshape(flat, (b, n_slots, self.slot_size))
            slots = slots + self.mlp[1](self.mlp[0](self.norm_mlp(slots)))
        return slots


def build(params, inputs, noise, epsilon=1e-8):
    """A SlotAttention holding slotref's ``params`` (run once to create its weights, then set them)."""
    layer = SlotAttention(params["project_q"]["w"].shape[0], params["mlp"][0]["w"].shape[1], epsilon,
                          dtype=str(inputs.dtype))
    layer(inputs, noise, num_iterations=1)
    d = params["slots_mu"].shape[0]
    layer.slots_mu.assign(np.reshape(params["slots_mu"], (1, 1, d)))
    layer.slots_log_sigma.assign(np.reshape(params["slots_log_sigma"], (1, 1, d)))
    for name in ("norm_inputs", "norm_slots", "norm_mlp"):
        getattr(layer, name).set_weights(layouts.to_keras_layer_norm(params[name]))
    for name in ("project_q", "project_k", "project_v"):
        getattr(layer, name).set_weights(layouts.to_keras_dense(params[name]))
    layer.gru.set_weights(layouts.to_keras_gru_cell(params["gru"]))
    for dense, p in zip(layer.mlp, params["mlp"]):
        dense.set_weights(layouts.to_keras_dense(p))
    return layer


def forward(params, inputs, noise, num_iterations, epsilon=1e-8):
    return np.asarray(build(params, inputs, noise, epsilon)(inputs, noise, num_iterations=num_iterations))


def grad(params, inputs, noise, num_iterations, probe, epsilon=1e-8):
    """Gradients of sum(slots * probe), converted back to slotref's layouts."""
    layer = build(params, inputs, noise, epsilon)
    x = tf.Variable(inputs)
    named = {"slots_mu": layer.slots_mu, "slots_log_sigma": layer.slots_log_sigma}
    for name in ("norm_inputs", "norm_slots", "norm_mlp"):
        named[name + "/scale"], named[name + "/offset"] = getattr(layer, name).gamma, getattr(layer, name).beta
    for name in ("project_q", "project_k", "project_v"):
        named[name] = getattr(layer, name).kernel
    named["gru/kernel"], named["gru/recurrent"], named["gru/bias"] = layer.gru.weights
    for i, dense in enumerate(layer.mlp):
        named[f"mlp/{i}/w"], named[f"mlp/{i}/b"] = dense.kernel, dense.bias
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, noise, num_iterations=num_iterations) * probe)
    grads = tape.gradient(loss, [x] + list(named.values()))
    grads = [np.zeros(v.shape) if g is None else np.asarray(g) for v, g in zip([x, *named.values()], grads)]
    g = dict(zip(named, grads[1:]))
    d = params["slots_mu"].shape[0]
    d_params = {"slots_mu": g["slots_mu"].reshape(d), "slots_log_sigma": g["slots_log_sigma"].reshape(d),
                "gru": layouts.from_keras_gru_cell(g["gru/kernel"], g["gru/recurrent"], g["gru/bias"]),
                "mlp": [{"w": g[f"mlp/{i}/w"], "b": g[f"mlp/{i}/b"]} for i in range(2)]}
    for name in ("norm_inputs", "norm_slots", "norm_mlp"):
        d_params[name] = {"scale": g[name + "/scale"], "offset": g[name + "/offset"]}
    for name in ("project_q", "project_k", "project_v"):
        d_params[name] = {"w": g[name]}
    return d_params, np.asarray(grads[0])


forward.grad = grad


if __name__ == "__main__":
    from slotref.conformance import check

    print(keras.__version__)
    report = check(forward)
    print(report)
    raise SystemExit(0 if report.ok else 1)
