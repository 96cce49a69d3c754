"""Same work, different wall time: single SGD steps on one core and on every core.

At the recipe's shape (784-500-10, batch 100, float32, random data) the
script times single jitted SGD steps of

- ``autodiff``, ``custom`` and ``backprop`` (fnn's three paths), and
- ``custom, one-hot cross-entropy``: the custom path with the cross-entropy
  backward written as ``g (softmax(h) - onehot(y)) / m`` through a one-hot
  matrix, as fnn's rule was before 0.2 (the forward is fnn's own),

with :func:`fnn.bench.compare` against autodiff, twice: in a process pinned
to one core, and in one that may use every core. A step that is slower on
every core but not on one, with the same CPU time, does the same work and
loses the difference to how XLA:CPU spreads its thunks (kernels, dots,
fusions) over threads, not to its own arithmetic.

    python -m experiments.step_overlap --json experiments/results/step_overlap.json

Pinning needs ``os.sched_setaffinity`` (Linux).
"""

import argparse
import json
import os
import subprocess
import sys

import jax

import fnn
from experiments import _cli
from experiments._common import cpu_description, markdown_table, write_json

SIZES = (784, 500, 10)
BATCH = 100
LEARNING_RATE = 0.5
BASELINE = "autodiff"
ONEHOT = "custom, one-hot cross-entropy"


def _onehot_backward(saved, g):
    """The pre-0.2 rule: ``g (softmax(h) - onehot(y)) / m`` through a one-hot matrix."""
    probs, labels = saved
    return g * (probs - jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)) / labels.size


#: fnn's cross-entropy forward with the one-hot backward.
CROSS_ENTROPY_ONEHOT = fnn.module.loss(
    "cross_entropy_onehot", forward=fnn.losses.cross_entropy.forward, backward=_onehot_backward
)


def updates():
    """The model and ``{variant: unjitted SGD update (params, (x, labels)) -> (params, metrics)}``."""
    model = fnn.nn.mlp(list(SIZES))
    ce = fnn.losses.cross_entropy
    steps = {path: fnn.train.sgd_update(model, ce, LEARNING_RATE, path=path) for path in fnn.PATHS}
    steps[ONEHOT] = fnn.train.sgd_update(model, CROSS_ENTROPY_ONEHOT, LEARNING_RATE, path="custom")
    return model, steps


def measure(*, rounds, block_s, seed=0):
    """``{variant: fnn.bench.Result as a dict}`` for the steps, in this process."""
    model, steps = updates()
    keys = jax.random.split(jax.random.key(seed), 3)
    _, params = model.init(keys[0], (BATCH, SIZES[0]))
    batch = (jax.random.normal(keys[1], (BATCH, SIZES[0])), jax.random.randint(keys[2], (BATCH,), 0, SIZES[-1]))
    results = fnn.bench.compare(steps, params, batch, baseline=BASELINE, rounds=rounds, block_s=block_s)
    return {name: r.to_dict() for name, r in results.items()}


def measure_in_child(cores, *, rounds, block_s):
    """Runs :func:`measure` in a fresh process pinned to ``cores`` (``None``: every core) and returns its results."""
    command = [
        sys.executable,
        "-m",
        "experiments.step_overlap",
        "--worker",
        "--rounds",
        str(rounds),
        "--block-s",
        str(block_s),
    ]
    if cores is not None:
        command += ["--cores", ",".join(map(str, cores))]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(*, rounds=16, block_s=0.3):
    """``{"one core": {variant: result}, "every core": {variant: result}}``."""
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("pinning a process to one core needs os.sched_setaffinity (Linux)")
    every = sorted(os.sched_getaffinity(0))
    settings = {"rounds": rounds, "block_s": block_s}
    return {"one core": measure_in_child(every[:1], **settings), "every core": measure_in_child(None, **settings)}


def table(runs):
    header = ["step"] + [f"{label}: wall / {BASELINE} [95% CI], verdict, CPU ratio" for label in runs]
    names = list(next(iter(runs.values())))
    rows = [
        [name]
        + [
            f"{r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['verdict']}, CPU {r['cpu_ratio']:.3f}"
            for r in (runs[label][name] for label in runs)
        ]
        for name in names
    ]
    return markdown_table(header, rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16, help=f"timing rounds, at least {fnn.bench.MIN_ROUNDS}")
    parser.add_argument("--block-s", type=float, default=0.3, help="seconds per timing block (default 0.3)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cores", help=argparse.SUPPRESS)
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.rounds < fnn.bench.MIN_ROUNDS:
        parser.error(f"--rounds must be at least {fnn.bench.MIN_ROUNDS}, got {args.rounds}")
    if not args.block_s > 0:
        parser.error(f"--block-s must be positive, got {args.block_s}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:  # pin before JAX starts its threads, measure, print one JSON line
        if args.cores:
            os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
        print(json.dumps(measure(rounds=args.rounds, block_s=args.block_s)))
        return None
    print(f"SGD steps at {'-'.join(map(str, SIZES))}, batch {BATCH}, float32 on {cpu_description()}", flush=True)
    runs = run(rounds=args.rounds, block_s=args.block_s)
    print(table(runs))
    result = {
        "device": cpu_description(),
        "jax_version": jax.__version__,
        "sizes": list(SIZES),
        "batch": BATCH,
        "rounds": args.rounds,
        "block_s": args.block_s,
        "runs": runs,
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
