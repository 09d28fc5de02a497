"""Inference from a checkpoint: load a run's checkpoint.h5 and predict the objects of images.

    python examples/inference_from_checkpoint.py RUN_DIR_OR_CHECKPOINT IMAGES.h5 [--num 4]

RUN_DIR from `slotref train` (`slotref train --task setpred --fast-dev-run` makes one in seconds);
IMAGES.h5 any file of the model's image size (`slotref data make`). Nothing else is read.
`slotref.predict` runs the model as `slotref eval` does (the run's K, its test-time T, its evaluation
slot noise), so these predictions are the ones `slotref eval RUN --dataset IMAGES.h5` scores.
"""

import argparse

import numpy as np

import slotref


def main(checkpoint, images_file, num=4):
    config, params = slotref.load_model(checkpoint)                     # host NumPy, float32
    images = slotref.load_dataset(images_file, limit=num).images        # uint8 (B, H, W, 3), as stored
    out = slotref.predict(config, params, images)                       # as `slotref eval` runs the model
    if config.task == "setpred":
        present = out["predictions"][..., -1] > 0.5                     # (B, K): the presence output
        for i in range(len(images)):
            print(f"image {i}: {int(present[i].sum())} objects predicted (presence > 0.5)")
        return out
    owner = out["masks"].argmax(1)                                      # (B, H, W): the slot of each pixel
    for i in range(len(images)):
        print(f"image {i}: pixels per slot {np.bincount(owner[i].ravel(), minlength=config.model.num_slots).tolist()}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("images_file")
    p.add_argument("--num", type=int, default=4)
    main(**vars(p.parse_args()))
