"""Mixed precision against float32: the notes' recipe, or the Flax tutorial's pooled CNN, trained each way, over
several seeds.

The notes' two-layer net (``--model recipe``: ``mlp([784, 500, 10])``, no
biases, He init, batches of 100 in data order, SGD step 0.5, 10 epochs) or
the Flax tutorial's pooled CNN (``--model pooled``: ``_images.pooled_cnn``,
batches of 32 in data order, AdamW at 0.005, one epoch) in float32, and the
same net wrapped in ``fnn.nn.mixed_precision`` for each other compute dtype
of ``--dtypes`` (bfloat16, float16: products in that dtype from float32
parameters, float32 gradients and outputs; float16 with ``fit``'s dynamic
loss scaling), from the same initial weights for each seed. The aim: each
mixed-precision mean test error within 0.2 percentage points of the float32
runs'.

    python -m experiments.mixed_precision                  # the recipe, float32 and bfloat16, 3 seeds
    python -m experiments.mixed_precision --dtypes float32 bfloat16 float16 \\
        --json experiments/results/mixed_precision.json
    python -m experiments.mixed_precision --model pooled --json experiments/results/mixed_precision_pooled.json
    python -m experiments.mixed_precision --seeds 1 --epochs 1 --train-size 6000   # a quick check

On a CPU the narrower products are no faster (XLA converts them); the
speed of mixed precision is a GPU's (``experiments/device_check.py``).
Results go to ``runs/mixed_precision.json`` unless ``--json`` names another
file (the committed runs are in ``experiments/results/``).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import (
    RECIPE_BATCH,
    RECIPE_LR,
    Config,
    add_common_args,
    load_data,
    record,
    run_fields,
    write_json,
)
from experiments._images import TUTORIAL_ADAMW, TUTORIAL_BATCH, TUTORIAL_LR, recipe_or_pooled

#: Each model's settings (the defaults of its options); the aim: each mixed-precision mean test error at most
#: ``AIM`` above the float32 runs'.
CONFIGS = {
    "recipe": Config("mixed_precision", epochs=10, batch_size=RECIPE_BATCH, lr=RECIPE_LR),
    "pooled": Config("mixed_precision", epochs=1, batch_size=TUTORIAL_BATCH, lr=TUTORIAL_LR),
}
AIM = 0.002
#: The dtypes a run computes in: float32 (the net as it is), or one of ``fnn.nn.mixed_precision``'s.
DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None):
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", choices=tuple(CONFIGS), default="recipe", help="what to train (default: recipe)")
    chosen, _ = model.parse_known_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[model])
    add_common_args(parser, CONFIGS[chosen.model])
    parser.add_argument("--seeds", type=int, default=3, help="how many initial weights (seeds --seed, --seed + 1, ...)")
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=["float32", "bfloat16"], help="float32 and the compute dtypes"
    )
    parser.set_defaults(json="runs/mixed_precision.json")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be positive, got {args.seeds} and {args.epochs}")
    if args.dtypes[0] != "float32" or len(set(args.dtypes)) != len(args.dtypes):
        raise ValueError(f"--dtypes must start with float32, each dtype once, got {' '.join(args.dtypes)}")
    return args


def train(data, dtype, seed, args):
    """One run in ``dtype`` from the initial weights of ``seed``: its test error, seconds, history."""
    net, shape, optimizer = recipe_or_pooled(args.model, args.lr)
    _, params = net.init(jax.random.key(seed), shape)
    model = net if dtype == "float32" else fnn.nn.mixed_precision(net, jnp.dtype(dtype))
    _, history = fnn.fit(
        model,
        params,
        data,
        path=args.path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=optimizer,
        progress=False,
    )
    run = {"dtype": dtype, "seed": seed, **run_fields(history, "test_error", "wall_s", "compile_s", "epoch_s")}
    print(f"{dtype:>8} seed {seed}: test error {100 * run['test_error']:.2f}%, {run['wall_s']:.1f} s", flush=True)
    return {**run, **run_fields(history, "history")}


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args, image=args.model == "pooled")
    seeds = range(args.seed, args.seed + args.seeds)
    runs = [train(data, dtype, seed, args) for seed in seeds for dtype in args.dtypes]
    mean = {d: float(np.mean([r["test_error"] for r in runs if r["dtype"] == d])) for d in args.dtypes}
    gaps = {d: mean[d] - mean["float32"] for d in args.dtypes[1:]}
    model = "mlp([784, 500, 10])" if args.model == "recipe" else "pooled CNN (the Flax MNIST tutorial's)"
    optimizer = f"sgd {args.lr}" if args.model == "recipe" else {"name": "adamw", "lr": args.lr, **TUTORIAL_ADAMW}
    settings = {"model": model, "optimizer": optimizer, "compute_dtypes": list(args.dtypes), "seeds": list(seeds)}
    fields = {
        "model": args.model,
        "mean_test_error": mean,
        **({"gap": gaps["bfloat16"]} if "bfloat16" in gaps else {}),
        "gaps": gaps,
        "aim_gap": AIM,
        "aim_met": all(g <= AIM for g in gaps.values()),
        "runs": runs,
    }
    result = record(CONFIGS[args.model], args, data, settings=settings, shuffle=False, **fields)
    write_json(args.json, result)
    said = ", ".join(f"{d} {100 * mean[d]:.2f}% ({100 * gaps[d]:+.2f} points)" for d in gaps)
    words = "met" if result["aim_met"] else "MISSED"
    print(f"mean test error: float32 {100 * mean['float32']:.2f}%, {said}; aim at most +{100 * AIM:.1f}: {words}")
    return result


if __name__ == "__main__":
    _cli.run(main)
