"""Central finite differences in float64: the step rule, the directions, the estimate and its error bound.

A scalar ``phi`` (``g L`` for first order, a projected gradient for second)
is differentiated along a direction ``v`` of one leaf ``theta`` (a parameter
array or the input), ``max |v| = 1``:

- **step** ``h = eps ** (1/5) * max(1, max |theta|)`` (``eps`` of float64):
  the step that balances the fourth-order stencil's truncation error
  (``~h^4``) against rounding (``~eps / h``), at the leaf's own scale; and a
  second, ``h / 16``, for directions where ``h`` is too large (below);
- **points** ``phi(theta + k h v)`` for ``k = -2, ..., 2``, at both steps;
- **estimate** ``D4 = (f(-2) - 8 f(-1) + 8 f(1) - f(2)) / 12h``, fourth order;
- **disagreement** ``d = |D4 - D2| + |F2 - B2|``, with ``D2`` the
  second-order central difference and ``F2``, ``B2`` the second-order
  one-sided ones: on a smooth ``phi`` they agree to ``O(h^2)`` (a
  conservative bound on ``D4``'s ``O(h^4)`` error); where a kink (ReLU at 0,
  a hinge at zero margin) lies within ``2h`` of the point, one of the two
  differences is of the size of the kink's jump, wherever in the stencil it
  lies; and **rounding** ``r = 16 eps max|f| / h``;
- **decision**: with ``S`` the leaf's scale (the largest ``|D4|`` or rule
  value over its directions), a step is *decidable* in a direction when
  ``d <= eps ** (1/4) * S + r``. The larger decidable step's estimate is
  used (a kink or a strong curvature within ``2h`` is usually farther than
  ``2h / 16``); where neither is, the direction is *left out* (``phi`` is
  not smooth within the step there; counted and reported, never passed
  silently). The rule passes when ``|rule - D4| <= sqrt(eps) * S + 10 (d + r)``.

Why not ``jax.test_util.check_grads``: it takes one random direction for all
inputs, a fixed step and a fixed tolerance, and raises on the first miss;
the checker needs per-leaf (and per-entry) errors to report, a step from each
leaf's scale, and kinks told apart from wrong rules.

Directions: a leaf of at most :data:`ENTRYWISE` entries is checked entry by
entry (the notes' numerical gradient check, which locates a wrong entry); a
larger one along :data:`DIRECTIONS` random directions, each normalised to
``max |v| = 1`` (PyTorch's "fast mode" projection), which every entry feeds.
"""

import dataclasses
import math

import jax
import numpy as np

from fnn._gradcheck import gradients as _gradients
from fnn._gradcheck.compare import entry
from fnn._gradcheck.dtypes import eps, floating, x64
from fnn._gradcheck.report import FAILED, PASSED, SKIPPED, Check

__all__ = [
    "DIRECTIONS",
    "ENTRYWISE",
    "Comparison",
    "compare",
    "directions",
    "estimate",
    "finite_differences",
    "step",
]

EPS = eps(np.float64)
#: The steps, as fractions of :func:`step`: the first decidable one is used.
STEPS = (1.0, 1.0 / 16)
#: Leaves with at most this many entries are checked entry by entry.
ENTRYWISE = 256
#: Random directions for a leaf with more entries.
DIRECTIONS = 32
#: Left out when the stencils disagree by more than this fraction of the leaf's scale (beyond rounding).
SMOOTH = EPS**0.25
#: The tolerance: this fraction of the leaf's scale, plus ten times the disagreement and rounding.
RTOL = math.sqrt(EPS)


def step(theta):
    """The step for a leaf: ``eps ** (1/5) * max(1, max |theta|)``."""
    return EPS**0.2 * max(1.0, float(np.max(np.abs(theta), initial=0.0)))


def directions(shape, rng):
    """``[n, *shape]``: every unit vector of a small leaf, else :data:`DIRECTIONS` random ones (``max |v| = 1``)."""
    size = math.prod(shape)
    if size <= ENTRYWISE:
        return np.eye(size).reshape(size, *shape)
    v = rng.standard_normal((DIRECTIONS, size))
    return (v / np.max(np.abs(v), axis=1, keepdims=True)).reshape(DIRECTIONS, *shape)


def estimate(values, h):
    """``(D4, disagreement, rounding)`` per direction from ``values[n, 5]`` at ``k = -2..2`` steps ``h``."""
    m2, m1, f0, p1, p2 = np.asarray(values, np.float64).T
    d4 = (m2 - 8 * m1 + 8 * p1 - p2) / (12 * h)
    d2 = (p1 - m1) / (2 * h)
    forward = (-3 * f0 + 4 * p1 - p2) / (2 * h)
    backward = (3 * f0 - 4 * m1 + m2) / (2 * h)
    rounding = 16 * EPS * np.max(np.abs(values), axis=1) / h
    return d4, np.abs(d4 - d2) + np.abs(forward - backward), rounding


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The rule against finite differences along one leaf's directions.

    ``error`` and ``tolerance`` are those of the worst direction (largest
    ratio), relative to the leaf's scale; ``index`` is that direction's;
    ``checked`` and ``left_out`` count the directions compared and those
    where ``phi`` is not smooth within the step.
    """

    error: float
    tolerance: float
    index: int
    checked: int
    left_out: int

    @property
    def ok(self):
        return self.error <= self.tolerance


def compare(rule, *estimates):
    """Compares a rule's directional derivatives ``rule[n]`` with :func:`estimate`'s at each step, largest first.

    Per direction, the first decidable step's estimate is used. Returns
    ``None`` when every direction is left out.
    """
    rule = np.asarray(rule, np.float64)
    if not np.isfinite(rule).all():
        return Comparison(math.inf, RTOL, int(np.argmin(np.isfinite(rule))), len(rule), 0)
    scale = max(np.max(np.abs(estimates[0][0]), initial=0.0), np.max(np.abs(rule), initial=0.0))
    d4, disagreement, rounding = (np.array(a) for a in estimates[-1])
    smooth = disagreement <= SMOOTH * scale + rounding
    for est in reversed(estimates[:-1]):  # a larger step, where decidable, replaces a smaller one's
        decidable = est[1] <= SMOOTH * scale + est[2]
        d4, disagreement, rounding = (np.where(decidable, a, b) for a, b in zip(est, (d4, disagreement, rounding)))
        smooth |= decidable
    if not smooth.any():
        return None
    miss = np.where(smooth, np.abs(rule - d4), 0.0)
    tolerance = RTOL * scale + 10 * (disagreement + rounding)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(miss == 0, 0.0, miss / tolerance)
    worst = int(np.argmax(ratio))
    unit = scale if scale > 0 else 1.0
    return Comparison(
        float(miss[worst] / unit), float(tolerance[worst] / unit), worst, int(smooth.sum()), int((~smooth).sum())
    )


def _rule(problem, order):
    """The rule's gradient that order ``order`` checks: ``backward``'s, or the custom path's reverse over reverse."""
    grads = problem.gradients("backprop")[2] if order == 1 else problem.grad_of_grad("custom")
    return [d for d, f in zip(problem.split(grads), problem.floating) if f]


