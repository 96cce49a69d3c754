"""An MLP on MNIST trained to at most 1.5% test error: Adam with a warm-up and cosine decay, shuffled batches.

The model is ``fnn.nn.mlp`` (ReLU, biases, He init); the optimiser is optax's
``adamw`` with a linear warm-up to the peak step size and a cosine decay to
almost zero; the training set is reshuffled every epoch; at most 20 epochs.
Each epoch ends with the loss and error on the full test set; the training
loss and error are ``fnn.fit``'s default, each batch's before its update,
averaged over the epoch. ``train_s`` is the whole ``fnn.fit`` call.

    python -m experiments.mnist_mlp_best --json experiments/results/mnist_mlp_best.json \\
        --plot experiments/results/mnist_mlp_best.png
    python -m experiments.mnist_mlp_best --validation   # test on the last 10,000 training images instead

``--validation`` holds out the last 10,000 training images as the test set
(training on the first 50,000): a configuration is chosen on that split, and
the real test set is used once. The helpers here (data, schedule, timing) are
shared by the other MNIST experiments (``mnist_conv``, ``resnet_mnist``,
``activations``).

Offline, set ``FNN_DATASETS_DIR`` to a folder holding ``mnist/`` with the four
IDX files (``/work/shared/datasets`` on the project's machines).
"""

import argparse

import jax

import fnn
from experiments import _cli
from experiments._common import (
    HEADER,
    Config,
    adam_cosine,
    add_common_args,
    load_data,
    plot_curves,
    record,
    run_record,
    timed_fit,
    write_json,
)

CONFIG = Config(
    "mnist_mlp_best",
    epochs=20,
    batch_size=128,
    lr=1e-3,
    target=0.015,
    options={"hidden": [1024, 1024], "weight_decay": 0.05, "warmup_epochs": 1.0},
)


# ---------------------------------------------------------------- this experiment
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths")
    parser.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (0: plain Adam)")
    parser.add_argument("--warmup-epochs", type=float)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not 1 <= args.epochs <= 20:
        raise SystemExit(f"mnist_mlp_best: at most 20 epochs, got {args.epochs}")
    data = load_data(args)
    sizes = [784, *args.hidden, 10]
    model = fnn.nn.mlp(sizes, bias=True)
    _, params = model.init(jax.random.key(args.seed), (784,))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    steps = fnn.loop.steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(
        args.lr, epochs=args.epochs, steps=steps, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay
    )
    print(
        f"MLP {sizes} ({n_params:,} parameters) on {data.name}: {len(data.x_train)} train / {len(data.x_test)} test, "
        f"{args.epochs} epochs of {steps} steps, path {args.path}\n{HEADER}",
        flush=True,
    )
    _, history, timing = timed_fit(model, params, data, args, optimizer, shuffle_key=jax.random.key(args.seed + 1))
    run = run_record(history, timing)
    print(f"{CONFIG.verdict(run['test_error'], timing['train_s'])}, {timing['cpu_s']:.1f} s CPU", flush=True)
    settings = {
        "model": f"fnn.nn.mlp({sizes}, bias=True), ReLU, He init",
        "sizes": sizes,
        "n_params": int(n_params),
        "steps_per_epoch": steps,
        "optimizer": opt_info,
    }
    result = record(CONFIG, args, data, settings=settings, **run, **CONFIG.aims(run["test_error"], run["train_s"]))
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_curves(
            args.plot, {"MLP": run["history"]}, f"MLP {sizes} on {data.name}: test error {100 * run['test_error']:.2f}%"
        )
    return result


if __name__ == "__main__":
    _cli.run(main)
