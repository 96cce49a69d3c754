"""Softmax over the last axis, forward and backward side by side.

``p = softmax(x)``, ``p_j = exp(x_j - max x) / sum_i exp(x_i - max x)``
(shifted by the row's maximum, so that logits of 1e4 neither overflow nor
NaN). Its Jacobian is ``dp_j / dx_i = p_j (1[i = j] - p_i)``, so the backward
with ``G = dJ/dp`` is ``dx = p * (G - sum(G * p))`` (the sum over the last
axis, one number per row).

Saves ``x`` and two numbers per row, its maximum ``c`` and
``s = sum_i exp(x_i - c)``, and recomputes ``p = exp(x - c) / s`` in the
backward, as attention does with its probability matrix: XLA then fuses the
exponential into the backward's one pass instead of keeping ``p`` in memory
between the passes (which is also what it makes of JAX's own rule). The
pair is the log-sum-exp ``c + log s`` kept in two parts: ``exp(x - (c + log s))``
would lose the rounding of the large ``c + log s`` (for logits of 1e4, a
relative error of 5e-4 in float32), while ``exp(x - c) / s`` is the forward's
own value.

:func:`softmax_backward` is the rule, written once: attention's backward
(:mod:`fnn.nn._attention`) applies it to its probability matrix, with the row
sums obtained another way.
"""

import jax
import jax.numpy as jnp

from fnn._errors import InputError
from fnn.module import leaf
from fnn.nn import _checks

__all__ = ["softmax", "softmax_backward"]


def softmax_backward(exps, g, total=None, row_dot=None):
    """``dx = p * (G - D)`` for ``p = softmax(x)`` and ``G = dJ/dp``, with ``D = sum(G * p)`` over the last axis.

    ``p = exps / total``: ``exps = exp(x - c)`` for any per-row ``c`` and
    ``total`` their row sums (without ``total``, ``exps`` is ``p`` itself).
    ``row_dot``, broadcastable to ``p``, is ``D`` when the caller has it
    already (attention computes it from its output, without ``p``).
    """
    if row_dot is None:
        row_dot = jnp.sum(g * exps, axis=-1, keepdims=True)
        row_dot = row_dot if total is None else row_dot / total
    dx = exps * (g - row_dot)
    return dx if total is None else dx / total


def _forward(params, x):
    peak = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    exps = jnp.exp(x - peak)
    total = jnp.sum(exps, axis=-1, keepdims=True)
    return exps / total, (x, peak, total)


def _backward(params, saved, g):
    x, peak, total = saved
    return (), softmax_backward(jnp.exp(x - peak), g, total)


def _check(params, x):
    _checks.require_no_params("softmax", params)
    _checks.require_float("softmax", "input", x)
    if x.ndim < 1:
        raise InputError("softmax: input must have at least one axis [..., k], got a scalar")


def _init(key, input_shape):
    shape = _checks.require_shape("softmax", input_shape)
    if not shape:  # each example a scalar: the softmax would run over the batch
        raise InputError("softmax: input_shape must have an axis to normalise over [..., k], got ()")
    return shape, ()


#: Softmax over the last axis, ``[..., k] -> [..., k]``; no params. ``dx = p * (G - sum(G * p))``;
#: saves ``x``, each row's maximum and its sum of exponentials.
softmax = leaf("softmax", init=_init, forward=_forward, backward=_backward, check=_check)
