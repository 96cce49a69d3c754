"""What the experiment scripts share: options, data, the optimiser schedule, timing, tables, JSON and plots.

The MNIST experiments (``mnist_mlp_best``, ``mnist_conv``, ``resnet_mnist``,
``activations``, ...) keep their settings in one :class:`Config` each (the
defaults of their options, what they aim at), take the same options
(:func:`add_common_args`), load their data the same way (:func:`load_data`,
with a validation split and a synthetic stand-in for smoke tests), print the
same per-epoch table (:data:`HEADER`, :func:`print_row`, errors in percent),
time ``fnn.fit`` the same way (:func:`timed_fit`) and write the same result
record (:func:`record`, a run's outcome :func:`run_record`). Every result
names its machine (:func:`machine`, or :func:`device_fields` alone); a run's
fields are read from its ``fnn.History`` one way (:func:`run_fields`).
"""

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import optax

import fnn
from experiments import _cli

HEADER = f"{'Epoch':>5} | {'Train Loss':>10} | {'Test Loss':>9} | {'Train Err':>9} | {'Test Err':>8} | {'s':>6}"
VALIDATION_SIZE = 10_000


# ---------------------------------------------------------------- the machine, JSON, tables, plots
def device_fields():
    """The fields every result names its device with: ``device`` (:func:`device_description`) and ``jax_version``."""
    return {"device": device_description(), "jax_version": jax.__version__}


def cpu_description():
    """Names this machine's CPU and usable cores, e.g. ``"cpu: Intel Xeon x 2 cores"``."""
    return fnn.bench.device_description(jax.devices("cpu")[0])


def device_description():
    """Names the device the default JAX backend runs on (the CPU model and cores on CPU)."""
    return fnn.bench.device_description()


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, title):
    """Titles, lays out, writes (PNG at 100 dpi) and closes a figure."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def write_json(path, payload):
    """Writes ``payload`` as indented JSON, creating parent folders; a reader, or a run killed while it writes,
    never leaves half a file (it is written beside the path, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


def markdown_table(header, rows):
    """Formats rows (sequences of cells) as a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- MNIST: settings, options, data, training
@dataclasses.dataclass(frozen=True)
class Config:
    """One training experiment's settings in one place, as Flax's examples keep a config per example.

    Attributes:
      experiment: its name, the result's ``experiment`` field.
      epochs, batch_size, lr: the defaults of ``--epochs``, ``--batch-size`` and ``--lr`` (the peak step size).
      target: the test error (a fraction) it aims at, or ``None``.
      budget_s: the seconds of training (``train_s``) it aims to stay under, or ``None``.
      options: the defaults of the experiment's own options, by argparse ``dest`` (``{"weight_decay": 0.05}``).
    """

    experiment: str
    epochs: int
    batch_size: int
    lr: float
    target: float | None = None
    budget_s: float | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def aims(self, test_error, train_s):
        """The result's fields of the aims set: ``target_test_error`` and ``target_met`` (``test_error`` at most
        :attr:`target`), ``budget_s`` and ``budget_met`` (``train_s`` under :attr:`budget_s`)."""
        fields = {}
        if self.target is not None:
            fields.update(target_test_error=self.target, target_met=test_error <= self.target)
        if self.budget_s is not None:
            fields.update(budget_s=self.budget_s, budget_met=train_s < self.budget_s)
        return fields

    def verdict(self, test_error, train_s):
        """The run against the aims set, in words: ``"test error 0.79% (target 0.80%: met); 412.3 s wall (budget
        600 s: met)"``."""
        aims, words = self.aims(test_error, train_s), {True: "met", False: "MISSED"}
        text = f"test error {100 * test_error:.2f}%"
        if "target_met" in aims:
            text += f" (target {100 * self.target:.2f}%: {words[aims['target_met']]})"
        text += f"; {train_s:.1f} s wall"
        if "budget_met" in aims:
            text += f" (budget {self.budget_s:.0f} s: {words[aims['budget_met']]})"
        return text


def add_common_args(parser, config):
    """Adds the options every MNIST experiment here shares (data, budget, output), with ``config``'s defaults; the
    options the experiment adds afterwards without a ``default=`` take theirs from ``config.options``."""
    parser.set_defaults(**config.options)
    parser.add_argument("--epochs", type=int, default=config.epochs)
    parser.add_argument("--batch-size", type=int, default=config.batch_size)
    parser.add_argument("--lr", type=float, default=config.lr, help="peak step size")
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


