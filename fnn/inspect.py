"""Gradient paths side by side: accuracy, compiled code, memory, residuals and step time.

:func:`compare_paths` takes any model, loss and batch and, for each of a
subset of :data:`fnn.PATHS`, measures

- the gradient's agreement with a float64 reference (the ``autodiff`` path on
  float64 copies of the parameters and inputs), leaf by leaf;
- the jitted SGD step (:func:`fnn.train.sgd_update`): its compile time, XLA's
  memory analysis and the op counts of its optimised HLO, with the difference
  from a reference path's counts;
- the residuals, the values the forward pass keeps for the backward pass
  (``jax.ad_checkpoint.print_saved_residuals``);
- optionally the step time, timed against the reference path's by
  :func:`fnn.bench.compare` (interleaved rounds, bootstrap interval, verdict).

The pieces (:func:`gradient_errors`, :func:`reference_grads`,
:func:`memory`, :func:`residuals`, :func:`hlo_counts`, :func:`op_diff`) work
on their own too. Example::

    jax.config.update("jax_enable_x64", True)  # or let compare_paths use jax.enable_x64
    model, loss = fnn.nn.mlp([784, 500, 10]), fnn.losses.cross_entropy
    _, params = model.init(jax.random.key(0), (784,))
    report = fnn.inspect.compare_paths(model, loss, params, x, labels, timing=False)
    print(report)                  # one line per path
    report["custom"].max_rel_err   # worst leaf's relative error against float64
"""

import contextlib
import dataclasses
import io
import re
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fnn import bench
from fnn.paths import PATHS, check_path, value_and_grad
from fnn.train import sgd_update

__all__ = [
    "PathReport",
    "Report",
    "aval_bytes",
    "backprop_as_one_vjp",
    "compare_paths",
    "compile_step",
    "gradient_errors",
    "hlo_counts",
    "memory",
    "op_diff",
    "reference_grads",
    "residuals",
]

#: Default SGD step size of the compiled and timed steps: small, so that the step stays near its inputs.
LEARNING_RATE = 0.01
#: HLO ops that move no data and do no arithmetic; left out of the op counts.
BOOKKEEPING = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
#: The op-count scopes of :func:`hlo_counts` that :class:`PathReport` diffs against the reference path.
HLO_SCOPES = ("ops_top", "ops_all")
_SOURCE_ROOT = f"{Path(__file__).resolve().parents[1]}/"  # stripped from residual sources


# ---------------------------------------------------------------- accuracy
def _floating(a):
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    return jnp.issubdtype(dtype, jnp.floating)


