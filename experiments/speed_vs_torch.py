"""fnn's jitted recipe against the notes' own PyTorch code, timed side by side.

Runs the 10-epoch MNIST recipe with fnn (compile included) and with
``experiments._peer_torch`` (the notes' code) alternately in one process on the
same arrays, then measures float32 matmul throughput of XLA and of torch at
the recipe's shapes, to say how close each run gets to the machine's matmul
speed. Needs the ``torch`` extra.

    python -m experiments.speed_vs_torch --json experiments/results/speed_vs_torch.json
"""

import argparse
import statistics
import time

import jax.numpy as jnp

import fnn
from experiments import _cli, _peer_torch
from experiments._common import (
    RECIPE_BATCH,
    RECIPE_SIZES,
    device_fields,
    fit_recipe,
    markdown_table,
    run_fields,
    write_json,
)
from fnn.loop._epoch import EVAL_CHUNK  # the rows fit evaluates at a time

(N_IN, HIDDEN, N_OUT), BATCH = RECIPE_SIZES, RECIPE_BATCH


def recipe_flop(n_train, n_test, epochs):
    """Multiply-adds x 2 of the recipe as the notes run it.

    Per training example forward + backward, per test example forward.

    The training metrics come from the training steps' own forward passes
    (``fnn.fit``'s default, as the notes' loop), so only the test set is
    evaluated each epoch.
    """
    forward = 2 * (N_IN * HIDDEN + HIDDEN * N_OUT)
    backward = 2 * (N_IN * HIDDEN + 2 * HIDDEN * N_OUT)  # dW1, dW2 and dZ1 (no dX)
    return epochs * (n_train * (forward + backward) + n_test * forward)


#: (rows, inner, cols) of the recipe's matmuls: forward X W1, backward X^T G1, G2 W2^T-sized, evaluation.
SHAPES = {
    "X W1 (batch 100)": (BATCH, N_IN, HIDDEN),
    "X^T G1 (batch 100)": (N_IN, BATCH, HIDDEN),
    "evaluation X W1 (1000 rows)": (EVAL_CHUNK, N_IN, HIDDEN),
    "square 1024": (1024, 1024, 1024),
}


def xla_matmul_gflops(shape):
    """Throughput of a jitted float32 ``[m, k] @ [k, n]`` (``fnn.bench.matmul_rate``), GFLOP/s."""
    return fnn.bench.matmul_rate(shape, jnp.float32, seconds=1.0) / 1e9


def torch_matmul_gflops(shape, seconds=1.0):
    """Throughput of torch's float32 ``[m, k] @ [k, n]`` on the CPU."""
    import torch

    m, k, n = shape
    reps = max(4, int(seconds * 100e9 / (2 * m * k * n)))
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b

    def loop():
        for _ in range(reps):
            a @ b

    best = min(_timed(loop) for _ in range(3))
    return 2 * m * k * n * reps / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_fnn(data, epochs, path):
    """The recipe with fnn (``fit_recipe``: ``fnn.nn.mlp([784, 500, 10])``, SGD 0.5, batches of 100) on gradient
    path ``path``."""
    return run_fields(fit_recipe(data, path=path, epochs=epochs), "wall_s", "compile_s", "test_error")


def run_torch(data, epochs):
    result = _peer_torch.run(data.x_train, data.y_train, data.x_test, data.y_test, epochs=epochs)
    return {
        "wall_s": result["wall_s"],
        "test_error": result["test_error"],
        "threads": result["threads"],
        "torch_version": result["torch_version"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--grad", choices=fnn.PATHS, default="custom", help="fnn's gradient path")
    parser.add_argument("--json", metavar="PATH")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    _peer_torch.import_torch()  # a clear error now if torch is missing
    data = fnn.data.load("mnist")
    runs = {"fnn": [], "torch": []}
    for repeat in range(args.repeats):
        runs["fnn"].append(run_fnn(data, args.epochs, args.grad))
        runs["torch"].append(run_torch(data, args.epochs))
        print(
            f"round {repeat + 1}: fnn {runs['fnn'][-1]['wall_s']:.2f} s, torch {runs['torch'][-1]['wall_s']:.2f} s",
            flush=True,
        )
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    flop = recipe_flop(len(data.x_train), len(data.x_test), args.epochs)
    matmul = {
        name: {"xla": xla_matmul_gflops(shape), "torch": torch_matmul_gflops(shape)} for name, shape in SHAPES.items()
    }
    step_shapes = [matmul[name]["xla"] for name in list(SHAPES)[:3]]
    result = {
        **device_fields(),
        "torch_version": runs["torch"][0]["torch_version"],
        "torch_threads": runs["torch"][0]["threads"],
        "grad": args.grad,
        "epochs": args.epochs,
        "runs": runs,
        "wall_s_median": wall,
        "ratio_fnn_to_torch": wall["fnn"] / wall["torch"],
        "recipe_gflop": flop / 1e9,
        "achieved_gflops": {name: flop / w / 1e9 for name, w in wall.items()},
        "matmul_gflops": matmul,
        "fnn_fraction_of_xla_matmul_at_recipe_shapes": flop / wall["fnn"] / 1e9 / statistics.mean(step_shapes),
        "fnn_floor_s_at_xla_matmul_speed": flop / 1e9 / statistics.mean(step_shapes),
    }
    print()
    print(
        markdown_table(
            ["run", "wall s (median)", "GFLOP/s achieved", "final test error"],
            [
                [
                    name,
                    f"{wall[name]:.2f}",
                    f"{result['achieved_gflops'][name]:.0f}",
                    f"{100 * runs[name][-1]['test_error']:.2f}%",
                ]
                for name in runs
            ],
        )
    )
    print(f"\nratio fnn / torch: {result['ratio_fnn_to_torch']:.2f}")
    print(
        markdown_table(
            ["matmul", "XLA GFLOP/s", "torch GFLOP/s"],
            [[k, f"{v['xla']:.0f}", f"{v['torch']:.0f}"] for k, v in matmul.items()],
        )
    )
    print(
        f"\nfnn reaches {100 * result['fnn_fraction_of_xla_matmul_at_recipe_shapes']:.0f}% of XLA's matmul speed at "
        f"the recipe's shapes "
        f"(a run doing only those matmuls would take {result['fnn_floor_s_at_xla_matmul_speed']:.1f} s)"
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
