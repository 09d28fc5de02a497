"""One run of the Tetrominoes CPU-preset sweep (issue 5): the preset with another
batch size, learning rate or seed, and the decay stretched to the run's length.

    python bench/preset_sweep.py NAME BATCH STEPS [LR] [SEED] [DECAY] [--device gpu]

Writes runs/sweep-NAME (metrics.jsonl holds FG-ARI every 500 steps). DECAY
defaults to STEPS. Every seed trains on the built-in file of data seed 0, as
the seeds of `cli.py experiment` do. Used on the
GPU to compare learning per step before spending CPU hours (docs/results.md);
SIGINT stops a run cleanly with a checkpoint, as in `cli.py train`.
"""
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slotref.train import preset_config, resolve_dataset, train  # noqa: E402


def main(argv):
    device = "gpu" if "--device" in argv and argv[argv.index("--device") + 1] == "gpu" else "cpu"
    args = [a for a in argv if a not in ("--device", "gpu", "cpu")]
    name, batch, steps = args[0], int(args[1]), int(args[2])
    lr = float(args[3]) if len(args) > 3 else 4e-4
    seed = int(args[4]) if len(args) > 4 else 0
    decay = int(args[5]) if len(args) > 5 else steps
    config = preset_config("discovery", "tetrominoes")
    data = resolve_dataset(config)                    # data seed 0 (config.seed is 0 here)
    config = replace(config, dataset=str(data), batch_size=batch, steps=steps, decay_steps=decay,
                     learning_rate=lr, seed=seed, device=device)
    try:
        train(config, Path("runs") / f"sweep-{name}", progress=False)
    except KeyboardInterrupt:
        print(f"{name}: stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
