"""The checks of one draw, each a function of a :class:`fnn._gradcheck.problem.Problem` returning a
:class:`fnn._gradcheck.report.Check`.

**Structure.** Shapes, dtypes and pytree structure: of the output against ``init``'s promise, of the
gradient against the primal.

- the output (a module's ``y``, a loss's scalar) has the shape ``init``
  promises (the batch axis first; ``()`` for a loss) and the dtype of the
  floating inputs; ``forward``'s output equals ``apply``'s;
- the gradient ``(dparams, dx)`` has the pytree structure of
  ``(params, x)``, every floating leaf the shape and dtype of its primal
  (float32 in, float32 out), and every integer leaf no gradient: ``backward``
  returns ``None`` for it (``jax.vjp`` turns whatever it gets into ``float0``,
  so only the ``backprop`` path can tell).

**Paths and transformations.** The rule on every path and under every transformation, against autodiff in float64.

Each check compares a gradient of the draw with the same gradient by the
``autodiff`` path (``jax.vjp`` of the plain forward code), leaf by leaf,
relative to the leaf's largest entry, each leaf to the tolerance of its
conditioning (:mod:`fnn._gradcheck.compare`: 1.8e-12 where it is well
conditioned, more where autodiff's own result moves when the draw is
nudged by an ulp):

- ``backward``: the ``backprop`` path (``forward``, then ``backward`` on what
  it saved), under ``jax.jit`` as training runs it (a rule that branches in
  Python on values fails here);
- ``custom``, ``custom_jit``: the custom path made of the rule, eagerly
  (op by op) and jitted;
- ``custom_vmap``: per-example gradients, ``jax.vmap`` over the rows;
- ``custom_grad_of_grad``: reverse over reverse, the gradient of
  ``<(dparams, dx), w>`` (a Hessian-vector product for a loss);
- ``forward_mode``: ``jax.jvp`` along ``w`` on the ``custom`` path, whose
  JVP is the transpose of the rule (a wrong backward gives a wrong JVP),
  against autodiff's;
- ``forward_sweep``: the same directional derivative by the ``backprop``
  path's forward sweep (``forward``, then the transpose of ``backward``,
  under ``jax.jit``), against autodiff's.

**Determinism.** Determinism: the same draw gives bitwise the same gradient twice, on every rule path, eager and jitted.

**Saved.** What the rule keeps between forward and backward, against what autodiff keeps (reported, never failing).

**Context.** Modules with state or a random key: the context a check runs in, and the ``context`` check.

A contextual module (batch norm, dropout, wiring around them; see
:mod:`fnn.module`) is checked in one fixed context: its state (by default
``init_state``'s), a key (by default ``jax.random.key(seed)``) and a mode.
:func:`resolve` fixes it with :func:`fnn.context.bind`, so every gradient
check sees a plain module whose rule is the contextual one's in that mode.
:func:`context` checks what binding hides: on each path, run as training
runs it (the new state an output of the differentiated function, never
differentiated), the outputs and the new state equal the module's own
forward pass's, so the same key gives the same mask on every path and the
state is carried out of the custom rule; in evaluation the state comes
back unchanged.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn import context as fnn_context
from fnn._errors import StructureError
from fnn._gradcheck.compare import against, against_autodiff, leaf_error, noted, tolerances
from fnn._gradcheck.dtypes import cast, rtol, x64
from fnn._gradcheck.gradients import COMPILER_OPTIONS, COTANGENT
from fnn._gradcheck.report import FAILED, INFO, PASSED, SKIPPED, Check
from fnn._gradcheck.residuals import residuals
from fnn._paths import PATHS, objective, sweep_forward


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
    detail = f"shape {shape} float64; forward's and the custom path's output against apply's"
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
    and dtypes (``backward``'s own output says which)."""
    for path in ("backprop", "custom"):
        found = gradient_mismatches(problem, problem.gradients(path)[2], np.float64, path)
        if found:
            where, what = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            return Check("structure", FAILED, where=where, detail=what + more)
    return Check("structure", PASSED, detail="the gradient's pytree, shapes and dtypes on backprop and custom")


