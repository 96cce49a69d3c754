"""Training: :func:`fit`, an epoch's optimizer steps compiled as one ``jax.lax.scan``, on one device or many.

The data is checked on the host (:mod:`fnn.validate`), then placed on the
devices once. Each epoch is two compiled calls: the scan over its full
batches (cut into segments where a callback runs every N steps), and one that
trains the last smaller batch, if any, and evaluates the test set. The
training metrics are the notes': each batch's loss and error before its
update, from the forward pass the gradient needs, averaged over the epoch
(``train_metrics="full"`` re-evaluates the training set instead). The host
syncs once per epoch, to report metrics.

Every step watches its loss: the first step whose loss is not finite, or
explodes (see ``divergence_factor``), is carried through the scan (no host
sync per step) and stops training with :class:`fnn.TrainingDiverged`, naming the
epoch and the step.

With several devices (:mod:`fnn.parallel`) each batch is split over them and
the parameters are replicated; XLA reduces the gradients. Checkpoints,
progress bars and per-epoch functions are :class:`Callback` objects plugged
into the loop; :class:`Checkpointing` resumes a run to the same parameters
and history, bit for bit, as an uninterrupted run on the same machine.

One job to a file: ``_fit`` (the loop), ``_epoch`` (the compiled epoch),
``_callbacks``, ``_history``.
"""

from fnn._errors import TrainingDiverged
from fnn.loop._callbacks import Callback, Checkpointing, EarlyStopping, EpochFunction, ProgressBar, Run
from fnn.loop._epoch import evaluate, steps_per_epoch
from fnn.loop._fit import fit
from fnn.loop._history import History

__all__ = [
    "Callback",
    "Checkpointing",
    "EarlyStopping",
    "EpochFunction",
    "History",
    "ProgressBar",
    "Run",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "steps_per_epoch",
]