def _as_float64(tree):
    """``tree`` with every floating leaf cast to float64 (labels and other integers kept)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if _floating(a) else jnp.asarray(a), tree)


def _x64():
    """A context in which float64 exists: a no-op when ``jax_enable_x64`` is on, else ``jax.enable_x64(True)``."""
    if jax.config.jax_enable_x64:
        return contextlib.nullcontext()
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    raise RuntimeError(
        "the float64 reference needs 64-bit types: call jax.config.update('jax_enable_x64', True) "
        "at startup (or set JAX_ENABLE_X64=1)"
    )


def reference_grads(model, loss, params, x, targets):
    """The float64 gradient: the ``autodiff`` path on float64 copies of ``params``, ``x`` and ``targets``.

    Floating leaves are cast to float64 (integer labels are kept). Works
    whether or not ``jax_enable_x64`` is on: when it is off, the reference is
    computed inside ``jax.enable_x64(True)``.

    Returns:
      The gradient in the structure of ``params``, every floating leaf float64.
    """
    with _x64():
        params64, x64, targets64 = _as_float64((params, x, targets))
        return jax.jit(value_and_grad(model, loss, path="autodiff"))(params64, x64, targets64)[1]


def gradient_errors(grads, reference):
    """Per-leaf error of ``grads`` against ``reference`` (same structure), computed in float64 on the host.

    For each floating leaf ``g`` with reference ``r``:
    ``max_abs_err = max|g - r|`` and ``max_rel_err = max|g - r| / max|r|``
    (relative to the leaf's largest reference entry, so that entries near zero
    do not blow it up; ``0`` when both are exactly zero, ``inf`` when only the
    reference is).

    Returns:
      ``[{"leaf": "[0]['w']", "max_abs_err": float, "max_rel_err": float}, ...]``,
      the leaf keyed by its tree path (``jax.tree_util.keystr``).
    """
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    references = jax.tree.leaves(reference)
    if len(leaves) != len(references):
        raise ValueError(f"grads have {len(leaves)} leaves, the reference {len(references)}")
    per_leaf = []
    for (key, g), r in zip(leaves, references):
        if not (_floating(g) and _floating(r)):  # float0 gradients of integer leaves
            continue
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g.shape != r.shape:
            raise ValueError(f"leaf {jax.tree_util.keystr(key)}: shape {g.shape}, reference {r.shape}")
        abs_err = float(np.max(np.abs(g - r), initial=0.0))
        scale = float(np.max(np.abs(r), initial=0.0))
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        per_leaf.append({"leaf": jax.tree_util.keystr(key), "max_abs_err": abs_err, "max_rel_err": rel_err})
    return per_leaf


# ---------------------------------------------------------------- compiled step
def compile_step(model, loss, path, params, x, targets, learning_rate=LEARNING_RATE):
    """Lowers and compiles the jitted SGD step ``(params, (x, targets)) -> (params, {"loss": L})``, no donation.

    Returns:
      ``(compiled, seconds)``: the ``jax.stages.Compiled`` step and the wall
      seconds of lowering plus compiling.
    """
    start = time.perf_counter()
    compiled = jax.jit(sgd_update(model, loss, learning_rate, path=path)).lower(params, (x, targets)).compile()
    return compiled, time.perf_counter() - start


def memory(compiled):
    """XLA's memory analysis of a compiled function, in bytes.

    ``temp_bytes``: scratch buffers live during the call (activations,
    residuals, intermediate gradients); ``arg_bytes`` / ``out_bytes``: the
    arguments and outputs. ``None`` each where the backend gives no analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {"temp_bytes": None, "arg_bytes": None, "out_bytes": None}
    return {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "arg_bytes": int(stats.argument_size_in_bytes),
        "out_bytes": int(stats.output_size_in_bytes),
    }


# ---------------------------------------------------------------- residuals
def aval_bytes(aval):
    """Bytes of a short aval string such as ``f32[8,16]``, ``bf16[]``, ``bool[8]`` or ``f8_e4m3fn[4]``."""
    match = re.fullmatch(r"([a-z]+)(\d*)(?:_\w+)?\[([\d,]*)\]", aval)
    if match is None:
        raise ValueError(f"not a short aval string: {aval!r}")
    kind, bits, dims = match.groups()
    itemsize = int(bits) // 8 if bits else 1  # bool (pred) is one byte
    return itemsize * int(np.prod([int(d) for d in dims.split(",") if d]))


def objective(model, loss, path):
    """The scalar loss ``(params, x, targets) -> L`` that JAX differentiates (``autodiff`` and ``custom`` paths)."""
    if check_path(path) == "custom":
        model, loss = model.custom, loss.custom

    def fn(params, x, targets):
        return loss.apply(model.apply(params, x), targets)

    return fn


def backprop_as_one_vjp(model, loss):
    """The ``backprop`` path's loss as one ``custom_vjp`` ``(params, x, targets) -> L``.

    ``fwd`` is the reverse sweep's forward half (``model.forward``, then
    ``loss.forward``) and keeps the parameters and what those save; ``bwd`` is
    its backward half (``loss.backward``, then ``model.backward``). So
    ``print_saved_residuals`` lists what the sweep keeps like the other
    paths' residuals, and its gradient with respect to ``params`` equals
    ``fnn.value_and_grad(model, loss, path="backprop")``'s (``x`` and
    ``targets`` get none).
    """

    @jax.custom_vjp
    def fn(params, x, targets):
        return loss.apply(model.apply(params, x), targets)

    def fwd(params, x, targets):
        outputs, saved = model.forward(params, x)
        value, loss_saved = loss.forward(outputs, targets)
        return value, (params, saved, loss_saved)

    def bwd(kept, g):
        params, saved, loss_saved = kept
        grads, _ = model.backward(params, saved, loss.backward(loss_saved, g))
        return grads, None, None

    fn.defvjp(fwd, bwd)
    return fn


