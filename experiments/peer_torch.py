"""The lecture notes' own two-layer MNIST code, in PyTorch with manual gradients.

Reproduces the notes' experiment (the two-layer network and its recipe) as the notes
wrote it, as the peer that fnn's JAX run is timed against: ``relu(X W1) W2``
with no biases, ``W1 = randn(784, 500) * sqrt(2/784)``,
``W2 = randn(500, 10) * sqrt(2/500)``, SGD with step 0.5 on batches of 100 in
data order, 10 epochs, gradients written out by hand (no autograd):

    Z1 = relu(X W1);  S = softmax(Z1 W2);  G2 = S - onehot(y)
    G1 = 1[Z1 > 0] * (G2 W2^T)
    W1 -= lr X^T G1 / m;  W2 -= lr Z1^T G2 / m

After each epoch it evaluates mean softmax cross-entropy and error on the full
train and test sets. Wall time covers the epochs and their evaluation, not
data loading. The notes' code itself is ``experiments._peer_torch``; run
``python -m experiments.peer_torch --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments._common import cpu_description
from experiments._peer_torch import default_data_dir, import_torch, load_mnist, run

__all__ = ["main"]


def _print_row(row: dict) -> None:
    """Print one epoch as a row of the notes' table."""
    print(
        f"|  {row['epoch']:3d}  |   {row['train_loss']:.5f}  |  {row['test_loss']:.5f}  "
        f"|  {row['train_error']:.5f}  |  {row['test_error']:.5f}  |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: load MNIST, train, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m experiments.peer_torch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="folder with the four MNIST .gz IDX files (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads(N); default: torch's own choice"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args(argv)

    try:
        torch = import_torch()
        t0 = time.perf_counter()
        data = load_mnist(args.data_dir)
        load_s = time.perf_counter() - t0
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"peer_torch: error: {e}", file=sys.stderr)
        return 1

    print(
        f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, data loaded in {load_s:.2f} s"
    )
    print("| Epoch | Train Loss | Test Loss | Train Err | Test Err |")
    result = run(*data, epochs=args.epochs, seed=args.seed, threads=args.threads, on_epoch=_print_row)
    result = {**result, "load_s": load_s, "device": cpu_description()}
    print(
        f"{result['epochs']} epochs in {result['wall_s']:.2f} s wall ({result['threads']} threads), test error "
        f"{result['test_error']:.2%}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
