"""The two forms of a convolution leaf timed against each other per shape: XLA's convolution and the matrix form.

A convolution leaf computes ``y``, ``dx`` and ``dw`` either with XLA's
convolution or in the notes' matrix form (patches, then one matrix product
each; ``fnn.nn._conv``). For every shape of the grid below (the convolutions
of this project's image and sequence nets, at batch 32 and 128), each form
runs one training step's share of the leaf: the forward product and both
backward products (a ``jax.vjp`` through the leaf's hand-written rule, the
``custom`` path, its gradient with respect to ``w`` and ``x``) in two
settings: ``alone`` (one step, jitted on its own) and ``in_scan`` (a
``lax.scan`` over ``--steps`` different inputs, as ``fnn.fit`` runs its
steps; XLA:CPU runs a convolution inside a loop body on one core). The two are
timed side by side (``fnn.bench.compare``, interleaved rounds, bootstrap
interval of the per-round ratio ``matmul / convolution``), with XLA's FLOP
count of the three products (``2 K C O`` FLOPs each per output position), the
achieved rate of each form and its fraction of the machine's matrix-product
rate (``fnn.bench.machine_rate``).

``fnn.nn.conv_form`` states the rule the leaves follow, drawn from these
measurements.

    python -m experiments.conv_forms --json experiments/results/conv_forms.json
"""

import argparse
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import machine, markdown_table, write_json
from experiments._items import interval
from fnn.nn import _conv, _windows

#: ``(name, spatial, C, O, kernel, stride)``: the convolutions of the project's nets, one spatial axis or two.
SHAPES = (
    ("pooled conv1", (28, 28), 1, 32, 3, 1),
    ("pooled conv2", (14, 14), 32, 64, 3, 1),
    ("strided conv1", (28, 28), 1, 32, 5, 2),
    ("strided conv2", (14, 14), 32, 64, 3, 2),
    ("strided conv3", (7, 7), 64, 64, 3, 1),
    ("strided 28x28x32", (28, 28), 32, 64, 3, 2),
    ("cifar conv1", (32, 32), 3, 32, 3, 1),
    ("cifar 32x32x32", (32, 32), 32, 32, 3, 1),
    ("cifar 16x16x64", (16, 16), 64, 64, 3, 1),
    ("cifar 8x8x128", (8, 8), 128, 128, 3, 1),
    ("seq conv1d 1", (28,), 28, 64, 3, 1),
    ("seq conv1d 2", (28,), 64, 64, 3, 1),
    ("seq conv1d 3", (14,), 128, 128, 3, 1),
    ("long conv1d", (256,), 64, 64, 5, 1),
)
BATCHES = (32, 128)


CONTEXTS = ("alone", "in_scan")


def step_fn(form, stride, steps):
    """``(xs, w, gs) -> scalar``: ``steps`` forward and backward passes of the leaf in ``form``; a scan unless
    ``steps`` is 1."""
    leaf = _conv.conv_leaf(len(stride), stride, "SAME", form=form)

    def run(xs, w, gs):
        def body(total, xg):
            x, g = xg
            _, pullback = jax.vjp(lambda w, x: leaf.by_rules.apply({"w": w}, x), w, x)
            dw, dx = pullback(g)
            return total + dw[(0,) * dw.ndim] + dx[(0,) * dx.ndim], None

        if steps == 1:
            return body(jnp.zeros((), w.dtype), (xs[0], gs[0]))[0]
        return jax.lax.scan(body, jnp.zeros((), w.dtype), (xs, gs))[0]

    return run


