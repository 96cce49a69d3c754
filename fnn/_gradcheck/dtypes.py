"""Dtypes for the checker: which leaves are floating, each dtype's eps and tolerance, casting, one-ulp nudges,
float64 on demand."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cast", "eps", "floating", "nudged", "rtol", "x64"]


def floating(a):
    """Whether ``a`` (an array, or anything NumPy can make one of) has a floating dtype."""
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    return jnp.issubdtype(dtype, jnp.floating)


def eps(dtype):
    """The machine epsilon of a floating ``dtype`` (2.2e-16 for float64, 1.2e-7 for float32, 7.8e-3 for bfloat16)."""
    return float(jnp.finfo(dtype).eps)


def rtol(dtype):
    """The checker's one tolerance for two computations of the same quantity in ``dtype``: ``eps ** (3/4)``.

    Relative to the largest reference entry (:func:`fnn.testing.relative_error`):
    1.8e-12 in float64, 6.4e-6 in float32, 2.6e-2 in bfloat16. It leaves room
    for ``eps ** (-1/4)`` ulps of accumulated rounding (about 8000 in float64,
    60 in float32, 3 in bfloat16), while any wrong term in a rule misses by
    ``O(1)``.
    """
    return eps(dtype) ** 0.75


def cast(tree, dtype):
    """``tree`` as NumPy arrays on the host, every floating leaf cast to ``dtype`` (integer leaves kept)."""
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype) if floating(a) else np.asarray(a), tree)


def nudged(tree, rng):
    """``tree`` with every floating leaf ``a`` moved by about one ulp in a random direction: ``a * (1 + eps * s)``.

    ``s`` is a random sign per entry from the NumPy generator ``rng``, ``eps``
    that of the leaf's dtype; integer leaves are kept.
    """

    def nudge(a):
        a = np.asarray(a)
        return a * (1 + eps(a.dtype) * rng.choice([-1.0, 1.0], a.shape)).astype(a.dtype) if floating(a) else a

    return jax.tree.map(nudge, tree)


def x64():
    """A context in which float64 exists: a no-op when ``jax_enable_x64`` is on, else ``jax.enable_x64(True)``."""
    if jax.config.jax_enable_x64:
        return contextlib.nullcontext()
    return jax.enable_x64(True)
