"""Mixed precision against float32: the notes' recipe trained both ways, over several seeds.

The notes' two-layer net (``mlp([784, 500, 10])``, no biases, He init,
batches of 100 in data order, SGD step 0.5, 10 epochs) in float32, and the
same net wrapped in ``fnn.nn.mixed_precision`` (bfloat16 products, float32
parameters, gradients and outputs), from the same initial weights for each
seed. The aim: the bfloat16 runs' mean test error within 0.2 percentage
points of the float32 runs'.

    python -m experiments.mixed_precision                 # 3 seeds, the custom path
    python -m experiments.mixed_precision --seeds 1 --epochs 1 --train-size 6000   # a quick check

On a CPU the bfloat16 products are no faster (XLA converts them); the
speed of mixed precision is a GPU's (``experiments/device_check.py``).
Results go to ``runs/mixed_precision.json`` unless ``--json`` names another
file (the committed run is in ``experiments/results/``).
"""

import argparse

import numpy as np

from experiments import _cli
from experiments._common import (
    RECIPE_BATCH,
    RECIPE_LR,
    Config,
    add_common_args,
    fit_recipe,
    load_data,
    record,
    run_fields,
    write_json,
)

#: The recipe's settings (the defaults of its options); the aim: the bfloat16 runs' mean test error at most
#: ``AIM`` above the float32 runs'.
CONFIG = Config("mixed_precision", epochs=10, batch_size=RECIPE_BATCH, lr=RECIPE_LR)
AIM = 0.002
DTYPES = ("float32", "bfloat16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--seeds", type=int, default=3, help="how many initial weights (seeds --seed, --seed + 1, ...)")
    parser.set_defaults(json="runs/mixed_precision.json")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be positive, got {args.seeds} and {args.epochs}")
    return args


def train(data, dtype, seed, args):
    """One run of the recipe in ``dtype`` from the initial weights of ``seed``: its test error, seconds, history."""
    history = fit_recipe(
        data,
        path=args.path,
        epochs=args.epochs,
        seed=seed,
        mixed=dtype == "bfloat16",
        batch_size=args.batch_size,
        lr=args.lr,
    )
    run = {"dtype": dtype, "seed": seed, **run_fields(history, "test_error", "wall_s", "compile_s", "epoch_s")}
    print(f"{dtype:>8} seed {seed}: test error {100 * run['test_error']:.2f}%, {run['wall_s']:.1f} s", flush=True)
    return {**run, **run_fields(history, "history")}


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    seeds = range(args.seed, args.seed + args.seeds)
    runs = [train(data, dtype, seed, args) for seed in seeds for dtype in DTYPES]
    mean = {d: float(np.mean([r["test_error"] for r in runs if r["dtype"] == d])) for d in DTYPES}
    gap = mean["bfloat16"] - mean["float32"]
    settings = {"model": "mlp([784, 500, 10])", "compute_dtypes": list(DTYPES), "seeds": list(seeds)}
    fields = {"mean_test_error": mean, "gap": gap, "aim_gap": AIM, "aim_met": gap <= AIM, "runs": runs}
    result = record(CONFIG, args, data, settings=settings, shuffle=False, **fields)
    write_json(args.json, result)
    words = "met" if gap <= AIM else "MISSED"
    print(
        f"mean test error: float32 {100 * mean['float32']:.2f}%, bfloat16 {100 * mean['bfloat16']:.2f}% "
        f"(gap {100 * gap:+.2f} points, aim at most +{100 * AIM:.1f}: {words})"
    )
    return result


if __name__ == "__main__":
    _cli.run(main)