def residuals(model, loss, path, params, x, targets):
    """What the forward pass of ``path`` keeps for its backward pass.

    Parses ``jax.ad_checkpoint.print_saved_residuals`` (one ``aval source``
    line per residual) of :func:`objective` (``autodiff``, ``custom``) or
    :func:`backprop_as_one_vjp` (``backprop``), differentiated with respect to
    every argument.

    Returns:
      ``{"of": description, "saved": [{"aval": "f32[100,500]", "bytes": int,
      "source": "output of ... from fnn/nn/activations.py:48:8 (...)"}, ...],
      "total_bytes": all saved bytes, "computed_bytes": those not arguments}``.
      ``computed_bytes`` leaves out the parameters and inputs, which are alive
      anyway; it is what the path adds to memory between forward and backward.
    """
    from jax.ad_checkpoint import print_saved_residuals

    fn = backprop_as_one_vjp(model, loss) if check_path(path) == "backprop" else objective(model, loss, path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(fn, params, x, targets)
    saved = []
    for line in printed.getvalue().splitlines():
        aval, _, source = line.partition(" ")
        saved.append({"aval": aval, "bytes": aval_bytes(aval), "source": source.replace(_SOURCE_ROOT, "")})
    of = f"fnn.value_and_grad(model, {loss!r}, path={path!r})"
    if path == "backprop":
        of += f": model.forward and {loss!r}.forward"
    return {
        "of": of,
        "saved": saved,
        "total_bytes": sum(r["bytes"] for r in saved),
        "computed_bytes": sum(r["bytes"] for r in saved if not r["source"].startswith("from the argument")),
    }


# ---------------------------------------------------------------- compiled code
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(.+)$")


def _op_kind(rest):
    """Opcode of an HLO instruction's right-hand side; fusions as ``fusion:kLoop``, ``fusion:kCustom``, ..."""
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1]
    opcode = re.match(r"\s*([\w\-]+)\(", rest).group(1)
    if opcode == "fusion":
        return "fusion:" + re.search(r"kind=(k\w+)", rest).group(1)
    return opcode


