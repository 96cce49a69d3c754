"""Softmax over the last axis, forward and backward side by side.

``p = softmax(x)``, ``p_j = exp(x_j - max x) / sum_i exp(x_i - max x)``
(shifted by the row's maximum, so that logits of 1e4 neither overflow nor
NaN). Its Jacobian is ``dp_j / dx_i = p_j (1[i = j] - p_i)``, so the backward
with ``G = dJ/dp`` is ``dx = p * (G - sum(G * p))`` (the sum over the last
axis, one number per row). Saves ``p``.

:func:`softmax_backward` is that rule, written once: attention's backward
(:mod:`fnn.nn.attend`) applies it to its probability matrix, with the row
sums obtained another way.
"""

import jax
import jax.numpy as jnp

from fnn.module import leaf
from fnn.nn import _checks

__all__ = ["softmax", "softmax_backward"]


def softmax_backward(p, g, row_dot=None):
    """``dx = p * (G - D)`` for ``p = softmax(x)`` and ``G = dJ/dp``, with ``D = sum(G * p)`` over the last axis.

    ``row_dot``, broadcastable to ``p``, is ``D`` when the caller has it
    already (attention computes it from its output without ``p``).
    """
    if row_dot is None:
        row_dot = jnp.sum(g * p, axis=-1, keepdims=True)
    return p * (g - row_dot)


def _forward(params, x):
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    exps = jnp.exp(shifted)
    p = exps / jnp.sum(exps, axis=-1, keepdims=True)
    return p, p


def _check(params, x):
    _checks.require_no_params("softmax", params)
    _checks.require_float("softmax", "input", x)
    if x.ndim < 1:
        raise ValueError("softmax: input must have at least one axis [..., k], got a scalar")


def _init(key, input_shape):
    shape = _checks.require_shape("softmax", input_shape)
    if not shape:  # each example a scalar: the softmax would run over the batch
        raise ValueError("softmax: input_shape must have an axis to normalise over [..., k], got ()")
    return shape, ()


#: Softmax over the last axis, ``[..., k] -> [..., k]``; no params. ``dx = p * (G - sum(G * p))``; saves ``p``.
softmax = leaf(
    "softmax", init=_init, forward=_forward, backward=lambda params, p, g: ((), softmax_backward(p, g)), check=_check
)
