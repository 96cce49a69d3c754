"""The precision of matrix products and convolutions: full in fnn's checks, the user's choice in training.

On Ampere and Hopper GPUs JAX's default precision for float32 products lets
cuBLAS and cuDNN compute in TF32 (a 10-bit mantissa, relative error about
``1e-3``); on a CPU products are full float32 whatever the setting. The
policy:

- **checks and comparisons** (``fnn.testing``'s checkers, ``compare_vjp``,
  ``fnn.inspect``'s ``compare_paths``, ``wrong_rules`` and accuracy) trace
  everything inside :func:`full`: every product at
  ``jax.lax.Precision.HIGHEST``, so three paths that agree in float32 on a
  CPU agree on a GPU too, and a report says the precision it ran at;
- **training** runs at the backend's default unless ``precision=`` is given
  (``fit``, the training steps, ``value_and_grad``, ``jvp``): one of
  :data:`SETTINGS`, applied with ``jax.default_matmul_precision`` while the
  step is traced, so it shows in the compiled program's
  ``precision_config``.
"""

import contextlib
import functools

import jax

from fnn._errors import InputError

__all__ = ["FULL", "SETTINGS", "at_full", "check", "full", "training"]

#: The precision fnn's checks run at.
FULL = "highest"
#: What ``precision=`` takes (``jax.default_matmul_precision``'s names): ``"default"`` (the backend's: TF32 for
#: float32 on recent GPUs), ``"high"``/``"tensorfloat32"``, ``"highest"``/``"float32"`` (full float32), and
#: ``"bfloat16"`` (one bfloat16 pass); ``None`` leaves the setting of the caller's context.
SETTINGS = ("default", "high", "highest", "tensorfloat32", "float32", "bfloat16")


def check(owner, precision):
    """``precision`` if it is ``None`` or one of :data:`SETTINGS`, else :class:`fnn.InputError` naming them."""
    if precision is not None and precision not in SETTINGS:
        raise InputError(
            f"{owner}: precision must be None (the backend's default) or one of {', '.join(map(repr, SETTINGS))}, "
            f"got {precision!r}"
        )
    return precision


def full():
    """A context in which every product traced runs at full precision (``"highest"``)."""
    return jax.default_matmul_precision(FULL)


def at_full(fn):
    """``fn`` run inside :func:`full`: a check or comparison whose every product is at full precision."""

    @functools.wraps(fn)
    def at_full_precision(*args, **kwargs):
        with full():
            return fn(*args, **kwargs)

    return at_full_precision


def training(precision):
    """A context for tracing a training step at ``precision`` (a no-op for ``None``)."""
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)
