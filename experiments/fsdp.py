"""Fully sharded data parallelism against data parallelism: one training step's time and each device's bytes.

The same step (``fnn.train.train_step``: an MLP, Adam, the custom path) on
``--devices`` simulated CPU devices, its batch split over them, with the
training state replicated (data parallelism) and laid out by
``fnn.parallel.fsdp`` (each large array split over the devices), timed side
by side in interleaved rounds (``fnn.bench.compare``). Beside the times:
the bytes of parameters and optimizer state each device holds
(``fnn.parallel.sharding_table``), as a fraction of the whole. The aims:
FSDP's step within 1.5x of data parallelism's, and each device holding at
most ``1/n + 5%`` of the state.

    python -m experiments.fsdp --json experiments/results/fsdp.json
"""

import argparse

import numpy as np

import fnn
from experiments import _cli
from experiments._common import device_fields, write_json

#: The aims: FSDP's step time at most this multiple of data parallelism's; each device's share of the state at
#: most ``1/n`` plus this.
AIM_RATIO, AIM_SHARE_OVER = 1.5, 0.05


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 2048, 2048, 10], help="the MLP's widths")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block-s", type=float, default=0.5)
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fnn.parallel.use_cpu_devices(args.devices)  # before JAX starts
    import jax
    import optax

    model, optimizer = fnn.nn.mlp(args.sizes), optax.adam(1e-3)
    _, params = model.init(jax.random.key(0), (args.sizes[0],))
    mesh = fnn.parallel.data_mesh(args.devices)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, args.sizes[0])).astype(np.float32)
    y = rng.integers(0, args.sizes[-1], args.batch_size).astype(np.int32)
    batch = tuple(jax.device_put(a, fnn.parallel.batch_sharding(mesh)) for a in (x, y))
    state = fnn.train.TrainState.create(params, optimizer)
    states = {name: fnn.parallel.place(state, fnn.parallel.layout(name, state, mesh)) for name in fnn.parallel.LAYOUTS}
    step = fnn.train.train_step(model, fnn.losses.cross_entropy, optimizer)
    fns = {  # both take both states, so that every call gets the same arguments
        "replicated": lambda replicated, fsdp, batch: step(replicated, batch),
        "fsdp": lambda replicated, fsdp, batch: step(fsdp, batch),
    }
    timing = {"rounds": args.rounds, "block_s": args.block_s, "rate": False}
    results = fnn.bench.compare(fns, states["replicated"], states["fsdp"], batch, baseline="replicated", **timing)
    shares = {}
    for name, placed in states.items():
        rows = fnn.parallel.sharding_table((placed.params, placed.opt_state))
        shares[name] = sum(r["bytes_per_device"] for r in rows) / sum(r["bytes"] for r in rows)
    fsdp = results["fsdp"]
    result = {
        "experiment": "fsdp",
        **device_fields(),
        "devices": args.devices,
        "sizes": args.sizes,
        "batch_size": args.batch_size,
        "optimizer": "adam",
        "step_s": {name: r.median_s for name, r in results.items()},
        "time_ratio": fsdp.ratio,
        "time_ratio_ci95": [fsdp.ci_low, fsdp.ci_high],
        "cpu_ratio": fsdp.cpu_ratio,
        "aim_ratio": AIM_RATIO,
        "aim_ratio_met": fsdp.ci_high <= AIM_RATIO,
        "state_share_per_device": shares,
        "aim_share": 1 / args.devices + AIM_SHARE_OVER,
        "aim_share_met": shares["fsdp"] <= 1 / args.devices + AIM_SHARE_OVER,
        "rounds": args.rounds,
    }
    if args.json:
        write_json(args.json, result)
    print(
        f"FSDP step {fsdp.ratio:.2f}x data parallelism's [{fsdp.ci_low:.2f}, {fsdp.ci_high:.2f}] (aim at most "
        f"{AIM_RATIO}x); each device holds {shares['fsdp']:.1%} of the state under FSDP, "
        f"{shares['replicated']:.0%} replicated"
    )
    return result


if __name__ == "__main__":
    _cli.run(main)
