"""The paths compared for any model: :func:`compare_paths`, a report with one :class:`PathRow` per path."""

import dataclasses

import jax
import jax.numpy as jnp

from fnn import _precision, bench, context
from fnn._errors import InputError, UsageError
from fnn._gradcheck.report import Column, Report
from fnn._gradcheck.residuals import residuals
from fnn._paths import PATHS, check_pair, check_path, value_and_grad
from fnn.inspect._accuracy import gradient_errors, reference_grads
from fnn.inspect._compiled import LEARNING_RATE, compile_step, memory
from fnn.inspect._hlo import hlo_counts, op_diff
from fnn.train import sgd_update

#: The op-count scopes of :func:`fnn.inspect.hlo_counts` that :class:`PathRow` diffs against the reference path.
HLO_SCOPES = ("ops_top", "ops_all")


@dataclasses.dataclass(frozen=True)
class PathRow:
    """One gradient path's measurements: a row of :func:`compare_paths`' report.

    Attributes:
      path: the path's name, one of :data:`fnn.PATHS`.
      per_leaf: :func:`gradient_errors` against the float64 reference, one
        dict per floating parameter leaf.
      max_abs_err, max_rel_err: the worst leaf's errors.
      compile_s: seconds to lower and compile the SGD step.
      temp_bytes, arg_bytes, out_bytes, alias_bytes: :func:`memory` of the compiled step.
      residuals: :func:`residuals` of the path.
      hlo: :func:`hlo_counts` of the compiled step.
      hlo_diff: ``{"ops_top": ..., "ops_all": ...}``, :func:`op_diff` of
        ``hlo`` against the reference path's (``{}`` each for the reference).
      flops: XLA's FLOP count of the compiled step.
      timing: the step's :class:`fnn.bench.Result` against the reference
        path (``ratio``, ``ci_low``, ``ci_high``, ``cpu_ratio``, ``verdict``,
        ``median_s`` per step, the achieved ``flops_per_s`` and its
        ``machine_fraction``, ...); ``None`` when not timed.
    """

    path: str
    per_leaf: tuple
    max_abs_err: float
    max_rel_err: float
    compile_s: float
    temp_bytes: int | None
    arg_bytes: int | None
    out_bytes: int | None
    alias_bytes: int | None
    residuals: dict
    hlo: dict
    hlo_diff: dict
    flops: float
    timing: bench.Result | None = None

    def to_dict(self):
        """The row as a JSON-ready dict (``timing`` as :meth:`fnn.bench.Result.to_dict` or ``None``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return fields | {
            "per_leaf": [dict(leaf) for leaf in self.per_leaf],
            "timing": None if self.timing is None else self.timing.to_dict(),
        }


def columns(reference):
    """The columns of :func:`compare_paths`' report, step times relative to the ``reference`` path."""

    def timed(cell):
        return lambda r: "-" if r.timing is None else cell(r.timing)

    return (
        Column("path", "the gradient path (one of fnn.PATHS)", lambda r: r.path),
        Column(
            "max rel err",
            "the worst parameter leaf's gradient error, relative to the float64 reference's largest entry",
            lambda r: f"{r.max_rel_err:.1e}",
        ),
        Column("compile s", "seconds to lower and compile one SGD step", lambda r: f"{r.compile_s:.2f}"),
        Column(
            "temp bytes", "the compiled step's temporary memory (XLA's memory_analysis)", lambda r: _count(r.temp_bytes)
        ),
        Column(
            "residual bytes",
            "bytes the forward pass keeps for the backward pass (fnn.inspect.residuals)",
            lambda r: _count(r.residuals["computed_bytes"]),
        ),
        Column(
            "kernels",
            "top-level ops the compiled step launches, bookkeeping ops left out (a fusion is one kernel)",
            lambda r: str(r.hlo["kernels"]),
        ),
        Column(
            "dots", "matrix products (HLO dot) in the compiled step, fused ones included", lambda r: str(r.hlo["dots"])
        ),
        Column(
            "convs",
            "convolutions (HLO convolution) in the compiled step, fused ones included",
            lambda r: str(r.hlo["convolutions"]),
        ),
        Column("step ms", "median wall time of one step (-: not timed)", timed(lambda t: f"{1e3 * t.median_s:.3f}")),
        Column(
            "GFLOP/s",
            "the achieved rate: XLA's FLOP count of the step over its median time",
            timed(lambda t: f"{t.flops_per_s / 1e9:.1f}"),
        ),
        Column(
            "of machine",
            "the achieved rate's fraction of the machine's matrix-product rate (fnn.bench.machine_rate)",
            timed(lambda t: f"{t.machine_fraction:.0%}"),
        ),
        Column(
            f"ratio to {reference} [CI]",
            f"median step time over the {reference} path's, with its bootstrap confidence interval",
            timed(lambda t: f"{t.ratio:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}]"),
        ),
        Column(
            "cpu ratio",
            f"CPU time over the {reference} path's for the same steps (below 1: less work, or less overlap)",
            timed(lambda t: f"{t.cpu_ratio:.3f}"),
        ),
        Column(
            "verdict",
            "faster, slower or tie: whether the interval lies below, above or around 1 (fnn.bench.verdict)",
            timed(lambda t: t.verdict),
        ),
    )


def _op_changes(diff):
    """``{"fusion:kLoop": -1, "dot": 2}`` as ``"fusion:kLoop -1, dot +2"``; ``"the same"`` when empty."""
    return ", ".join(f"{op} {n:+d}" for op, n in sorted(diff.items())) or "the same"


def _count(n):
    return "-" if n is None else f"{n:,}"


