"""The per-epoch record of a training run."""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

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
    """

    train_loss: np.ndarray
    test_loss: np.ndarray
    train_err: np.ndarray | None
    test_err: np.ndarray | None
    epoch_s: np.ndarray
    compile_s: float
    wall_s: float
    configure: Callable = dataclasses.field(default=dict, repr=False, compare=False)

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

    def rows(self):
        """One dict per epoch: ``{"epoch": 1, "train_loss": ..., ...}``."""
        columns = [c for c in COLUMNS if getattr(self, c) is not None]
        return [
            {"epoch": i + 1, **{c: float(getattr(self, c)[i]) for c in columns}, "epoch_s": float(self.epoch_s[i])}
            for i in range(len(self.train_loss))
        ]

    @classmethod
    def from_rows(cls, rows, *, compile_s, wall_s, configure=dict):
        """The history of the epochs in ``rows`` (dicts as :meth:`rows` makes them); ``configure() -> config``."""
        has = {c: bool(rows) and c in rows[0] for c in COLUMNS}
        columns = {c: np.array([row[c] for row in rows]) if has[c] or c.endswith("loss") else None for c in COLUMNS}
        return cls(
            **columns,
            epoch_s=np.array([row["epoch_s"] for row in rows]),
            compile_s=compile_s,
            wall_s=wall_s,
            configure=configure,
        )
