"""The notes' ResNet-S on MNIST, without and with LayerNorm in its blocks, on the same budget.

``fnn.nn.resnet_s(10, width=W, hidden=H, n_blocks=B, normalize=...)``:
``dense(W) -> B x Res(z) = z + relu(MM(relu(MM(z)))) -> dense(10)``, every
``MM`` with a bias; ``normalize=True`` puts a LayerNorm after each inner
``MM``. Both variants get the same initialisation seed, optimiser (Adam,
one-epoch warm-up, cosine decay), shuffled batches and number of epochs.

    python -m experiments.resnet_mnist --json experiments/results/resnet_mnist.json \\
        --plot experiments/results/resnet_mnist.png
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
    markdown_table,
    plot_curves,
    record,
    run_record,
    timed_fit,
    write_json,
)

CONFIG = Config("resnet_mnist", epochs=6, batch_size=128, lr=1e-3, options={"width": 256, "hidden": 256, "blocks": 4})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--width", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--blocks", type=int)
    return parser.parse_args(argv)


def run_one(normalize, data, args):
    """Trains the ResNet-S without or with LayerNorm (``normalize``); returns its run (:func:`run_record`)."""
    model = fnn.nn.resnet_s(10, width=args.width, hidden=args.hidden, n_blocks=args.blocks, normalize=normalize)
    _, params = model.init(jax.random.key(args.seed), data.x_train.shape[1:])
    n_params = sum(p.size for p in jax.tree.leaves(params))
    steps = fnn.loop.steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(args.lr, epochs=args.epochs, steps=steps)
    label = "LayerNorm" if normalize else "plain"
    print(f"\nResNet-S {label} ({n_params:,} parameters): {model!r}\n{HEADER}", flush=True)
    _, history, timing = timed_fit(model, params, data, args, optimizer, shuffle_key=jax.random.key(args.seed + 1))
    return {
        "variant": label,
        "normalize": normalize,
        "n_params": int(n_params),
        **run_record(history, timing),
        "optimizer": opt_info,
    }


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    print(
        f"ResNet-S width {args.width}, hidden {args.hidden}, {args.blocks} blocks on {data.name}: "
        f"{len(data.x_train)} train / {len(data.x_test)} test, {args.epochs} epochs, batch {args.batch_size}, "
        f"path {args.path}",
        flush=True,
    )
    runs = [run_one(normalize, data, args) for normalize in (False, True)]
    print(
        markdown_table(
            ["variant", "params", "test error", "train error", "train_s", "median epoch_s"],
            [
                [
                    r["variant"],
                    f"{r['n_params']:,}",
                    f"{100 * r['test_error']:.2f}%",
                    f"{100 * r['train_error']:.2f}%",
                    f"{r['train_s']:.1f}",
                    f"{sorted(r['epoch_s'])[len(r['epoch_s']) // 2]:.2f}",
                ]
                for r in runs
            ],
        )
    )
    settings = {"width": args.width, "hidden": args.hidden, "n_blocks": args.blocks, "activation": "relu"}
    result = record(CONFIG, args, data, settings=settings, runs=runs)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_curves(
            args.plot,
            {r["variant"]: r["history"] for r in runs},
            f"ResNet-S (width {args.width}, {args.blocks} blocks) on {data.name}, with and without LayerNorm",
        )
    return result


if __name__ == "__main__":
    _cli.run(main)
