"""Ops written in plain ``jax.numpy``; JAX's autodiff derives their gradients.

Each function has the same signature, checks and forward formula as its twin in
:mod:`fnn.ops.custom`, so a model switches gradient path by swapping the module.
"""

import jax
import jax.numpy as jnp

from fnn.ops._common import (
    check_bias,
    check_cross_entropy,
    check_elementwise,
    check_matmul,
    label_logit,
)


def matmul(x, w):
    """Matrix product ``Z = X W`` of rows ``x[..., n]`` with ``w[n, k]``; returns ``[..., k]``."""
    x, w = jnp.asarray(x), jnp.asarray(w)
    check_matmul(x, w)
    return x @ w


def add_bias(x, b):
    """Bias ``Z = X + b`` with ``b[k]`` broadcast over the rows of ``x[..., k]``."""
    x, b = jnp.asarray(x), jnp.asarray(b)
    check_bias(x, b)
    return x + b


def relu(x):
    """``max(x, 0)`` elementwise, written so that its derivative at exactly 0 is 0.

    (``jnp.maximum(x, 0)`` would split the tie and give 1/2 there.)
    """
    x = jnp.asarray(x)
    check_elementwise("relu", x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy ``mean(logsumexp(h) - h_y)``.

    Args:
      logits: ``[..., k]`` floating scores; usually ``[m, k]``.
      labels: integer class ids of shape ``logits.shape[:-1]``, each in ``[0, k)``.

    Returns:
      A scalar of the dtype of ``logits``: the loss averaged over all rows.
      A label outside ``[0, k)`` gives a NaN loss (values are not checked at
      trace time).
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    check_cross_entropy(logits, labels)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - label_logit(logits, labels))
