"""Edge values: inputs at which a rule is delicate (a kink, an overflow, a degenerate row).

The module's own (``edge_values=`` of :func:`fnn.module.leaf` or
:func:`fnn.module.loss`) and the caller's (``edge_values=`` of the checker)
are each made into an input of the checked shape: a number or array is
broadcast to it, a function is called with it. At each, with the draw's
parameters and cotangents:

- in float64, the ``backprop`` and ``custom`` gradients must be finite
  everywhere and equal autodiff's (to the float64 tolerance) wherever
  autodiff's are finite;
- at every lower precision checked (that the module accepts), they must
  pass the ``dtype`` check's rule (:mod:`fnn.testing._precision`) at that input.
"""

import numpy as np

from fnn._errors import InputError
from fnn.testing._agreement import agreement
from fnn.testing._dtypes import rtol
from fnn.testing._precision import RULE_PATHS, accuracy, refuses
from fnn.testing._report import FAILED, PASSED, SKIPPED, Check

__all__ = ["edge_input", "edge_label", "edge_values"]


def edge_label(value):
    """A short name for an edge value: the number, ``array[2, 3]``, or the function's name."""
    if callable(value):
        return getattr(value, "__name__", repr(value))
    a = np.asarray(value)
    return repr(a.item()) if a.ndim == 0 else f"array{list(a.shape)}"


def edge_input(value, shape, dtype):
    """The input for an edge value: ``value(shape)`` for a function, else ``value`` broadcast to ``shape``."""
    if callable(value):
        made = np.asarray(value(shape))
        if made.shape != shape:
            raise InputError(f"edge value {edge_label(value)}: returned shape {made.shape}, expected {shape}")
    else:
        try:
            made = np.broadcast_to(np.asarray(value), shape)
        except ValueError:
            raise InputError(
                f"edge value {edge_label(value)}: shape {np.shape(value)} does not broadcast to the input's {shape}"
            ) from None
    return made.astype(dtype)


def _worst(found):
    """The first failed check, else the one with the largest ratio."""
    failed = [c for c in found if c.status == FAILED]
    return failed[0] if failed else max(found, key=lambda c: c.ratio or 0.0)


def _float64(problem, x, label):
    """The ``backprop`` and ``custom`` gradients at one edge input against autodiff's, in float64."""
    want = problem.gradients("autodiff", x=x)[2]
    found = []
    for path in RULE_PATHS:
        c = agreement(
            "edge_values", problem.gradients(path, x=x)[2], want, problem, rtol(np.float64), require_finite=True
        )
        detail = f"float64; {c.detail}" if c.detail else "float64"
        found.append(Check(c.name, c.status, c.error, c.tolerance, f"{label} {c.where} ({path})", detail))
    return _worst(found)


def _low_precision(problem, x, label, dtype):
    """The ``dtype`` check's rule at one edge input."""
    error, tolerance, where, mismatches = accuracy(problem, dtype, x)
    name = np.dtype(dtype).name
    if mismatches:
        return Check("edge_values", FAILED, where=f"{label} {mismatches[0][0]}", detail=f"{name}: {mismatches[0][1]}")
    status = PASSED if error <= tolerance else FAILED
    return Check("edge_values", status, float(error), float(tolerance), f"{label} {where}", name)


def edge_values(problem):
    """``edge_values``: every declared and passed edge value, in float64 and at each lower precision checked."""
    if not problem.edge_values:
        return Check("edge_values", SKIPPED, detail="none declared by the module or passed (edge_values=)")
    dtypes = [dtype for dtype in problem.dtypes if not refuses(problem, dtype)]
    found = []
    for value in problem.edge_values:
        label = f"at {edge_label(value)}:"
        x = edge_input(value, problem.x.shape, problem.x.dtype)
        found.append(_float64(problem, x, label))
        found += [_low_precision(problem, x, label, dtype) for dtype in dtypes]
    worst = _worst(found)
    labels = ", ".join(edge_label(v) for v in problem.edge_values)
    detail = f"{labels}; finite, and equal to autodiff where it is finite; {worst.detail}"
    return Check("edge_values", worst.status, worst.error, worst.tolerance, worst.where, detail)
