"""The Flax-tutorial CNN trained one epoch by ``fnn.fit``, by Flax NNX as its tutorial does it, and by PyTorch.

The network is ``experiments.mnist_pooled``'s (``experiments._images.pooled_cnn``:
conv 3x3 32, ReLU, avg pool 2x2, conv 3x3 64, ReLU, avg pool 2x2, flatten,
dense 256, ReLU, dense 10), trained for one epoch of batch 32 with AdamW in
each library, side by side in one process on the same arrays:

- **fnn**: one ``fnn.fit`` call (``path="custom"`` by default; the epoch is
  one compiled ``lax.scan``), data order, ``train_metrics="batches"``;
- **Flax NNX**, written as its MNIST tutorial writes it: an ``nnx.Module``
  with ``nnx.Conv``, ``nnx.avg_pool`` and ``nnx.Linear``, ``nnx.Optimizer``,
  an ``nnx.MultiMetric`` of accuracy and mean loss, and an ``nnx.jit`` train
  step called once per batch from a Python loop, the model and optimizer
  updated in place;
- **PyTorch**: a plain loop (``zero_grad``, forward, ``cross_entropy``,
  ``backward``, ``AdamW.step``), NCHW tensors, on a CUDA GPU where torch
  has one (the data placed there before the clock starts), else on the CPU
  with as many threads as torch chooses (the machine's cores; ``--threads``).

What is the same: the architecture, SAME padding, biases; the initial
parameters, value for value (fnn draws them, He-normal, and they are copied
into the other two: so all three start from the same point, the strongest
form of "the same initialisation family"); the optimiser and its
hyperparameters, the tutorial's (AdamW, learning rate 0.005, ``b1 = 0.9``,
``b2 = 0.999``, ``eps = 1e-8``, weight decay ``1e-4`` on every parameter,
constant rate); the batches and their order (the training set is shuffled
once on the host per round, and every library reads it in that order, 1,875
batches of 32); the evaluation (the 10,000 test images in chunks of 1,000,
``fnn.fit``'s chunk) after the epoch.

What differs, and why: the tutorial feeds batches from ``tf.data`` (a
shuffle buffer of 1,024); here Flax gets NumPy slices of the pre-shuffled
arrays, which is what ``as_numpy_iterator`` hands its step, without the
input pipeline's own cost and with the shared order. The tutorial evaluates
in batches of 32; here every library evaluates in chunks of 1,000, so the
evaluation is the same work in all three. The tutorial initialises with
Flax's defaults (LeCun normal); here the shared He values. PyTorch's flatten
reads NCHW, so the first dense layer's rows are permuted once at the start to
read the same features. Nothing else is tuned for any library.

Timing: ``--rounds`` rounds; in each, every library trains from that round's
initial parameters (seed + round) on that round's order, in a rotating and
alternating order. A library's time is one epoch's wall time, training and
the evaluation, after compilation and warm-up, which are reported apart
(fnn: ``fnn.fit``'s own ``compile_s``, which every call pays; Flax: the
first calls of its jitted steps; PyTorch: one warm-up step). Ratios are per
round, the median with a bootstrap interval (``fnn.bench.summarize``).
Needs the ``flax`` and ``torch`` extras; ``--libraries`` picks a subset;
``--steps-per-call`` sets ``fnn.fit``'s (by default fit's own choice, here the
whole epoch in one call; ``experiments.conv_in_loop`` times both).

    python -m experiments.peer_pooled --json experiments/results/peer_pooled.json \\
        --plot experiments/results/peer_pooled.png
"""

import argparse
import os
import time

import jax
import numpy as np
import optax

import fnn
from experiments import _cli, _peer_torch
from experiments._common import (
    Config,
    add_common_args,
    load_data,
    machine,
    markdown_table,
    pyplot,
    save_figure,
    write_json,
)
from experiments._images import INPUT_SHAPE, TUTORIAL_ADAMW, TUTORIAL_BATCH, TUTORIAL_LR, pooled_cnn
from fnn.loop._epoch import EVAL_CHUNK  # the rows fit evaluates at a time

LIBRARIES = ("fnn", "flax", "torch")
TARGET_RATIO = 0.7
#: The least fraction of the machine's matrix-product rate (``fnn.bench.machine_rate``) fnn's epoch should reach.
TARGET_FRACTION = 0.6
WEIGHT_DECAY, B1, B2, EPS = (TUTORIAL_ADAMW[k] for k in ("weight_decay", "b1", "b2", "eps"))
#: fnn's parameter list: the positions of the weight layers in ``pooled_cnn()``.
CONV1, CONV2, DENSE1, DENSE2 = 0, 3, 7, 9
#: The experiment's name and the defaults of its shared options (``_common.add_common_args``).
CONFIG = Config("peer_pooled", epochs=1, batch_size=TUTORIAL_BATCH, lr=TUTORIAL_LR)


