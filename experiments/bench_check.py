"""Checks fnn.bench on this machine: a function against itself, against recompiled copies, and against 1.3x the work.

Comparisons of a matmul chain ``x @ W`` repeated ``k`` times (256 x 512 by
512 x 512, float32), each with ``fnn.bench.compare`` at its defaults:

- the same function entered twice (one executable): the verdict must be
  ``tie``, the interval within +-7%;
- the function and ``--copies`` separately compiled copies of it: as above;
  the largest ``|ratio - 1|`` among them is the harness's *resolution* here,
  the difference two compilations of the same code can make (a
  practical-equivalence ``margin`` below it calls such differences changes);
- ``k = 10`` against ``k = 13`` chained products (1.3x the work): the verdict
  must be ``slower``, the interval around 1.3.

    python -m experiments.bench_check --json experiments/results/bench_check.json
"""

import argparse

import jax
import jax.numpy as jnp

import fnn
from experiments import _cli
from experiments._common import device_description, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--block-s", type=float, default=0.2)
    parser.add_argument("--copies", type=int, default=4, help="separately compiled copies compared (default 4)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.copies < 0:
        parser.error(f"--copies must be 0 or more, got {args.copies}")
    return args


def chain(k):
    """``x -> x W W ... W`` (``k`` products), scaled to keep the values bounded."""

    def f(x, w):
        for _ in range(k):
            x = (x @ w) * 0.05
        return x

    return f


def main(argv=None):
    args = parse_args(argv)
    x = jax.random.normal(jax.random.key(0), (256, 512), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (512, 512), jnp.float32)
    ten = jax.jit(chain(10))
    settings = {"rounds": args.rounds, "block_s": args.block_s}
    checks = {"same function twice": ({"a": ten, "b": ten}, "tie")}
    for i in range(1, args.copies + 1):
        checks[f"recompiled copy {i}"] = ({"a": ten, "b": jax.jit(chain(10))}, "tie")
    checks["1.3x the work"] = ({"a": ten, "b": jax.jit(chain(13))}, "slower")
    result = {"device": device_description(), "jax_version": jax.__version__, **settings, "checks": {}}
    for label, (fns, expected) in checks.items():
        r = fnn.bench.compare(fns, x, w, baseline="a", **settings)["b"]
        ok = r.verdict == expected and (expected != "tie" or (r.ci_low >= 0.93 and r.ci_high <= 1.07))
        result["checks"][label] = {"expected": expected, "ok": ok, **r.to_dict()}
        print(
            f"{label}: ratio {r.ratio:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], verdict {r.verdict} "
            f"(expected {expected}{', interval within +-7%' if expected == 'tie' else ''}): "
            f"{'ok' if ok else 'NOT OK'}; "
            f"CPU ratio {r.cpu_ratio:.3f}",
            flush=True,
        )
    copies = [c for label, c in result["checks"].items() if label.startswith("recompiled copy")]
    if copies:
        result["resolution"] = max(abs(c["ratio"] - 1) for c in copies)
        print(f"resolution (largest |ratio - 1| of {len(copies)} recompiled copies): {result['resolution']:.3f}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
