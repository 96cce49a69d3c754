"""Two gradients compared leaf by leaf, with :func:`fnn.testing.relative_error`, as one :class:`Check`."""

import numpy as np

from fnn._errors import StructureError
from fnn.testing._compare import relative_error
from fnn.testing._report import FAILED, PASSED, Check

__all__ = ["agreement", "entry", "leaf_error"]


def entry(name, index):
    """``name[i, j]`` for an entry of a leaf (``name`` alone for a scalar)."""
    return f"{name}[{', '.join(map(str, index))}]" if len(index) else name


def leaf_error(actual, expected, *, require_finite=False):
    """``(error, index)``: :func:`relative_error` of one leaf and where the largest difference is.

    Non-finite entries of ``expected`` are left out of the error. Without
    ``require_finite`` they must be matched exactly (``inf`` for ``inf``,
    ``NaN`` for ``NaN``); with it, ``actual`` must be finite everywhere. A
    miss makes the error infinite, at the first entry that misses.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    a_finite, e_finite = np.isfinite(a), np.isfinite(e)
    if require_finite:
        bad = ~a_finite
    else:
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        bad = (a_finite != e_finite) | (~a_finite & ~same)
    if bad.any():
        return np.inf, np.unravel_index(int(np.argmax(bad)), a.shape)
    keep = a_finite & e_finite
    a, e = np.where(keep, a, 0.0), np.where(keep, e, 0.0)
    index = np.unravel_index(int(np.argmax(np.abs(a - e))), a.shape) if a.size else ()
    return relative_error(a, e), index


def _ratio(error, tolerance):
    if error == 0:
        return 0.0
    return np.inf if tolerance == 0 else error / tolerance


def agreement(name, actual, expected, problem, tolerance, *, detail="", require_finite=False):
    """Compares two gradients ``(dparams, dx)`` of ``problem`` on every floating leaf; one :class:`Check`.

    Args:
      name: the check's name.
      actual: the gradient under check (a rule's).
      expected: the reference gradient.
      problem: the :class:`fnn.testing._problem.Problem` they are gradients of (structure, leaf names).
      tolerance: the largest relative error allowed, one number or one per floating leaf.
      detail: what was compared, for the report.
      require_finite: see :func:`leaf_error`.

    The check fails on a structure or shape mismatch (saying which), or
    when a leaf's error exceeds its tolerance; it reports the leaf and entry
    with the largest ``error / tolerance``.
    """
    try:
        actual, expected = problem.split(actual), problem.split(expected)
    except StructureError as exc:
        return Check(name, FAILED, where="(structure)", detail=str(exc))
    floating = [i for i, f in enumerate(problem.floating) if f]
    tolerances = tolerance if isinstance(tolerance, (list, tuple)) else [tolerance] * len(floating)
    worst = None
    for i, tol in zip(floating, tolerances):
        a, e, leaf = actual[i], expected[i], problem.names[i]
        if a is None or np.shape(a) != np.shape(e):
            got = "no gradient" if a is None else f"shape {np.shape(a)}"
            return Check(name, FAILED, where=leaf, detail=f"{got}, expected shape {np.shape(e)}")
        error, index = leaf_error(a, e, require_finite=require_finite)
        if worst is None or _ratio(error, tol) > _ratio(worst[0], worst[1]):
            worst = (error, tol, entry(leaf, index))
    if worst is None:
        return Check(name, PASSED, detail=f"{detail}; no floating input to differentiate".lstrip("; "))
    error, tol, where = worst
    status = PASSED if _ratio(error, tol) <= 1 else FAILED
    if error == np.inf:
        detail = f"{detail}; not finite where the reference is" if not require_finite else f"{detail}; not finite"
    return Check(name, status, float(error), float(tol), where, detail)
