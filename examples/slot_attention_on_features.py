"""Slot Attention on your own features: group N feature vectors of each image into K slots.

    python examples/slot_attention_on_features.py [--batch 4] [--inputs 64] [--features 32] [--slots 5]

The features can come from any encoder (here: random numbers standing in for them).
Parameters are created in the dtype of the features (float32 here).
"""

import argparse

import numpy as np

import slotref


def main(batch=4, inputs=64, features=32, slots=5, iterations=3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, inputs, features)).astype(np.float32)    # (B, N, D_inputs): your features

    config = slotref.SlotAttentionConfig(input_size=features, slot_size=64, mlp_hidden_size=128)
    params = slotref.init_slot_attention(rng, config, dtype=x.dtype)
    noise = slotref.slot_noise(rng, batch, slots, config.slot_size, x.dtype)  # (B, K, D) ~ N(0, 1)
    initial = slotref.sample_initial_slots(params, noise)
    out, attention = slotref.slot_attention(params, x, initial, iterations, config, return_attention=True)

    # attention (B, T, N, K): each input's share given to each slot (sums to 1 over slots)
    owner = attention[:, -1].argmax(-1)                                     # (B, N): the slot each input joins
    print(f"slots {out.shape} {out.dtype}, attention {attention.shape}")
    print("inputs per slot (first image):", np.bincount(owner[0], minlength=slots).tolist())
    assert out.dtype == x.dtype and np.allclose(attention.sum(-1), 1, atol=1e-5)
    return out, attention


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("batch", 4), ("inputs", 64), ("features", 32), ("slots", 5)):
        p.add_argument(f"--{name}", type=int, default=default)
    main(**vars(p.parse_args()))
