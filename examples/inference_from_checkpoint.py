"""Inference from a checkpoint: load a run's checkpoint.h5 and predict the objects of images.

    python examples/inference_from_checkpoint.py RUN_DIR_OR_CHECKPOINT IMAGES.h5 [--num 4]

RUN_DIR from `slotref train` (`slotref train --task setpred --fast-dev-run` makes one in seconds);
IMAGES.h5 any file of the model's image size (`slotref data make`). Nothing else is read.
"""

import argparse

import numpy as np

import slotref


def main(checkpoint, images_file, num=4):
    config, params = slotref.load_model(checkpoint)                        # host NumPy, float32
    model = config.model
    data = slotref.load_dataset(images_file, limit=num)
    images = slotref.images_to_float(data.images)                           # uint8 -> float32 in [-1, 1]
    noise = slotref.slot_noise(np.random.default_rng(0), len(images), model.num_slots,
                               model.slot_attention.slot_size, np.float32)
    if config.task == "setpred":
        predictions = slotref.set_prediction(params, images, noise, model)  # (B, K, 19)
        present = predictions[..., -1] > 0.5
        for i in range(len(images)):
            print(f"image {i}: {int(present[i].sum())} objects predicted (presence > 0.5)")
        return predictions
    out = slotref.autoencoder(params, images, noise, model)
    owner = out["masks"][..., 0].argmax(1)                                  # (B, H, W): the slot of each pixel
    for i in range(len(images)):
        print(f"image {i}: pixels per slot {np.bincount(owner[i].ravel(), minlength=model.num_slots).tolist()}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("images_file")
    p.add_argument("--num", type=int, default=4)
    main(**vars(p.parse_args()))
