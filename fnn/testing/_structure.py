"""Shapes, dtypes and pytree structure: of the output against ``init``'s promise, of the gradient against the primal.

- the output (a module's ``y``, a loss's scalar) has the shape ``init``
  promises (the batch axis first; ``()`` for a loss) and the dtype of the
  floating inputs; ``forward``'s output equals ``apply``'s;
- the gradient ``(dparams, dx)`` has the pytree structure of
  ``(params, x)``, every floating leaf the shape and dtype of its primal
  (float32 in, float32 out), and every integer leaf no gradient: ``backward``
  returns ``None`` for it (``jax.vjp`` turns whatever it gets into ``float0``,
  so only the ``backprop`` path can tell).
"""

import numpy as np

from fnn._errors import StructureError
from fnn.testing._agreement import leaf_error
from fnn.testing._dtypes import rtol
from fnn.testing._report import FAILED, PASSED, Check

__all__ = ["gradient_mismatches", "output", "output_mismatch", "output_name", "structure"]


def output_name(problem):
    """How the report names the output: ``y`` for a module, ``loss`` for a loss's value."""
    return "y" if problem.kind == "module" else "loss"


def _result_output(problem, result):
    """What the subject outputs: a module's ``y``, a loss's value."""
    value, outputs, _ = result
    return outputs if problem.kind == "module" else value


def output_mismatch(problem, result, dtype):
    """What is wrong with the output's shape or dtype at ``dtype``, or ``None``."""
    out = np.asarray(_result_output(problem, result))
    want = problem.output_shape if problem.kind == "module" else ()
    if want is not None and out.shape != tuple(want):
        what = "init promises" if problem.kind == "module" else "a loss is a scalar,"
        return f"output shape {out.shape}, but {what} {tuple(want)}"
    if any(problem.floating) and out.dtype != np.dtype(dtype):
        return f"output dtype {out.dtype} for {np.dtype(dtype).name} inputs"
    return None


def output(problem):
    """``output``: shape and dtype against ``init``'s; ``forward``'s output (the backprop path's) and the custom
    VJP's against ``apply``'s (float64)."""
    applied = problem.gradients("autodiff")
    where = output_name(problem)
    mismatch = output_mismatch(problem, applied, np.float64)
    if mismatch:
        return Check("output", FAILED, where=where, detail=mismatch)
    want, worst, note = _result_output(problem, applied), (0.0, ""), ""
    for path in ("backprop", "custom"):
        try:
            got = _result_output(problem, problem.gradients(path))
        except Exception:  # the path's gradient raises: its own checks report that; its output is not compared
            note = f"; {path}'s output not compared (its gradient raises)"
            continue
        if np.shape(got) != np.shape(want):
            detail = f"{path} gives shape {np.shape(got)}, apply {np.shape(want)}"
            return Check("output", FAILED, where=where, detail=detail)
        worst = max(worst, (leaf_error(got, want)[0], path))
    tol = rtol(np.float64)
    shape = "()" if problem.kind == "loss" else str(tuple(problem.output_shape or np.shape(want)))
    detail = f"shape {shape} float64; forward's and the custom VJP's output against apply's"
    detail += (f" (worst: {worst[1]})" if worst[0] > 0 else "") + note
    return Check("output", PASSED if worst[0] <= tol else FAILED, float(worst[0]), tol, where, detail)


def gradient_mismatches(problem, grads, dtype, path):
    """``[(where, what)]``: how a gradient on ``path`` differs from the primal's structure, shapes and dtypes."""
    try:
        leaves = problem.split(grads)
    except StructureError as exc:
        return [("(structure)", str(exc))]
    found = []
    primals = problem.split(problem.data(dtype)[:2])
    for name, is_float, d, p in zip(problem.names, problem.floating, leaves, primals):
        if not is_float:
            if path == "backprop" and d is not None:
                found.append((name, f"an integer input gets no gradient: backward must return None, got {_kind(d)}"))
            continue
        if d is None:
            found.append((name, f"no gradient, expected {_kind(p)}"))
        elif np.shape(d) != np.shape(p) or np.asarray(d).dtype != np.asarray(p).dtype:
            found.append((name, f"{_kind(d)}, expected {_kind(p)} (the primal's)"))
    return [(where, f"{path}: {what}") for where, what in found]


def _kind(a):
    """``float32[4, 3]`` for an array."""
    a = np.asarray(a)
    return f"{a.dtype}{list(a.shape)}"


def structure(problem):
    """``structure``: the float64 gradient on ``backprop``, then ``custom``, has ``(params, x)``'s pytree, shapes
    and dtypes (``jax.custom_vjp`` itself refuses some mismatches; ``backward``'s own output says which)."""
    for path in ("backprop", "custom"):
        found = gradient_mismatches(problem, problem.gradients(path)[2], np.float64, path)
        if found:
            where, what = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            return Check("structure", FAILED, where=where, detail=what + more)
    return Check("structure", PASSED, detail="the gradient's pytree, shapes and dtypes on backprop and custom")
