"""Callbacks: parts that plug into :func:`fnn.fit`'s loop, each knowing when it runs.

The loop owns a :class:`Run` (where training stands: the state on the
devices, the epoch and step, the history) and calls every callback's hooks:

- ``on_begin(run)``: once, before the first epoch is compiled (a checkpoint
  restores the run here);
- ``on_resume(run)``: once, after every ``on_begin``, when the run continues
  from a restored history: a callback whose decisions follow from the
  history (early stopping) makes them again here, so a run resumed after it
  stopped early stays stopped;
- ``on_steps(run)``: within an epoch, after every ``every_steps`` steps (the
  loop cuts the epoch's compiled scan at those steps);
- ``on_epoch_end(run, row)``: after each epoch, ``row`` being the epoch's
  :meth:`fnn.History.rows` entry; setting ``run.stop = True`` ends training
  after this epoch;
- ``on_end(run)``: once, after the last epoch when training ends normally;
- ``close()``: always, on every exit path (an exception, ``KeyboardInterrupt``
  included), to release what the callback holds.

As Keras callbacks and CommonLoopUtils' periodic actions, a new behaviour
(early stopping, a metrics logger, a profiler) is a new callback, not an edit
to ``fit``. A plain function ``f(row)`` passed in ``callbacks`` is called
after each epoch.

A callback keeps no progress of its own between runs: what it decides
follows from the run (its history, which a checkpoint holds), so a resumed
run decides as the uninterrupted one, and one callback object can serve
several ``fit`` calls, each starting fresh in ``on_begin``.
"""

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

from tqdm.auto import tqdm

from fnn._errors import CheckpointError, InputError, ShardingWarning, TrainingStalled
from fnn._numbers import positive_int, real
from fnn.checkpoint import Checkpoints
from fnn.loop._config import differences

__all__ = ["Callback", "Checkpointing", "EarlyStopping", "EpochFunction", "ProgressBar", "Run"]


@dataclasses.dataclass
class Run:
    """Where a training run stands; the loop and its callbacks read and update it.

    Attributes:
      configure: ``() -> config``, computed once on first use (see :attr:`config`).
      state: what the devices carry from step to step, a
        :class:`fnn.train.TrainState` (``params``, ``opt_state``,
        ``model_state``, ``step``, the run's ``key``).
      epochs: the epoch to stop after (the total, counting restored ones).
      steps_per_epoch: optimizer steps per epoch (the last one may be smaller).
      epoch: the epoch being trained, from 1.
      step: the steps of ``epoch`` done so far.
      history: one row per finished epoch (:meth:`fnn.History.rows`).
      stop: set by a callback to end training after the current epoch.
      last_checkpoint: a description of the newest checkpoint saved or
        restored (``None`` if none), named when training diverges.
      data_state: the position of a streamed run's reader within the epoch
        (JSON, ``None`` between epochs and for data in arrays), which
        checkpoints keep.
      epoch_sums: the epoch's running sums on the devices (the training metrics
        so far, the divergence watch), reset each epoch.
      layout: how the state lies on the devices, ``{"devices": n, "sharding":
        fit's sharding}`` (a name of ``fnn.parallel.LAYOUTS`` or rules), which
        checkpoints keep.
    """

    configure: Callable
    state: dict
    epochs: int
    steps_per_epoch: int
    epoch: int = 1
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    stop: bool = False
    last_checkpoint: str | None = None
    data_state: dict | None = None
    epoch_sums: dict | None = None
    layout: dict | None = None

    @functools.cached_property
    def config(self):
        """The run's configuration (every setting of the model, the optimizer, the loss, the path, the batch size,
        ...), JSON-ready; a checkpoint refuses to resume a run of another (see :attr:`fnn.History.config`)."""
        return self.configure()

    @property
    def steps_done(self):
        """The optimizer steps done since the run began, ``(epoch - 1) * steps_per_epoch + step``."""
        return (self.epoch - 1) * self.steps_per_epoch + self.step


class Callback:
    """A part of the training loop; override the hooks you need (see the module doc).

    ``every_steps``: how often, in steps within an epoch, :meth:`on_steps`
    runs (``None``: never).
    """

    every_steps: int | None = None

    def on_begin(self, run):
        """Before the first epoch."""

    def on_resume(self, run):
        """After every ``on_begin``, when the run continues from a restored history (``run.history`` not empty)."""

    def on_steps(self, run):
        """After every ``every_steps`` steps within an epoch (not at its end)."""

    def on_epoch_end(self, run, row):
        """After each epoch; ``row`` is its history row."""

    def on_end(self, run):
        """After the last epoch, when training ends normally."""

    def close(self):
        """Releases what the callback holds; called on every exit path."""


