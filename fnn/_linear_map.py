"""A linear map that comes with its transpose: how a hand-written backward serves both modes.

``linear_map(forward, transpose, residuals, u)`` is ``forward(residuals, u)``,
a map linear in ``u``, for which JAX's reverse mode uses ``transpose(residuals,
ct)`` as it is, instead of transposing ``forward``'s operations one by one.
A leaf's JVP is such a map: ``forward`` is the transpose of its hand-written
backward (``u -> J u``, :func:`jax.linear_transpose`), and ``transpose`` is
the backward itself (``g -> J^T g``), so that reverse mode runs exactly the
hand-written code, with the residuals the forward pass kept and nothing else.

This is ``jax.custom_derivatives.linear_call``'s idea as a primitive with
every rule: evaluation and compilation run ``forward``; transposition swaps
the two functions; batching (``vmap``, and so ``jax.jacfwd``) maps both; and
differentiation with respect to the residuals (``jax.hessian``: forward over
reverse) differentiates the code of the function being run. The products'
precision in force where the map is made (``jax.default_matmul_precision``)
is the one its functions are traced with when the program is compiled,
which may happen outside that context.
"""

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["Layout", "is_array", "linear_map", "zero_tangent"]

_LINEAR_MAP = Primitive("fnn_linear_map")
_LINEAR_MAP.multiple_results = True


class Layout(NamedTuple):
    """Where a pytree's arrays go among its other leaves (a mode, a shape), so that the arrays alone can pass
    through ``jax.jit``, ``lax.scan`` or a primitive and the rest be held as static data.

    ``arrays, layout = Layout.split(value)`` and ``layout.join(arrays)`` is ``value`` again.
    """

    #: The pytree's structure.
    tree: object
    #: Each leaf in order: ``None`` where an array goes, else the leaf itself.
    static: tuple

    @classmethod
    def split(cls, value):
        """``(arrays, layout)``: ``value``'s array leaves in order, and where they go."""
        leaves, tree = jax.tree.flatten(value)
        return [leaf for leaf in leaves if is_array(leaf)], cls(tree, tuple(None if is_array(v) else v for v in leaves))

    @property
    def count(self):
        """How many arrays :meth:`join` takes."""
        return sum(value is None for value in self.static)

    def join(self, arrays):
        """The pytree with ``arrays`` in the places of its arrays."""
        given = iter(arrays)
        return jax.tree.unflatten(self.tree, [next(given) if value is None else value for value in self.static])


class _Flat:
    """``fn(residuals, linear)`` over flat leaves: ``(*residual_arrays, *linear_leaves) -> [output leaves]``; the
    residuals' other leaves (a shape a structural module saved) are held in their :class:`Layout`."""

    def __init__(self, fn, residuals, linear_tree):
        self.fn, self.residuals, self.linear_tree = fn, residuals, linear_tree

    def __call__(self, *leaves):
        count = self.residuals.count
        residuals = self.residuals.join(leaves[:count])
        return jax.tree.leaves(self.fn(residuals, jax.tree.unflatten(self.linear_tree, leaves[count:])))


def is_array(leaf):
    """Whether a pytree leaf is an array (JAX's, a tracer, NumPy's) rather than a Python value held as static."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def linear_map(forward, transpose, residuals, u):
    """``forward(residuals, u)``, linear in ``u``, transposed by ``transpose(residuals, ct)``.

    Args:
      forward: ``(residuals, u) -> out`` (pytrees of arrays), linear in ``u``.
      transpose: ``(residuals, ct) -> u_ct``, ``ct`` in the structure of
        ``out`` and ``u_ct`` in that of ``u``: the transpose of ``forward``
        in ``u``. It is trusted, not checked.
      residuals: what both depend on, not linearly; leaves that are not
        arrays (Python numbers, a shape) are held as constants.
      u: the linear argument.
    """
    arrays, layout = Layout.split(residuals)
    u_leaves, u_tree = jax.tree.flatten(u)
    out_tree = jax.tree.structure(jax.eval_shape(lambda u: forward(residuals, u), u))
    out = _LINEAR_MAP.bind(
        *arrays,
        *u_leaves,
        forward=_Flat(forward, layout, u_tree),
        transpose=_Flat(transpose, layout, out_tree),
        residual_count=len(arrays),
        precision=jax.config.jax_default_matmul_precision,
    )
    return jax.tree.unflatten(out_tree, out)


def _at(precision):
    """The products' precision the map was made with, for tracing its functions (a no-op for the default)."""
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)