def backward(problem):
    """``backward``: the backprop path, jitted."""
    got = problem.gradients("backprop")[2]
    return against_autodiff("backward", problem, got, "forward then backward (jitted) against autodiff's VJP")


def custom(problem):
    """``custom``: ``jax.vjp`` of the custom path's forward, eagerly."""
    got = problem.gradients("custom", eager=True)[2]
    return against_autodiff("custom", problem, got, "jax.vjp through the custom rules, eagerly")


def custom_jit(problem):
    """``custom_jit``: the custom path under ``jax.jit``."""
    return against_autodiff("custom_jit", problem, problem.gradients("custom")[2], "the custom path, jitted")


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
    return against("custom_vmap", problem, got, reference, detail)


def custom_grad_of_grad(problem):
    """``custom_grad_of_grad``: reverse over reverse, custom against autodiff."""
    try:
        problem.grad_of_grad("autodiff")
    except Exception as exc:  # autodiff itself cannot: there is nothing to hold the rule to
        return Check("custom_grad_of_grad", SKIPPED, detail=f"autodiff's own second order fails: {exc}")
    got = problem.grad_of_grad("custom")
    detail = "the gradient of <gradient, w>, reverse over reverse"
    reference = lambda nudge: problem.grad_of_grad("autodiff", nudge=nudge)  # noqa: E731
    return against("custom_grad_of_grad", problem, got, reference, detail)


def _forward_check(problem, name, path, detail):
    """``name``: the JVP along ``w`` on ``path`` against autodiff's, to the tolerance of its conditioning."""
    error, _ = leaf_error(problem.jvp(path), problem.jvp("autodiff"))
    (tol,) = tolerances(lambda nudge: problem.jvp("autodiff", nudge=nudge))
    status = PASSED if error <= tol else FAILED
    return noted(Check(name, status, float(error), tol, "jvp", detail))


def forward_mode(problem):
    """``forward_mode``: ``jax.jvp`` on the custom path (the transpose of the rule) against autodiff's."""
    return _forward_check(problem, "forward_mode", "custom", "jax.jvp along w through the transposed rule")


def forward_sweep(problem):
    """``forward_sweep``: the backprop path's forward sweep against autodiff's ``jax.jvp``."""
    return _forward_check(problem, "forward_sweep", "backprop", "forward, then the transposed backward, along w")


#: ``(path, eager)``: the rule's paths as they run op by op (Python re-run) and compiled (the kernels re-run).
RUNS = (("custom", True), ("backprop", False), ("custom", False))


def _bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def determinism(problem):
    """``determinism``: every floating leaf of a second run's gradient equals the first's bit for bit."""
    for path, eager in RUNS:
        first = problem.gradients(path, eager=eager)[2]
        second = problem.gradients(path, eager=eager, fresh=True)[2]
        pairs = zip(problem.names, problem.floating, problem.split(first), problem.split(second))
        for name, is_float, a, b in pairs:
            if is_float and not _bitwise_equal(a, b):
                mode = "eagerly" if eager else "jitted"
                return Check("determinism", FAILED, where=f"{name} ({path})", detail=f"two runs {mode} differ")
    runs = ", ".join(f"{path} {'eager' if eager else 'jitted'}" for path, eager in RUNS)
    return Check("determinism", PASSED, detail=f"bitwise equal twice: {runs}")


