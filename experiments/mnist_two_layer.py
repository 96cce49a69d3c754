"""The lecture's two-layer ReLU network on MNIST, trained on any of fnn's gradient paths.

Recipe (the notes'): inputs in [0, 1] flattened to 784; ``fnn.nn.mlp([784,
500, 10])`` (no biases, He init ``randn * sqrt(2/fan_in)``); batches of 100 in
data order; SGD step 0.5; 10 epochs. The notes report 2.6% test error (a
linear model, ``mlp([784, 10])``: about 7.5%).

``--grad`` picks the path (``fnn.PATHS``: ``custom``, ``autodiff``,
``backprop``); ``both`` trains custom and autodiff and compares them, ``all``
trains all three and compares custom and backprop each with autodiff.

Two paths agree when their gradients at the same parameters agree. A
comparison therefore walks the autodiff run's trajectory step by step and,
every ``--lockstep-every`` steps, computes every path's gradient at those
very parameters and a float64 reference; the verdict is that each path is
within float32 rounding (``LOCKSTEP_RTOL``) of the reference at every such
step. It is computed from deterministic arithmetic, so identical code gets
the identical verdict on every run. How far the trained runs drift apart
(SGD at step 0.5 amplifies rounding) is reported beside it, with a run from
weights nudged by one float32 ulp as the measure of that amplification:
information, not the test.

    python -m experiments.mnist_two_layer                # recipe, custom and autodiff, compared
    python -m experiments.mnist_two_layer --grad all     # all three paths, compared
    python -m experiments.mnist_two_layer --model linear --grad custom
    python -m experiments.mnist_two_layer --init zeros   # the saddle point
    python -m experiments.mnist_two_layer --devices 4    # each batch split over 4 devices
    python -m experiments.mnist_two_layer --checkpoint-dir ckpt [--resume]
    python -m experiments.mnist_two_layer --train-size 6000 --epochs 1   # a quick check: 60 steps

Results go to ``runs/mnist_<model>.json`` and ``.png`` unless ``--json`` and
``--plot`` name other files (the committed runs are in ``experiments/results/``).
The summary speaks plainly; the precise figures are in the JSON file.

``--devices N`` splits each batch over N devices, simulating CPU devices when
the host has fewer. With ``--checkpoint-dir``, each run saves checkpoints in
a sub-folder named after its path, and ``--resume`` continues from them.

Offline, set ``FNN_DATASETS_DIR`` to a folder holding ``mnist/`` with the four
IDX files (``../shared/datasets`` on the project's machines).
"""

import argparse
from pathlib import Path

import jax
import numpy as np

import fnn
from experiments import _cli
from experiments._common import achieved, device_fields, pyplot, run_fields, save_figure, write_json
from fnn.testing import relative_error

#: Paths trained by each ``--grad`` choice; the reference of every comparison is autodiff.
GRAD_CHOICES = {
    **{path: [path] for path in fnn.PATHS},
    "both": ["custom", "autodiff"],
    "all": ["custom", "autodiff", "backprop"],
}
REFERENCE = "autodiff"
RESULTS = "experiments/results"

#: The largest relative gradient error (per leaf, against the leaf's largest float64 entry)
#: that float32 rounding explains. Both paths share the float32 forward pass, whose rounding
#: reaches a few 1e-6 late in training where gradient entries cancel (eps 1.2e-7); 1e-4 leaves
#: a wide margin for other processors, while a wrong rule errs by order 1.
LOCKSTEP_RTOL = 1e-4

HEADER = f"{'Epoch':>5} | {'Train Loss':>10} | {'Test Loss':>9} | {'Train Err':>9} | {'Test Err':>8}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grad",
        choices=list(GRAD_CHOICES),
        default="both",
        help="gradient path (fnn.PATHS), or both (custom, autodiff) or all three, compared",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--init", choices=["he", "zeros"], default="he")
    parser.add_argument("--model", choices=["two_layer", "linear"], default="two_layer")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-size", type=int, metavar="N", help="train on the first N training images only (for quick checks)"
    )
    parser.add_argument("--source-dir", help="folder with the dataset's IDX files (default: $FNN_DATASETS_DIR/NAME)")
    parser.add_argument("--data-dir", help="TFDS data folder (default: TFDS's own)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON (default: runs/mnist_<model>.json)")
    parser.add_argument("--plot", metavar="PATH", help="write loss and error curves as PNG (default: beside the JSON)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--lockstep-every",
        type=int,
        default=100,
        metavar="STEPS",
        help="compare the paths' gradients every this many steps of the trajectory",
    )
    parser.add_argument("--devices", type=int, default=1, help="split each batch over this many devices")
    parser.add_argument("--checkpoint-dir", metavar="DIR", help="save checkpoints under DIR/<path>")
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="EPOCHS", help="save every this many epochs")
    parser.add_argument("--checkpoint-every-steps", type=int, metavar="STEPS", help="also save every this many steps")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --checkpoint-dir")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.train_size is not None and args.train_size < 1:
        parser.error(f"--train-size must be a positive int, got {args.train_size}")
    return args


