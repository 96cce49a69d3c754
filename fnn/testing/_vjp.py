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

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _precision
from fnn._errors import CheckFailed, InputError
from fnn._gradcheck.compare import DEFAULT_TOLERANCES, difference
from fnn._gradcheck.report import Column, Report, number

VJP_CHECKS = ("value", "vjp", "jit", "vmap", "second_order")


#: The columns of :func:`compare_vjp`'s report.
COLUMNS = (
    Column("check", "the check and the input compared (out: the output)", lambda d: d.name),
    Column("max abs", "the largest |custom - reference| entry", lambda d: number(d.max_abs, ".2e")),
    Column(
        "max rel",
        "max abs over the largest |reference| entry (fnn.testing.relative_error)",
        lambda d: number(d.max_rel, ".2e"),
    ),
    Column("max |ref|", "the largest |reference| entry", lambda d: number(d.scale, ".2e")),
    Column("rtol", "the relative tolerance", lambda d: number(d.rtol)),
    Column("atol", "the absolute tolerance; passes when max abs <= atol + rtol * max |ref|", lambda d: number(d.atol)),
    Column("ok", "yes, or NO when the difference exceeds its tolerance", lambda d: "yes" if d.passed else "NO"),
)


def _is_float(x):
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


@_precision.at_full
def compare_vjp(custom_fn, reference_fn, *args, rtol=None, atol=None, seed=0, checks=VJP_CHECKS, raise_on_failure=True):
    """Compares ``custom_fn`` with ``reference_fn`` (same signature) at ``args``.

    Args:
      custom_fn: the function under test, usually a ``jax.custom_vjp`` op.
      reference_fn: a trusted implementation, usually differentiated by JAX.
      *args: example inputs; floating ones are differentiated, the rest held fixed.
      rtol, atol: tolerances, a difference passing when
        ``max |a - e| <= atol + rtol * max |e|``; by default from
        :data:`DEFAULT_TOLERANCES` for the lowest-precision floating input.
      seed: seeds the random cotangents and perturbations.
      checks: which of :data:`VJP_CHECKS` to run.
      raise_on_failure: raise ``AssertionError`` (with the report) if any row
        exceeds the tolerance.

    Returns:
      A :class:`fnn.testing.Report` whose rows are
      :class:`fnn.testing.Difference`, one per check and input (named like
      ``"vjp[0]"``), with the max absolute and relative difference.
    """
    unknown = set(checks) - set(VJP_CHECKS)
    if unknown:
        raise InputError(f"unknown checks {sorted(unknown)}; expected a subset of {VJP_CHECKS}")
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
    report = Report("compare_vjp(custom_fn, reference_fn)", tuple(rows), COLUMNS, "name", {"seed": seed})
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
