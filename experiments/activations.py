"""Per-layer gradient norms of a deep MLP with sigmoid, tanh, ReLU and GELU: the vanishing-gradient claim, measured.

A 784-256x8-10 MLP (8 hidden layers of width 256, no biases) on MNIST, one
per activation. ReLU and GELU start from He init (``randn * sqrt(2 / fan_in)``);
sigmoid and tanh from Glorot (``jax.nn.initializers.glorot_normal()``,
variance ``2 / (fan_in + fan_out)``), the init usually paired with them. For
each, ``||dL/dW_i||`` (Frobenius) of every layer ``i`` is measured on a fixed
probe batch of training images (mean cross-entropy, custom path), at
initialisation and after each epoch of plain SGD (same step size and
shuffled batches for all four).

    python -m experiments.activations --json experiments/results/activations.json \\
        --plot experiments/results/activations.png

The notes' claim: with sigmoid the early layers' gradients are far smaller
than the late layers' (``sigmoid' <= 1/4`` multiplies in at every layer).
"""

import argparse

import jax
import numpy as np

import fnn
from experiments import _cli
from experiments._common import (
    Config,
    add_common_args,
    load_data,
    machine,
    markdown_table,
    pyplot,
    save_figure,
    timed_fit,
    write_json,
)

ACTIVATIONS = {
    "sigmoid": (fnn.nn.sigmoid, "glorot_normal"),
    "tanh": (fnn.nn.tanh, "glorot_normal"),
    "relu": (fnn.nn.relu, "he"),
    "gelu": (fnn.nn.gelu, "he"),
}
INITS = {"he": "he", "glorot_normal": jax.nn.initializers.glorot_normal()}
CONFIG = Config(
    "activations",
    epochs=2,
    batch_size=100,
    lr=0.05,
    options={"depth": 8, "width": 256, "probe_size": 2000, "activations": list(ACTIVATIONS)},
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--depth", type=int, help="hidden layers")
    parser.add_argument("--width", type=int, help="hidden width")
    parser.add_argument("--probe-size", type=int, help="training images in the probe batch")
    parser.add_argument("--activations", nargs="+", choices=list(ACTIVATIONS))
    return parser.parse_args(argv)


def layer_norms(grad_fn, params, probe):
    """``[||dL/dW_1||, ..., ||dL/dW_L||]`` on the probe batch, and the loss there."""
    value, grads = grad_fn(params, *probe)
    return [float(np.linalg.norm(np.asarray(g["w"]))) for g in grads if isinstance(g, dict)], float(value)


def run_one(name, data, args):
    """Trains one activation's MLP for ``--epochs`` epochs; norms at init and after each epoch."""
    activation, init_name = ACTIVATIONS[name]
    sizes = [data.x_train.shape[1], *[args.width] * args.depth, 10]
    model = fnn.nn.mlp(sizes, activation=activation, w_init=INITS[init_name])
    _, params = model.init(jax.random.key(args.seed), (sizes[0],))
    grad_fn = jax.jit(fnn.value_and_grad(model, fnn.losses.cross_entropy, path=args.path))
    probe = (data.x_train[: args.probe_size], data.y_train[: args.probe_size])
    norms, probe_loss = layer_norms(grad_fn, params, probe)
    checkpoints = [{"epoch": 0, "grad_norms": norms, "probe_loss": probe_loss}]
    history, train_s = [], 0.0
    for epoch in range(1, args.epochs + 1):
        # One epoch per fit call, so that the norms can be read in between; a new permutation each epoch.
        one = argparse.Namespace(**{**vars(args), "epochs": 1})
        params, h, timing = timed_fit(
            model,
            params,
            data,
            one,
            args.lr,
            quiet=True,
            shuffle_key=jax.random.fold_in(jax.random.key(args.seed + 1), epoch),
        )
        train_s += timing["train_s"]
        row = {**h.rows()[0], "epoch": epoch}
        history.append(row)
        norms, probe_loss = layer_norms(grad_fn, params, probe)
        checkpoints.append({"epoch": epoch, "grad_norms": norms, "probe_loss": probe_loss})
        print(
            f"{name:>8} epoch {epoch}: train loss {row['train_loss']:.4f}, test error {100 * row['test_err']:.2f}%; "
            f"||dL/dW|| first {norms[0]:.2e}, last {norms[-1]:.2e}",
            flush=True,
        )
    return {
        "activation": name,
        "init": init_name,
        "sizes": sizes,
        "checkpoints": checkpoints,
        "first_over_last_at_init": checkpoints[0]["grad_norms"][0] / checkpoints[0]["grad_norms"][-1],
        "first_over_last_trained": checkpoints[-1]["grad_norms"][0] / checkpoints[-1]["grad_norms"][-1],
        "test_error": history[-1]["test_err"],
        "train_s": train_s,
        "history": history,
    }


def plot(path, runs, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    trained = f"after {runs[0]['checkpoints'][-1]['epoch']} epochs"
    for ax, index, label in ((axes[0], 0, "at initialisation"), (axes[1], -1, trained)):
        for i, run in enumerate(runs):
            norms = run["checkpoints"][index]["grad_norms"]
            ax.plot(
                range(1, len(norms) + 1), norms, marker="o", color=f"C{i}", label=f"{run['activation']} ({run['init']})"
            )
        ax.set(xlabel="layer i (1 = input side)", ylabel="||dL/dW_i||", yscale="log", title=label)
        ax.set_xticks(range(1, len(runs[0]["checkpoints"][0]["grad_norms"]) + 1))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path, title)


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    print(
        f"{args.depth} hidden layers of {args.width} on {data.name}; SGD step {args.lr}, batch {args.batch_size}, "
        f"{args.epochs} epochs; probe batch of {min(args.probe_size, len(data.x_train))} training images",
        flush=True,
    )
    runs = [run_one(name, data, args) for name in args.activations]
    header = [
        "activation",
        "init",
        "layer 1 at init",
        f"layer {args.depth + 1} at init",
        "first/last at init",
        "first/last trained",
        "test error",
    ]
    print(
        markdown_table(
            header,
            [
                [
                    r["activation"],
                    r["init"],
                    f"{r['checkpoints'][0]['grad_norms'][0]:.2e}",
                    f"{r['checkpoints'][0]['grad_norms'][-1]:.2e}",
                    f"{r['first_over_last_at_init']:.2e}",
                    f"{r['first_over_last_trained']:.2e}",
                    f"{100 * r['test_error']:.2f}%",
                ]
                for r in runs
            ],
        )
    )
    result = {
        "experiment": CONFIG.experiment,
        "dataset": data.name,
        "depth": args.depth,
        "width": args.width,
        "bias": False,
        "optimizer": {"name": "sgd", "lr": args.lr},
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "shuffle": True,
        "probe_size": min(args.probe_size, len(data.x_train)),
        "norm": "Frobenius norm of dL/dW_i, mean cross-entropy over the probe batch",
        "path": args.path,
        "seed": args.seed,
        **machine(),
        "runs": runs,
    }
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(args.plot, runs, f"per-layer gradient norms, MLP 784-{args.width}x{args.depth}-10 on {data.name}")
    return result


if __name__ == "__main__":
    _cli.run(main)