def print_row(row):
    print(
        f"{row['epoch']:>5} | {row['train_loss']:>10.5f} | {row['test_loss']:>9.5f} | "
        f"{100 * row['train_err']:>8.2f}% | {100 * row['test_err']:>7.2f}%",
        flush=True,
    )


def build(data, args):
    """The model of ``args`` for ``data`` (``mlp([784, hidden, 10])`` or ``mlp([784, 10])``) and its layer sizes."""
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    sizes = [data.x_train.shape[1], *([args.hidden] if args.model == "two_layer" else []), num_classes]
    return fnn.nn.mlp(sizes, w_init=args.init), sizes


def train_one(data, grad, args, *, nudge=False):
    """Trains one model with gradient path ``grad``; returns its result dict.

    ``nudge`` moves every initial weight up by one float32 ulp: a run that
    differs from the plain one only by rounding, to measure how far float32
    noise alone carries two runs apart.
    """
    model, sizes = build(data, args)
    _, params = model.init(jax.random.key(args.seed), data.x_train.shape[1:])
    if nudge:
        params = jax.tree.map(lambda p: np.nextafter(np.asarray(p), np.float32(np.inf)), params)
    label = f"{grad}, from initial weights moved by the smallest float32 step" if nudge else grad
    on = f" on {args.devices} devices" if args.devices > 1 else ""
    print(f"\n{args.model} {sizes} on {args.dataset}{on}, gradients by {label}:\n{HEADER}", flush=True)
    callbacks = [print_row]
    if args.checkpoint_dir:
        folder = Path(args.checkpoint_dir) / (f"{grad}-nudged" if nudge else grad)
        callbacks.append(
            fnn.loop.Checkpointing(
                folder,
                every_epochs=args.checkpoint_every,
                every_steps=args.checkpoint_every_steps,
                keep=args.keep,
                resume=args.resume,
            )
        )
    elif args.resume:
        raise ValueError("--resume needs --checkpoint-dir")
    _, history = fnn.fit(
        model,
        params,
        data,
        loss=fnn.losses.cross_entropy,
        path=grad,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.lr,
        progress=False if args.no_progress else None,
        callbacks=callbacks,
        devices=args.devices,
    )
    fraction = float(np.median(achieved(history)["machine_fraction"]))
    print(
        f"{len(history.train_loss)} epochs in {history.wall_s:.1f} s (compiling {history.compile_s:.1f} s); "
        f"{np.median(history.flops_per_s) / 1e9:.0f} GFLOP/s a median epoch, {fraction:.0%} of the machine's "
        "matrix-product rate",
        flush=True,
    )
    return {
        "grad": grad,
        "nudged": nudge,
        **run_fields(history, "test_error", "train_error", "wall_s", "compile_s", "history"),
        **achieved(history),
    }


def apart(run, other):
    """How far two runs are apart: final test error (percentage points) and each epoch's losses (relative)."""
    per_epoch = [
        max(relative_error(r[c], o[c]) for c in ("train_loss", "test_loss"))
        for r, o in zip(run["history"], other["history"])
    ]
    return {
        "test_error_diff_pp": 100 * abs(run["test_error"] - other["test_error"]),
        "max_rel_diff_loss_per_epoch": per_epoch,
    }


def drift(run, reference, noise):
    """How far two trained runs end apart, in plain words beside how far rounding alone moves a run."""
    agreement = apart(run, reference)
    print(
        f"The trained {run['grad']} and {reference['grad']} networks end "
        f"{agreement['test_error_diff_pp']:.2f} percentage points of test error apart; rounding alone (the same "
        f"run from weights moved by the smallest float32 step) moves a run {noise['test_error_diff_pp']:.2f} points."
    )
    return agreement