def _check_paths(paths, reference):
    if isinstance(paths, str):
        raise UsageError(f"paths must be a sequence of names, e.g. ('autodiff', 'custom'), not the string {paths!r}")
    paths = tuple(paths)
    if not paths:
        raise InputError(f"paths must name at least one of {PATHS}")
    for path in paths:
        check_path(path)
    if len(set(paths)) != len(paths):
        raise InputError(f"paths must not repeat a path, got {paths}")
    if check_path(reference) not in paths:
        raise InputError(f"reference path {reference!r} must be one of the paths compared, {paths}")
    return paths


def compare_paths(
    model,
    loss,
    params,
    x,
    targets,
    *,
    paths=PATHS,
    reference="autodiff",
    timing=True,
    rounds=16,
    block_s=0.2,
    margin=0.0,
    learning_rate=LEARNING_RATE,
    confidence=0.95,
    seed=0,
    rate=None,
    state=None,
    key=None,
    train=True,
):
    """Compares gradient paths of ``model`` and ``loss`` on one batch.

    Args:
      model: any :class:`fnn.module.Module`; ``params`` its parameters.
      loss: any :class:`fnn.module.Loss`.
      params, x, targets: one batch, ``x`` with the batch axis first and
        ``targets`` as the loss expects them (e.g. int labels ``[N]``).
      paths: the paths to compare, a subset of :data:`fnn.PATHS`.
      reference: the path (one of ``paths``) the HLO op counts and the step
        times are compared with. The gradient is always compared with the
        float64 ``autodiff`` gradient (:func:`reference_grads`).
      timing: whether to time the SGD steps (:func:`fnn.bench.compare`;
        takes about ``len(paths) * (rounds + 2) * block_s`` seconds).
      rounds, block_s, margin, confidence, seed, rate: passed to
        :func:`fnn.bench.compare` (``rate``: the limit achieved rates are set
        against, by default :func:`fnn.bench.machine_rate`).
      learning_rate: the SGD step size of the compiled and timed steps.
      state, key, train: the context of a model with state or randomness
        (batch norm, dropout), fixed for every path
        (by default ``model.init_state``'s state,
        the key ``jax.random.key(seed)``, training mode).

    Returns:
      A :class:`fnn.testing.Report` with one :class:`PathRow` per path, in
      the order of ``paths`` (``report["custom"]``); its ``settings`` hold
      the ``reference`` path and how it was measured; ``str(report)`` is a
      table (every column explained below it), then how each path's
      top-level HLO ops differ from the reference's (``fusion:kLoop -1``:
      one elementwise loop fusion fewer; ``fusion:kOutput``, one fused into
      its consumer's output).

    Examples:
      >>> import jax, jax.numpy as jnp, fnn
      >>> model = fnn.nn.mlp([8, 16, 3])
      >>> _, params = model.init(jax.random.key(0), (8,))
      >>> x, labels = jax.random.normal(jax.random.key(1), (4, 8)), jnp.array([0, 1, 2, 0])
      >>> report = fnn.inspect.compare_paths(model, fnn.losses.cross_entropy, params, x, labels, timing=False)
      >>> [row.path for row in report.rows], bool(report["custom"].max_rel_err < 1e-5)
      (['autodiff', 'custom', 'backprop'], True)
    """
    paths = _check_paths(paths, reference)
    check_pair(model, loss)
    model = context.fix("compare_paths", model, jnp.shape(x)[1:], state=state, key=key, train=train, seed=seed)[0]
    grad_fns = {path: value_and_grad(model, loss, path=path) for path in paths}  # checks model and loss
    sgd_update(model, loss, learning_rate, path=reference)  # checks learning_rate
    reference_grad = reference_grads(model, loss, params, x, targets)
    steps = {path: compile_step(model, loss, path, params, x, targets, learning_rate) for path in paths}
    counts = {path: hlo_counts(compiled.as_text()) for path, (compiled, _) in steps.items()}
    timed = {"rounds": rounds, "block_s": block_s, "margin": margin, "confidence": confidence, "seed": seed}
    settings = {"reference": reference, "learning_rate": learning_rate, "error_precision": _precision.FULL}
    settings |= timed if timing else {}
    times = {}
    if timing:
        updates = {path: sgd_update(model, loss, learning_rate, path=path) for path in paths}
        times = bench.compare(updates, params, (x, targets), baseline=reference, rate=rate, **timed)
    rows = []
    for path in paths:
        compiled, compile_s = steps[path]
        with _precision.full():  # the rule's error, not the backend's float32 products (TF32 on a GPU)
            per_leaf = gradient_errors(jax.jit(grad_fns[path])(params, x, targets)[1], reference_grad)
        rows.append(
            PathRow(
                path=path,
                per_leaf=tuple(per_leaf),
                max_abs_err=max((leaf["max_abs_err"] for leaf in per_leaf), default=0.0),
                max_rel_err=max((leaf["max_rel_err"] for leaf in per_leaf), default=0.0),
                compile_s=compile_s,
                **memory(compiled),
                residuals=residuals(model, loss, path, params, x, targets),
                hlo=counts[path],
                hlo_diff={scope: op_diff(counts[path][scope], counts[reference][scope]) for scope in HLO_SCOPES},
                flops=bench.flops(compiled),
                timing=times.get(path),
            )
        )
    notes = tuple(
        f"top-level HLO ops, {r.path} minus {reference}: {_op_changes(r.hlo_diff['ops_top'])}"
        for r in rows
        if r.path != reference
    )
    subject = f"compare_paths({model!r}, {loss!r}, batch {tuple(jnp.shape(x))})"
    return Report(subject, tuple(rows), columns(reference), "path", settings, notes)