def load_data(args, *, image=False):
    """MNIST (or ``fnn.data.synthetic`` data) as ``x [N, 784]`` float32 in [0, 1], or ``[N, 28, 28, 1]`` with
    ``image``.

    Honours ``--synthetic``, ``--validation`` (train on the first 50,000
    training images, test on the last 10,000: ``fnn.data.Dataset.validation``),
    ``--train-size`` and ``--test-size`` (the first N rows of each split).
    Where tensorflow-datasets is not installed, MNIST is read straight from
    its IDX files (``fnn.data.read_idx``: ``--source-dir``, else
    ``$FNN_DATASETS_DIR/mnist``), the same examples in the files' order
    rather than TFDS's.
    """
    layout = "image" if image else "flat"
    if args.synthetic:
        shape = (28, 28, 1) if image else (784,)
        data = fnn.data.synthetic(args.train_size or 512, args.test_size or 128, shape=shape, seed=args.seed)
    else:
        print("loading MNIST ...", flush=True)
        if tfds_installed():
            data = fnn.data.load(
                "mnist", source_dir=args.source_dir, data_dir=args.data_dir, layout=layout, verbose=args.debug
            )
        else:
            data = fnn.data.read_idx("mnist", source_dir=args.source_dir, layout=layout)
    if args.validation:
        data = data.validation(min(VALIDATION_SIZE, len(data.x_train) // 5))
    train, test = slice(args.train_size), slice(args.test_size)
    return fnn.data.Dataset(data.name, data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test])


def tfds_installed():
    """Whether tensorflow-datasets can be imported: ``fnn.data.load`` prepares its datasets with it."""
    return importlib.util.find_spec("tensorflow_datasets") is not None


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
        f"{100 * row['train_err']:>8.2f}% | {100 * row['test_err']:>7.2f}% | {row['epoch_s']:>6.1f}",
        flush=True,
    )


def timed_fit(model, params, data, args, optimizer, *, quiet=False, train_metrics="batches", **kwargs):
    """``fnn.fit`` with the script's options; returns ``(params, history, timing)``, ``params`` being
    ``(params, state)`` when a ``state=`` was passed (a model with state, batch norm, needs one).

    ``timing`` has ``train_s`` (the whole ``fit`` call: compilation, every
    epoch's training and evaluation), ``compile_s``, ``epoch_s``, ``cpu_s``
    (process CPU time over the same span: ``cpu_s / train_s`` is how many
    cores were busy on average), the 1-minute load average before and after
    (the machine is shared), and ``train_metrics``: ``"batches"`` (fit's
    default: each batch's loss and error before its update, averaged over the
    epoch) or ``"full"`` (the training set evaluated at the epoch's end), and ``run_config``, the run's
    configuration as ``fit`` records it (:attr:`fnn.History.config`); beside the seconds, ``epoch_flops``
    (XLA's count of one epoch's work), each epoch's achieved ``flops_per_s`` and its ``machine_fraction`` of the
    machine's matrix-product rate (:attr:`fnn.History.machine_fraction`).
    """
    load_before = os.getloadavg()[0]
    cpu = time.process_time()
    stateful = "state" in kwargs
    *trained, history = fnn.fit(
        model,
        params,
        data,
        path=args.path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=optimizer,
        progress=False if args.no_progress else None,
        callbacks=[*kwargs.pop("callbacks", ()), *([] if quiet else [print_row])],
        train_metrics=train_metrics,
        **kwargs,
    )
    timing = {
        "train_s": history.wall_s,
        **run_fields(history, "compile_s", "epoch_s"),
        "cpu_s": time.process_time() - cpu,
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
        "train_metrics": train_metrics,
        "run_config": history.config,  # what fit ran: every setting of the model, loss, optimizer, data order
        **achieved(history),
    }
    return (tuple(trained) if stateful else trained[0]), history, timing


#: How a result records each field of one ``fnn.fit`` run from its ``fnn.History`` (JSON-ready: floats, lists):
#: the last epoch's test and training error (fractions), the best epoch's test error, the whole call's seconds,
#: its seconds compiling, each epoch's seconds, and one row per epoch (:meth:`fnn.History.rows`).
RUN_FIELDS = {
    "test_error": lambda history: float(history.test_err[-1]),
    "train_error": lambda history: float(history.train_err[-1]),
    "best_epoch_test_error": lambda history: float(history.test_err.min()),
    "wall_s": lambda history: history.wall_s,
    "compile_s": lambda history: history.compile_s,
    "epoch_s": lambda history: [float(s) for s in history.epoch_s],
    "history": lambda history: history.rows(),
}


