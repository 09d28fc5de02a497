"""One run of the Tetrominoes CPU-preset sweep (issue 5): the preset with another
batch size, learning rate, seed or decay.

    python bench/preset_sweep.py NAME BATCH STEPS [LR] [SEED] [DECAY] [--device gpu]

Writes runs/sweep-NAME (metrics.jsonl holds FG-ARI every 500 steps). LR
defaults to the paper's 4e-4 and DECAY to STEPS. Every seed trains on the
built-in file of data seed 0, as the seeds of `cli.py experiment` do. Used on
the GPU to compare learning per step before spending CPU hours
(`bench/preset_sweep.sh`, docs/results.md); SIGINT stops a run cleanly with a
checkpoint, as in `cli.py train`.
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slotref.training import TrainingError, preset_config, resolve_dataset, train  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("batch", type=int)
    parser.add_argument("steps", type=int)
    parser.add_argument("lr", type=float, nargs="?", default=4e-4)
    parser.add_argument("seed", type=int, nargs="?", default=0)
    parser.add_argument("decay", type=int, nargs="?", default=None)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args(argv)
    config = preset_config("discovery", "tetrominoes")
    data = resolve_dataset(config)                    # data seed 0 (the preset's seed)
    config = replace(config, dataset=str(data), batch_size=args.batch, steps=args.steps,
                     decay_steps=args.decay or args.steps, learning_rate=args.lr, seed=args.seed,
                     device=args.device)
    try:
        train(config, Path("runs") / f"sweep-{args.name}", progress=False)
    except KeyboardInterrupt:
        print(f"{args.name}: stopped", flush=True)
    except TrainingError as err:                      # e.g. runs/sweep-NAME already holds a run
        sys.exit(f"error: {err} (for this script: another NAME)")


if __name__ == "__main__":
    main()