# ---------------------------------------------------------------- fnn
def fnn_epoch(params, data, args):
    """One ``fnn.fit`` call; ``(row, compile_s, cpu_s)``.

    ``cpu_s`` is the call's process CPU time less its ``compile_s``: XLA
    compiles on one thread, so on a quiet machine this is the epoch's CPU time
    (where another process takes the core during compilation, it is less).
    """
    cpu = time.process_time()
    _, history = fnn.fit(
        pooled_cnn(),
        params,
        data,
        path=args.path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=optax.adamw(args.lr, b1=B1, b2=B2, eps=EPS, weight_decay=WEIGHT_DECAY),
        steps_per_call=args.steps_per_call,
        progress=False,
    )
    row = history.rows()[-1]
    cpu_s = time.process_time() - cpu - history.compile_s
    epoch_s = float(np.sum(history.epoch_s))
    return {**row, "epoch_s": epoch_s, "epoch_flops": float(np.sum(history.epoch_flops))}, history.compile_s, cpu_s


# ---------------------------------------------------------------- Flax NNX, as its MNIST tutorial
def flax_side(args):
    """The tutorial's model class, loss, ``nnx.jit`` steps and loop; ``run(params, data) -> row``."""
    from functools import partial

    from flax import nnx

    class CNN(nnx.Module):
        """The tutorial's CNN."""

        def __init__(self, *, rngs):
            self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
            self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
            self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
            self.linear2 = nnx.Linear(256, 10, rngs=rngs)

        def __call__(self, x):
            x = self.avg_pool(nnx.relu(self.conv1(x)))
            x = self.avg_pool(nnx.relu(self.conv2(x)))
            x = x.reshape(x.shape[0], -1)
            x = nnx.relu(self.linear1(x))
            return self.linear2(x)

    def loss_fn(model, batch):
        logits = model(batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits=logits, labels=batch["label"]).mean()
        return loss, logits

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, metrics, batch):
        loss, logits = loss_fn(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])

    # One model, optimiser transformation and metrics object for every round, as the tutorial has one: a new
    # instance would be a new graph for nnx.jit (the avg_pool partial and the optax functions compare by
    # identity) and compile the steps again. Each round sets the parameters and starts a new optimiser state.
    model = CNN(rngs=nnx.Rngs(0))
    tx = optax.adamw(args.lr, b1=B1, b2=B2, eps=EPS, weight_decay=WEIGHT_DECAY)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))

    def new(params):
        for name, index in (("conv1", CONV1), ("conv2", CONV2), ("linear1", DENSE1), ("linear2", DENSE2)):
            layer = getattr(model, name)
            layer.kernel[...], layer.bias[...] = (jax.numpy.array(params[index][k]) for k in ("w", "b"))
        metrics.reset()
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param), metrics

    def epoch(params, data):
        model, optimizer, metrics = new(params)
        tic, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.epochs):
            for x, y in batches(data.x_train, data.y_train, args.batch_size):
                train_step(model, optimizer, metrics, {"image": x, "label": y})
        train = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        for x, y in batches(data.x_test, data.y_test, EVAL_CHUNK):
            eval_step(model, metrics, {"image": x, "label": y})
        test = {k: float(v) for k, v in metrics.compute().items()}
        return row(train, test, tic, cpu)

    def warm_up(params, data):
        model, optimizer, metrics = new(params)
        x, y = data.x_train[: args.batch_size], data.y_train[: args.batch_size]
        train_step(model, optimizer, metrics, {"image": x, "label": y})
        eval_step(model, metrics, {"image": data.x_test[:EVAL_CHUNK], "label": data.y_test[:EVAL_CHUNK]})
        jax.block_until_ready(nnx.state(model))

    import flax

    return epoch, warm_up, {"flax_version": flax.__version__}


