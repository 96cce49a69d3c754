"""fnn's errors: one base class, so that a program catches every error fnn raises in one clause.

Each class also derives from the built-in exception its kind of mistake has
always raised (``ValueError``, ``TypeError``, ...), so ``except ValueError``
keeps working:

- :class:`InputError` (``ValueError``): a value fnn was given is wrong (a
  shape, a setting out of range, an unknown name);
- :class:`UsageError` (``TypeError``): fnn was called the wrong way (a wrong
  type, a missing keyword, a constructor passed where a module was expected);
- :class:`DataError` (an :class:`InputError`): the data cannot train this model;
- :class:`DatasetError` and :class:`NetworkError` (``RuntimeError``): a
  dataset cannot be loaded;
- :class:`CheckpointError` (``RuntimeError``): a checkpoint folder cannot be
  used for this run;
- :class:`TrainingDiverged` (``FloatingPointError``): the loss diverged;
- :class:`StructureError` (an :class:`InputError`): a rule returned a
  gradient of the wrong pytree structure;
- :class:`CheckFailed` (``AssertionError``): a gradient check failed (the
  ``assert_*`` forms of :mod:`fnn.testing`).

Every message says what was wrong, what was expected and how to fix it.

Beside the errors: :class:`TrainingInterrupted` is the ``KeyboardInterrupt``
that ends a training run (not an error: ``except Exception`` does not catch
it), and two warnings say what training cannot decide alone:
:class:`TrainingStalled` (the loss stayed at the chance level) and
:class:`UnidentifiedWarning` (a part of a run's configuration that a resume
cannot compare).
"""


class Error(Exception):
    """The base class of every error fnn raises."""


class InputError(Error, ValueError):
    """A value fnn was given is wrong: the message names it, what was expected, and the fix."""


class UsageError(Error, TypeError):
    """fnn was called the wrong way (a wrong type, a missing keyword); the message names the right call."""


class DataError(InputError):
    """The data cannot train this model; the message says what is wrong and what was expected."""


class DatasetError(Error, RuntimeError):
    """A dataset cannot be loaded; the message says what is wrong and how to fix it."""


class NetworkError(DatasetError):
    """A dataset must be downloaded, but the network is unreachable."""


class CheckpointError(Error, RuntimeError):
    """A checkpoint folder cannot be used for this run; the message says why."""


class TrainingDiverged(Error, FloatingPointError):
    """The training loss became NaN or infinite, or exploded; the message names the epoch and the step."""


class StructureError(InputError):
    """A gradient whose pytree structure is not that of ``(params, x)``."""


class CheckFailed(Error, AssertionError):
    """A gradient check failed; the message is the check's report."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message names the last checkpoint and how to resume from it."""


class TrainingStalled(UserWarning):
    """The loss stayed at the chance level through the first epoch: the model is not learning."""


class ShardingWarning(UserWarning):
    """How the arrays lie on the devices is not what was asked: a large array stays whole (no axis divides evenly),
    an axis name has no rule or its rule cannot split it, or a run resumes on another layout than it was saved
    with."""


class UnidentifiedWarning(UserWarning):
    """Part of a run's configuration holds state that cannot be read, so a resumed run cannot tell if it changed."""