def lockstep(data, args, paths):
    """Every path's gradient at identical parameters along the reference path's SGD trajectory.

    Returns the JSON record: the steps compared, per path the largest
    relative error against the float64 gradient at each of them, and the
    verdict (every error within :data:`LOCKSTEP_RTOL`).
    """
    model, _ = build(data, args)
    loss = fnn.losses.cross_entropy
    print(
        f"\nComparing the paths' gradients with the float64 gradient every {args.lockstep_every} steps of training ...",
        flush=True,
    )
    _, params = model.init(jax.random.key(args.seed), data.x_train.shape[1:])
    step = jax.jit(fnn.train.sgd_update(model, loss, args.lr, path=REFERENCE))
    grads = {path: jax.jit(fnn.value_and_grad(model, loss, path=path)) for path in paths}
    with jax.enable_x64(True):
        float64 = jax.jit(fnn.value_and_grad(model, loss, path=REFERENCE))
    n, size = len(data.x_train), args.batch_size
    starts = [s for _ in range(args.epochs) for s in range(0, n, size)]
    steps, errors = [], {path: [] for path in paths}
    for i, start in enumerate(starts):
        batch = (data.x_train[start : start + size], data.y_train[start : start + size])
        if i % args.lockstep_every == 0:
            with jax.enable_x64(True):
                reference = float64(
                    jax.tree.map(lambda p: np.asarray(p, np.float64), params), batch[0].astype(np.float64), batch[1]
                )[1]
                reference = jax.tree.map(np.asarray, reference)
            steps.append(i)
            for path in paths:
                leaves = fnn.inspect.gradient_errors(grads[path](params, *batch)[1], reference)
                errors[path].append(max(leaf["max_rel_err"] for leaf in leaves))
        params, _ = step(params, batch)
    worst = {path: max(e) for path, e in errors.items()}
    verdict = "agree" if max(worst.values()) <= LOCKSTEP_RTOL else "DISAGREE"
    words = "agree" if verdict == "agree" else "DISAGREE"
    print(
        f"\nThe gradient paths {words}: at {len(steps)} points along training, each path's gradient is within "
        f"{LOCKSTEP_RTOL:g} of the exact (float64) gradient, relative ("
        + ", ".join(f"{p} at most {worst[p]:.0e}" for p in paths)
        + "): what float32 rounding explains."
    )
    return {
        "steps": steps,
        "rtol": LOCKSTEP_RTOL,
        "max_rel_error_vs_float64": errors,
        "worst": worst,
        "verdict": verdict,
    }


def plot(path, runs, title):
    plt = pyplot()

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for run, style in zip(runs, ("-", "--", ":")):
        epochs = [r["epoch"] for r in run["history"]]
        for split in ("train", "test"):
            label = f"{split} ({run['grad']})"
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in run["history"]], style, marker="o", label=label)
            ax_err.plot(epochs, [100 * r[f"{split}_err"] for r in run["history"]], style, marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="mean cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path, title)


def main(argv=None):
    args = parse_args(argv)
    if args.devices < 1:
        raise ValueError(f"--devices must be a positive int, got {args.devices}")
    if args.devices > 1:
        fnn.parallel.use_cpu_devices(args.devices)  # before JAX starts; used only where the host is a CPU
    print(f"Loading {args.dataset} ...", flush=True)
    data = fnn.data.load(args.dataset, source_dir=args.source_dir, data_dir=args.data_dir, verbose=args.debug)
    if args.train_size is not None:
        first = slice(args.train_size)
        data = fnn.data.Dataset(data.name, data.x_train[first], data.y_train[first], data.x_test, data.y_test)
    print(f"{len(data.x_train):,} training and {len(data.x_test):,} test images", flush=True)
    grads = GRAD_CHOICES[args.grad]
    runs = [train_one(data, grad, args) for grad in grads]
    if len(runs) > 1:
        runs.append(train_one(data, REFERENCE, args, nudge=True))
    result = {
        "dataset": args.dataset,
        "grad": args.grad,
        "model": args.model,
        "init": args.init,
        "hidden": args.hidden if args.model == "two_layer" else None,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "epochs": args.epochs,
        "devices": args.devices,
        **({"train_size": args.train_size} if args.train_size is not None else {}),
        **device_fields(),
        "matmul_rate": fnn.bench.machine_rate().to_dict(),
        **({"runs": runs} if len(runs) > 1 else runs[0]),
    }
    if len(runs) > 1:
        trained = {run["grad"]: run for run in runs if not run["nudged"]}
        reference, nudged = trained[REFERENCE], runs[-1]
        noise = apart(nudged, reference)
        result["lockstep"] = lockstep(data, args, grads)
        result["agreement"] = drift(trained["custom"], reference, noise)
        result["float32_noise"] = noise
        if "backprop" in trained:
            result["agreement_backprop"] = drift(trained["backprop"], reference, noise)
    summary(runs, args)
    json_path, plot_path = outputs(args)
    write_json(json_path, result)
    trained_runs = [run for run in runs if not run["nudged"]]
    plot(plot_path, trained_runs, f"{args.model} on {args.dataset} ({args.init} init)")
    print(f"Results: {json_path} and {plot_path} (the committed runs are in {RESULTS}/)")
    return result


def summary(runs, args):
    """The final test errors in percent, beside the notes' figure."""
    notes = {"two_layer": "2.6%", "linear": "about 7.5%"}[args.model]
    errors = ", ".join(f"{r['grad']} {100 * r['test_error']:.2f}%" for r in runs if not r["nudged"])
    print(f"\nTest error after {args.epochs} epochs: {errors} (the notes: {notes}).")


def outputs(args):
    """Where the JSON and the plot go: the flags, else ``runs/mnist_<model or init>.json`` and ``.png``."""
    stem = "zeros" if args.init == "zeros" else args.model
    json_path = Path(args.json or Path("runs") / f"{args.dataset}_{stem}.json")
    return json_path, Path(args.plot) if args.plot else json_path.with_suffix(".png")


if __name__ == "__main__":
    _cli.run(main)
