"""Normalisation layers: one standardisation rule over any axes, forward and backward side by side.

The rule (the notes' LayerNorm; group and batch norm are the same rule over other axes): over a set of ``m`` values
``z`` (the *axes* below), ``mu = mean(z)``, ``sigma = sqrt(mean((z - mu)^2) + eps)``
(dividing by ``m``, not ``m - 1``), ``zhat = (z - mu) / sigma``; then a
per-channel affine map ``y = beta + gamma zhat``. Backward with ``G = dJ/dy``:
``dbeta = sum G``, ``dgamma = sum G zhat`` (over every axis but the channels),
``d = G gamma``, ``dz = (d - mean(d) - zhat mean(d zhat)) / sigma`` (means over
the same axes). Saves ``zhat`` and ``sigma``. A constant set of values has
``zhat = 0`` and stays finite through ``eps``.

- LayerNorm: the axes are the last (features) axis of each row.
- GroupNorm: ``x[N, *spatial, C]`` with its ``C`` channels split into
  ``groups`` groups of ``C / groups`` consecutive channels (as PyTorch and
  Flax split them); the axes are each example's spatial axes and the
  channels of one group.
- Batch norm (:mod:`fnn.nn._batch_norm`) is the same rule with the axes over the batch.

A constant set has ``zhat = 0`` and stays finite through ``eps``: each layer's
edge value (a constant input), checked by :func:`fnn.testing.check_module`.
"""

import math

import jax.numpy as jnp
import numpy as np

from fnn._errors import InputError
from fnn._numbers import positive_int, real
from fnn.module import leaf, with_settings
from fnn.nn import _checks

__all__ = [
    "affine_backward",
    "check_eps",
    "check_scale",
    "group_norm",
    "group_norm_leaf",
    "layer_norm",
    "layer_norm_leaf",
    "moments",
    "normalize",
    "SCALE_AXES",
    "scale_params",
    "standardize",
    "standardize_backward",
]


# ---------------------------------------------------------------- the rule, over any axes
def moments(z, axes):
    """``(mu, var)``: the mean and the variance (divided by ``m``, not ``m - 1``) of ``z`` over ``axes``, kept."""
    mu = jnp.mean(z, axis=axes, keepdims=True)
    centred = z - mu
    return mu, jnp.mean(centred * centred, axis=axes, keepdims=True)


def normalize(z, mu, var, eps):
    """``(zhat, sigma)``: ``zhat = (z - mu) / sigma``, ``sigma = sqrt(var + eps)``."""
    sigma = jnp.sqrt(var + eps)
    return (z - mu) / sigma, sigma


def standardize(z, axes, eps):
    """``(zhat, sigma)`` of ``z`` by its own :func:`moments` over ``axes`` (:func:`normalize`)."""
    return normalize(z, *moments(z, axes), eps)


def standardize_backward(d, zhat, sigma, axes):
    """``dz = (d - mean(d) - zhat mean(d zhat)) / sigma`` (means over ``axes``) for ``d = dJ/dzhat``."""
    return (d - jnp.mean(d, axis=axes, keepdims=True) - zhat * jnp.mean(d * zhat, axis=axes, keepdims=True)) / sigma


def affine_backward(params, zhat, g):
    """``({"gamma": sum G zhat, "beta": sum G}, d = G gamma)`` of ``y = beta + gamma zhat`` (sums over the rows)."""
    rows = tuple(range(g.ndim - 1))
    return {"gamma": jnp.sum(g * zhat, axis=rows), "beta": jnp.sum(g, axis=rows)}, g * params["gamma"]


def check_eps(name, eps):
    """``eps`` as a Python float, if it is a positive finite number (:func:`fnn._numbers.real`).

    Whether the input's dtype holds it is checked at trace time (:func:`check_scale`).
    """
    return real(name, "eps", eps, within="in (0, inf)", ok=lambda e: 0 < e < math.inf)


def _require_eps(name, eps, dtype):
    """Checks that ``eps``, rounded to the input's ``dtype``, is a normal finite number where ``var + eps`` is
    computed: in ``dtype``, or float32 for a narrower dtype (XLA computes float16 and bfloat16 arithmetic in
    float32 on a CPU, so float16's default ``1e-5``, subnormal in float16, is a normal float32).

    Below that type's smallest normal it is 0 to XLA, which flushes
    subnormals (``1e-50`` and ``1e-40`` in float32 alike): a constant input's
    ``sigma`` is then 0 and ``zhat = 0 / 0`` NaN. Above the dtype's largest
    finite value it is inf: ``sigma`` is infinite and every output ``beta``.
    """
    info, computed = jnp.finfo(dtype), jnp.finfo(jnp.promote_types(dtype, jnp.float32))
    with np.errstate(over="ignore", under="ignore"):
        held = float(np.asarray(eps, dtype))
    if computed.tiny <= held < math.inf:
        return
    if held < computed.tiny:
        tiny = float(computed.tiny)
        why = f"below the smallest normal {computed.dtype.name} {tiny!r} (XLA flushes smaller values to 0), so a "
        why += "constant input gives NaN"
        fix = f"eps >= {tiny!r}"
    else:
        why, fix = "so sigma would be infinite and every output beta", f"eps <= {float(info.max)!r}"
    raise InputError(
        f"{name}: eps={eps!r} is {held!r} in the input's dtype {info.dtype.name}, {why}; use {fix} or a wider dtype"
    )