def _where(name, index, dirs):
    if len(dirs) == math.prod(dirs.shape[1:]):  # entry by entry
        return entry(name, np.unravel_index(index, dirs.shape[1:]))
    return f"{name} along random direction {index} of {len(dirs)}"


#: Leaves are moved together (one compiled function) while ``directions x entries`` stays under this; else one by one.
TOGETHER = 2**22


def _values(problem, order, groups):
    """The stencil values ``[n, 5]`` of each group ``(k, directions[n, *shape], step)`` of directions of the
    ``k``-th floating leaf (see :func:`fnn._gradcheck.gradients.stencil`): one compiled call for all of them, or one per
    group where the directions of all leaves together would be too large."""
    params, x, targets, g, w = problem.data()
    floats = tuple(i for i, f in enumerate(problem.floating) if f)
    sizes = [a.size for a in jax.tree.leaves((params, x)) if floating(a)]
    cols, lengths = np.cumsum([0, *sizes]), [len(d) for _, d, _ in groups]
    if sum(lengths) * sum(sizes) <= TOGETHER:  # block-diagonal: each row moves one leaf
        flat = np.zeros((sum(lengths), sum(sizes)))
        for (k, d, _), row in zip(groups, np.cumsum([0, *lengths])):
            flat[row : row + len(d), cols[k] : cols[k + 1]] = d.reshape(len(d), -1)
        batches = [(floats, flat, np.concatenate([np.full(len(d), h) for _, d, h in groups]))]
    else:
        batches = [((floats[k],), d.reshape(len(d), -1), np.full(len(d), h)) for k, d, h in groups]
    model, context = problem.compiled
    with x64():
        values = [
            jax.device_get(
                _gradients.jit_stencil(model, problem.loss, order, moved, context, params, x, targets, g, w, v, h)
            )
            for moved, v, h in batches
        ]
    return np.split(np.concatenate(values), np.cumsum(lengths)[:-1])


def finite_differences(problem, order):
    """``finite_differences`` (order 1: ``backward`` against differences of ``g L``) and ``finite_differences_2``
    (order 2: the custom path's reverse over reverse against differences of ``<(dparams, dx), w>``)."""
    name = "finite_differences" if order == 1 else "finite_differences_2"
    rng = np.random.default_rng([problem.seed, order])
    leaves = [a for a in jax.tree.leaves(problem.data()[:2]) if floating(a)]
    names = [n for n, f in zip(problem.names, problem.floating) if f]
    dirs, steps = [directions(a.shape, rng) for a in leaves], [step(a) for a in leaves]
    groups = [(k, d, h * f) for f in STEPS for k, (d, h) in enumerate(zip(dirs, steps))]  # every direction at each step
    values = _values(problem, order, groups)
    per_leaf = [values[k :: len(leaves)] for k in range(len(leaves))]
    rule = _rule(problem, order)
    for leaf, a, r in zip(names, leaves, rule):
        if r is None or np.shape(r) != a.shape:
            got = "no gradient" if r is None else f"shape {np.shape(r)}"
            return Check(name, FAILED, where=leaf, detail=f"the rule gives {got}, expected shape {a.shape}")
    worst, checked, left_out = None, 0, 0
    for leaf, d, h, v, r in zip(names, dirs, steps, per_leaf, rule):
        estimates = [estimate(vals, h * f) for vals, f in zip(v, STEPS)]
        found = compare(d.reshape(len(d), -1) @ np.asarray(r, np.float64).ravel(), *estimates)
        if found is None:
            left_out += len(d)
            continue
        checked, left_out = checked + found.checked, left_out + found.left_out
        if worst is None or found.error * worst[0].tolerance > worst[0].error * found.tolerance:
            worst = (found, _where(leaf, found.index, d))
    kind = "first order, backward" if order == 1 else "second order, custom reverse over reverse"
    if worst is None:
        return Check(name, SKIPPED, detail=f"{kind}: the forward is not smooth within the step in any direction")
    found, where = worst
    detail = f"{kind}; {checked} directions, {left_out} left out (not smooth within the step)"
    if found.error == math.inf:
        detail += "; the rule is not finite"
    return Check(name, PASSED if found.ok else FAILED, found.error, found.tolerance, where, detail)
