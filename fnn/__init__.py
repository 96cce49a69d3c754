"""fnn: functional neural networks on JAX, differentiated three ways.

A network is a composition of modules (:mod:`fnn.module`), each a hand-written
forward function and the notes' backward function. From them come three
gradient paths, switched by one argument (:data:`PATHS`):

- ``"autodiff"``: ``jax.grad`` over the plain ``jax.numpy`` forward code;
- ``"custom"``: ``jax.grad`` over rules built from each module's backward
  function (forward mode through them uses its transpose: :func:`jvp`);
- ``"backprop"``: the notes' explicit reverse sweep, no JAX autodiff.

Layers and models are in :mod:`fnn.nn`, losses in :mod:`fnn.losses`,
op-level functions in :mod:`fnn.ops`, training in :mod:`fnn.train` and
:func:`fit`; modules with state or randomness (batch norm, dropout) run in
a context (:mod:`fnn.context`). Every error fnn raises derives from
:class:`Error`, so one ``except fnn.Error`` clause catches them all.
"""

__version__ = "0.2.0"

from fnn import (
    bench,
    checkpoint,
    context,
    data,
    inspect,
    loop,
    losses,
    metrics,
    module,
    nn,
    ops,
    parallel,
    testing,
    train,
    validate,
)
from fnn._compile import use_compilation_cache
from fnn._errors import (
    CheckFailed,
    CheckpointError,
    DataError,
    DatasetError,
    Error,
    InputError,
    NetworkError,
    ShardingWarning,
    StructureError,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStalled,
    UnidentifiedWarning,
    UsageError,
)
from fnn._paths import PATHS, jvp, value_and_grad
from fnn.loop import History, fit

__all__ = [
    "PATHS",
    "CheckFailed",
    "CheckpointError",
    "DataError",
    "DatasetError",
    "Error",
    "History",
    "InputError",
    "NetworkError",
    "StructureError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingStalled",
    "ShardingWarning",
    "UnidentifiedWarning",
    "UsageError",
    "bench",
    "checkpoint",
    "__version__",
    "context",
    "data",
    "fit",
    "inspect",
    "jvp",
    "losses",
    "loop",
    "metrics",
    "module",
    "nn",
    "ops",
    "parallel",
    "testing",
    "train",
    "use_compilation_cache",
    "validate",
    "value_and_grad",
]