# ---------------------------------------------------------------- PyTorch
def torch_side(args):
    """A plain PyTorch loop over the same batches, on a CUDA GPU where torch has one; ``run(params, data) -> row``."""
    torch = _peer_torch.import_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    nn = torch.nn

    def new(params):
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(3136, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        ).to(device)
        with torch.no_grad():
            for index, layer in ((CONV1, 0), (CONV2, 3), (DENSE1, 7), (DENSE2, 9)):
                w, b = (np.asarray(params[index][k]) for k in ("w", "b"))
                if w.ndim == 4:  # HWIO -> OIHW
                    w = w.transpose(3, 2, 0, 1)
                elif index == DENSE1:  # rows in NHWC flatten order (h, w, c) -> NCHW order (c, h, w)
                    w = w.reshape(7, 7, 64, -1).transpose(2, 0, 1, 3).reshape(3136, -1)
                model[layer].weight.copy_(torch.from_numpy(np.ascontiguousarray(w if w.ndim == 4 else w.T)))
                model[layer].bias.copy_(torch.from_numpy(b.copy()))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.lr, betas=(B1, B2), eps=EPS, weight_decay=WEIGHT_DECAY
        )
        return model, optimizer

    def tensors(x, y):
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return x.to(device), torch.from_numpy(y.astype(np.int64)).to(device)

    def step(model, optimizer, x, y):
        optimizer.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        return loss.detach() * len(y), (logits.detach().argmax(1) == y).sum()

    def evaluate(model, x, y):
        model.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for xb, yb in batches(x, y, EVAL_CHUNK):
                logits = model(xb)
                loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        return {"loss": loss / len(y), "accuracy": correct / len(y)}

    def epoch(params, data):
        (x, y), (xt, yt) = tensors(data.x_train, data.y_train), tensors(data.x_test, data.y_test)
        model, optimizer = new(params)
        tic, cpu = time.perf_counter(), time.process_time()
        model.train()
        loss, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device)
        for _ in range(args.epochs):
            for xb, yb in batches(x, y, args.batch_size):
                batch_loss, batch_correct = step(model, optimizer, xb, yb)
                loss, correct = loss + batch_loss, correct + batch_correct
        seen = args.epochs * len(y)
        train = {"loss": float(loss) / seen, "accuracy": int(correct) / seen}
        return row(train, evaluate(model, xt, yt), tic, cpu)

    def warm_up(params, data):
        x, y = tensors(data.x_train[: args.batch_size], data.y_train[: args.batch_size])
        model, optimizer = new(params)
        float(step(model, optimizer, x, y)[0])  # waits for the device

    facts = {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "torch_device": device}
    return epoch, warm_up, facts


# ---------------------------------------------------------------- shared
def batches(x, y, size):
    """``(x[i:i + size], y[i:i + size])`` in order; a last smaller batch takes any remainder."""
    for i in range(0, len(x), size):
        yield x[i : i + size], y[i : i + size]


def row(train, test, tic, cpu):
    """One library's epoch as fnn's history row (losses, errors, ``epoch_s``) plus ``cpu_s``."""
    return {
        "train_loss": train["loss"],
        "test_loss": test["loss"],
        "train_err": 1.0 - train["accuracy"],
        "test_err": 1.0 - test["accuracy"],
        "epoch_s": time.perf_counter() - tic,
        "cpu_s": time.process_time() - cpu,
    }


def shuffled(data, seed):
    """The dataset with its training set in one random order (every library reads it in this order)."""
    order = np.random.default_rng(seed).permutation(len(data.x_train))
    x, y = np.asarray(data.x_train)[order], np.asarray(data.y_train)[order]
    return fnn.data.Dataset(data.name, x, y, np.asarray(data.x_test), np.asarray(data.y_test))


def sides(args):
    """``{library: (epoch(params, data) -> row, warm_up(params, data) or None, facts)}`` for ``--libraries``."""
    out = {}
    for name in args.libraries:
        if name == "fnn":

            def epoch(params, data):
                row, compile_s, cpu_s = fnn_epoch(params, data, args)
                return {**row, "compile_s": compile_s, "cpu_s": cpu_s}

            out[name] = (epoch, None, {"fnn_path": args.path, "fnn_steps_per_call": args.steps_per_call})
        else:
            out[name] = {"flax": flax_side, "torch": torch_side}[name](args)
    return out


def compare(results, peer, n_test):
    """fnn's epoch time over ``peer``'s, per round (median, bootstrap interval), and their test mistakes.

    Accuracy is compared in mistakes on the test set, round by round (both
    libraries start from the same parameters and see the same batches):
    fnn is at least as accurate when the median of its per-round excess
    mistakes over the peer's is at most 0.
    """
    wall = {name: [r["epoch_s"] for r in results[name]] for name in ("fnn", peer)}
    cpu = {name: [r["cpu_s"] for r in results[name]] for name in ("fnn", peer)}
    ratio = fnn.bench.summarize(wall, cpu, baseline=peer)["fnn"]
    errors = {name: float(np.median([r["test_err"] for r in results[name]])) for name in ("fnn", peer)}
    mistakes = {name: [round(r["test_err"] * n_test) for r in results[name]] for name in ("fnn", peer)}
    excess = [a - b for a, b in zip(mistakes["fnn"], mistakes[peer])]
    return {
        "peer": peer,
        "time_ratio": ratio.ratio,
        "time_ratio_ci95": [ratio.ci_low, ratio.ci_high],
        "cpu_ratio": ratio.cpu_ratio,
        "target_ratio": TARGET_RATIO,
        "time_target_met": ratio.ratio <= TARGET_RATIO,
        "fnn_median_test_error": errors["fnn"],
        "peer_median_test_error": errors[peer],
        "fnn_excess_test_mistakes": excess,
        "median_excess_test_mistakes": float(np.median(excess)),
        "accuracy_target_met": float(np.median(excess)) <= 0,
    }


