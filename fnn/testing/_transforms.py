"""The rule on every path and under every transformation, against autodiff in float64.

Each check compares a gradient of the draw with the same gradient by the
``autodiff`` path (``jax.vjp`` of the plain forward code), leaf by leaf,
relative to the leaf's largest entry, each leaf to the tolerance of its
conditioning (:mod:`fnn.testing._conditioning`: 1.8e-12 where it is well
conditioned, more where autodiff's own result moves when the draw is
nudged by an ulp):

- ``backward``: the ``backprop`` path (``forward``, then ``backward`` on what
  it saved), under ``jax.jit`` as training runs it (a rule that branches in
  Python on values fails here);
- ``custom``, ``custom_jit``: the ``jax.custom_vjp`` made of the rule, eagerly
  (op by op) and jitted;
- ``custom_vmap``: per-example gradients, ``jax.vmap`` over the rows;
- ``custom_grad_of_grad``: reverse over reverse, the gradient of
  ``<(dparams, dx), w>`` (a Hessian-vector product for a loss);
- ``forward_mode``: ``jax.jvp`` through the custom VJP; skipped with JAX's
  reason when it refuses (custom VJPs are reverse mode only).
"""

import dataclasses

import jax
import numpy as np

from fnn._paths import objective
from fnn.testing._agreement import agreement, leaf_error
from fnn.testing._conditioning import CAP, FACTOR, RTOL, tolerances
from fnn.testing._dtypes import floating, x64
from fnn.testing._report import FAILED, PASSED, SKIPPED, Check

__all__ = ["backward", "custom", "custom_grad_of_grad", "custom_jit", "custom_vmap", "forward_mode"]


def _against(name, problem, gradient, reference, detail):
    """``gradient`` against ``reference(0)`` (autodiff's), each leaf to the tolerance of its conditioning;
    ``reference(k)`` is autodiff's at the ``k``-th nudge of the draw."""
    found = agreement(
        name, gradient, reference(0), problem, tolerances(reference, problem.floating_leaves), detail=detail
    )
    return _noted(found)


def _noted(found):
    """``found``, its detail saying so where its tolerance was raised above :data:`RTOL`."""
    if found.tolerance is None or found.tolerance <= RTOL:
        return found
    note = (
        f"; tolerance raised by the leaf's conditioning: {FACTOR:g} x the change of autodiff's own result under "
        f"one-ulp nudges, at most {CAP:.1e}"
    )
    return dataclasses.replace(found, detail=found.detail + note)


def _against_autodiff(name, problem, gradient, detail):
    reference = lambda nudge: problem.gradients("autodiff", nudge=nudge)[2]  # noqa: E731
    return _against(name, problem, gradient, reference, detail)


def backward(problem):
    """``backward``: the backprop path, jitted."""
    got = problem.gradients("backprop")[2]
    return _against_autodiff("backward", problem, got, "forward then backward (jitted) against autodiff's VJP")


def custom(problem):
    """``custom``: ``jax.vjp`` of the custom-VJP forward, eagerly."""
    got = problem.gradients("custom", eager=True)[2]
    return _against_autodiff("custom", problem, got, "jax.vjp through the custom VJP, eagerly")


def custom_jit(problem):
    """``custom_jit``: the custom path under ``jax.jit``."""
    return _against_autodiff("custom_jit", problem, problem.gradients("custom")[2], "the custom path, jitted")


def custom_vmap(problem):
    """``custom_vmap``: per-example gradients (``jax.vmap`` over rows), custom against autodiff; skipped for a
    module that refuses one example alone (batch norm over ``[N, C]``: one value per channel)."""
    try:
        problem.per_example("autodiff")
    except Exception as exc:  # autodiff itself cannot: there is nothing to hold the rule to
        message = " ".join(str(exc).split())
        return Check("custom_vmap", SKIPPED, detail=f"one example at a time fails on autodiff too: {message}")
    got = problem.per_example("custom")
    detail = f"per-example gradients, jax.vmap over {problem.x.shape[0]} rows"
    reference = lambda nudge: problem.per_example("autodiff", nudge=nudge)  # noqa: E731
    return _against("custom_vmap", problem, got, reference, detail)


def custom_grad_of_grad(problem):
    """``custom_grad_of_grad``: reverse over reverse, custom against autodiff."""
    try:
        problem.grad_of_grad("autodiff")
    except Exception as exc:  # autodiff itself cannot: there is nothing to hold the rule to
        return Check("custom_grad_of_grad", SKIPPED, detail=f"autodiff's own second order fails: {exc}")
    got = problem.grad_of_grad("custom")
    detail = "the gradient of <gradient, w>, reverse over reverse"
    reference = lambda nudge: problem.grad_of_grad("autodiff", nudge=nudge)  # noqa: E731
    return _against("custom_grad_of_grad", problem, got, reference, detail)


def _jvp(problem, path, nudge=0):
    """``jax.jvp`` of ``L`` on ``path`` along ``w`` (integer leaves get ``float0`` tangents), at the ``nudge``-th
    nudge of the draw (:meth:`fnn.testing._problem.Problem.data`)."""
    params, x, targets, _, w = problem.data(nudge=nudge)
    primals = (params, x)
    directions = iter(w)
    tangents = jax.tree.map(
        lambda a: next(directions) if floating(a) else np.zeros(np.shape(a), jax.dtypes.float0), primals
    )
    fn = objective(problem.model, problem.loss, path)
    with x64():
        return jax.jvp(lambda p, z: fn(p, z, targets)[0], primals, tangents)[1]


def forward_mode(problem):
    """``forward_mode``: ``jax.jvp`` through the custom VJP against autodiff's; skipped where JAX refuses."""
    try:
        got = _jvp(problem, "custom")
    except TypeError as exc:
        if "reverse mode only" not in str(exc) and "forward-mode" not in str(exc):
            raise
        return Check("forward_mode", SKIPPED, detail=str(exc).split(";")[0])
    error, _ = leaf_error(got, _jvp(problem, "autodiff"))
    (tol,) = tolerances(lambda nudge: _jvp(problem, "autodiff", nudge))
    status = PASSED if error <= tol else FAILED
    return _noted(Check("forward_mode", status, float(error), tol, "jvp", "jax.jvp through the custom VJP along w"))
