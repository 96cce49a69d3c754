"""The notes' recipe on one device and on N, side by side: how far data parallelism moves the result.

Trains 784-500-10 (SGD 0.5, batch 100, 10 epochs, data order) on 1 device
and on ``--devices N`` (simulated CPU devices where the host has fewer; each
batch of 100 split into N shards), and, as the yardstick of float32 noise, on
1 device from initial weights of which a random half is nudged by one ulp
(``--noise-runs`` such runs, each with another half). Reports the final test
errors, the largest relative per-epoch difference of the losses, and whether
a second N-device run repeats the first bit for bit.

    python -m experiments.data_parallel --devices 4 --json experiments/results/data_parallel.json
"""

import argparse

import numpy as np

import fnn
from experiments import _cli
from experiments._common import device_fields, run_field, write_json
from fnn.testing import relative_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise-runs", type=int, default=4, help="1-device runs from nudged weights")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_flags(parser)
    return parser.parse_args(argv)


def losses(history):
    return np.stack([history.train_loss, history.test_loss], axis=1)


def main(argv=None):
    args = parse_args(argv)
    fnn.parallel.use_cpu_devices(args.devices)  # before JAX starts
    import jax

    data = fnn.data.load(args.dataset)
    model = fnn.nn.mlp([784, 500, 10])
    _, params = model.init(jax.random.key(0), (784,))
    rng = np.random.default_rng(0)

    def nudged():
        """The initial weights, a random half of them moved up by one float32 ulp."""
        return jax.tree.map(
            lambda p: np.where(rng.random(p.shape) < 0.5, np.nextafter(np.asarray(p), np.float32(np.inf)), p), params
        )

    plan = [("one", 1, params), ("many", args.devices, params), ("many_again", args.devices, params)]
    plan += [(f"one_nudged_{i}", 1, nudged()) for i in range(args.noise_runs)]
    runs = {}
    for name, devices, start in plan:
        trained, history = fnn.fit(model, start, data, epochs=args.epochs, devices=devices, progress=False)
        runs[name] = (trained, history)
        print(
            f"{name:>10} ({devices} devices): test error {100 * history.test_err[-1]:.2f}%, "
            f"wall {history.wall_s:.1f} s",
            flush=True,
        )

    def rel(a, b):
        """The largest relative difference of two runs' per-epoch losses."""
        return max(relative_error(x, y) for x, y in zip(losses(a).ravel(), losses(b).ravel()))

    one, many = runs["one"][1], runs["many"][1]
    repeat = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(runs["many"][0]), jax.tree.leaves(runs["many_again"][0]))
    )
    result = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "devices": args.devices,
        **device_fields(),
        "test_error": {name: run_field(h, "test_error") for name, (_, h) in runs.items()},
        "test_error_diff_pp": 100 * abs(float(many.test_err[-1] - one.test_err[-1])),
        "max_rel_loss_diff": rel(many, one),
        "noise_test_error_diff_pp": [
            100 * abs(float(h.test_err[-1] - one.test_err[-1])) for n, (_, h) in runs.items() if "nudged" in n
        ],
        "noise_max_rel_loss_diff": [rel(h, one) for n, (_, h) in runs.items() if "nudged" in n],
        "repeats_bit_for_bit": repeat,
        "wall_s": {name: run_field(h, "wall_s") for name, (_, h) in runs.items()},
        "history": {name: run_field(h, "history") for name, (_, h) in runs.items()},
    }
    noise_pp, noise_loss = result["noise_test_error_diff_pp"], result["noise_max_rel_loss_diff"]
    print(
        f"\n{args.devices} devices vs 1: test error {result['test_error_diff_pp']:.2f} pp apart; per-epoch losses at "
        f"most "
        f"{100 * result['max_rel_loss_diff']:.2f}% apart. One-ulp nudges of the initial weights on 1 device: test "
        f"error "
        f"{min(noise_pp):.2f}-{max(noise_pp):.2f} pp, losses {100 * min(noise_loss):.2f}-{100 * max(noise_loss):.2f}% "
        f"apart. "
        f"A second {args.devices}-device run repeats the first {'bit for bit' if repeat else 'NOT bit for bit'}."
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