def _computations(hlo_text):
    """``{name: (is_entry, [instruction right-hand sides])}`` of an HLO module's text."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            current = computations[header.group(2)] = (bool(header.group(1)), [])
        elif current is not None and (instruction := _INSTRUCTION.match(line)):
            current[1].append(instruction.group(1))
    return computations


def hlo_counts(hlo_text):
    """Op counts of optimised HLO text (``compiled.as_text()``).

    ``ops_top`` counts the ops of the entry computation and of the loop
    bodies and conditions it reaches (the kernels a call launches);
    ``ops_all`` those of every computation, inside fusions too. Bookkeeping
    ops (:data:`BOOKKEEPING`) are left out. ``dots`` and ``convolutions``
    count every ``dot`` and ``convolution``, also those XLA CPU wraps in
    ``kind=kCustom`` fusions (matmul kernels); ``dots_unfused`` the top-level
    ones; ``kernels`` the top-level ops that do work (fusions, unfused dots
    and other ops); ``fusions_*`` top-level fusions by kind; ``other_ops``
    top-level ops that are neither fusions nor dots.
    """
    computations = _computations(hlo_text)
    top = [name for name, (is_entry, _) in computations.items() if is_entry]
    for name in top:  # loop bodies and conditions reachable from the entry
        for rest in computations[name][1]:
            top += [n for n in re.findall(r"(?:body|condition)=%([\w.\-]+)", rest) if n not in top]

    def count(names):
        kinds = (_op_kind(rest) for name in names for rest in computations[name][1])
        return Counter(kind for kind in kinds if kind not in BOOKKEEPING)

    ops_top, ops_all = count(top), count(computations)
    fusions = {kind: n for kind, n in ops_top.items() if kind.startswith("fusion:")}
    custom, loop = fusions.get("fusion:kCustom", 0), fusions.get("fusion:kLoop", 0)
    return {
        "dots": ops_all["dot"],
        "dots_unfused": ops_top["dot"],
        "convolutions": ops_all["convolution"],
        "fusions_custom": custom,
        "fusions_loop": loop,
        "fusions_other": sum(fusions.values()) - custom - loop,
        "other_ops": sum(ops_top.values()) - sum(fusions.values()) - ops_top["dot"],
        "kernels": sum(ops_top.values()),
        "ops_top": dict(sorted(ops_top.items())),
        "ops_all": dict(sorted(ops_all.items())),
    }


def op_diff(counts, reference):
    """Non-zero differences ``counts - reference`` of two op-count dicts (``{}``: the same ops)."""
    keys = sorted({*counts, *reference})
    return {k: counts.get(k, 0) - reference.get(k, 0) for k in keys if counts.get(k, 0) != reference.get(k, 0)}


# ---------------------------------------------------------------- the report
@dataclasses.dataclass(frozen=True)
class PathReport:
    """One gradient path's measurements (see :func:`compare_paths`).

    Attributes:
      path: the path's name, one of :data:`fnn.PATHS`.
      per_leaf: :func:`gradient_errors` against the float64 reference, one
        dict per floating parameter leaf.
      max_abs_err, max_rel_err: the worst leaf's errors.
      compile_s: seconds to lower and compile the SGD step.
      temp_bytes, arg_bytes, out_bytes: :func:`memory` of the compiled step.
      residuals: :func:`residuals` of the path.
      hlo: :func:`hlo_counts` of the compiled step.
      hlo_diff: ``{"ops_top": ..., "ops_all": ...}``, :func:`op_diff` of
        ``hlo`` against the reference path's (``{}`` each for the reference).
      timing: the step's :class:`fnn.bench.Result` against the reference
        path (``ratio``, ``ci_low``, ``ci_high``, ``cpu_ratio``, ``verdict``,
        ``median_s`` per step, ...); ``None`` when not timed.
    """

    path: str
    per_leaf: tuple
    max_abs_err: float
    max_rel_err: float
    compile_s: float
    temp_bytes: int | None
    arg_bytes: int | None
    out_bytes: int | None
    residuals: dict
    hlo: dict
    hlo_diff: dict
    timing: bench.Result | None = None

    def to_dict(self):
        """The row as a JSON-ready dict (``timing`` as :meth:`fnn.bench.Result.to_dict` or ``None``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return fields | {
            "per_leaf": [dict(leaf) for leaf in self.per_leaf],
            "timing": None if self.timing is None else self.timing.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class Report:
    """The result of :func:`compare_paths`: one :class:`PathReport` per path, in the order asked for.

    Attributes:
      reference: the path the HLO diffs and step-time ratios are taken against.
      rows: the paths' reports.
      settings: how it was measured (``learning_rate``, and when timed
        ``rounds``, ``block_s``, ``confidence``, ``seed``).
    """

    reference: str
    rows: tuple
    settings: dict

    @property
    def paths(self):
        """The paths measured, in order."""
        return tuple(row.path for row in self.rows)

    def __getitem__(self, path):
        """The :class:`PathReport` of ``path``."""
        for row in self.rows:
            if row.path == path:
                return row
        raise KeyError(f"no path {path!r} in this report; it has {list(self.paths)}")

    def to_dict(self):
        """The report as a JSON-ready dict: ``reference``, ``settings`` and ``rows`` (:meth:`PathReport.to_dict`)."""
        return {"reference": self.reference, "settings": dict(self.settings), "rows": [r.to_dict() for r in self.rows]}

    def __str__(self):
        """A table, one line per path, then how each path's top-level HLO ops differ from the reference path's."""
        header = ["path", "max rel err", "compile s", "temp bytes", "residual bytes", "kernels", "dots", "convs",
                  "step ms", f"ratio to {self.reference} [CI]", "cpu ratio", "verdict"]  # fmt: skip
        lines = []
        for r in self.rows:
            t = r.timing
            timing = ["-"] * 4 if t is None else [
                f"{1e3 * t.median_s:.3f}", f"{t.ratio:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}]", f"{t.cpu_ratio:.3f}",
                t.verdict,
            ]  # fmt: skip
            lines.append([
                r.path, f"{r.max_rel_err:.1e}", f"{r.compile_s:.2f}", _count(r.temp_bytes),
                _count(r.residuals["computed_bytes"]), str(r.hlo["kernels"]), str(r.hlo["dots"]),
                str(r.hlo["convolutions"]), *timing,
            ])  # fmt: skip
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines]]
        diffs = [f"{r.path} vs {self.reference}: {r.hlo_diff['ops_top'] or 'same top-level ops'}"
                 for r in self.rows if r.path != self.reference]  # fmt: skip
        return "\n".join(text + diffs)


