"""Rematerialisation: the memory XLA allocates for a deep network's gradient, with and without ``nn.remat``.

The network: ``BLOCKS`` residual blocks ``z + relu(z W1 + b1) W2 + b2`` of width
``WIDTH``, on a batch of ``BATCH`` rows, under a cross-entropy loss. Four
arrangements of the same blocks:

- ``unrolled``: ``serial(block_1, ..., block_n)``;
- ``unrolled_remat``: ``serial(remat(block_1), ..., remat(block_n))``;
- ``repeat``: ``repeat(block, n)``, one ``lax.scan`` over stacked parameters;
- ``repeat_remat``: ``repeat(remat(block), n)``.

Per arrangement and gradient path: the compiled gradient's temporary bytes
(``memory_analysis().temp_size_in_bytes``: what XLA allocates, not what JAX
says it saves) and, per path, the step time of ``repeat_remat`` against
``repeat`` (``fnn.bench.compare``: median ratio and bootstrap 95% interval).
Gradients: every arrangement against ``unrolled`` on the autodiff path, the
largest difference relative to the largest entry, in float32.

Targets: ``repeat_remat`` temporary memory at most 0.4x ``repeat``'s, step
time at most 1.4x, gradients equal to float32 rounding, on every path.

    python -m experiments.remat --json experiments/results/remat.json
"""

import argparse

import jax
import jax.numpy as jnp

import fnn
from experiments import _cli
from experiments._common import machine, markdown_table, write_json
from fnn import nn

BLOCKS, WIDTH, BATCH, CLASSES = 32, 256, 4096, 10
ARRANGEMENTS = ("unrolled", "unrolled_remat", "repeat", "repeat_remat")
MEMORY_TARGET, TIME_TARGET = 0.4, 1.4


def block():
    """``z + relu(z W1 + b1) W2 + b2``, width :data:`WIDTH`."""
    return nn.residual(nn.serial(nn.dense(WIDTH, bias=True), nn.relu, nn.dense(WIDTH, bias=True)))


def model(arrangement, blocks=BLOCKS):
    """The network in one of :data:`ARRANGEMENTS`."""
    if arrangement.startswith("repeat"):
        one = nn.remat(block()) if arrangement.endswith("remat") else block()
        return nn.repeat(one, blocks)
    wrap = nn.remat if arrangement.endswith("remat") else (lambda b: b)
    return nn.serial(*(wrap(block()) for _ in range(blocks)))


def stacked_to_list(params, blocks):
    """``repeat``'s stacked parameters as ``serial``'s list, block by block."""
    return [jax.tree.map(lambda a, i=i: a[i], params) for i in range(blocks)]


def problem(blocks=BLOCKS, batch=BATCH, seed=0):
    """``{arrangement: params}`` with the same weights in every arrangement, inputs and labels."""
    k_p, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    _, stacked = model("repeat", blocks).init(k_p, (WIDTH,))
    listed = stacked_to_list(stacked, blocks)
    params = {"unrolled": listed, "unrolled_remat": listed, "repeat": stacked, "repeat_remat": stacked}
    x = jax.random.normal(k_x, (batch, WIDTH), jnp.float32)
    labels = jax.random.randint(k_y, (batch,), 0, CLASSES)
    return params, x, labels


def gradient(arrangement, path, blocks=BLOCKS):
    return jax.jit(fnn.value_and_grad(model(arrangement, blocks), fnn.losses.cross_entropy, path=path))


def _as_list(grads, arrangement, blocks):
    return stacked_to_list(grads, blocks) if arrangement.startswith("repeat") else grads


def measure(*, blocks=BLOCKS, batch=BATCH, rounds=10, block_s=0.3):
    params, x, labels = problem(blocks, batch)
    reference = _as_list(gradient("unrolled", "autodiff", blocks)(params["unrolled"], x, labels)[1], "unrolled", blocks)
    rows = []
    for path in fnn.PATHS:
        temp, error = {}, {}
        for arrangement in ARRANGEMENTS:
            fn = gradient(arrangement, path, blocks)
            compiled = fn.lower(params[arrangement], x, labels).compile()
            temp[arrangement] = compiled.memory_analysis().temp_size_in_bytes
            grads = _as_list(compiled(params[arrangement], x, labels)[1], arrangement, blocks)
            error[arrangement] = max(
                float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference))
            )
        timed = fnn.bench.compare(
            {"repeat": gradient("repeat", path, blocks), "repeat_remat": gradient("repeat_remat", path, blocks)},
            params["repeat"],
            x,
            labels,
            baseline="repeat",
            rounds=rounds,
            block_s=block_s,
        )["repeat_remat"]
        memory_ratio = temp["repeat_remat"] / temp["repeat"]
        rows.append(
            {
                "path": path,
                "temp_bytes": temp,
                "max_rel_grad_diff_vs_unrolled_autodiff": error,
                "memory_ratio_repeat_remat": memory_ratio,
                "time_ratio_repeat_remat": {
                    "median": timed.ratio,
                    "ci95": [timed.ci_low, timed.ci_high],
                    "verdict": timed.verdict,
                },
                "step_s_repeat_remat_median": timed.median_s,
                "memory_target_met": memory_ratio <= MEMORY_TARGET,
                "time_target_met": timed.ratio <= TIME_TARGET,
            }
        )
    return rows


def table(rows):
    mib = lambda n: f"{n / 2**20:.0f}"  # noqa: E731
    return markdown_table(
        [
            "path",
            *(f"{a} MiB" for a in ARRANGEMENTS),
            "remat/plain memory",
            "remat/plain time [95% CI]",
            "max grad diff",
        ],
        [
            [
                r["path"],
                *(mib(r["temp_bytes"][a]) for a in ARRANGEMENTS),
                f"{r['memory_ratio_repeat_remat']:.2f}",
                f"{r['time_ratio_repeat_remat']['median']:.2f} [{r['time_ratio_repeat_remat']['ci95'][0]:.2f}, "
                f"{r['time_ratio_repeat_remat']['ci95'][1]:.2f}]",
                f"{max(r['max_rel_grad_diff_vs_unrolled_autodiff'].values()):.1e}",
            ]
            for r in rows
        ],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--json", type=str, default=None)
    _cli.add_timing_flags(parser, rounds=10, block_s=0.3)
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    _cli.check_timing_flags(parser, args)
    rows = measure(blocks=args.blocks, batch=args.batch, rounds=args.rounds, block_s=args.block_s)
    print(table(rows))
    if args.json:
        write_json(
            args.json,
            {
                "experiment": "remat",
                "machine": machine(),
                "network": {"blocks": args.blocks, "width": WIDTH, "batch": args.batch, "block": repr(block())},
                "targets": {"memory_ratio_at_most": MEMORY_TARGET, "time_ratio_at_most": TIME_TARGET},
                "rows": rows,
            },
        )
    return rows


if __name__ == "__main__":
    _cli.run(main)