def _impl(*leaves, forward, transpose, residual_count, precision):
    with _at(precision):
        return forward(*leaves)


def _abstract_eval(*avals, forward, transpose, residual_count, precision):
    shapes = jax.eval_shape(forward, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def zero_tangent(x):
    """The zero tangent of ``x``: zeros of its dtype, or ``float0`` zeros for an integer, boolean or key array."""
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _jvp(primals, tangents, *, forward, transpose, residual_count, precision):
    """Linear in ``u``: ``forward(r, du)``; plus, where the residuals move, the JVP of ``forward``'s own code."""
    params = dict(forward=forward, transpose=transpose, residual_count=residual_count, precision=precision)
    out = _LINEAR_MAP.bind(*primals, **params)
    residuals, residual_tangents = primals[:residual_count], tangents[:residual_count]
    u_tangents = [ad.instantiate_zeros(t) for t in tangents[residual_count:]]
    tangent = _LINEAR_MAP.bind(*residuals, *u_tangents, **params)
    moving = [type(t) is not ad.Zero and t.dtype != jax.dtypes.float0 for t in residual_tangents]
    if any(moving):
        with _at(precision):
            through = jax.jvp(
                lambda *r: forward(*r, *primals[residual_count:]),
                tuple(residuals),
                tuple(t if m else zero_tangent(r) for r, t, m in zip(residuals, residual_tangents, moving)),
            )[1]
        tangent = [a + b for a, b in zip(tangent, through)]
    return out, tangent


def _transpose(cts, *leaves, forward, transpose, residual_count, precision):
    """``transpose(r, ct)``, which in turn is transposed by ``forward``."""
    residuals, u = leaves[:residual_count], leaves[residual_count:]
    if any(ad.is_undefined_primal(r) for r in residuals):
        raise NotImplementedError("fnn linear map: transposed with respect to its residuals, which it is not linear in")
    cts = [jnp.zeros(ct.aval.shape, ct.aval.dtype) if type(ct) is ad.Zero else ct for ct in cts]
    u_cts = _LINEAR_MAP.bind(
        *residuals, *cts, forward=transpose, transpose=forward, residual_count=residual_count, precision=precision
    )
    return [None] * residual_count + [ct if ad.is_undefined_primal(x) else None for x, ct in zip(u, u_cts)]


def _batch(leaves, dims, *, forward, transpose, residual_count, precision):
    """Both functions mapped over the batch axis; every linear argument made batched, so that the outputs are."""
    size = next(x.shape[d] for x, d in zip(leaves, dims) if d is not None)
    leaves = [x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(leaves, dims)]
    residual_axes = tuple(None if d is None else 0 for d in dims[:residual_count])
    u = [
        jnp.broadcast_to(x, (size, *x.shape)) if d is None else x
        for x, d in zip(leaves[residual_count:], dims[residual_count:])
    ]
    out = _LINEAR_MAP.bind(
        *leaves[:residual_count],
        *u,
        forward=_mapped(forward, residual_axes),
        transpose=_mapped(transpose, residual_axes),
        residual_count=residual_count,
        precision=precision,
    )
    return out, [0] * len(out)


def _mapped(fn, residual_axes):
    """``fn`` over flat leaves under ``jax.vmap``: residuals on ``residual_axes``, the linear leaves on axis 0."""

    def mapped(*leaves):
        axes = (*residual_axes, *([0] * (len(leaves) - len(residual_axes))))
        return jax.vmap(lambda *a: list(fn(*a)), in_axes=axes)(*leaves)

    return mapped


_LINEAR_MAP.def_impl(_impl)
_LINEAR_MAP.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[_LINEAR_MAP] = _jvp
ad.primitive_transposes[_LINEAR_MAP] = _transpose
batching.primitive_batchers[_LINEAR_MAP] = _batch
mlir.register_lowering(_LINEAR_MAP, mlir.lower_fun(_impl, multiple_results=True))
