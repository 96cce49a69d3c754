"""Sequence MNIST: each image read as 28 rows of 28 pixels, classified by a Conv1D or an attention model.

An image ``[28, 28]`` is a sequence of ``T = 28`` steps (its rows, top to
bottom) of 28 features (the row's pixels): the models see rows, never a 2-D
neighbourhood. Target: at most 2.0% test error, trained in under 10 minutes on
the 2-core CPU (``train_s``: the whole ``fnn.fit`` call, compilation and the
per-epoch evaluations included).

- ``--model conv1d``: ``--depth`` stages of two ``conv1d(k=3)`` + ReLU and a
  ``max_pool((2,))`` (28 -> 14 -> 7 steps), channels ``--width`` doubling per
  stage, then ``flatten -> dense(256) -> ReLU -> dense(10)``.
- ``--model attention``: ``dense(width)`` on every row, a learned
  ``positional_embedding``, ``--depth`` pre-norm transformer blocks
  (``residual(layer_norm -> attention(heads, width / heads))`` and
  ``residual(layer_norm -> dense(2 width) -> GELU -> dense(width))``), a last
  ``layer_norm``, the mean over the 28 steps (``avg_pool((28,))``) and
  ``dense(10)``.

Both train with AdamW (a one-epoch linear warm-up, then a cosine decay),
batches reshuffled every epoch, and (``--shift``) each training image
translated by up to that many pixels before it is read as rows (fit's
``augment`` hook). The recipes were chosen on the validation split
(``--validation``; see ``experiments/README.md``).

    python -m experiments.seq_mnist --model conv1d --json experiments/results/seq_mnist_conv1d.json \\
        --plot experiments/results/seq_mnist_conv1d.png
    python -m experiments.seq_mnist --model attention --json experiments/results/seq_mnist_attention.json \\
        --plot experiments/results/seq_mnist_attention.png
    python -m experiments.seq_mnist --model attention --validation --epochs 3    # a short look
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
from experiments._images import shift_augment

STEPS, FEATURES = 28, 28
#: Per model its settings: epochs, batch size, peak step size, the aims, and its width, depth, heads, weight
#: decay and shift.
CONFIGS = {
    "conv1d": Config(
        "seq_mnist",
        epochs=10,
        batch_size=128,
        lr=2e-3,
        target=0.02,
        budget_s=600.0,
        options={"width": 64, "depth": 2, "heads": 4, "weight_decay": 1e-4, "shift": 2},
    ),
    "attention": Config(
        "seq_mnist",
        epochs=20,
        batch_size=128,
        lr=1e-3,
        target=0.02,
        budget_s=600.0,
        options={"width": 64, "depth": 3, "heads": 4, "weight_decay": 1e-4, "shift": 2},
    ),
}


def conv1d_model(width, depth):
    """``depth`` stages of ``[conv1d(c, 3) -> ReLU] x 2 -> max_pool((2,))``, ``c = width * 2^stage``; a dense head."""
    nn, layers = fnn.nn, []
    for stage in range(depth):
        channels = width * 2**stage
        layers += [nn.conv1d(channels, 3, bias=True), nn.relu, nn.conv1d(channels, 3, bias=True), nn.relu]
        layers.append(nn.max_pool((2,)))
    return nn.serial(*layers, nn.flatten(), nn.dense(256, bias=True), nn.relu, nn.dense(10, bias=True))


def attention_model(width, depth, heads):
    """Rows embedded to ``width``, positions added, ``depth`` pre-norm transformer blocks, the mean over time."""
    if width % heads:
        raise ValueError(f"seq_mnist: --width {width} must be a multiple of --heads {heads}")
    nn = fnn.nn
    blocks = []
    for _ in range(depth):
        blocks.append(nn.residual(nn.serial(nn.layer_norm(), nn.attention(heads, width // heads, bias=True))))
        mlp = nn.serial(nn.layer_norm(), nn.dense(2 * width, bias=True), nn.gelu, nn.dense(width, bias=True))
        blocks.append(nn.residual(mlp))
    return nn.serial(
        nn.dense(width, bias=True),  # [N, 28, 28] -> [N, 28, width], row by row
        nn.positional_embedding(),
        *blocks,
        nn.layer_norm(),
        nn.avg_pool((STEPS,)),  # the mean over the 28 rows: [N, 1, width]
        nn.flatten(),
        nn.dense(10, bias=True),
    )


def build(args):
    """The model ``--model`` names, at ``--width`` and ``--depth``."""
    if args.model == "conv1d":
        return conv1d_model(args.width, args.depth)
    return attention_model(args.width, args.depth, args.heads)


def as_rows(data):
    """The dataset with images ``[N, 28, 28, 1]`` as sequences of rows ``[N, 28, 28]``."""
    rows = (data.x_train.reshape(-1, STEPS, FEATURES), data.x_test.reshape(-1, STEPS, FEATURES))
    return fnn.data.Dataset(data.name, rows[0], data.y_train, rows[1], data.y_test)


def shift_rows(pixels):
    """``augment(key, x) -> x`` for ``fnn.fit``: each image ``[28, 28]`` translated by up to ``pixels``
    (``fnn.data.random_shift`` over the image ``[28, 28, 1]``), named as that is; None for 0."""
    shift = shift_augment(pixels)
    if shift is None:
        return None

    def augment(key, x):
        return shift(key, x[..., None])[..., 0]

    augment.__name__ = shift.__name__
    return augment


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(CONFIGS), default="conv1d")
    first = argparse.ArgumentParser(add_help=False)  # the model first: it sets the other options' defaults
    first.add_argument("--model", choices=tuple(CONFIGS), default="conv1d")
    add_common_args(parser, CONFIGS[first.parse_known_args(argv)[0].model])
    parser.add_argument("--width", type=int, help="model width (channels or features)")
    parser.add_argument("--depth", type=int, help="conv stages or transformer blocks")
    parser.add_argument("--heads", type=int, help="attention heads (attention model)")
    parser.add_argument("--weight-decay", type=float, help="AdamW's weight decay")
    parser.add_argument("--shift", type=int, help="augment: translate by up to this many pixels (0: none)")
    args = parser.parse_args(argv)
    for name in ("width", "depth", "heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.model == "conv1d" and args.depth > 3:
        parser.error(f"--depth for conv1d is at most 3 (each stage halves the 28 rows), got {args.depth}")
    if args.shift < 0 or args.weight_decay < 0:
        parser.error(f"--shift and --weight-decay must be 0 or more, got {args.shift} and {args.weight_decay}")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = as_rows(load_data(args, image=True))
    model = build(args)
    _, params = model.init(jax.random.key(args.seed), (STEPS, FEATURES))
    steps = fnn.loop.steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(args.lr, epochs=args.epochs, steps=steps, weight_decay=args.weight_decay)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(
        f"{args.model} model ({n_params:,} parameters) on {data.name} as rows: {len(data.x_train)} train / "
        f"{len(data.x_test)} test, {args.epochs} epochs of {steps} steps, path {args.path}\n{HEADER}",
        flush=True,
    )
    _, history, timing = timed_fit(
        model,
        params,
        data,
        args,
        optimizer,
        shuffle_key=jax.random.key(args.seed + 1),
        augment=shift_rows(args.shift),
    )
    config, run = CONFIGS[args.model], run_record(history, timing)
    print(f"{config.verdict(run['test_error'], timing['train_s'])}, {timing['cpu_s']:.1f} s CPU", flush=True)
    settings = {
        "model": repr(model),
        "input": "each image as 28 rows (steps) of 28 pixels (features): [N, 28, 28]",
        "width": args.width,
        "depth": args.depth,
        "heads": args.heads if args.model == "attention" else None,
        "n_params": int(n_params),
        "steps_per_epoch": steps,
        "augmentation": f"random translation by up to {args.shift} pixels, zero fill" if args.shift else None,
        "validation": args.validation,
        "optimizer": opt_info,
    }
    aims = config.aims(run["test_error"], run["train_s"])
    result = record(config, args, data, settings=settings, model=args.model, **run, **aims)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        title = f"{args.model} on {data.name} as 28 rows: test error {100 * run['test_error']:.2f}%"
        plot_curves(args.plot, {args.model: run["history"]}, title)
    return result


if __name__ == "__main__":
    _cli.run(main)
