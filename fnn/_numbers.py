"""Numeric settings (a rate, a step size, an ``eps``, a size) checked once, whatever kind of scalar the caller passed.

A setting may come as a Python ``int``/``float``, a NumPy scalar
(``np.float32(0.5)``) or a concrete 0-d NumPy or JAX array; each becomes a
Python ``float`` (:func:`real`) or ``int`` (:func:`positive_int`, only from
integers), so that the setting's own dtype never changes the dtype of a
computation. A ``bool``, a string, an array with axes or a traced value
is refused with a message that names the owner, the setting, what was
expected and what came.
"""

import numbers

import numpy as np

from fnn._errors import InputError, UsageError

__all__ = ["as_float", "as_int", "positive_int", "real"]


def real(owner, arg, value, *, within, ok):
    """``value`` as a Python float, if it is a real scalar for which ``ok(float)`` holds.

    Args:
      owner: who the setting belongs to, for the message (``"dropout"``).
      arg: the setting's name (``"rate"``).
      value: what the caller passed.
      within: the allowed values in words (``"in [0, 1)"``, ``"above 0"``).
      ok: ``float -> bool``, whether a value is allowed.

    Raises:
      TypeError: ``value`` is not a real scalar.
      ValueError: it is one, but ``ok`` refuses it.
    """
    number = as_float(value)
    if number is None:
        raise UsageError(f"{owner}: {arg} must be a real number {within}, got {_kind(value)} {value!r}")
    if not ok(number):
        raise InputError(f"{owner}: {arg} must be {within}, got {number!r}")
    return number


def positive_int(owner, arg, value):
    """``value`` as a Python int, if it is an integer scalar (see :func:`as_int`) of at least 1.

    Raises:
      ValueError: it is not (``"conv2d: n_out must be a positive int, got 2.5"``), of whatever type.
    """
    number = as_int(value)
    if number is None or number < 1:
        raise InputError(f"{owner}: {arg} must be a positive int, got {value if number is None else number!r}")
    return number


def as_float(value):
    """``float(value)`` for a real scalar (Python, NumPy or a concrete 0-d array), else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    array = _zero_d(value)
    if array is None or not (array.dtype.kind in "iuf" or array.dtype.name == "bfloat16"):
        return None
    return float(array)


def as_int(value):
    """``int(value)`` for an integer scalar (Python, NumPy or a concrete 0-d integer array), else ``None``.

    ``2.0`` is refused: a size given as a float is more likely a mistake than a whole number.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    array = _zero_d(value)
    return None if array is None or array.dtype.kind not in "iu" else int(array)


def _zero_d(value):
    """A concrete 0-d NumPy or JAX array as a NumPy array, else ``None`` (an array with axes, a traced value)."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")) or tuple(value.shape) != ():
        return None
    try:
        return np.asarray(value)  # a traced JAX value raises here
    except Exception:
        return None


def _kind(value):
    """The caller's type, for the message: ``str``, ``ndarray of shape (2,)``, ``Tracer``..."""
    shape = getattr(value, "shape", None)
    name = type(value).__name__
    return f"{name} of shape {tuple(shape)}" if shape not in (None, ()) else name
