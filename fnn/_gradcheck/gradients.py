"""A module's (or loss's) gradient on each path, as functions the checks compile once and call many times.

Everything goes through :mod:`fnn._paths` with a model and a loss:

- a module ``M`` is checked as the pair ``(M, COTANGENT)``, ``COTANGENT``
  being the loss ``L = sum(y * c)`` whose targets ``c`` are the output's
  cotangent: its gradient is ``B[M, x](g c)``;
- a loss ``l`` is checked as the pair ``(IDENTITY, l)``: its gradient with
  respect to the outputs is ``B[l](g)``.

``g`` is the upstream cotangent of ``L`` (a random scalar, so that a rule
that ignores it is caught). The functions below take ``(model, loss)`` as
static arguments, so ``jax.jit`` compiles them once per module and shapes and
later draws reuse the compiled code. A contextual module (batch norm,
dropout) is given as :class:`Contextual` with its ``(state, key)`` as an
argument, bound inside the compiled function, so that draws with other keys
reuse it too.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fnn import context as fnn_context
from fnn._errors import InputError
from fnn._gradcheck.dtypes import floating
from fnn._linear_map import zero_tangent
from fnn._paths import PATHS, objective, sweep_backward, sweep_forward, sweep_tangent
from fnn.module import Module, loss
from fnn.nn import identity

__all__ = [
    "COTANGENT",
    "IDENTITY",
    "COMPILER_OPTIONS",
    "Contextual",
    "FUNCTIONS",
    "KINDS",
    "OFFSETS",
    "floating_leaves",
    "grad_of_grad",
    "gradients",
    "draws",
    "dtypes",
    "jit_draws",
    "jit_dtypes",
    "jit_on_paths",
    "jit_stencil",
    "jvp",
    "on_paths",
    "per_example",
    "second_order_value",
    "stencil",
]


def _check_cotangent(y, c):
    if y.shape != c.shape or y.dtype != c.dtype:
        raise InputError(
            f"cotangent: the output cotangent must match the output, got {c.dtype}{list(c.shape)} "
            f"for an output {y.dtype}{list(y.shape)}"
        )


#: ``L = sum(y * c)``, so that ``dL/dy = c``: a module's output cotangent, as a loss.
COTANGENT = loss(
    "cotangent", forward=lambda y, c: (jnp.sum(y * c), c), backward=lambda c, g: g * c, check=_check_cotangent
)


#: ``y = x``, no parameters: the model under a loss checked on its own. Wiring, not a leaf, so that it
#: stays plain JAX on the custom path (only the loss has a custom rule there).
IDENTITY = identity()


@dataclasses.dataclass(frozen=True)
class Contextual:
    """A contextual module in one mode, for :func:`on_paths` and :func:`stencil` to bind to the ``(state, key)``
    they are given (:func:`fnn.context.bind`), inside the compiled function: hashed by the module object and the mode,
    so one compiled program serves every state and key."""

    module: Module
    train: bool


def _bound(model, context):
    """``model``, or a :class:`Contextual` bound to ``context = (state, key)``."""
    if not isinstance(model, Contextual):
        return model
    state, key = context
    return fnn_context.bind(model.module, state=state, key=key, train=model.train)


def gradients(model, loss, path, params, x, targets, g):
    """``(L, outputs, (dparams, dx))`` on ``path``, ``(dparams, dx)`` the VJP of ``L`` for the cotangent ``g``.

    On ``backprop`` the gradient is exactly what the backward functions return
    (``None`` where they give no gradient); on ``autodiff`` and ``custom``
    it is ``jax.vjp``'s (``float0`` for integer inputs).
    """
    if path == "backprop":
        value, outputs, saved = sweep_forward(model, loss)(params, x, targets)
        return value, outputs, sweep_backward(model, loss)(params, saved, jnp.asarray(g, value.dtype))
    fn = objective(model, loss, path)
    value, pullback, outputs = jax.vjp(lambda p, z: fn(p, z, targets), params, x, has_aux=True)
    return value, outputs, pullback(jnp.asarray(g, value.dtype))


def per_example(model, loss, path, params, x, targets, g):
    """Per-example gradients: :func:`gradients` of each row ``x[n:n+1]`` (with ``targets[n:n+1]``), by ``jax.vmap``."""

    def one(row, row_targets):
        return gradients(model, loss, path, params, row[None], row_targets[None], g)[2]

    return jax.vmap(one)(x, targets)


def floating_leaves(grads, primals):
    """The leaves of ``grads`` (``None`` counted as a leaf) at the positions of ``primals``' floating leaves."""
    leaves = jax.tree.leaves(grads, is_leaf=lambda v: v is None)
    return [d for d, p in zip(leaves, jax.tree.leaves(primals)) if floating(p)]


def second_order_value(model, loss, path, params, x, targets, g, w):
    """``<(dparams, dx), w>``: the gradient on ``path`` projected on ``w`` (one array per floating leaf)."""
    grads = gradients(model, loss, path, params, x, targets, g)[2]
    return sum(jnp.vdot(d, v) for d, v in zip(floating_leaves(grads, (params, x)), w))


def grad_of_grad(model, loss, path, params, x, targets, g, w):
    """Reverse over reverse: the gradient of :func:`second_order_value` with respect to ``(params, x)``."""
    value, pullback = jax.vjp(lambda p, z: second_order_value(model, loss, path, p, z, targets, g, w), params, x)
    return pullback(jnp.ones_like(value))


