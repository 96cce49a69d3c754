"""The rules at a lower precision (float32, bfloat16): dtypes, structure, and accuracy no worse than autodiff's.

At ``dtype``, every floating leaf of the draw (parameters, input, targets,
cotangents) is cast to ``dtype``; the ``backprop`` and ``custom`` paths must
then give

- an output of ``dtype`` and a gradient whose structure, shapes and dtypes
  are the primal's (a float64 gradient for a float32 input fails);
- finite entries wherever autodiff's, at ``dtype``, are finite;
- an error against the truth (float64 autodiff at the same rounded values),
  relative to the truth's largest entry, of at most
  ``max(8 * autodiff's own error at dtype, 16 * kappa * eps(dtype), eps(dtype) ** (3/4))``
  per leaf: a rule may be as inaccurate as JAX's own derivative of the
  forward code at that precision, within a factor of 8 (three bits: two
  rounding errors of a few ulps each have a ratio with a heavy tail; a
  factor of 4 called 2 of 200 correct draws of a four-module serial wrong in
  bfloat16), or as a backward-stable computation at that precision, within
  a factor of 16, and is always allowed the checker's rounding tolerance.
  ``kappa * eps(dtype)`` is the leaf's conditioning at ``dtype``: the
  relative change of float64 autodiff's gradient under one-ulp nudges of
  the draw (:func:`fnn._gradcheck.compare.movements`, the float64
  checks' measurement), scaled from float64's ``eps`` to ``dtype``'s. Where
  batch norm cancels most of a weight's gradient, autodiff at ``dtype`` may
  by chance land close to the truth while the rule, as correct, does not:
  on two networks with batch norm and dropout in training mode, 200 draws
  each, the rules' errors reached 4.3x ``kappa * eps(dtype)`` where the first
  two bounds were exceeded (16 leaves a factor of 4).

The dtypes are cast by the checker (``params=`` gives the values, not the
dtype). A module whose trace-time checks refuse the dtype (``TypeError`` or
``ValueError`` from its forward) is reported as skipped with its message.

**Edge values.** Edge values: inputs at which a rule is delicate (a kink, an overflow, a degenerate row).

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
from fnn._gradcheck.compare import agreement, entry, leaf_error, movements
from fnn._gradcheck.dtypes import eps, rtol
from fnn._gradcheck.report import FAILED, PASSED, SKIPPED, Check
from fnn.testing._checks import gradient_mismatches, output_mismatch, output_name

#: The paths whose rules are held to the truth: the hand-written backward, directly and on the custom path.
RULE_PATHS = ("backprop", "custom")
#: A rule may be this many times less accurate than autodiff at the same precision.
AUTODIFF_FACTOR = 8.0
#: ... or this many times what the leaf's conditioning allows at that precision.
CONDITIONING_FACTOR = 16.0


def _masked(keep, a):
    return np.where(keep, np.asarray(a, np.float64), 0.0)


def accuracy(problem, dtype, x=None):
    """The rules at ``dtype`` against the float64 truth: ``(error, tolerance, where, mismatches)``.

    ``mismatches`` lists ``(where, what)`` for wrong output dtypes or
    shapes, wrong gradient structure, shapes or dtypes, and a rule path that
    raises; ``error`` and ``tolerance`` are those of the leaf with the
    largest ratio (see the module doc). Raises what autodiff raises.
    """
    truth = problem.gradients("autodiff", x=x, rounded_to=dtype)[2]
    reference = problem.gradients("autodiff", dtype=dtype, x=x)
    conditioning = _conditioning(problem, dtype, x)
    y = output_name(problem)
    mismatches = [(y, f"autodiff: {m}") for m in [output_mismatch(problem, reference, dtype)] if m]
    worst = None
    for path in RULE_PATHS:
        try:
            result = problem.gradients(path, dtype=dtype, x=x)
        except Exception as exc:  # e.g. a gradient of the wrong shape refused on the custom path: a finding
            mismatches.append(("", f"{path}: raised {type(exc).__name__}: {' '.join(str(exc).split())}"))
            continue
        found = gradient_mismatches(problem, result[2], dtype, path)
        found += [(y, f"{path}: {m}") for m in [output_mismatch(problem, result, dtype)] if m]
        mismatches += found
        if found:
            continue
        leaves = zip(problem.names, problem.floating, *map(problem.split, (result[2], reference[2], truth)))
        floating = (leaf for leaf in leaves if leaf[1])
        for (name, _, rule, ad, true), conditioned in zip(floating, conditioning):
            keep = np.isfinite(np.asarray(true, np.float64)) & np.isfinite(np.asarray(ad, np.float64))
            error, index = leaf_error(_masked(keep, rule), _masked(keep, true), require_finite=True)
            autodiff = leaf_error(_masked(keep, ad), _masked(keep, true))[0]
            tolerance = max(AUTODIFF_FACTOR * autodiff, CONDITIONING_FACTOR * conditioned, rtol(dtype))
            if worst is None or error / tolerance > worst[0] / worst[1]:
                worst = (error, tolerance, f"{entry(name, index)} ({path})")
    return (*(worst or (0.0, rtol(dtype), "")), mismatches)


def _conditioning(problem, dtype, x):
    """Per floating leaf, ``kappa * eps(dtype)``: its float64 movement under one-ulp nudges, scaled to ``dtype``
    (zero for a drawn ``x`` other than the problem's, whose nudges the problem does not keep)."""
    if x is not None:
        return [0.0] * sum(problem.floating)
    moved = movements(lambda nudge: problem.gradients("autodiff", nudge=nudge)[2], problem.floating_leaves)
    scale = eps(dtype) / eps(np.float64)
    return [m * scale if np.isfinite(m) else 0.0 for m in moved]


def refuses(problem, dtype):
    """The module's own message if its forward refuses ``dtype`` (a trace-time ``TypeError``/``ValueError``)."""
    try:
        problem.gradients("autodiff", dtype=dtype)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def dtype_check(problem, dtype):
    """``dtype[<name>]``: the rules at a lower precision (see the module doc)."""
    name = f"dtype[{np.dtype(dtype).name}]"
    refused = refuses(problem, dtype)
    if refused:
        return Check(name, SKIPPED, detail=f"the forward refuses {np.dtype(dtype).name}: {refused}")
    error, tolerance, where, mismatches = accuracy(problem, dtype)
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        return Check(name, FAILED, where=mismatches[0][0], detail=mismatches[0][1] + more)
    status = PASSED if error <= tolerance else FAILED
    detail = (
        "dtypes and structure; error against float64 at the same values, held to 8x autodiff's own or 16x the "
        "leaf's conditioning at this precision"
    )
    return Check(name, status, float(error), float(tolerance), where, detail)


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