def plot(path, results, title):
    """Each library's epoch seconds per round."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in results.items():
        ax.plot(range(1, len(rows) + 1), [r["epoch_s"] for r in rows], marker="o", label=name)
    ax.set(xlabel="round", ylabel="seconds per epoch (training + evaluation)", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, title)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--rounds", type=int, default=fnn.bench.MIN_ROUNDS, help="interleaved rounds")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N); default: torch's own choice")
    parser.add_argument("--steps-per-call", type=int, help="fnn.fit's steps_per_call (default: fit's own choice)")
    args = parser.parse_args(argv)
    if args.libraries[0] != "fnn" or len(set(args.libraries)) != len(args.libraries):
        parser.error(f"--libraries must start with fnn and name each library once, got {' '.join(args.libraries)}")
    if args.rounds < fnn.bench.MIN_ROUNDS:
        parser.error(f"--rounds must be at least {fnn.bench.MIN_ROUNDS}, got {args.rounds}")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args, image=True)
    runners = sides(args)
    model = pooled_cnn()
    warm_up_s = {}
    for name, (_, warm_up, _) in runners.items():
        if warm_up is not None:
            tic = time.perf_counter()
            warm_up(model.init(jax.random.key(args.seed), INPUT_SHAPE)[1], data)
            warm_up_s[name] = time.perf_counter() - tic
    results = {name: [] for name in runners}
    print(f"{args.rounds} rounds of one {args.epochs}-epoch run per library, batch {args.batch_size}:", flush=True)
    for r in range(args.rounds):
        params = model.init(jax.random.key(args.seed + r), INPUT_SHAPE)[1]
        shuffled_data = shuffled(data, args.seed + r)
        for name in fnn.bench.round_order(list(runners), r):
            result = runners[name][0](params, shuffled_data)
            results[name].append({"round": r, "load_average_1min": os.getloadavg()[0], **result})
            print(
                f"  round {r}: {name:>5} {result['epoch_s']:6.1f} s, test error {100 * result['test_err']:.2f}%",
                flush=True,
            )
    comparisons = [compare(results, peer, len(data.x_test)) for peer in runners if peer != "fnn"]
    rate = fnn.bench.machine_rate().flops_per_s
    work = results["fnn"][0]["epoch_flops"]  # fnn's epoch in model FLOPs: the same network, data and evaluation
    epoch_s = {name: float(np.median([r["epoch_s"] for r in rows])) for name, rows in results.items()}
    achieved = {name: {"flops_per_s": work / s, "machine_fraction": work / s / rate} for name, s in epoch_s.items()}
    for name, a in achieved.items():
        print(
            f"  {name:>5}: {a['flops_per_s'] / 1e9:.0f} GFLOP/s, {a['machine_fraction']:.0%} of the machine's "
            f"matrix-product rate ({rate / 1e9:.0f} GFLOP/s)"
        )
    cells = [
        [c["peer"], f"{c['time_ratio']:.2f} [{c['time_ratio_ci95'][0]:.2f}, {c['time_ratio_ci95'][1]:.2f}]"]
        + [f"{100 * c['fnn_median_test_error']:.2f}% / {100 * c['peer_median_test_error']:.2f}%"]
        for c in comparisons
    ]
    print(markdown_table(["peer", "fnn epoch / peer epoch [95% CI]", "test error fnn / peer (median)"], cells))
    result = {
        "experiment": CONFIG.experiment,
        "dataset": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "path": args.path,
        **machine(),
        "config": {
            "model": repr(model),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": {"name": "adamw", "lr": args.lr, "b1": B1, "b2": B2, "eps": EPS, "weight_decay": WEIGHT_DECAY},
            "init": "he (fnn's draw, copied into every library)",
            "eval_chunk": EVAL_CHUNK,
            "rounds": args.rounds,
            "seed": args.seed,
            **{k: v for (_, _, facts) in runners.values() for k, v in facts.items()},
        },
        "warm_up_s": warm_up_s,
        "fnn_compile_s": [r["compile_s"] for r in results["fnn"]],
        "comparisons": comparisons,
        "epoch_flops": work,
        "achieved": achieved,
        "target_fraction": TARGET_FRACTION,
        "fraction_target_met": achieved["fnn"]["machine_fraction"] >= TARGET_FRACTION,
        "test_error": {name: float(np.median([r["test_err"] for r in rows])) for name, rows in results.items()},
        "train_s": epoch_s,
        "rounds": results,
    }
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(args.plot, results, f"one epoch of the pooled CNN (batch {args.batch_size}, AdamW) per library")
    return result


if __name__ == "__main__":
    _cli.run(main)