def measure(name, spatial, c, o, kernel, stride, batch, context, args, rate):
    """One shape in one context: both forms timed side by side, their FLOPs and rates."""
    steps = 1 if context == "alone" else args.steps
    n = len(spatial)
    kernel, stride = (kernel,) * n, (stride,) * n
    rng = np.random.default_rng(args.seed)
    out = _windows.output_spatial(spatial, kernel, stride, "SAME")
    xs = jnp.asarray(rng.standard_normal((steps, batch, *spatial, c), dtype=np.float32))
    gs = jnp.asarray(rng.standard_normal((steps, batch, *out, o), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((*kernel, c, o), dtype=np.float32) / np.sqrt(c * np.prod(kernel)))
    fns = {form: jax.jit(step_fn(form, stride, steps)) for form in _conv.CONV_FORMS}
    results = fnn.bench.compare(
        fns, xs, w, gs, baseline="convolution", rounds=args.rounds, block_s=args.block_s, seed=args.seed, rate=rate
    )
    chosen = _conv.conv_form((batch, *spatial, c), w.shape, stride)
    mat = results["matmul"]
    work = 2 * 3 * batch * int(np.prod(out)) * int(np.prod(kernel)) * c * o  # y, dw, dx: 2 K C O FLOPs per output
    return {
        "name": name,
        "context": context,
        "batch": batch,
        "x_shape": [batch, *spatial, c],
        "w_shape": list(w.shape),
        "stride": list(stride),
        "flops_per_step": work,
        "xla_flops_per_call": {f: r.xla_flops for f, r in results.items()},  # the scan's body, counted once
        "step_s": {f: r.median_s / steps for f, r in results.items()},
        "flops_per_s": {f: work * steps / r.median_s for f, r in results.items()},
        "machine_fraction": {f: work * steps / r.median_s / rate.flops_per_s for f, r in results.items()},
        "time_ratio_matmul": {"median": mat.ratio, "ci95": [mat.ci_low, mat.ci_high]},
        "cpu_ratio_matmul": mat.cpu_ratio,
        "verdict_matmul": mat.verdict,
        "faster_form": "matmul" if mat.ratio < 1 else "convolution",
        "rule_form": chosen,
        "timings": {f: r.to_dict() for f, r in results.items()},
    }


def table(rows):
    header = ["shape", "context", "batch", "x", "w", "stride", "conv GFLOP/s", "matmul GFLOP/s"]
    header += ["matmul / conv [CI]", "rule"]
    body = [
        [
            r["name"],
            r["context"],
            str(r["batch"]),
            "x".join(map(str, r["x_shape"][1:])),
            "x".join(map(str, r["w_shape"])),
            str(r["stride"][0]),
            f"{r['flops_per_s']['convolution'] / 1e9:.0f}",
            f"{r['flops_per_s']['matmul'] / 1e9:.0f}",
            interval(r["time_ratio_matmul"]),
            r["rule_form"] + ("" if r["rule_form"] == r["faster_form"] else " (slower)"),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=[s[0] for s in SHAPES], default=[s[0] for s in SHAPES])
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--steps", type=int, default=8, help="steps per timed call in the in_scan context")
    parser.add_argument("--contexts", nargs="+", choices=CONTEXTS, default=list(CONTEXTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    _cli.add_timing_flags(parser, rounds=8, block_s=0.1)
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    _cli.check_timing_flags(parser, args)
    if args.steps < 1 or any(b < 1 for b in args.batches):
        parser.error("--steps and --batches must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    rate = fnn.bench.machine_rate()
    load_before = os.getloadavg()
    rows = []
    for name, spatial, c, o, kernel, stride in SHAPES:
        if name not in args.shapes:
            continue
        for batch, context in itertools.product(args.batches, args.contexts):
            row = measure(name, spatial, c, o, kernel, stride, batch, context, args, rate)
            rows.append(row)
            print(
                f"{name:>16} batch {batch:3d} {context:>7}: matmul/conv {interval(row['time_ratio_matmul'])}"
                f" ({row['verdict_matmul']}), rule {row['rule_form']}",
                flush=True,
            )
    disagree = [f"{r['name']} batch {r['batch']} {r['context']}" for r in rows if r["rule_form"] != r["faster_form"]]
    result = {
        "experiment": "conv_forms",
        "command": "python -m experiments.conv_forms",
        "what": "one forward and backward pass (y, dw, dx) of a conv leaf per step, float32, SAME padding, "
        "alone (one jitted step) or in a lax.scan over --steps inputs; ratio = matmul form / XLA convolution "
        "form, per round",
        "steps": args.steps,
        "rounds": args.rounds,
        "block_s": args.block_s,
        "seed": args.seed,
        "machine": machine(),
        "matmul_rate": rate.to_dict(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "rule_slower_at": disagree,
        "rows": rows,
    }
    print()
    print(table(rows))
    print(f"\nthe rule picks the slower form at: {disagree or 'none'}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
