"""The per-epoch record of a training run."""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from fnn import bench

#: The metrics of every epoch, in the order the notes print them.
COLUMNS = ("train_loss", "test_loss", "train_err", "test_err")


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch metrics of :func:`fnn.fit`, each a NumPy array of shape ``[epochs]``.

    ``train_err`` and ``test_err`` are ``None`` when the loss has no error
    rate (e.g. ``mse``). ``epoch_s`` is the wall time of each epoch (training
    and evaluation); ``compile_s`` the time to compile the epoch's functions;
    ``wall_s`` the whole run, compilation included. A resumed run's history
    starts with the epochs restored from the checkpoint. :attr:`config` is
    the run's configuration.

    Set against the machine: :attr:`epoch_flops` is the work of each epoch as
    XLA counts it, :attr:`flops_per_s` the rate each epoch achieved, and
    :attr:`machine_fraction` that rate's fraction of the machine's
    matrix-product rate (:func:`fnn.bench.machine_rate`).
    """

    train_loss: np.ndarray
    test_loss: np.ndarray
    train_err: np.ndarray | None
    test_err: np.ndarray | None
    epoch_s: np.ndarray
    compile_s: float
    wall_s: float
    configure: Callable = dataclasses.field(default=dict, repr=False, compare=False)
    count_flops: Callable = dataclasses.field(default=lambda: float("nan"), repr=False, compare=False)

    @functools.cached_property
    def config(self):
        """The run's configuration as a dict of JSON-ready values.

        Every setting of the model and the loss, the path, the batch size, the
        number of training examples and their order, the training metrics, the
        augmentation, the optimizer (by its first updates on a fixed probe),
        the epochs and the devices; what a checkpoint compares before resuming.
        Computed on first use.
        """
        return self.configure()

    @functools.cached_property
    def epoch_flops(self):
        """XLA's FLOP count of each epoch, ``[epochs]``: every training step and the epoch's evaluation.

        Counted from the lowered (loop-free) step and evaluation functions, on first use.
        """
        return np.full(len(self.epoch_s), float(self.count_flops()))

    @property
    def flops_per_s(self):
        """The rate each epoch achieved, ``epoch_flops / epoch_s`` (FLOP/s), ``[epochs]``."""
        return self.epoch_flops / self.epoch_s

    @property
    def machine_fraction(self):
        """Each epoch's :attr:`flops_per_s` as a fraction of :func:`fnn.bench.machine_rate` (measured once per
        machine, then cached), ``[epochs]``."""
        achieved = self.flops_per_s
        return achieved / bench.limit(float(np.max(achieved, initial=0.0))).flops_per_s

    def rows(self):
        """One dict per epoch: ``{"epoch": 1, "train_loss": ..., ...}``."""
        columns = [c for c in COLUMNS if getattr(self, c) is not None]
        return [
            {"epoch": i + 1, **{c: float(getattr(self, c)[i]) for c in columns}, "epoch_s": float(self.epoch_s[i])}
            for i in range(len(self.train_loss))
        ]

    @classmethod
    def from_rows(cls, rows, *, compile_s, wall_s, configure=dict, count_flops=lambda: float("nan")):
        """The history of the epochs in ``rows`` (dicts as :meth:`rows` makes them); ``configure() -> config``,
        ``count_flops() -> one epoch's FLOPs``."""
        has = {c: bool(rows) and c in rows[0] for c in COLUMNS}
        columns = {c: np.array([row[c] for row in rows]) if has[c] or c.endswith("loss") else None for c in COLUMNS}
        return cls(
            **columns,
            epoch_s=np.array([row["epoch_s"] for row in rows]),
            compile_s=compile_s,
            wall_s=wall_s,
            configure=configure,
            count_flops=count_flops,
        )
