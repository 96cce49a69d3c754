"""Modules with state or a random key: the context a check runs in, and the ``context`` check.

A contextual module (batch norm, dropout, wiring around them; see
:mod:`fnn.module`) is checked in one fixed context: its state (by default
``init_state``'s), a key (by default ``jax.random.key(seed)``) and a mode.
:func:`resolve` fixes it with :func:`fnn.context.bind`, so every gradient
check sees a plain module whose rule is the contextual one's in that mode.
:func:`context` checks what binding hides: on each path, run as training
runs it (the new state an output of the differentiated function, never
differentiated), the outputs and the new state equal the module's own
forward pass's, so the same key gives the same mask on every path and the
state is carried out of ``jax.custom_vjp``; in evaluation the state comes
back unchanged.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn import context as fnn_context
from fnn._paths import PATHS, objective, sweep_forward
from fnn.testing._agreement import leaf_error
from fnn.testing._dtypes import cast, rtol, x64
from fnn.testing._paths import COTANGENT
from fnn.testing._report import FAILED, PASSED, SKIPPED, Check

__all__ = ["Context", "context", "resolve"]


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """The context a contextual module is checked in: the module itself, its ``state``, ``key`` and ``train``."""

    module: object
    state: object
    key: object
    train: bool

    def describe(self):
        mode = "training" if self.train else "evaluation"
        return f"{mode}{', fixed key' if self.module.has_randomness else ''}"


def resolve(module, input_shape, *, state, key, train, seed):
    """``(module to check, Context or None)``: ``module`` bound to its context (:func:`fnn.context.fix`, the state
    on the host in float64) if it is contextual, else as given."""
    if module.contextual and state is None:
        with x64():
            state = module.init_state(tuple(input_shape[1:]))
    state = None if state is None else cast(jax.device_get(state), np.float64)
    bound, state, key = fnn_context.fix(
        "check_module", module, input_shape[1:], state=state, key=key, train=train, seed=seed
    )
    return bound, (Context(module, state, key, train) if module.contextual else None)


def _run_on(module, train, path, params, x, targets, state, key):
    """``(outputs, new state)`` of ``module`` on ``path``, as a training step runs it (under ``jax.grad``)."""
    kwargs = {"state": () if state is None else state, "key": key, "train": train}
    if path == "backprop":
        _, outputs, _, new_state = sweep_forward(module, COTANGENT)(params, x, targets, **kwargs)
        return outputs, new_state
    return jax.grad(objective(module, COTANGENT, path), has_aux=True)(params, x, targets, **kwargs)[1]


@functools.partial(jax.jit, static_argnums=(0, 1))
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