def check_scale(name, eps):
    """The trace-time check of a floating input that holds ``eps``, and ``gamma``, ``beta`` of its last axis's size."""

    def check(params, x):
        _checks.require_float(name, "input", x)
        _require_eps(name, eps, x.dtype)
        for key in ("gamma", "beta"):
            value = _checks.require_param(name, params, key, x, ndim=1)
            _checks.require_features(
                name, x, value.shape[0], f"{key} has size {value.shape[0]} ({key} shape {value.shape})"
            )

    return check


#: The names of the axes of ``gamma`` and ``beta`` (see :func:`fnn.module.leaf`'s ``param_axes``).
SCALE_AXES = {"gamma": ("features",), "beta": ("features",)}


def scale_params(name, dtype):
    """``init``'s ``gamma`` ones and ``beta`` zeros over the last axis of the input shape."""
    _checks.require_float_dtype(name, dtype)

    def init(key, input_shape):
        shape = _checks.require_shape(name, input_shape)
        if not shape:
            raise InputError(f"{name}: input_shape must have a feature axis [..., m], got ()")
        return shape, {"gamma": jnp.ones(shape[-1:], dtype), "beta": jnp.zeros(shape[-1:], dtype)}

    return init


# ---------------------------------------------------------------- LayerNorm
def layer_norm_leaf(eps=1e-5, init=None):
    """The LayerNorm leaf for a given ``eps`` (``init`` is the module's; ops pass none)."""
    eps = check_eps("layer_norm", eps)

    def forward(params, z):
        zhat, sigma = standardize(z, -1, eps)
        return params["beta"] + params["gamma"] * zhat, (zhat, sigma)

    def backward(params, saved, g):
        zhat, sigma = saved
        grads, d = affine_backward(params, zhat, g)
        return grads, standardize_backward(d, zhat, sigma, -1)

    return leaf(
        "layer_norm",
        init=init,
        forward=forward,
        backward=backward,
        check=check_scale("layer_norm", eps),
        edge_values=(4.0,),
        param_axes=SCALE_AXES,
    )


@with_settings
def layer_norm(eps=1e-5, *, dtype=jnp.float32):
    """LayerNorm over the last axis: ``[..., m] -> [..., m]``, ``gamma`` ones and ``beta`` zeros at init.

    Params: ``{"gamma": [m], "beta": [m]}``. See the module doc for the formulas.
    """
    return layer_norm_leaf(eps, scale_params("layer_norm", dtype))


# ---------------------------------------------------------------- GroupNorm
def _grouped(x, groups):
    """``x[N, ..., C]`` as ``[N, ..., groups, C / groups]`` and the axes of one example's group in that shape."""
    grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    return grouped, (*range(1, x.ndim - 1), x.ndim)


def _check_groups(groups, eps):
    base = check_scale("group_norm", eps)

    def check(params, x):
        base(params, x)
        if x.ndim < 2:
            raise InputError(f"group_norm: input must be [N, ..., C] (a batch axis first), got shape {x.shape}")
        if x.shape[-1] % groups:
            raise InputError(
                f"group_norm: {x.shape[-1]} channels do not split into {groups} groups of equal size "
                f"(input shape {x.shape})"
            )

    return check


def group_norm_leaf(groups, eps=1e-5, init=None):
    """The GroupNorm leaf for ``groups`` groups and ``eps`` (``init`` is the module's; ops pass none)."""
    groups, eps = positive_int("group_norm", "groups", groups), check_eps("group_norm", eps)

    def forward(params, x):
        grouped, axes = _grouped(x, groups)
        zhat, sigma = standardize(grouped, axes, eps)
        zhat = zhat.reshape(x.shape)
        return params["beta"] + params["gamma"] * zhat, (zhat, sigma)

    def backward(params, saved, g):
        zhat, sigma = saved
        grads, d = affine_backward(params, zhat, g)
        (d, axes), (zhat, _) = _grouped(d, groups), _grouped(zhat, groups)
        return grads, standardize_backward(d, zhat, sigma, axes).reshape(g.shape)

    return leaf(
        "group_norm",
        init=init,
        forward=forward,
        backward=backward,
        check=_check_groups(groups, eps),
        edge_values=(4.0,),
        param_axes=SCALE_AXES,
    )


@with_settings
def group_norm(groups, eps=1e-5, *, dtype=jnp.float32):
    """GroupNorm: ``[N, *spatial, C] -> [N, *spatial, C]``, each example normalised per group of channels.

    The ``C`` channels form ``groups`` groups of ``C / groups`` consecutive
    channels; each example's values over its spatial axes and one group's
    channels are standardised together (``groups=1``: over the whole example;
    ``groups=C``: instance norm), then scaled and shifted per channel.

    The first axis is the batch: every other axis but the channels is
    reduced over. Under ``jax.vmap`` over single examples, give each example
    a batch axis of one (``x[None]``), or the first spatial axis is taken for
    the batch.

    Params: ``{"gamma": [C], "beta": [C]}``, ones and zeros at init. See the
    module doc for the formulas.
    """
    groups = positive_int("group_norm", "groups", groups)
    scale_init = scale_params("group_norm", dtype)

    def init(key, input_shape):
        shape, params = scale_init(key, input_shape)
        if shape[-1] % groups:
            raise InputError(
                f"group_norm: {shape[-1]} channels do not split into {groups} groups of equal size "
                f"(input_shape {shape})"
            )
        return shape, params

    return group_norm_leaf(groups, eps, init)
