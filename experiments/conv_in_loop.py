"""A convolution's gradient inside a loop body on XLA's CPU backend, and what ``fnn.fit`` does about it.

XLA:CPU gives a convolution inside a loop body (``lax.scan``, ``while``) to
its generic, slow code when the convolution's layouts are not the ones its
fast kernels take, because layout assignment does not re-lay out operands
inside a loop body (JAX issue 12868, "Convolution is significantly slower
inside a loop body (CPU)"). JAX's own gradient of a convolution (the autodiff
path) produces such convolutions; fnn's hand-written rules write both backward
convolutions in the forward pass's own NHWC/HWIO layouts and do not meet it.

Two parts:

- ``repro``: the upstream problem in plain JAX, no fnn: one SGD step of a
  two-convolution net, ``jax.grad`` of plain ``lax.conv_general_dilated``,
  jitted on its own and inside a ``lax.scan`` of length 1 and of length 8;
  milliseconds per step (``--repro-batch`` images a step, the median of
  ``--repro-repeats`` timed calls).
- ``fit``: each of two conv nets (``--nets``) trained for one epoch of 375
  steps (12,000 MNIST images, batch 32, AdamW) through ``fnn.fit`` on all
  three paths, each with the whole epoch in one ``lax.scan``
  (``steps_per_call=375``) and a step at a time (``steps_per_call=1``,
  compiled without a loop); ``None`` (fit's choice) is the latter for the
  autodiff path on a CPU and the former otherwise. The nets: ``strided``,
  two 3x3 convolutions (the second strided) and two dense layers; ``pooled``,
  ``experiments.mnist_pooled``'s Flax-tutorial CNN (two 3x3 convolutions,
  each followed by a 2x2 average pooling; ``experiments._images.pooled_cnn``).
  ``train_s`` is the whole ``fit`` call, compilation and the test-set
  evaluation included; ``vs_custom_auto`` divides it by the same net's custom
  path with fit's choice.

    python -m experiments.conv_in_loop --json experiments/results/conv_in_loop.json
    python -m experiments.conv_in_loop --synthetic --train-size 640 --parts fit   # seconds
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import fnn
from experiments import _cli
from experiments._common import Config, add_common_args, load_data, machine, markdown_table, run_fields, write_json
from experiments._images import pooled_cnn


# ---------------------------------------------------------------- the upstream problem, plain JAX
def repro(steps=8, batch=32, repeats=5, seed=0):
    """Milliseconds per SGD step of a small conv net's ``jax.grad``: jitted alone, in scans of 1 and of ``steps``."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), np.float32))
    w1 = jnp.asarray(rng.standard_normal((3, 3, 1, 32), np.float32) * 0.3)
    w2 = jnp.asarray(rng.standard_normal((3, 3, 32, 64), np.float32) * 0.05)
    layout = ("NHWC", "HWIO", "NHWC")

    def loss(ws, x):
        h = jax.nn.relu(lax.conv_general_dilated(x, ws[0], (1, 1), "SAME", dimension_numbers=layout))
        return jnp.mean(lax.conv_general_dilated(h, ws[1], (2, 2), "SAME", dimension_numbers=layout) ** 2)

    def step(ws, _):
        return jax.tree.map(lambda w, g: w - 0.01 * g, ws, jax.grad(loss)(ws, x)), None

    variants = {
        "jit, no loop": (jax.jit(lambda ws: step(ws, None)[0]), 1),
        "lax.scan of 1": (jax.jit(lambda ws: lax.scan(step, ws, None, length=1)[0]), 1),
        f"lax.scan of {steps}": (jax.jit(lambda ws: lax.scan(step, ws, None, length=steps)[0]), steps),
    }
    rows = []
    for name, (fn, n) in variants.items():
        jax.block_until_ready(fn((w1, w2)))
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            jax.block_until_ready(fn((w1, w2)))
            times.append((time.perf_counter() - tic) / n)
        rows.append({"how": name, "ms_per_step": 1e3 * float(np.median(times)), "steps_per_call": n})
        print(f"  {name:>16}: {rows[-1]['ms_per_step']:.1f} ms per step", flush=True)
    return rows


