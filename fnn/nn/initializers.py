"""Weight initialisers ``(key, shape, dtype) -> array``: He normal (the notes'), zeros, or any from ``jax.nn``."""

import math

import jax
import jax.numpy as jnp

from fnn._errors import InputError

__all__ = ["INITIALIZERS", "he_normal", "resolve", "zeros"]


def he_normal(key, shape, dtype=jnp.float32):
    """``randn(*shape) * sqrt(2 / fan_in)``, ``fan_in`` the product of all axes but the last (HWIO kernels too)."""
    fan_in = math.prod(shape[:-1])
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_in)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros: a ReLU net so initialised has zero gradients everywhere (a saddle point)."""
    del key
    return jnp.zeros(shape, dtype)


#: The initialisers by name, as :func:`resolve` takes them: ``"he"`` (:func:`he_normal`) and ``"zeros"``.
INITIALIZERS = {"he": he_normal, "zeros": zeros}


def resolve(init):
    """Returns ``init`` if callable, else the initialiser named ``"he"`` or ``"zeros"``."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown initializer {init!r}; expected one of {sorted(INITIALIZERS)} "
            "or a function (key, shape, dtype) -> array such as a jax.nn.initializers one"
        ) from None