def run_field(history, name):
    """The field ``name`` (of :data:`RUN_FIELDS`) of one ``fnn.fit`` run, from its ``history``."""
    return RUN_FIELDS[name](history)


def run_fields(history, *names):
    """The fields ``names`` (of :data:`RUN_FIELDS`) of one ``fnn.fit`` run, in that order, from its ``history``."""
    return {name: run_field(history, name) for name in names}


def run_record(history, timing):
    """One trained run as the MNIST results record it: its final ``test_error``, ``best_epoch_test_error`` and
    ``train_error``, its ``timing`` (:func:`timed_fit`'s) and its ``history`` (one row per epoch)."""
    errors = run_fields(history, "test_error", "best_epoch_test_error", "train_error")
    return {**errors, **timing, **run_fields(history, "history")}


def record(config, args, data, *, settings, shuffle=True, **fields):
    """The JSON result of an MNIST training experiment (``fnn.fit`` runs from :func:`add_common_args`' options).

    The fields every such result has (``experiment``, the ``dataset`` and its ``n_train`` and ``n_test`` rows,
    the gradient ``path``, the ``loop``, the :func:`machine`, and ``config``: the training settings every such
    experiment shares, ``epochs``, ``batch_size``, ``shuffle`` and ``seed``), with the experiment's own
    ``fields`` beside them (its runs' outcomes, :func:`run_record`, :meth:`Config.aims`) and its own
    ``settings`` (model, optimizer, augmentation, ...) beside the shared ones in ``config``.
    """
    shared = {"epochs": args.epochs, "batch_size": args.batch_size, "shuffle": shuffle, "seed": args.seed}
    return {
        "experiment": config.experiment,
        "dataset": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        **fields,
        "path": args.path,
        "loop": "fnn.fit",
        **machine(),
        "config": {**settings, **shared},
    }


def achieved(history):
    """A run's speed against the machine, as results record it: ``epoch_flops`` (one epoch's model FLOPs), each
    epoch's ``flops_per_s`` and its ``machine_fraction`` of ``limit``, the machine's matrix-product rate for the
    dtype and precision that carry the run's work (``fnn.bench.limit``)."""
    work = history.work
    rate = fnn.bench.limit(float(np.nanmax(history.flops_per_s)), work.dtype or "float32", precision=work.precision)
    return {
        "epoch_flops": float(history.epoch_flops[0]),
        "flops_per_s": history.flops_per_s.tolist(),
        "machine_fraction": history.machine_fraction(rate).tolist(),
        "limit": {"dtype": rate.dtype, "precision": rate.precision, "flops_per_s": rate.flops_per_s},
        **({"flops_note": work.note} if work.note else {}),
    }


#: The notes' recipe: the layer sizes (no biases, He init), the batch size (batches in data order) and the SGD step.
RECIPE_SIZES, RECIPE_BATCH, RECIPE_LR = (784, 500, 10), 100, 0.5


def fit_recipe(data, *, path, epochs=10, seed=0, batch_size=RECIPE_BATCH, lr=RECIPE_LR):
    """The notes' recipe through ``fnn.fit`` on gradient path ``path``: ``fnn.nn.mlp(RECIPE_SIZES)`` initialised
    from key ``seed``, softmax cross-entropy, batches of ``batch_size``, SGD step ``lr`` (the notes': 100 and
    0.5). Returns fit's ``fnn.History`` (``wall_s``, ``compile_s``, ``epoch_s``, the errors)."""
    model = fnn.nn.mlp(list(RECIPE_SIZES))
    _, params = model.init(jax.random.key(seed), RECIPE_SIZES[:1])
    _, history = fnn.fit(
        model,
        params,
        data,
        loss=fnn.losses.cross_entropy,
        path=path,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=lr,
        progress=False,
    )
    return history


def machine():
    """The fields every result names its machine with, and the machine's matrix-product rate
    (``fnn.bench.machine_rate``, the limit achieved rates are set against)."""
    return {
        **device_fields(),
        "optax_version": optax.__version__,
        "matmul_flops_per_s": fnn.bench.machine_rate().flops_per_s,
    }


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