class EpochFunction(Callback):
    """Calls ``fn(row)`` after each epoch (what a plain function in ``callbacks`` becomes)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_epoch_end(self, run, row):
        self.fn(row)


class ProgressBar(Callback):
    """A ``tqdm`` bar over the epochs, showing the train loss and test error; ``None`` shows it only on a terminal."""

    def __init__(self, enabled=None):
        self.enabled = enabled
        self.bar = None

    def on_begin(self, run):
        self.bar = tqdm(
            total=run.epochs, initial=run.epoch - 1, desc="epochs", unit="epoch", disable=_tqdm_disable(self.enabled)
        )

    def on_epoch_end(self, run, row):
        shown = {name: f"{row[name]:.4f}" for name in ("train_loss", "test_err") if name in row}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _tqdm_disable(enabled):
    """tqdm's ``disable``: ``None`` means "only on a terminal"."""
    return None if enabled is None else not enabled


class StallWatch(Callback):
    """Warns (:class:`fnn.TrainingStalled`, one line) when the first epoch ends at the chance level: the test loss
    within :data:`MARGIN` of the loss of outputs that ignore the inputs (the train loss no lower), and the test error
    no better than always
    answering the most frequent class (less :data:`MARGIN`). A network whose units all died (too large a step) or
    that collapsed to one answer trains on silently otherwise. ``fit`` adds one to every run of a loss with an error
    rate; ``chance() -> (loss, error or None)`` gives the levels (``chance`` ``None``: nothing to watch)."""

    #: How close to the chance level (a fraction of its loss, and of the error rate) a run must stay to be stalled.
    MARGIN = 0.01

    def __init__(self, chance):
        self.chance = chance

    def on_epoch_end(self, run, row):
        if self.chance is None or row["epoch"] != 1:
            return
        loss, error = self.chance()
        at_chance = abs(row["test_loss"] - loss) <= self.MARGIN * loss and row["train_loss"] >= (1 - self.MARGIN) * loss
        if at_chance and (error is None or row["test_err"] >= error - self.MARGIN):
            warnings.warn(
                f"fnn.fit: after epoch 1 the loss is still at the chance level (train {row['train_loss']:.4g}, test "
                f"{row['test_loss']:.4g}; outputs that ignore the inputs score {loss:.4g}): the model is not "
                "learning. Try a smaller step (a tenth, or optax.adam(1e-3)), or check the data and the labels",
                TrainingStalled,
                stacklevel=4,  # the caller of fit
            )


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    The rule is a function of the run's history alone: an epoch *improves*
    when its value is below ``best - min_delta``, ``best`` being the lowest
    value of the earlier improving epochs (``inf`` before the first; a NaN
    never improves); training stops after the first epoch ``e`` with
    ``e - (last improving epoch, or 0 if none) >= patience``. So a run resumed
    from a checkpoint stops where the uninterrupted run stops, a run resumed
    after it stopped early trains no further, and one object can serve
    several runs.

    Args:
      monitor: a history column, ``"test_loss"`` by default; lower is better.
        Train on :meth:`fnn.data.Dataset.validation` so that the test split
        it watches is a validation split, not the test set.
      patience: epochs without improvement to allow.
      min_delta: the least decrease that counts as an improvement.

    Attributes:
      best, best_epoch: the best value of the current (or last) run and its
        epoch (``inf`` and ``None`` before an epoch improves).
    """

    def __init__(self, monitor="test_loss", *, patience=3, min_delta=0.0):
        patience = positive_int("EarlyStopping", "patience", patience)
        self.min_delta = real("EarlyStopping", "min_delta", min_delta, within=">= 0", ok=lambda d: d >= 0)
        self.monitor, self.patience = monitor, patience
        self.best, self.best_epoch = math.inf, None

    def on_begin(self, run):
        self.best, self.best_epoch = math.inf, None

    def on_resume(self, run):
        run.stop = self._judge(run.history)

    def on_epoch_end(self, run, row):
        run.stop = run.stop or self._judge(run.history)

    def _judge(self, history):
        """Whether the rule stops training after the last epoch of ``history``; sets ``best``, ``best_epoch``."""
        self.best, self.best_epoch = math.inf, None
        for row in history:
            if self.monitor not in row:
                raise InputError(f"EarlyStopping: no column {self.monitor!r} in the history; it has {sorted(row)}")
            if row[self.monitor] < self.best - self.min_delta:
                self.best, self.best_epoch = row[self.monitor], row["epoch"]
        return bool(history) and history[-1]["epoch"] - (self.best_epoch or 0) >= self.patience


class Checkpointing(Callback):
    """Saves the run with Orbax (:mod:`fnn.checkpoint`) and resumes it, bit for bit.

    A checkpoint holds the parameters, the optimizer state, the model's state, the run's key, the
    epoch's running sums, the epoch and step reached (with a stream, the reader's
    position too), the history so far and the run's configuration. Written to a temporary folder and renamed when whole,
    so a run killed at any moment keeps its last good checkpoint.

    Args:
      directory: the folder (created if missing). It must be empty of
        checkpoints unless ``resume``.
      every_epochs: save after every this many epochs (and after the last).
      every_steps: also save after every this many steps within an epoch.
      keep: how many checkpoints to keep.
      resume: continue from the newest checkpoint in ``directory``, if any;
        the run's configuration must match the checkpoint's.
    """

    def __init__(self, directory, *, every_epochs=1, every_steps=None, keep=3, resume=False):
        every_epochs, keep = (
            positive_int("Checkpointing", n, v) for n, v in (("every_epochs", every_epochs), ("keep", keep))
        )
        if every_steps is not None:
            every_steps = positive_int("Checkpointing", "every_steps", every_steps)
        self.directory, self.every_epochs, self.every_steps = directory, every_epochs, every_steps
        self.keep, self.resume = keep, bool(resume)
        self.checkpoints = None
        self._saved_at = None

    def on_begin(self, run):
        self._saved_at = None
        self.checkpoints = Checkpoints(self.directory, keep=self.keep)
        latest = self.checkpoints.latest()
        if latest is None:
            return
        if not self.resume:
            raise CheckpointError(
                f"{self.directory} already holds checkpoints (newest {latest}); pass "
                "Checkpointing(..., resume=True) to continue that run, or use an empty folder"
            )
        saved, meta = self.checkpoints.restore(latest, {"train": run.state, "epoch_sums": run.epoch_sums})
        differ = differences(meta["config"], run.config)
        if differ:
            raise CheckpointError(
                f"checkpoint {latest} in {self.directory} is from a different run; "
                + "; ".join(differ)
                + ". Resume with the same settings, or start this run in an empty folder"
            )
        saved_layout = meta.get("layout")
        if saved_layout is not None and "mesh" not in saved_layout:  # saved before layouts recorded the mesh
            saved_layout = {**saved_layout, "mesh": {"data": saved_layout["devices"]}}
        if saved_layout is not None and saved_layout != run.layout:
            warnings.warn(
                f"resuming checkpoint {latest} of {self.directory}, saved on {saved_layout['devices']} devices"
                f"{_mesh_shape(saved_layout)} ({saved_layout['sharding']}), on {run.layout['devices']}"
                f"{_mesh_shape(run.layout)} ({run.layout['sharding']}): the same run, its sums over each batch taken "
                "in another order",
                ShardingWarning,
                stacklevel=2,
            )
        run.state, run.epoch_sums = saved["train"], saved["epoch_sums"]
        run.epoch, run.step, run.history = meta["next_epoch"], meta["next_step"], meta["history"]
        run.data_state = meta.get("data_state")
        self._mark(run, latest)

    def on_steps(self, run):
        self._save(run, run.epoch, run.step)

    def on_epoch_end(self, run, row):
        if run.epoch % self.every_epochs == 0 or run.epoch == run.epochs:
            self._save(run, run.epoch + 1, 0)

    def on_end(self, run):
        if self._saved_at != run.steps_done:  # stopped early, between scheduled saves
            self._save(run, run.epoch + 1, 0)

    def close(self):
        if self.checkpoints is not None:
            self.checkpoints.close()

    def _save(self, run, next_epoch, next_step):
        meta = {"next_epoch": next_epoch, "next_step": next_step, "history": run.history, "config": run.config}
        meta["layout"] = run.layout
        if next_step:
            meta["data_state"] = run.data_state
        self.checkpoints.save(run.steps_done, {"train": run.state, "epoch_sums": run.epoch_sums}, meta)
        self._mark(run, run.steps_done)

    def _mark(self, run, number):
        self._saved_at = number
        run.last_checkpoint = f"{number} in {self.directory}"


def _mesh_shape(layout):
    """`` as {'data': 4, 'model': 2}`` for a layout on a mesh of several axes, else nothing."""
    mesh = layout.get("mesh", {})
    return f" as {mesh}" if len(mesh) > 1 else ""