def saved(problem):
    """``saved``: bytes of ``saved`` (the backprop path's residuals) and of autodiff's residuals, in float64.

    Both as :func:`fnn.inspect.residuals` counts them: arrays computed by the
    forward pass, leaving out the parameters and inputs, which are alive anyway.
    """
    params, x, targets, _, _ = problem.data()
    with x64():
        kept = {
            path: residuals(problem.model, problem.loss, path, params, x, targets) for path in ("backprop", "autodiff")
        }
    rule, auto = kept["backprop"], kept["autodiff"]
    avals = ", ".join(r["aval"] for r in rule["saved"] if not r["source"].startswith("from the argument")) or "nothing"
    detail = (
        f"saved holds {rule['computed_bytes']} B computed ({avals}); autodiff's residuals "
        f"{auto['computed_bytes']} B (float64, beyond parameters and inputs)"
    )
    return Check("saved", INFO, where="", detail=detail)


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """The context a contextual module is checked in: the module itself, its ``state``, ``key`` and ``train``."""

    module: object
    state: object
    key: object
    train: bool

    def describe(self):
        mode = "training" if self.train else "evaluation"
        return f"{mode}{', fixed key' if self.module._has_randomness else ''}"


def resolve(module, input_shape, *, state, key, train, seed):
    """``(module to check, Context or None)``: ``module`` bound to its context (:func:`fnn.context.fix`, the state
    on the host in float64) if it is contextual, else as given."""
    if module._contextual and state is None:
        with x64():
            state = module.init_state(tuple(input_shape[1:]))
    state = None if state is None else cast(jax.device_get(state), np.float64)
    bound, state, key = fnn_context.fix(
        "check_module", module, input_shape[1:], state=state, key=key, train=train, seed=seed
    )
    return bound, (Context(module, state, key, train) if module._contextual else None)


def _run_on(module, train, path, params, x, targets, state, key):
    """``(outputs, new state)`` of ``module`` on ``path``, as a training step runs it (under ``jax.grad``)."""
    kwargs = {"state": () if state is None else state, "key": key, "train": train}
    if path == "backprop":
        _, outputs, _, new_state = sweep_forward(module, COTANGENT)(params, x, targets, **kwargs)
        return outputs, new_state
    return jax.grad(objective(module, COTANGENT, path), has_aux=True)(params, x, targets, **kwargs)[1]


@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=COMPILER_OPTIONS)
def _on_every_path(module, train, params, x, targets, state, key):
    """``{path: (outputs, new state)}`` for every path: compiled once per module object and mode, for every key."""
    return {path: _run_on(module, train, path, params, x, targets, state, key) for path in PATHS}


def _worst(got, want):
    """``(error, what)``: the largest :func:`leaf_error` over the outputs and the new state's leaves, and where."""
    flat = jax.tree_util.tree_flatten_with_path(want[1])[0]
    names = ["outputs", *(f"state{jax.tree_util.keystr(p)}" for p, _ in flat)]
    worst = (0.0, "")
    for name, a, e in zip(names, jax.tree.leaves(got), jax.tree.leaves(want)):
        error = np.inf if np.shape(a) != np.shape(e) else leaf_error(a, e)[0]
        worst = max(worst, (float(error), name))
    return worst


def _unchanged(new_state, state):
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))


def context(problem):
    """``context``: on every path the outputs and the new state equal the module's own forward's (float64)."""
    found = problem.context
    if found is None:
        return Check("context", SKIPPED, detail="keeps no state and draws no key")
    params, x, targets = problem.data()[:3]
    kwargs = {"state": () if found.state is None else found.state, "key": found.key, "train": found.train}
    with x64():
        want = jax.device_get(found.module.apply(params, x, **kwargs))
        if not found.train and not _unchanged(want[1], found.state):
            return Check("context", FAILED, where="state", detail="evaluation changed the state")
        found_on = _on_every_path(found.module, found.train, params, x, targets, found.state, found.key)
        worst = max((*_worst(got, want), path) for path, got in jax.device_get(found_on).items())
    error, where, path = worst
    tolerance = rtol(jnp.float64)
    detail = f"{found.describe()}: outputs and new state against the module's forward on {', '.join(PATHS)}"
    status = PASSED if error <= tolerance else FAILED
    return Check("context", status, error, tolerance, f"{where} ({path})" if error else "", detail)
