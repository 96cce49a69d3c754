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
import math
import os
import time
import types

import jax
import numpy as np
import optax

import fnn
from experiments import _cli
from experiments._report import device_description, pyplot, save_figure, write_json

TARGET = 0.015
HEADER = f"{'Epoch':>5} | {'Train Loss':>10} | {'Test Loss':>9} | {'Train Err':>9} | {'Test Err':>8} | {'s':>6}"
VALIDATION_SIZE = 10_000


# ---------------------------------------------------------------- shared by the MNIST experiments
def add_common_args(parser, *, epochs, batch_size, lr):
    """Adds the options every MNIST experiment here shares (data, budget, output)."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr, help="peak step size")
    parser.add_argument("--path", choices=fnn.PATHS, default="custom", help="gradient path")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the shuffling")
    parser.add_argument("--validation", action="store_true", help="test on the last 10,000 training images")
    parser.add_argument("--train-size", type=int, help="use only the first N training images")
    parser.add_argument("--test-size", type=int, help="use only the first N test images")
    parser.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data (for smoke tests)")
    parser.add_argument("--source-dir", help="folder with MNIST's IDX files (default: $FNN_DATASETS_DIR/mnist)")
    parser.add_argument("--data-dir", help="TFDS data folder (default: TFDS's own)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write curves as PNG")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _cli.add_flags(parser)


def synthetic_mnist(n_train=512, n_test=128, seed=0):
    """MNIST-shaped random data: pixels uniform in [0, 1], labels from a random linear teacher (learnable)."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((784, 10)).astype(np.float32)

    def split(n):
        x = rng.random((n, 784), dtype=np.float32)
        return x, np.argmax((x - 0.5) @ teacher, axis=1).astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_data(args, *, image=False):
    """MNIST (or synthetic data) as ``x [N, 784]`` float32 in [0, 1], or ``[N, 28, 28, 1]`` with ``image``.

    Honours ``--synthetic``, ``--validation`` (train on the first 50,000
    training images, test on the last 10,000), ``--train-size`` and
    ``--test-size`` (the first N rows of each split).
    """
    if args.synthetic:
        data = synthetic_mnist(args.train_size or 512, args.test_size or 128, args.seed)
        name = "synthetic"
    else:
        data = fnn.data.load("mnist", source_dir=args.source_dir, data_dir=args.data_dir)
        name = "mnist"
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if args.validation:
        n = len(x_train) - min(VALIDATION_SIZE, len(x_train) // 5)
        x_train, y_train, x_test, y_test = x_train[:n], y_train[:n], x_train[n:], y_train[n:]
        name += " (validation split)"
    x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]
    if image:
        x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
    return types.SimpleNamespace(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def steps_per_epoch(n_train, batch_size):
    """Optimizer steps per epoch of ``fnn.fit`` (a last smaller batch takes any remainder)."""
    return math.ceil(n_train / batch_size)


def adam_cosine(lr, *, epochs, steps, warmup_epochs=1, end_factor=1e-3, weight_decay=0.0):
    """``optax.adamw``: a linear warm-up over ``warmup_epochs`` to ``lr``, then a cosine decay to ``lr * end_factor``.

    Returns ``(optimizer, description)``; ``steps`` is steps per epoch.
    """
    warmup = int(min(warmup_epochs * steps, epochs * steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=epochs * steps, end_value=lr * end_factor
    )
    description = {
        "name": "adamw" if weight_decay else "adam",
        "peak_lr": lr,
        "schedule": "linear warm-up, then cosine decay (optax.warmup_cosine_decay_schedule)",
        "warmup_steps": warmup,
        "decay_steps": epochs * steps,
        "end_lr": lr * end_factor,
        "weight_decay": weight_decay,
    }
    return optax.adamw(schedule, weight_decay=weight_decay), description


def print_row(row):
    """Prints one epoch of :meth:`fnn.History.rows` under :data:`HEADER`."""
    print(
        f"{row['epoch']:>5} | {row['train_loss']:>10.5f} | {row['test_loss']:>9.5f} | "
        f"{row['train_err']:>9.5f} | {row['test_err']:>8.5f} | {row['epoch_s']:>6.1f}",
        flush=True,
    )


def timed_fit(model, params, data, args, optimizer, *, quiet=False, train_metrics="batches", **kwargs):
    """``fnn.fit`` with the script's options; returns ``(params, history, timing)``.

    ``timing`` has ``train_s`` (the whole ``fit`` call: compilation, every
    epoch's training and evaluation), ``compile_s``, ``epoch_s``, ``cpu_s``
    (process CPU time over the same span: ``cpu_s / train_s`` is how many
    cores were busy on average), the 1-minute load average before and after
    (the machine is shared), and ``train_metrics``: ``"batches"`` (fit's
    default: each batch's loss and error before its update, averaged over the
    epoch) or ``"full"`` (the training set evaluated at the epoch's end).
    """
    load_before = os.getloadavg()[0]
    cpu = time.process_time()
    params, history = fnn.fit(
        model,
        params,
        data,
        path=args.path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=optimizer,
        progress=False if args.no_progress else None,
        on_epoch=None if quiet else print_row,
        train_metrics=train_metrics,
        **kwargs,
    )
    timing = {
        "train_s": history.wall_s,
        "compile_s": history.compile_s,
        "epoch_s": [float(s) for s in history.epoch_s],
        "cpu_s": time.process_time() - cpu,
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
        "train_metrics": train_metrics,
    }
    return params, history, timing


def machine():
    """The fields every result names its machine with."""
    return {"device": device_description(), "jax_version": jax.__version__, "optax_version": optax.__version__}


def plot_curves(path, runs, title):
    """Loss and error per epoch (train dashed, test solid) for ``{label: history_rows}``."""
    plt = pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, rows) in enumerate(runs.items()):
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
        for split, style in (("train", "--"), ("test", "-")):
            ax_loss.plot(
                epochs, [r[f"{split}_loss"] for r in rows], style, color=color, marker="o", label=f"{label} {split}"
            )
            ax_err.plot(
                epochs,
                [100 * r[f"{split}_err"] for r in rows],
                style,
                color=color,
                marker="o",
                label=f"{label} {split}",
            )
    ax_loss.set(xlabel="epoch", ylabel="mean cross-entropy", yscale="log", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", yscale="log", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path, title)


# ---------------------------------------------------------------- this experiment
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, epochs=20, batch_size=128, lr=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024], help="hidden layer widths")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW decoupled weight decay (0: plain Adam)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
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
    steps = steps_per_epoch(len(data.x_train), args.batch_size)
    optimizer, opt_info = adam_cosine(
        args.lr, epochs=args.epochs, steps=steps, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay
    )
    print(
        f"MLP {sizes} ({n_params:,} parameters) on {data.name}: {len(data.x_train)} train / {len(data.x_test)} test, "
        f"{args.epochs} epochs of {steps} steps, path {args.path}\n{HEADER}",
        flush=True,
    )
    _, history, timing = timed_fit(model, params, data, args, optimizer, shuffle_key=jax.random.key(args.seed + 1))
    test_error = float(history.test_err[-1])
    print(
        f"test error {100 * test_error:.2f}% (target {100 * TARGET:.1f}%: "
        f"{'met' if test_error <= TARGET else 'MISSED'}); "
        f"{timing['train_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU",
        flush=True,
    )
    result = {
        "experiment": "mnist_mlp_best",
        "dataset": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "test_error": test_error,
        "target_test_error": TARGET,
        "target_met": test_error <= TARGET,
        "best_epoch_test_error": float(history.test_err.min()),
        "train_error": float(history.train_err[-1]),
        **timing,
        "path": args.path,
        **machine(),
        "config": {
            "model": f"fnn.nn.mlp({sizes}, bias=True), ReLU, He init",
            "sizes": sizes,
            "n_params": int(n_params),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps_per_epoch": steps,
            "shuffle": True,
            "seed": args.seed,
            "optimizer": opt_info,
        },
        "history": history.rows(),
    }
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_curves(
            args.plot, {"MLP": result["history"]}, f"MLP {sizes} on {data.name}: test error {100 * test_error:.2f}%"
        )
    return result


if __name__ == "__main__":
    _cli.run(main)
