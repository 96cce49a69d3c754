"""Op-level functions for users who write their own forward functions.

- :mod:`fnn.ops.autodiff`: ``jax.grad`` derives the rules from plain ``jax.numpy``.
- :mod:`fnn.ops.custom`: ops differentiated by the hand-written rules, in both modes.

Both provide the ops named in :data:`NAMES`, with identical signatures (each
op is written once, in ``fnn/ops/_define.py``). :func:`get` returns a set by its name.
"""

from fnn._errors import InputError, UsageError
from fnn.ops import autodiff, custom
from fnn.ops._define import NAMES

#: The op sets by name: ``{"autodiff": fnn.ops.autodiff, "custom": fnn.ops.custom}``.
OP_SETS = {"autodiff": autodiff, "custom": custom}


def get(ops):
    """Returns the op set named ``"custom"`` or ``"autodiff"``; an op set module is returned as is."""
    if isinstance(ops, str):
        try:
            return OP_SETS[ops]
        except KeyError:
            raise InputError(f"unknown op set {ops!r}; expected one of {sorted(OP_SETS)}") from None
    if ops not in OP_SETS.values():
        raise UsageError(f"ops must be fnn.ops.custom, fnn.ops.autodiff or their name, got {ops!r}")
    return ops


__all__ = ["NAMES", "OP_SETS", "autodiff", "custom", "get"]
