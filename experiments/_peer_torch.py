"""The lecture notes' two-layer MNIST code in PyTorch with manual gradients: the peer fnn is timed against.

The notes' experiment (the two-layer network and its recipe) as the notes wrote it:
``relu(X W1) W2`` with no biases, ``W1 = randn(784, 500) * sqrt(2/784)``,
``W2 = randn(500, 10) * sqrt(2/500)``, SGD with step 0.5 on batches of 100 in
data order, gradients written out by hand (no autograd):

    Z1 = relu(X W1);  S = softmax(Z1 W2);  G2 = S - onehot(y)
    G1 = 1[Z1 > 0] * (G2 W2^T)
    W1 -= lr X^T G1 / m;  W2 -= lr Z1^T G2 / m

:func:`run` trains it on NumPy arrays (``experiments.peer_torch`` from the
command line, ``experiments.speed_vs_torch`` beside fnn); :func:`import_torch`
imports PyTorch or names the command that installs it (``peer_pooled`` too).
"""

from __future__ import annotations

import gzip
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["default_data_dir", "import_torch", "load_idx", "load_mnist", "run"]

_REPO = Path(__file__).resolve().parents[1]
_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_INSTALL_HINT = "pip install -e '.[torch]'  (or: pip install torch==2.13.0)"


def import_torch():
    """Import torch, or fail with the command that installs it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"PyTorch is not installed; install it with: {_INSTALL_HINT}") from e
    return torch


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one gzip-compressed IDX file of uint8 data into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX data type 0x{raw[2]:02x}, expected 0x08 (uint8)")
    ndim = raw[3]
    shape = tuple(np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).tolist())
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape}, file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def default_data_dir() -> Path:
    """$FNN_DATASETS_DIR/mnist if set, else <repo>/../shared/datasets/mnist."""
    root = os.environ.get("FNN_DATASETS_DIR")
    return Path(root) / "mnist" if root else _REPO.parent / "shared" / "datasets" / "mnist"


def load_mnist(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST as (x_train, y_train, x_test, y_test): x float32 in [0, 1], (N, 784); y int64."""
    data_dir = Path(data_dir)
    missing = [name for name in _MNIST_FILES.values() if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing from {data_dir}: {', '.join(missing)} (pass --data-dir or set FNN_DATASETS_DIR)"
        )
    arrays = {key: load_idx(data_dir / name) for key, name in _MNIST_FILES.items()}
    x_train, x_test = (arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255.0 for k in ("x_train", "x_test"))
    y_train, y_test = (arrays[k].astype(np.int64) for k in ("y_train", "y_test"))
    return x_train, y_train, x_test, y_test


def _evaluate(torch, X, y, W1, W2) -> tuple[float, float]:
    """Mean softmax cross-entropy and error rate of relu(X W1) W2 on (X, y)."""
    H = torch.relu(X @ W1) @ W2
    loss = (torch.logsumexp(H, dim=1) - H.gather(1, y[:, None])[:, 0]).mean()
    err = (H.argmax(dim=1) != y).float().mean()
    return loss.item(), err.item()


def _sgd_epoch(torch, X, y, W1, W2, lr: float, batch_size: int) -> None:
    """One epoch of the notes' manual-gradient SGD, updating W1 and W2 in place."""
    k = W2.shape[1]
    for i in range(0, X.shape[0], batch_size):
        Xb, yb = X[i : i + batch_size], y[i : i + batch_size]
        m = Xb.shape[0]
        Z1 = torch.relu(Xb @ W1)
        S = torch.softmax(Z1 @ W2, dim=1)
        G2 = S - torch.nn.functional.one_hot(yb, k).to(S.dtype)
        G1 = (Z1 > 0) * (G2 @ W2.T)
        W1 -= lr * Xb.T @ G1 / m
        W2 -= lr * Z1.T @ G2 / m


def run(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 10,
    lr: float = 0.5,
    batch_size: int = 100,
    hidden: int = 500,
    seed: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train the notes' two-layer net on numpy arrays; return timings, errors and per-epoch history.

    ``device`` is torch's (``"cuda"`` for a GPU): the arrays and weights are
    placed there before the clock starts; the weights are drawn on the CPU,
    so every device starts from the same values.
    """
    torch = import_torch()
    if threads is not None:
        torch.set_num_threads(threads)
    X = torch.as_tensor(np.asarray(x_train, dtype=np.float32).reshape(len(x_train), -1), device=device)
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=device)
    Xt = torch.as_tensor(np.asarray(x_test, dtype=np.float32).reshape(len(x_test), -1), device=device)
    yt = torch.as_tensor(np.asarray(y_test, dtype=np.int64), device=device)
    n, k = X.shape[1], int(max(y.max().item(), yt.max().item())) + 1

    torch.manual_seed(seed)
    W1 = (torch.randn(n, hidden) * math.sqrt(2 / n)).to(device)
    W2 = (torch.randn(hidden, k) * math.sqrt(2 / hidden)).to(device)

    history = []
    with torch.no_grad():
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            _sgd_epoch(torch, X, y, W1, W2, lr, batch_size)
            train_loss, train_err = _evaluate(torch, X, y, W1, W2)
            test_loss, test_err = _evaluate(torch, Xt, yt, W1, W2)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "train_error": train_err,
                "test_error": test_err,
                "elapsed_s": time.perf_counter() - start,
            }
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
        wall_s = time.perf_counter() - start

    last = history[-1] if history else {"train_error": None, "test_error": None}
    return {
        "framework": "torch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": epochs,
        "wall_s": wall_s,
        "test_error": last["test_error"],
        "train_error": last["train_error"],
        "history": history,
    }
