"""A model whose training state is ``n`` times what one device may hold, trained under FSDP on ``n`` devices.

The training state (an MLP's parameters and Adam's two moments) defines the
device that is too small: one that holds ``1/n`` of it (``limit_bytes``).
Laid out by ``fnn.parallel.fsdp`` over ``--devices`` simulated CPU devices,
each device's bytes are read two ways: from the arrays themselves
(``fnn.parallel.sharding_table``) and from XLA's compiled training step
(``memory_analysis()``: its arguments, outputs, temporaries, and the
outputs that reuse the donated arguments' buffers), which bounds what a
device holds while the step runs by ``arguments + outputs - aliased +
temporaries``. The state is then trained for ``--steps`` steps, and each
gradient path's gradient on the split parameters and a split batch is held
to one device's (relative to each array's largest entry). The aims: each
device holds at most ``1/n + 5%`` of the state, and the gradients agree to
float32 rounding.

    python -m experiments.fsdp_memory --json experiments/results/fsdp_memory.json
"""

import argparse

import numpy as np

import fnn
from experiments import _cli
from experiments._common import device_fields, write_json

#: The aims: each device's share of the state at most ``1/n`` plus this; every path's gradient within this of one
#: device's, relative to each array's largest entry (float32 sums in another order: a few ulps of 2^-24).
AIM_SHARE_OVER, AIM_GRADIENT_GAP = 0.05, 1e-5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[784, 4096, 4096, 4096, 4096, 10], help="the MLP's widths"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="training steps under FSDP")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam's step size")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fnn.parallel.use_cpu_devices(args.devices)  # before JAX starts
    import jax
    import optax

    model, optimizer, loss = fnn.nn.mlp(args.sizes), optax.adam(args.lr), fnn.losses.cross_entropy
    _, params = model.init(jax.random.key(0), (args.sizes[0],))
    mesh = fnn.parallel.data_mesh(args.devices)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, args.sizes[0])).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((args.sizes[0], args.sizes[-1])), axis=1).astype(np.int32)
    batch = tuple(jax.device_put(a, fnn.parallel.batch_sharding(mesh)) for a in (x, y))
    state = fnn.train.TrainState.create(params, optimizer)
    layout = fnn.parallel.layout("fsdp", state, mesh)
    rows = fnn.parallel.sharding_table(
        fnn.parallel.place((state.params, state.opt_state), (layout.params, layout.opt_state))
    )
    total = sum(r["bytes"] for r in rows)
    held = sum(r["bytes_per_device"] for r in rows)  # FSDP splits each array evenly: every device holds as much

    gaps = {}
    for path in fnn.PATHS:  # before training: the step below donates the state's buffers
        grad_fn = jax.jit(fnn.value_and_grad(model, loss, path=path))
        split = grad_fn(fnn.parallel.place(params, layout.params), *batch)[1]
        gaps[path] = relative_gap(split, grad_fn(params, x, y)[1])

    placed = fnn.parallel.place(state, layout)
    shardings = jax.tree.map(lambda a: a.sharding, placed)
    step = (
        jax.jit(
            fnn.train.train_step(model, loss, optimizer),
            donate_argnums=0,
            out_shardings=(shardings, fnn.parallel.replicated(mesh)),
        )
        .lower(placed, batch)
        .compile()
    )
    compiled = compiled_bytes(step)
    # The same step compiled for one device (lowered from shapes alone: nothing runs), which needs it all.
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (state, (x, y)))
    whole = compiled_bytes(
        jax.jit(fnn.train.train_step(model, loss, optimizer), donate_argnums=0).lower(*shapes).compile()
    )
    losses = []
    for _ in range(args.steps):
        placed, metrics = step(placed, batch)
        losses.append(float(metrics["loss"]))

    limit = total / args.devices
    aim_share = 1 / args.devices + AIM_SHARE_OVER
    result = {
        "experiment": "fsdp_memory",
        **device_fields(),
        "devices": args.devices,
        "sizes": args.sizes,
        "batch_size": args.batch_size,
        "optimizer": "adam",
        "lr": args.lr,
        "state_bytes": total,
        "limit_bytes": limit,
        "state_bytes_per_device": held,
        "state_share_per_device": held / total,
        "compiled_step_per_device": compiled,
        "compiled_step_one_device": whole,
        "peak_bound_over_limit": compiled["peak_bound_bytes"] / limit,
        "peak_bound_over_one_device": compiled["peak_bound_bytes"] / whole["peak_bound_bytes"],
        "aim_share": aim_share,
        "aim_share_met": held / total <= aim_share,
        "losses": losses,
        "trained": all(np.isfinite(losses)) and losses[-1] < losses[0],
        "gradient_gap": gaps,
        "aim_gradient_gap": AIM_GRADIENT_GAP,
        "aim_gradient_met": max(gaps.values()) <= AIM_GRADIENT_GAP,
    }
    if args.json:
        write_json(args.json, result)
    print(
        f"state {total / 2**20:.0f} MiB, {args.devices}x a device of {limit / 2**20:.0f} MiB: each device holds "
        f"{held / total:.1%} of it (aim at most {aim_share:.1%}); while the step runs, at most "
        f"{compiled['peak_bound_bytes'] / limit:.2f}x that device, "
        f"{compiled['peak_bound_bytes'] / whole['peak_bound_bytes']:.1%} of one device's step; "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
        f"gradients within {max(gaps.values()):.1e} of one device's"
    )
    return result


def compiled_bytes(compiled):
    """A compiled program's bytes on each device (``fnn.inspect.memory``), and the bound on what a device holds
    while it runs: its arguments and outputs (less the outputs written over donated arguments) and temporaries."""
    found = fnn.inspect.memory(compiled)
    return {
        **found,
        "peak_bound_bytes": found["arg_bytes"] + found["out_bytes"] - found["alias_bytes"] + found["temp_bytes"],
    }


def relative_gap(got, want):
    """The largest of the arrays' relative errors (``fnn.testing.relative_error``: relative to each reference
    array's largest entry)."""
    import jax

    return max(fnn.testing.relative_error(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


if __name__ == "__main__":
    _cli.run(main)