def jvp(model, loss, path, params, x, targets, g, w):
    """``g dL`` along ``w`` (one array per floating leaf of ``(params, x)``; integer leaves held fixed) on ``path``.

    ``jax.jvp`` on ``autodiff`` and ``custom`` (there, each rule's transpose);
    on ``backprop`` the forward sweep (:func:`fnn._paths.sweep_tangent`),
    then the loss's :meth:`fnn.module.Loss.pushforward`.
    """
    directions = iter(w)
    tangents = jax.tree.map(lambda a: next(directions) if floating(a) else zero_tangent(a), (params, x))
    if path == "backprop":
        outputs, doutputs, _ = sweep_tangent(model)(params, x, *tangents, (), None, False)
        value, saved = loss.forward(outputs, targets)
        return g * loss.pushforward(saved, value, doutputs)
    fn = objective(model, loss, path)
    return g * jax.jvp(lambda p, z: fn(p, z, targets)[0], (params, x), tangents)[1]


#: The stencil's points, in steps: ``theta + k h v`` for ``k`` in -2..2 (see :mod:`fnn.testing._finite`).
OFFSETS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def stencil(model, loss, order, moved, context, params, x, targets, g, w, directions, steps):
    """The scalar the finite differences of ``order`` differentiate, at every stencil point of every direction.

    Order 1: ``g L`` (the plain forward, no rule involved); order 2:
    :func:`second_order_value` on the ``custom`` path. ``moved`` (static)
    lists the leaves of ``(params, x)`` the directions move, concatenated
    flat: ``directions[n, size]`` (each row one direction in that flat
    vector), ``steps[n]`` their steps. One ``vmap`` over every (direction,
    offset) pair, so one copy of the function is compiled whatever the
    number of leaves. ``model`` may be :class:`Contextual`, bound to ``context``. Returns ``[n, 5]``.
    """
    model = _bound(model, context)
    leaves, treedef = jax.tree.flatten((params, x))
    flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in moved])
    sizes = [leaves[i].size for i in moved]

    def at(v, step, k):
        new, start = list(leaves), 0
        point = flat + (k * step) * v
        for i, size in zip(moved, sizes):
            new[i] = point[start : start + size].reshape(leaves[i].shape)
            start += size
        p, z = jax.tree.unflatten(treedef, new)
        if order == 1:
            return g * objective(model, loss, "autodiff")(p, z, targets)[0]
        return second_order_value(model, loss, "custom", p, z, targets, g, w)

    n, m = directions.shape[0], len(OFFSETS)
    offsets = jnp.tile(jnp.asarray(OFFSETS, flat.dtype), n)
    values = jax.vmap(at)(jnp.repeat(directions, m, axis=0), jnp.repeat(steps, m), offsets)
    return values.reshape(n, m)


#: The paths each function is compared on: the rule's two paths and autodiff, or the two JAX can transform.
KINDS = {
    "gradients": PATHS,
    "per_example": ("autodiff", "custom"),
    "grad_of_grad": ("autodiff", "custom"),
    "jvp": PATHS,
}


#: The function of each kind of :data:`KINDS`.
FUNCTIONS = {"gradients": gradients, "per_example": per_example, "grad_of_grad": grad_of_grad, "jvp": jvp}


def on_paths(fn, paths, model, loss, context, *args):
    """``{path: fn(model, loss, path, *args)}`` for every path in ``paths``, as one program; ``model`` may be
    :class:`Contextual`, bound to ``context = (state, key)`` (else ``context`` is ``()``)."""
    model = _bound(model, context)
    return {path: fn(model, loss, path, *args) for path in paths}


def _kind_args(kind, args):
    """The arguments of ``kind``: ``(params, x, targets, g, w)``, or without ``w`` for the first-order kinds."""
    return args if kind in ("grad_of_grad", "jvp") else args[:4]


def draws(kinds, model, loss, context, params, x, targets, g, w):
    """Every kind of ``kinds`` (names of :data:`KINDS`) on each of its paths, for a batch of draws: one program.

    ``params``, ``x``, ``targets``, ``g`` and ``w`` carry the draws on a
    leading axis (the draw and its one-ulp nudges, say), mapped by
    ``jax.vmap``; returns ``{kind: {path: result}}``, each result with the
    draws on its leading axis. ``model`` may be :class:`Contextual`, bound to
    ``context``, shared by every draw.
    """
    model = _bound(model, context)

    def one(*args):
        return {
            kind: on_paths(FUNCTIONS[kind], KINDS[kind], model, loss, (), *_kind_args(kind, args)) for kind in kinds
        }

    return jax.vmap(one)(params, x, targets, g, w)


def dtypes(fn, paths, model, loss, context, *casts):
    """``[on_paths(fn, paths, ...)(*args) for args in casts]``: the same function at several dtypes, one program."""
    return [on_paths(fn, paths, model, loss, context, *args) for args in casts]


#: How the checker's programs are compiled: without LLVM's optimisations. A check runs a few small arrays through
#: a program once or twice, so compiling is nearly all its cost, and optimising a program takes longer than
#: running it unoptimised (a third less time for a module's checks); every quantity compared is computed by
#: programs compiled alike.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _jit(fn, static):
    return jax.jit(fn, static_argnums=static, compiler_options=COMPILER_OPTIONS)


jit_on_paths = _jit(on_paths, (0, 1, 2, 3))
jit_draws = _jit(draws, (0, 1, 2))
jit_dtypes = _jit(dtypes, (0, 1, 2, 3))
jit_stencil = _jit(stencil, (0, 1, 2, 3))
