"""Trace-time checks shared by the modules and losses, and the hints their errors give.

They look only at shapes and dtypes, which are static under ``jit`` and
``vmap``, so they cost nothing at run time. Every message starts with the
module's name and gives the shapes involved.
"""

import math

import jax.numpy as jnp

from fnn._errors import InputError, UsageError
from fnn._numbers import as_int


def require_float(name, arg, value):
    """Raises ``TypeError`` unless ``value`` is a floating-point array."""
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise UsageError(f"{name}: {arg} must be a floating-point array, got dtype {value.dtype}")


def require_float_dtype(name, dtype):
    """Checks that a parameter ``dtype`` (``jnp.float32``, ``jnp.bfloat16``, ...) is floating; returns it."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UsageError(f"{name}: dtype must be a floating-point dtype, got {jnp.dtype(dtype).name}")
    return dtype


def require_param(name, params, key, x, ndim):
    """Checks that ``params[key]`` exists, is floating, has ``ndim`` axes and ``x``'s dtype; returns it."""
    if not isinstance(params, dict) or key not in params:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise UsageError(f"{name}: params must be a dict with key {key!r}, got {got}")
    value = jnp.asarray(params[key])
    require_float(name, key, value)
    if value.ndim != ndim:
        raise InputError(f"{name}: {key} must have {ndim} axes, got shape {value.shape}")
    if value.dtype != x.dtype:
        raise UsageError(
            f"{name}: input and {key} must share a dtype, got input {x.dtype} and {key} {value.dtype}; "
            "cast one of them explicitly"
        )
    return value


def require_features(name, x, n, what):
    """Checks that ``x[..., n]`` has ``n`` features on its last axis (``what`` names who expects them)."""
    if x.ndim < 1:
        raise InputError(f"{name}: input must have at least one axis [..., {n}], got a scalar")
    if x.shape[-1] != n:
        raise InputError(f"{name}: input has {x.shape[-1]} features but {what} (input shape {x.shape})")


def require_no_params(name, params):
    """Checks that a parameter-free module got the empty pytree ``()``."""
    if not isinstance(params, (tuple, list, dict)) or params:
        raise UsageError(f"{name}: has no parameters and takes params=(), got {type(params).__name__}")


def require_shape(name, input_shape, ndim=None, hint=""):
    """Checks an ``init`` input shape (batch axis excluded): positive ints; returns it as a tuple of Python ints."""
    try:
        shape = tuple(map(as_int, input_shape))
    except TypeError:
        shape = None
    if shape is None or not all(d is not None and d > 0 for d in shape) or (ndim is not None and len(shape) != ndim):
        want = f"{ndim} positive ints" if ndim is not None else "positive ints"
        raise InputError(
            f"{name}: input_shape must be a tuple of {want} (batch axis excluded), got {input_shape!r}{hint}"
        )
    return shape


def flatten_hint(shape, n):
    """A hint for a dense layer expecting ``n`` features that meets per-example ``shape`` (batch axis excluded).

    Empty unless ``shape`` looks like images (two or more axes) holding ``n`` values each.
    """
    if len(shape) < 2 or math.prod(shape) != n:
        return ""
    return (
        f"; the input is image-shaped, {tuple(shape)} with {n} values per example: put nn.flatten() before this "
        "layer (nn.serial(nn.flatten(), nn.dense(...), ...)), or load flat rows with fnn.data.load(..., layout='flat')"
    )


def image_hint(shape):
    """A hint for a convolution that meets flat rows of per-example ``shape`` (batch axis excluded)."""
    if not isinstance(shape, tuple) or len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        return ""
    side = math.isqrt(shape[0])
    square = f", e.g. x.reshape(-1, {side}, {side}, 1)" if side * side == shape[0] else ""
    return (
        f"; the input is flat rows of {shape[0]} values: load images with fnn.data.load(..., layout='image') "
        f"or reshape x to [N, H, W, C]{square}"
    )
