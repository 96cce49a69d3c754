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
    and evaluation); ``compile_s`` the time from the call to the first step
    (the checks, and the epoch's functions compiled together, each in a
    thread of its own); ``compile_seconds`` each function's own compile time
    (``{"end": ..., "steps[600]": ...}``);
    ``wall_s`` the whole run, compilation included. A resumed run's history
    starts with the epochs restored from the checkpoint. :attr:`config` is
    the run's configuration.

    Set against the machine: :attr:`epoch_flops` is the work of each epoch in
    model FLOPs (its matrix products and convolutions, counted from the
    program: :func:`fnn.bench.model_flops`), :attr:`flops_per_s` the rate each
    epoch achieved, and :meth:`machine_fraction` that rate's fraction of a
    limit you give it (:func:`fnn.bench.machine_rate` of :attr:`work`'s dtype
    and precision).
    """

    train_loss: np.ndarray
    test_loss: np.ndarray
    train_err: np.ndarray | None
    test_err: np.ndarray | None
    epoch_s: np.ndarray
    compile_s: float
    wall_s: float
    compile_seconds: dict = dataclasses.field(default_factory=dict)
    configure: Callable = dataclasses.field(default=dict, repr=False, compare=False)
    count_work: Callable = dataclasses.field(default=lambda: None, repr=False, compare=False)

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
    def work(self):
        """One epoch's model FLOPs as a :class:`fnn.bench.FlopCount` (``flops``, the dtype and precision carrying
        them, and a ``note`` when they are unknown), counted from the epoch's programs on first use; ``None``
        for a history not made by ``fit``."""
        return self.count_work()

    @property
    def epoch_flops(self):
        """The model FLOPs of each epoch, ``[epochs]``: every training step and the epoch's evaluation (``nan``
        where the program does not fix them: :attr:`work`'s note says why)."""
        flops = float("nan") if self.work is None else self.work.flops
        return np.full(len(self.epoch_s), flops)

    @property
    def flops_per_s(self):
        """The rate each epoch achieved, ``epoch_flops / epoch_s`` (FLOP/s), ``[epochs]``."""
        return self.epoch_flops / self.epoch_s

    def machine_fraction(self, rate):
        """Each epoch's :attr:`flops_per_s` as a fraction of ``rate``, ``[epochs]``: a
        :class:`fnn.bench.MachineRate` (``fnn.bench.machine_rate(history.work.dtype)``) or a number of FLOP/s.
        Training measures no limit itself."""
        return self.flops_per_s / float(getattr(rate, "flops_per_s", rate))

    def rows(self):
        """One dict per epoch: ``{"epoch": 1, "train_loss": ..., ...}``."""
        columns = [c for c in COLUMNS if getattr(self, c) is not None]
        return [
            {"epoch": i + 1, **{c: float(getattr(self, c)[i]) for c in columns}, "epoch_s": float(self.epoch_s[i])}
            for i in range(len(self.train_loss))
        ]

    @classmethod
    def from_rows(cls, rows, *, compile_s, wall_s, compile_seconds=None, configure=dict, count_work=lambda: None):
        """The history of the epochs in ``rows`` (dicts as :meth:`rows` makes them); ``configure() -> config``,
        ``count_work() -> one epoch's`` :class:`fnn.bench.FlopCount`."""
        has = {c: bool(rows) and c in rows[0] for c in COLUMNS}
        columns = {c: np.array([row[c] for row in rows]) if has[c] or c.endswith("loss") else None for c in COLUMNS}
        return cls(
            **columns,
            epoch_s=np.array([row["epoch_s"] for row in rows]),
            compile_s=compile_s,
            wall_s=wall_s,
            compile_seconds=dict(compile_seconds or {}),
            configure=configure,
            count_work=count_work,
        )
