"""Checking a hand-written VJP against a reference implementation.

:func:`compare_vjp` runs a custom op and a reference (usually its plain
``jax.numpy`` twin) on the same inputs and compares, per floating input:

- ``value``: the outputs;
- ``vjp``: the cotangents ``J^T c`` for a random output cotangent ``c``;
- ``jit``: the same VJP compiled with ``jax.jit``;
- ``vmap``: the VJP mapped over a batch of perturbed inputs with ``jax.vmap``;
- ``second_order``: the gradient of ``<J^T c, v>`` with respect to the inputs
  (reverse over reverse; a Hessian-vector product when the op is a loss).

Integer inputs (e.g. class labels) are passed through but not differentiated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn._errors import CheckFailed, InputError

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

CHECKS = ("value", "vjp", "jit", "vmap", "second_order")


@dataclasses.dataclass(frozen=True)
class Difference:
    """Largest difference of one compared quantity (one input's cotangent, or the output)."""

    check: str
    argnum: int | None
    max_abs: float
    max_rel: float
    scale: float
    rtol: float
    atol: float

    @property
    def ok(self):
        return self.max_abs <= self.atol + self.rtol * self.scale


@dataclasses.dataclass(frozen=True)
class VjpReport:
    """All :class:`Difference` rows of one :func:`compare_vjp` call."""

    rows: tuple

    @property
    def ok(self):
        return all(row.ok for row in self.rows)

    def max_rel(self, check=None):
        """Largest relative difference over all rows (of one ``check`` if given)."""
        return max(r.max_rel for r in self.rows if check in (None, r.check))

    def __str__(self):
        lines = [f"{'check':<13}{'arg':>4}{'max abs':>11}{'max rel':>11}{'max |ref|':>11}{'rtol':>9}{'atol':>9}  ok"]
        for r in self.rows:
            arg = "out" if r.argnum is None else str(r.argnum)
            lines.append(
                f"{r.check:<13}{arg:>4}{r.max_abs:11.2e}{r.max_rel:11.2e}{r.scale:11.2e}"
                f"{r.rtol:9.1e}{r.atol:9.1e}  {'yes' if r.ok else 'NO'}"
            )
        return "\n".join(lines)


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


def _is_float(x):
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def compare_vjp(custom_fn, reference_fn, *args, rtol=None, atol=None, seed=0, checks=CHECKS, raise_on_failure=True):
    """Compares ``custom_fn`` with ``reference_fn`` (same signature) at ``args``.

    Args:
      custom_fn: the function under test, usually a ``jax.custom_vjp`` op.
      reference_fn: a trusted implementation, usually differentiated by JAX.
      *args: example inputs; floating ones are differentiated, the rest held fixed.
      rtol, atol: tolerances, a difference passing when
        ``max |a - e| <= atol + rtol * max |e|``; by default from
        :data:`DEFAULT_TOLERANCES` for the lowest-precision floating input.
      seed: seeds the random cotangents and perturbations.
      checks: which of :data:`CHECKS` to run.
      raise_on_failure: raise ``AssertionError`` (with the report) if any row
        exceeds the tolerance.

    Returns:
      A :class:`VjpReport` with the max absolute and relative difference of
      every check and input.
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise InputError(f"unknown checks {sorted(unknown)}; expected a subset of {CHECKS}")
    args = tuple(jnp.asarray(a) for a in args)
    float_nums = [i for i, a in enumerate(args) if _is_float(a)]
    if not float_nums:
        raise InputError("compare_vjp needs at least one floating-point input to differentiate")
    loosest = max((DEFAULT_TOLERANCES[args[i].dtype] for i in float_nums), key=lambda t: t[0])
    rtol = loosest[0] if rtol is None else rtol
    atol = loosest[1] if atol is None else atol
    floats = tuple(args[i] for i in float_nums)
    probes = _probes(floats, jax.eval_shape(reference_fn, *args), seed)
    want, got = (_all_checks(fn, float_nums, args, probes) for fn in (reference_fn, custom_fn))
    if "vjp" in checks:  # eager: the rules as they run outside any transformation
        got["vjp"], want["vjp"] = _vjp_of(custom_fn, float_nums)(floats, args, probes["ct"]), want["jit"]
    got["value"], want["value"] = (got["value"],), (want["value"],)
    rows = []
    for check in checks:
        argnums = [None] if check == "value" else float_nums
        for i, g, w in zip(argnums, got[check], want[check]):
            rows.append(difference(check, i, g, w, rtol, atol))
    report = VjpReport(tuple(rows))
    if raise_on_failure and not report.ok:
        raise CheckFailed(f"custom VJP differs from the reference:\n{report}")
    return report


def _vjp_of(fn, float_nums):
    """``cotangents(floats, fixed, ct)``: the VJP of ``fn`` with respect to its floating arguments only."""

    def with_floats(fixed):
        def call(*floats):
            full = list(fixed)
            for i, value in zip(float_nums, floats):
                full[i] = value
            return fn(*full)

        return call

    def cotangents(floats, fixed, ct):
        _, pullback = jax.vjp(with_floats(fixed), *floats)
        return pullback(ct)

    return cotangents


def _probes(floats, out, seed, batch=3):
    """The random inputs of the checks, drawn with NumPy (no compilation per shape).

    ``ct`` a cotangent of the output ``out``; ``stacked`` and ``cts``:
    ``batch`` perturbed copies of the floating inputs and cotangents for the
    ``vmap`` check; ``directions`` for the second-order check.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, dtype):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    ct = normal(out.shape, out.dtype)
    stacked = tuple(
        f + 0.1 * jnp.arange(batch, dtype=f.dtype).reshape(-1, *[1] * f.ndim) * normal((batch, *f.shape), f.dtype)
        for f in floats
    )
    cts = normal((batch, *ct.shape), ct.dtype)
    return {"ct": ct, "stacked": stacked, "cts": cts, "directions": tuple(normal(f.shape, f.dtype) for f in floats)}


def _all_checks(fn, float_nums, args, probes):
    """Every compared quantity of ``fn``, computed in one compiled function."""
    vjp, ct = _vjp_of(fn, float_nums), probes["ct"]

    def second_order(fl, fixed):
        inner = lambda fl: sum(jnp.vdot(c, d) for c, d in zip(vjp(fl, fixed, ct), probes["directions"]))  # noqa: E731
        return jax.grad(inner)(fl)

    @jax.jit
    def run(floats, fixed):
        return {
            "value": fn(*fixed),
            "jit": vjp(floats, fixed, ct),
            "vmap": jax.vmap(lambda fl, c: vjp(fl, fixed, c))(probes["stacked"], probes["cts"]),
            "second_order": second_order(floats, fixed),
        }

    return run(tuple(args[i] for i in float_nums), args)