# ---------------------------------------------------------------- through fit
def conv_net():
    """Two 3x3 convolutions (32 then 64 channels, the second strided) and two dense layers, as small MNIST CNNs go."""
    nn = fnn.nn
    return nn.serial(
        nn.conv2d(32, 3, bias=True),
        nn.relu,
        nn.conv2d(64, 3, stride=2, bias=True),
        nn.relu,
        nn.flatten(),
        nn.dense(256, bias=True),
        nn.relu,
        nn.dense(10, bias=True),
    )


#: The nets timed through fit: ``--nets`` picks among them.
NETS = {"strided": conv_net, "pooled": pooled_cnn}
CONFIG = Config(
    "conv_in_loop",
    epochs=1,
    batch_size=32,
    lr=1e-3,
    options={
        "train_size": 12_000,
        "parts": ["repro", "fit"],
        "nets": list(NETS),
        "repro_batch": 32,
        "repro_repeats": 5,
    },
)


def through_fit(data, args, net="strided"):
    """One epoch of ``net`` through ``fnn.fit`` for every path and ``steps_per_call`` choice; one row each."""
    model = NETS[net]()
    _, params = model.init(jax.random.key(args.seed), data.x_train.shape[1:])
    steps = -(-len(data.x_train) // args.batch_size)
    rows = []
    for path in fnn.PATHS:
        for choice in ("step", "epoch", "auto"):
            per_call = {"step": 1, "epoch": steps, "auto": None}[choice]
            tic = time.perf_counter()
            _, history = fnn.fit(
                model,
                params,
                data,
                path=path,
                epochs=1,
                batch_size=args.batch_size,
                optimizer=optax.adamw(args.lr),
                steps_per_call=per_call,
                progress=False,
            )
            row = {
                "net": net,
                "path": path,
                "compiled": choice,
                "steps_per_call": per_call,
                "steps": steps,
                "train_s": time.perf_counter() - tic,
                **run_fields(history, "compile_s", "test_error"),
            }
            rows.append(row)
            print(
                f"  {net:>7}, {path:>8}, {choice:>5}: {row['train_s']:6.1f} s "
                f"(test error {100 * row['test_error']:.2f}%)",
                flush=True,
            )
    custom = next(r["train_s"] for r in rows if r["path"] == "custom" and r["compiled"] == "auto")
    for row in rows:
        row["vs_custom_auto"] = row["train_s"] / custom
    return rows


def _positive(text):
    """An int >= 1, for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, CONFIG)
    parser.add_argument("--parts", nargs="+", choices=("repro", "fit"))
    parser.add_argument("--nets", nargs="+", choices=tuple(NETS), help="the nets timed through fit")
    parser.add_argument("--repro-batch", type=_positive, help="images per step of the repro part")
    parser.add_argument("--repro-repeats", type=_positive, help="timed calls per variant of the repro part")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = {"experiment": CONFIG.experiment, **machine(), "batch_size": args.batch_size}
    if "repro" in args.parts:
        print("The upstream problem in plain JAX (jax.grad of lax.conv_general_dilated, NHWC/HWIO):", flush=True)
        result["repro"] = repro(batch=args.repro_batch, repeats=args.repro_repeats)
    if "fit" in args.parts:
        data = load_data(args, image=True)
        print(f"One epoch of {len(data.x_train)} images through fnn.fit, every path and way of compiling:", flush=True)
        result["fit"] = [row for net in args.nets for row in through_fit(data, args, net)]
        result["n_train"], result["n_test"] = len(data.x_train), len(data.x_test)
        cells = [
            [r["net"], r["path"], r["compiled"], f"{r['train_s']:.1f}", f"{r['vs_custom_auto']:.2f}"]
            for r in result["fit"]
        ]
        print(markdown_table(["net", "path", "compiled", "train s", "vs custom (fit's choice)"], cells))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
