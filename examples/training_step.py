"""A training step in 20 lines: object discovery (autoencoder + MSE) with Adam and the paper's schedule.

    python examples/training_step.py [--steps 3] [--resolution 32] [--batch 4]

Gradients come from autograd; ``Adam.update`` changes ``params`` in place.
"""

import argparse

import autograd
import numpy as np

import slotref


def main(steps=3, resolution=32, batch=4):
    rng = np.random.default_rng(0)
    model = slotref.discovery_config("tetrominoes", resolution=(resolution, resolution), num_slots=4)
    params = slotref.init_model(rng, model, dtype=np.float32)
    images = rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32)  # your images in [-1, 1]

    def loss_fn(params, images, noise):
        return slotref.mse(slotref.autoencoder(params, images, noise, model)["recon_combined"], images)

    value_and_grad = autograd.value_and_grad(loss_fn)
    adam, schedule = slotref.Adam(), slotref.Schedule(base_lr=4e-4, warmup_steps=1, decay_steps=100_000)
    state = adam.init(params)
    losses = []
    for step in range(steps):
        noise = slotref.slot_noise(rng, batch, model.num_slots, model.slot_attention.slot_size, np.float32)
        loss, grads = value_and_grad(params, images, noise)
        adam.update(params, grads, state, schedule(step))
        losses.append(float(loss))
        print(f"step {step + 1}: loss {losses[-1]:.4f}, lr {schedule(step):.2e}")
    assert all(np.isfinite(losses))
    return losses


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("steps", 3), ("resolution", 32), ("batch", 4)):
        p.add_argument(f"--{name}", type=int, default=default)
    main(**vars(p.parse_args()))
