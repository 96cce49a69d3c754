"""The Flax MNIST tutorial's CNN, built from fnn's layers and trained to convergence with ``fnn.fit``.

The network is the one Flax's NNX MNIST tutorial builds: ``conv 3x3, 32`` ->
ReLU -> ``avg pool 2x2`` -> ``conv 3x3, 64`` -> ReLU -> ``avg pool 2x2`` ->
flatten (``7 x 7 x 64 = 3136``) -> ``dense 256`` -> ReLU -> ``dense 10``
(``SAME`` padding, biases, NHWC; He initialisation, fnn's default;
``experiments._images.pooled_cnn``). The tutorial trains it for 1,200 steps
of batch 32; here it is trained to convergence with the recipe
``mnist_conv`` chose on the validation split: Adam with a one-epoch linear
warm-up and a cosine decay, batches reshuffled every epoch, each training
image translated by up to 2 pixels per step (``--shift``,
``fnn.data.random_shift``), and the full training and test sets evaluated
after every epoch. ``train_s`` is the whole ``fit`` call (compilation included).

    python -m experiments.mnist_pooled --json experiments/results/mnist_pooled.json \\
        --plot experiments/results/mnist_pooled.png
    python -m experiments.mnist_pooled --validation --epochs 3     # a short look on the validation split

``experiments.peer_pooled`` trains the same network one epoch at a time in
fnn, Flax NNX and PyTorch side by side.
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
    write_json,
)
from experiments._images import INPUT_SHAPE, pooled_cnn, step_flops, train_shifted

CONFIG = Config("mnist_pooled", epochs=12, batch_size=128, lr=2e-3, options={"shift": 2, "weight_decay": 0.0})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--shift", type=int, help="augment: translate by up to this many pixels (0: none)")
    parser.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay")
    args = parser.parse_args(argv)
    if args.shift < 0:
        parser.error(f"--shift must be 0 or more, got {args.shift}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args, image=True)
    model = pooled_cnn()
    _, params = model.init(jax.random.key(args.seed), INPUT_SHAPE)
    steps = fnn.loop.steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(args.lr, epochs=args.epochs, steps=steps, weight_decay=args.weight_decay)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    xla_step = step_flops(model, params, data, args, optimizer)
    print(
        f"pooled CNN ({n_params:,} parameters, XLA counts {xla_step / args.batch_size / 1e6:.1f} MFLOP per "
        f"training example) on {data.name}: {len(data.x_train)} train / {len(data.x_test)} test, "
        f"{args.epochs} epochs of {steps} steps, path {args.path}\n{HEADER}",
        flush=True,
    )
    _, history, timing = train_shifted(model, params, data, args, optimizer)
    run = run_record(history, timing)
    test_error = run["test_error"]
    print(
        f"test error {100 * test_error:.2f}% after {args.epochs} epochs; "
        f"{timing['train_s']:.1f} s wall ({timing['compile_s']:.1f} s compiling), {timing['cpu_s']:.1f} s CPU",
        flush=True,
    )
    settings = {
        "model": repr(model),
        "layers": "conv 3x3 32, relu, avg pool 2x2, conv 3x3 64, relu, avg pool 2x2, flatten, "
        "dense 256, relu, dense 10 (SAME padding, biases)",
        "init": "he",
        "n_params": int(n_params),
        "xla_mflop_per_training_example": xla_step / args.batch_size / 1e6,
        "steps_per_epoch": steps,
        "augmentation": f"random translation by up to {args.shift} pixels, zero fill" if args.shift else None,
        "validation": args.validation,
        "optimizer": opt_info,
    }
    result = record(CONFIG, args, data, settings=settings, **run)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        title = f"pooled CNN on {data.name}: test error {100 * test_error:.2f}%"
        plot_curves(args.plot, {"pooled CNN": run["history"]}, title)
    return result


if __name__ == "__main__":
    _cli.run(main)