def _count(n):
    return "-" if n is None else f"{n:,}"


def _check_paths(paths, reference):
    if isinstance(paths, str):
        raise TypeError(f"paths must be a sequence of names, e.g. ('autodiff', 'custom'), not the string {paths!r}")
    paths = tuple(paths)
    if not paths:
        raise ValueError(f"paths must name at least one of {PATHS}")
    for path in paths:
        check_path(path)
    if len(set(paths)) != len(paths):
        raise ValueError(f"paths must not repeat a path, got {paths}")
    if check_path(reference) not in paths:
        raise ValueError(f"reference path {reference!r} must be one of the paths compared, {paths}")
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
      rounds, block_s, margin, confidence, seed: passed to :func:`fnn.bench.compare`.
      learning_rate: the SGD step size of the compiled and timed steps.

    Returns:
      A :class:`Report`, one :class:`PathReport` per path in the order of ``paths``.
    """
    paths = _check_paths(paths, reference)
    grad_fns = {path: value_and_grad(model, loss, path=path) for path in paths}  # checks model and loss
    sgd_update(model, loss, learning_rate, path=reference)  # checks learning_rate
    reference_grad = reference_grads(model, loss, params, x, targets)
    steps = {path: compile_step(model, loss, path, params, x, targets, learning_rate) for path in paths}
    counts = {path: hlo_counts(compiled.as_text()) for path, (compiled, _) in steps.items()}
    times = {}
    settings = {"learning_rate": learning_rate}
    if timing:
        updates = {path: sgd_update(model, loss, learning_rate, path=path) for path in paths}
        times = bench.compare(updates, params, (x, targets), baseline=reference, margin=margin, rounds=rounds,
                              block_s=block_s, confidence=confidence, seed=seed)  # fmt: skip
        settings |= {"rounds": rounds, "block_s": block_s, "margin": margin, "confidence": confidence, "seed": seed}
    rows = []
    for path in paths:
        compiled, compile_s = steps[path]
        per_leaf = gradient_errors(jax.jit(grad_fns[path])(params, x, targets)[1], reference_grad)
        rows.append(PathReport(
            path=path,
            per_leaf=tuple(per_leaf),
            max_abs_err=max((leaf["max_abs_err"] for leaf in per_leaf), default=0.0),
            max_rel_err=max((leaf["max_rel_err"] for leaf in per_leaf), default=0.0),
            compile_s=compile_s,
            **memory(compiled),
            residuals=residuals(model, loss, path, params, x, targets),
            hlo=counts[path],
            hlo_diff={scope: op_diff(counts[path][scope], counts[reference][scope]) for scope in HLO_SCOPES},
            timing=times.get(path),
        ))  # fmt: skip
    return Report(reference, tuple(rows), settings)
