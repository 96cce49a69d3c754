"""The MNIST conv net with batch norm and dropout, aiming at 0.40% test error in under 10 minutes on a 2-core CPU,
and an ablation: the same net and recipe with and without each.

The net is ``experiments.mnist_conv``'s (strided ``SAME`` convolutions, then
one hidden dense layer), with batch norm after every convolution and after
the hidden dense layer (each then without a bias: batch norm's ``beta`` is
the bias) and dropout before the output layer:

    conv -> batch_norm -> relu   (per convolution)
    flatten -> dense -> batch_norm -> relu -> dropout -> dense(10)

A variant without batch norm puts the biases back; one without dropout
leaves the layer out. Every variant trains through one ``fnn.fit`` call
with the same recipe: Adam with a one-epoch warm-up and a cosine decay,
batches reshuffled every epoch, each training image translated by up to
``--shift`` pixels (fit's ``augment=``), the test set evaluated at every
epoch's end in evaluation mode (batch norm's running statistics, no
dropout). ``train_s`` is the whole ``fit`` call: compilation, training and
the per-epoch evaluation of both splits.

    python -m experiments.mnist_conv_bn --json experiments/results/mnist_conv_bn.json \\
        --plot experiments/results/mnist_conv_bn.png
    python -m experiments.mnist_conv_bn --variants full       # the full net only
    python -m experiments.mnist_conv_bn --validation --epochs 4 --variants full none

The JSON's top-level ``test_error``, ``train_s`` and ``history`` are the
first variant's (``full`` by default); ``ablation`` has one row per variant.
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
    write_json,
)
from experiments._images import INPUT_SHAPE, add_net_args, check_net_args, train_shifted

CONFIG = Config(
    "mnist_conv_bn",
    epochs=15,
    batch_size=128,
    lr=3e-3,
    target=0.004,
    budget_s=600.0,
    options={"rate": 0.4, "momentum": 0.9},
)
#: The variants of the ablation: name -> (batch norm, dropout).
VARIANTS = {"full": (True, True), "batch_norm": (True, False), "dropout": (False, True), "none": (False, False)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    add_net_args(parser)
    parser.add_argument("--rate", type=float, help="dropout rate before the output layer")
    parser.add_argument("--momentum", type=float, help="batch norm's running-statistics momentum")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="which nets to train, in order: full (batch norm and dropout), batch_norm, dropout, none",
    )
    args = check_net_args(parser, parser.parse_args(argv))
    if not 0 < args.rate < 1:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")
    return args


def build(convs, dense, *, batch_norm, dropout, momentum=0.9, rate=0.4):
    """The conv net, with batch norm after each convolution and the hidden dense layer, and/or dropout before the
    output layer (see the module doc)."""
    nn = fnn.nn

    def normalised(layer):
        return [layer, nn.batch_norm(momentum), nn.relu] if batch_norm else [layer, nn.relu]

    layers = []
    for kernel, channels, stride in convs:
        layers += normalised(nn.conv2d(channels, kernel, stride=stride, bias=not batch_norm))
    layers += [nn.flatten(), *normalised(nn.dense(dense, bias=not batch_norm))]
    layers += [nn.dropout(rate)] if dropout else []
    return nn.serial(*layers, nn.dense(10, bias=True))


def train_variant(name, data, args):
    """Trains one variant; returns its ablation row (with its history)."""
    batch_norm, dropout = VARIANTS[name]
    model = build(
        args.convs, args.dense, batch_norm=batch_norm, dropout=dropout, momentum=args.momentum, rate=args.rate
    )
    _, params = model.init(jax.random.key(args.seed), INPUT_SHAPE)
    steps = fnn.loop.steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(args.lr, epochs=args.epochs, steps=steps)
    print(f"\n{name}: {model!r}\n{HEADER}", flush=True)
    _, history, timing = train_shifted(model, params, data, args, optimizer)
    return {
        "variant": name,
        "batch_norm": batch_norm,
        "dropout": dropout,
        **run_record(history, timing),
        "model": repr(model),
        "n_params": int(sum(p.size for p in jax.tree.leaves(params))),
        "optimizer": opt_info,
    }


def summary(rows):
    """The ablation as a Markdown table."""
    return markdown_table(
        ["variant", "batch norm", "dropout", "test error", "best epoch", "train error", "train s"],
        [
            [
                r["variant"],
                "yes" if r["batch_norm"] else "no",
                "yes" if r["dropout"] else "no",
                f"{100 * r['test_error']:.2f}%",
                f"{100 * r['best_epoch_test_error']:.2f}%",
                f"{100 * r['train_error']:.2f}%",
                f"{r['train_s']:.0f}",
            ]
            for r in rows
        ],
    )


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args, image=True)
    print(
        f"conv net with batch norm and dropout on {data.name}: {len(data.x_train)} train / {len(data.x_test)} test, "
        f"{args.epochs} epochs, path {args.path}; variants {', '.join(args.variants)}",
        flush=True,
    )
    rows = [train_variant(name, data, args) for name in args.variants]
    first = rows[0]
    print(f"\n{summary(rows)}\n")
    print(f"{first['variant']}: {CONFIG.verdict(first['test_error'], first['train_s'])}", flush=True)
    settings = {
        "convs": [{"kernel": k, "channels": c, "stride": s} for k, c, s in args.convs],
        "dense": args.dense,
        "dropout_rate": args.rate,
        "batch_norm_momentum": args.momentum,
        "augmentation": f"random translation by up to {args.shift} pixels" if args.shift else None,
        "validation": args.validation,
    }
    result = record(
        CONFIG,
        args,
        data,
        settings=settings,
        variant=first["variant"],
        test_error=first["test_error"],
        train_s=first["train_s"],
        **CONFIG.aims(first["test_error"], first["train_s"]),
        history=first["history"],
        ablation=rows,
    )
    if args.json:
        write_json(args.json, result)
    if args.plot:
        runs = {r["variant"]: r["history"] for r in rows}
        plot_curves(args.plot, runs, f"conv net on {data.name}: {first['variant']} {100 * first['test_error']:.2f}%")
    return result


if __name__ == "__main__":
    _cli.run(main)
