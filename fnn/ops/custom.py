"""Ops with hand-written backward rules (``jax.custom_vjp``).

Each op keeps its forward pass, the residuals it saves for the backward pass,
and the backward pass (a vector-Jacobian product) side by side, with the formula
in the docstring. ``G`` is the cotangent of the op's output, ``dL/dZ``.
Signatures, checks and forward values match :mod:`fnn.ops.autodiff`.

The backward rules are themselves written in differentiable JAX ops, so
reverse-over-reverse (``grad`` of ``grad``, Hessian-vector products) works.
Forward mode (``jax.jvp``, ``jax.jacfwd``) does not: JAX does not derive a JVP
from a custom VJP.
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


def _sum_to_rows(a, b):
    """``sum over rows r of a[r, i] b[r, j]`` for ``a[..., n]``, ``b[..., k]``; returns ``[n, k]``."""
    lead = tuple(range(a.ndim - 1))
    return jnp.tensordot(a, b, axes=(lead, lead))


# ---------------------------------------------------------------- matmul
def _matmul_fwd(x, w):
    return x @ w, (x, w)


_matmul = jax.custom_vjp(lambda x, w: x @ w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    return g @ w.T, _sum_to_rows(x, g)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x, w):
    """Matrix product ``Z = X W`` of rows ``x[..., n]`` with ``w[n, k]``; returns ``[..., k]``.

    Residuals: ``X`` and ``W``. Backward: ``dX = G W^T``, ``dW = X^T G``
    (summed over every leading axis of ``x``).
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    check_matmul(x, w)
    return _matmul(x, w)


# ---------------------------------------------------------------- bias
_add_bias = jax.custom_vjp(lambda x, b: x + b)


def _add_bias_fwd(x, b):
    return x + b, None


def _add_bias_bwd(_, g):
    return g, jnp.sum(g, axis=tuple(range(g.ndim - 1)))


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def add_bias(x, b):
    """Bias ``Z = X + b`` with ``b[k]`` broadcast over the rows of ``x[..., k]``.

    Residuals: none. Backward: ``dX = G``, ``db = sum over rows of G``.
    """
    x, b = jnp.asarray(x), jnp.asarray(b)
    check_bias(x, b)
    return _add_bias(x, b)


# ---------------------------------------------------------------- relu
def _relu_forward(x):
    return jnp.where(x > 0, x, jnp.zeros_like(x))


_relu = jax.custom_vjp(_relu_forward)


def _relu_fwd(x):
    a = _relu_forward(x)
    return a, a


def _relu_bwd(a, g):
    return (jnp.where(a > 0, g, jnp.zeros_like(g)),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu(x):
    """``A = max(Z, 0)`` elementwise.

    Residuals: the output ``A`` (``A > 0`` exactly where ``Z > 0``; the next
    matmul keeps ``A`` alive anyway, so this costs no extra memory).
    Backward: ``dZ = G * 1[Z > 0]``; the derivative at exactly 0 is 0.
    """
    x = jnp.asarray(x)
    check_elementwise("relu", x)
    return _relu(x)


# ---------------------------------------------------------------- cross-entropy
def _log_softmax_parts(logits):
    """Returns ``(logits - max, logsumexp(logits - max))``; stable for huge logits."""
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _cross_entropy_fwd(logits, labels):
    shifted, lse = _log_softmax_parts(logits)
    loss = jnp.mean(lse[..., 0] - label_logit(shifted, labels))
    return loss, (jnp.exp(shifted - lse), labels)


_cross_entropy = jax.custom_vjp(lambda logits, labels: _cross_entropy_fwd(logits, labels)[0])


def _cross_entropy_bwd(residuals, g):
    probs, labels = residuals
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    return (g * (probs - onehot) / labels.size).astype(probs.dtype), None


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy ``mean(logsumexp(h) - h_y)``.

    Args:
      logits: ``[..., k]`` floating scores; usually ``[m, k]``.
      labels: integer class ids of shape ``logits.shape[:-1]``, each in ``[0, k)``.

    Returns:
      A scalar of the dtype of ``logits``: the loss averaged over all ``m`` rows.
      A label outside ``[0, k)`` gives a NaN loss (values are not checked at
      trace time).

    Computed through ``logsumexp`` of the max-shifted logits, so logits of size
    1e4 neither overflow nor give NaN. Residuals: ``softmax(H)`` and the labels.
    Backward: ``dH = g (softmax(H) - onehot(Y)) / m``; the labels get no cotangent.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    check_cross_entropy(logits, labels)
    return _cross_entropy(logits, labels)
