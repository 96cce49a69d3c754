"""Comparing gradients, and the tolerances they are held to.

:func:`relative_error` is fnn's one relative error; :func:`leaf_error` and
:func:`agreement` compare two gradients leaf by leaf as one check; the
conditioning tolerance follows.

The float64 agreement checks' tolerance: rounding, or more where the quantity checked is ill-conditioned.

A rule and autodiff compute the same gradient by different sequences of
float64 operations. Where the gradient is well conditioned they agree to
within :data:`RTOL` (:func:`fnn._gradcheck.dtypes.rtol`, ``eps ** (3/4)`` =
1.8e-12 of a leaf's largest entry). Where it is not, e.g. the weight in front
of a batch norm, whose gradient the normalisation mostly cancels (entries
1e-4 of the other leaves'), two correct computations may differ by more: a
backward-stable computation is exact for inputs off by a few ulps, so its
error is what such a perturbation does to the result, the conditioning times
``eps``. The checker measures that on the reference itself, per leaf:

- **nudge**: every floating leaf of the draw (parameters, input, a module's
  output cotangent, ``g``, ``w``; never a loss's targets, which may have to
  be exact, an integer leaf, or the state and key a contextual module is
  checked with) becomes ``a * (1 + eps * s)``, ``s`` a random sign per
  entry from the draw's seed: one ulp in a random direction
  (:func:`fnn._gradcheck.dtypes.nudged`);
- **movement**: :func:`fnn.testing.relative_error` of the reference (the
  ``autodiff`` path in float64, the same compiled function) at the nudged
  draw against the reference at the draw, the largest over :data:`NUDGES`
  independent nudges;
- **tolerance** ``min(max(RTOL, FACTOR * movement), CAP * headroom)``, and :data:`RTOL`
  where the movement is not finite (a reference exactly zero, or not finite
  an ulp away: it tells nothing about rounding); ``headroom`` is the
  gradient's largest entry over the leaf's (1 for the largest leaf).

In absolute terms a leaf is allowed ``FACTOR`` times what autodiff's own
result moves by, at least :data:`RTOL` of the leaf's largest entry and at
most :data:`CAP` of the whole gradient's. The movement is rounding: it is
the size of the values the computation sums (and cancels) times ``eps``,
whatever the size of the result. A well-conditioned leaf moves by a few
``eps`` of itself (below ``RTOL / FACTOR``, 32 ``eps``) and keeps
:data:`RTOL`; an ill-conditioned one is allowed what a backward-stable
computation may be off by. A leaf whose true gradient is exactly zero (a
bias right before batch norm, whose gradient the normalisation cancels)
holds rounding noise of the terms it sums, on autodiff as on the rule:
relative to itself both move by ``O(1)``, and it is held to ``FACTOR``
times that noise, far below the terms summed, which a wrong rule misses by.
The cap keeps a wrong rule caught where the reference itself jumps under a
nudge (an input a hair from a kink or a tie): no leaf is allowed more than
``sqrt(eps)`` of the gradient's largest entry.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from fnn._errors import CheckFailed, InputError, StructureError
from fnn._gradcheck.dtypes import eps, rtol
from fnn._gradcheck.report import FAILED, PASSED, Check, ratio

#: Default tolerances per dtype, as ``(rtol, atol)``: a difference passes when
#: ``max |a - e| <= atol + rtol * max |e|``. rtol allows accumulated rounding of
#: a few thousand ulps in float64 (eps 2.2e-16), about 100 ulps in float32 (eps
#: 1.2e-7) and a few ulps in bfloat16 (eps 7.8e-3); atol allows ~100 ulps of an
#: O(1) quantity, for outputs whose entries all underflow towards zero (e.g.
#: the gradient of a saturated softmax).
DEFAULT_TOLERANCES = {
    jnp.dtype(jnp.float64): (1e-12, 1e-14),
    jnp.dtype(jnp.float32): (1e-5, 1e-6),
    jnp.dtype(jnp.float16): (5e-3, 5e-3),
    jnp.dtype(jnp.bfloat16): (3e-2, 3e-2),
}


@dataclasses.dataclass(frozen=True)
class Difference:
    """Largest difference of one compared quantity (one input's cotangent, or the output): a row of
    :func:`fnn.testing.compare_vjp`'s report.

    ``check`` is one of :data:`fnn.testing.VJP_CHECKS`, ``argnum`` the input
    (``None`` for the output), ``max_abs`` the largest ``|a - e|``,
    ``max_rel`` :func:`relative_error`, ``scale`` the largest ``|e|``; it
    passes when ``max_abs <= atol + rtol * scale``.
    """

    check: str
    argnum: int | None
    max_abs: float
    max_rel: float
    scale: float
    rtol: float
    atol: float

    @property
    def name(self):
        """``"vjp[0]"``: the check and the input (``out`` for the output)."""
        return f"{self.check}[{'out' if self.argnum is None else self.argnum}]"

    @property
    def passed(self):
        """Whether the difference is within the tolerance."""
        return bool(self.max_abs <= self.atol + self.rtol * self.scale)

    @property
    def ratio(self):
        """``max_abs`` over what it is allowed, ``atol + rtol * scale``."""
        return ratio(self.max_abs, self.atol + self.rtol * self.scale)


def relative_error(actual, expected):
    """``max|a - e| / max|e|`` of two arrays of one shape, in float64 on the host: fnn's one relative error.

    Relative to the largest reference entry, not entry by entry, so that
    entries near zero do not blow it up. ``0.0`` when both are all zero (or
    empty), ``inf`` when only the reference is all zero.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise InputError(f"relative_error: shapes {a.shape} and {e.shape} differ")
    error = float(np.max(np.abs(a - e), initial=0.0))
    scale = float(np.max(np.abs(e), initial=0.0))
    if scale == 0:
        return 0.0 if error == 0 else float("inf")
    return error / scale


def difference(check, argnum, actual, expected, rtol, atol):
    """Compares two arrays: max ``|a - e|``, and :func:`relative_error`.

    NaNs must sit at the same places in both; anywhere else the difference is infinite.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise CheckFailed(f"{check}: shape {a.shape} differs from reference shape {e.shape}")
    if not np.array_equal(np.isnan(a), np.isnan(e)):
        return Difference(check, argnum, np.inf, np.inf, np.nan, rtol, atol)
    a, e = np.nan_to_num(a, nan=0.0), np.nan_to_num(e, nan=0.0)
    max_abs = float(np.max(np.abs(a - e), initial=0.0))
    scale = float(np.max(np.abs(e), initial=0.0))
    return Difference(check, argnum, max_abs, relative_error(a, e), scale, rtol, atol)


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


def agreement(name, actual, expected, problem, tolerance, *, detail="", require_finite=False):
    """Compares two gradients ``(dparams, dx)`` of ``problem`` on every floating leaf; one :class:`Check`.

    Args:
      name: the check's name.
      actual: the gradient under check (a rule's).
      expected: the reference gradient.
      problem: the :class:`fnn._gradcheck.problem.Problem` they are gradients of (structure, leaf names).
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
        if worst is None or ratio(error, tol) > ratio(worst[0], worst[1]):
            worst = (error, tol, entry(leaf, index))
    if worst is None:
        return Check(name, PASSED, detail=f"{detail}; no floating input to differentiate".lstrip("; "))
    error, tol, where = worst
    status = PASSED if ratio(error, tol) <= 1 else FAILED
    if error == np.inf:
        detail = f"{detail}; not finite where the reference is" if not require_finite else f"{detail}; not finite"
    return Check(name, status, float(error), float(tol), where, detail)


#: The rounding tolerance of float64, relative to a leaf's largest entry: the least any leaf is held to.
RTOL = rtol(np.float64)
#: Independent one-ulp nudges; a leaf's movement is the largest.
NUDGES = 2
#: The tolerance, in movements: 2 ** 8. Measured on four correct networks of fnn's modules with batch norm (and dropout)
#: in training mode, 600 draws each, the backward, custom, custom_jit and custom_grad_of_grad errors of every leaf:
#: where a leaf's error exceeded RTOL (769 of 62,400, in 105 draws), it was 0.7 movements at the median, 5.9 at the
#: 99th percentile and 47 at most (a reverse-over-reverse gradient; the next largest 12). 256 leaves a factor of 5
#: beyond the largest, and keeps RTOL for every leaf that moves by less than ``RTOL / 256`` (32 ``eps``).
FACTOR = 256.0
#: The most any leaf is allowed: ``sqrt(eps)`` (1.5e-8), the finite differences' own tolerance.
CAP = float(np.sqrt(eps(np.float64)))


def tolerance(movement, headroom=1.0):
    """The tolerance of a leaf whose reference moves by ``movement`` (relative to the leaf's largest entry):
    ``min(max(RTOL, FACTOR * movement), CAP * headroom)``, ``RTOL`` for a movement that is not finite.

    ``headroom`` is the largest entry of the whole gradient over the leaf's (at least 1): the cap is
    :data:`CAP` of the whole gradient, not of a leaf that may be rounding noise itself.
    """
    return min(max(RTOL, FACTOR * movement), CAP * headroom) if np.isfinite(movement) else RTOL


def movements(reference, leaves=lambda result: [result]):
    """The largest relative change of each leaf of ``reference(k)`` against ``reference(0)`` over ``k = 1..NUDGES``.

    ``reference(k)`` is the reference at the ``k``-th nudge of the draw
    (``k = 0`` the draw itself); ``leaves`` picks the compared leaves of it
    (by default the whole result, one leaf).
    """
    base = leaves(reference(0))
    moved = [leaves(reference(k)) for k in range(1, NUDGES + 1)]
    return [max(leaf_error(other[i], leaf)[0] for other in moved) for i, leaf in enumerate(base)]


def _largest(leaf):
    """The largest finite ``|entry|`` of a leaf (0 for none)."""
    a = np.abs(np.asarray(leaf, np.float64))
    return float(np.max(np.where(np.isfinite(a), a, 0.0), initial=0.0))


def tolerances(reference, leaves=lambda result: [result]):
    """Per leaf: :func:`tolerance` of its :func:`movements`, capped relative to the largest leaf."""
    scales = [_largest(leaf) for leaf in leaves(reference(0))]
    whole = max(scales, default=0.0)
    return [tolerance(m, whole / scale if scale > 0 else 1.0) for m, scale in zip(movements(reference, leaves), scales)]


def against(name, problem, gradient, reference, detail):
    """``gradient`` against ``reference(0)`` (autodiff's), each leaf to the tolerance of its conditioning;
    ``reference(k)`` is autodiff's at the ``k``-th nudge of the draw."""
    found = agreement(
        name, gradient, reference(0), problem, tolerances(reference, problem.floating_leaves), detail=detail
    )
    return noted(found)


def noted(found):
    """``found``, its detail saying so where its tolerance was raised above :data:`RTOL`."""
    if found.tolerance is None or found.tolerance <= RTOL:
        return found
    note = (
        f"; tolerance raised by the leaf's conditioning: {FACTOR:g} x the change of autodiff's own result under "
        f"one-ulp nudges, at most {CAP:.1e} of the gradient's largest entry"
    )
    return dataclasses.replace(found, detail=found.detail + note)


def against_autodiff(name, problem, gradient, detail):
    """``gradient`` against autodiff's on the draw (:meth:`fnn._gradcheck.problem.Problem.gradients`), each leaf to
    the tolerance of its conditioning."""
    reference = lambda nudge: problem.gradients("autodiff", nudge=nudge)[2]  # noqa: E731
    return against(name, problem, gradient, reference, detail)
