"""Layer normalisation over the last axis (the notes' LN), forward and backward side by side.

For each row ``z[m]`` (the last axis, size ``m``):
``mu = mean(z)``, ``sigma = sqrt(mean((z - mu)^2) + eps)`` (dividing by ``m``,
not ``m - 1``), ``zhat = (z - mu) / sigma``, ``y = beta + gamma zhat``.

Backward with ``G = dJ/dy``, sums over the rows and means over the last axis:
``dbeta = sum G``, ``dgamma = sum G zhat``, ``d = G gamma``,
``dz = (d - mean(d) - zhat mean(d zhat)) / sigma``. Saves ``zhat`` and
``sigma``. A constant row has ``zhat = 0`` and stays finite through ``eps``
(its edge value: constant rows, checked by :func:`fnn.testing.check_module`).
"""

import jax.numpy as jnp

from fnn.module import leaf
from fnn.nn import _checks

__all__ = ["layer_norm", "layer_norm_leaf"]


def _check_scale(params, x):
    _checks.require_float("layer_norm", "input", x)
    for key in ("gamma", "beta"):
        value = _checks.require_param("layer_norm", params, key, x, ndim=1)
        _checks.require_features(
            "layer_norm", x, value.shape[0], f"{key} has size {value.shape[0]} ({key} shape {value.shape})"
        )


def layer_norm_leaf(eps=1e-5, init=None):
    """The LayerNorm leaf for a given ``eps`` (``init`` is the module's; ops pass none)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"layer_norm: eps must be a positive number, got {eps!r}")

    def forward(params, z):
        mu = jnp.mean(z, axis=-1, keepdims=True)
        centred = z - mu
        sigma = jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
        zhat = centred / sigma
        return params["beta"] + params["gamma"] * zhat, (zhat, sigma)

    def backward(params, saved, g):
        zhat, sigma = saved
        rows = tuple(range(g.ndim - 1))
        d = g * params["gamma"]
        dz = (d - jnp.mean(d, axis=-1, keepdims=True) - zhat * jnp.mean(d * zhat, axis=-1, keepdims=True)) / sigma
        return {"gamma": jnp.sum(g * zhat, axis=rows), "beta": jnp.sum(g, axis=rows)}, dz

    return leaf("layer_norm", init=init, forward=forward, backward=backward, check=_check_scale, edge_values=(4.0,))


def layer_norm(eps=1e-5, *, dtype=jnp.float32):
    """LayerNorm over the last axis: ``[..., m] -> [..., m]``, ``gamma`` ones and ``beta`` zeros at init.

    Params: ``{"gamma": [m], "beta": [m]}``. See the module doc for the formulas.
    """
    _checks.require_float_dtype("layer_norm", dtype)

    def init(key, input_shape):
        shape = _checks.require_shape("layer_norm", input_shape)
        if not shape:
            raise ValueError("layer_norm: input_shape must have a feature axis [..., m], got ()")
        return shape, {"gamma": jnp.ones(shape[-1:], dtype), "beta": jnp.zeros(shape[-1:], dtype)}

    return layer_norm_leaf(eps, init)
