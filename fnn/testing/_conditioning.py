"""The float64 agreement checks' tolerance: rounding, or more where the quantity checked is ill-conditioned.

A rule and autodiff compute the same gradient by different sequences of
float64 operations. Where the gradient is well conditioned they agree to
within :data:`RTOL` (:func:`fnn.testing._dtypes.rtol`, ``eps ** (3/4)`` =
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
  (:func:`fnn.testing._dtypes.nudged`);
- **movement**: :func:`fnn.testing.relative_error` of the reference (the
  ``autodiff`` path in float64, the same compiled function) at the nudged
  draw against the reference at the draw, the largest over :data:`NUDGES`
  independent nudges;
- **tolerance** ``min(max(RTOL, FACTOR * movement), CAP)``, and :data:`RTOL`
  where the movement is not finite (a reference exactly zero, or not finite
  an ulp away: it tells nothing about rounding).

A well-conditioned leaf moves by a few ``eps`` (below ``RTOL / FACTOR``, 32
``eps``) and keeps :data:`RTOL`; an ill-conditioned one is allowed what a
backward-stable computation may be off by, up to :data:`CAP`. A wrong rule
misses by ``O(1)``; the cap keeps it caught where the reference itself jumps
under a nudge (an input a hair from a kink or a tie). A leaf whose gradient
is zero (a bias right before batch norm) holds rounding noise only: relative
to itself it moves by ``O(1)``, the cap applies, and the check fails there.
"""

import numpy as np

from fnn.testing._agreement import leaf_error
from fnn.testing._dtypes import eps, rtol

__all__ = ["CAP", "FACTOR", "NUDGES", "RTOL", "movements", "tolerance", "tolerances"]

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


def tolerance(movement):
    """The tolerance of a leaf whose reference moves by ``movement``: ``min(max(RTOL, FACTOR * movement), CAP)``,
    ``RTOL`` for a movement that is not finite."""
    return min(max(RTOL, FACTOR * movement), CAP) if np.isfinite(movement) else RTOL


def movements(reference, leaves=lambda result: [result]):
    """The largest relative change of each leaf of ``reference(k)`` against ``reference(0)`` over ``k = 1..NUDGES``.

    ``reference(k)`` is the reference at the ``k``-th nudge of the draw
    (``k = 0`` the draw itself); ``leaves`` picks the compared leaves of it
    (by default the whole result, one leaf).
    """
    base = leaves(reference(0))
    moved = [leaves(reference(k)) for k in range(1, NUDGES + 1)]
    return [max(leaf_error(other[i], leaf)[0] for other in moved) for i, leaf in enumerate(base)]


def tolerances(reference, leaves=lambda result: [result]):
    """Per leaf: :func:`tolerance` of its :func:`movements`."""
    return [tolerance(m) for m in movements(reference, leaves)]
