"""The notes' explicit backpropagation for an MLP: a third, hand-derived gradient path.

No autodiff is involved: the forward pass keeps every layer input ``Zi`` and
the backward pass runs the notes' recursion. It is the reference the
``jax.grad`` paths are checked against, and mirrors ``jax.value_and_grad``.

With ``Ai = Zi Wi + bi`` (bias optional), ``Z(i+1) = relu(Ai)`` and logits
``H = A_L``, for mean softmax cross-entropy over ``m`` rows:

- ``G_L = (softmax(H) - onehot(Y)) / m``  (``G_i = dL/dA_i``)
- ``grad Wi = Zi^T G_i``, ``grad bi = sum over rows of G_i``
- ``G_(i-1) = (G_i Wi^T) * 1[A_(i-1) > 0]``, and ``grad X = G_1 W1^T``

:func:`loss` wraps the same recursion as a ``jax.custom_vjp`` function, so the
notes' backprop can be used wherever ``jax.grad`` is (training steps, checks).
"""

import jax
import jax.numpy as jnp

from fnn import mlp as _mlp
from fnn.ops._common import check_bias, check_cross_entropy, check_matmul, label_logit


def _forward(params, x):
    """Returns the layer inputs ``[Z1, ..., ZL]`` and pre-activations ``[A1, ..., AL]``."""
    inputs, preacts = [], []
    z = x
    for i, layer in enumerate(params):
        check_matmul(z, layer["w"])
        a = z @ layer["w"]
        if "b" in layer:
            check_bias(a, layer["b"])
            a = a + layer["b"]
        inputs.append(z)
        preacts.append(a)
        if i < len(params) - 1:
            z = jnp.where(a > 0, a, jnp.zeros_like(a))
    return inputs, preacts


def _value_and_grads(params, x, labels, *, input_grad):
    """Loss, parameter gradients and, if ``input_grad``, the input gradient ``dL/dx`` (else None)."""
    _mlp.check_params(params)
    x, labels = jnp.asarray(x), jnp.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"backprop: x must be a batch of rows [m, n_in], got shape {x.shape}")
    inputs, preacts = _forward(params, x)
    logits = preacts[-1]
    check_cross_entropy(logits, labels)
    m = labels.shape[0]
    lse = jax.nn.logsumexp(logits, axis=-1)
    loss = jnp.mean(lse - label_logit(logits, labels))
    g = (jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)) / m
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        layer = params[i]
        grads[i] = {"w": inputs[i].T @ g}
        if "b" in layer:
            grads[i]["b"] = jnp.sum(g, axis=0)
        if i > 0:
            g = jnp.where(preacts[i - 1] > 0, g @ layer["w"].T, jnp.zeros_like(inputs[i]))
        elif input_grad:
            g = g @ layer["w"].T
    return loss, type(params)(grads), g if input_grad else None


def value_and_grad(params, x, labels):
    """Mean softmax cross-entropy of an MLP and its gradient, by explicit backprop.

    Args:
      params: an MLP pytree from :func:`fnn.mlp.init` (any depth, biases or not).
      x: ``[m, n_in]`` inputs.
      labels: ``[m]`` integer class ids.

    Returns:
      ``(loss, grads)`` with ``grads`` in the structure of ``params``, as
      ``jax.value_and_grad(fnn.mlp.loss)(params, (x, labels))`` returns.
    """
    loss, grads, _ = _value_and_grads(params, x, labels, input_grad=False)
    return loss, grads


def _loss_fwd(params, x, labels):
    loss, grads, grad_x = _value_and_grads(params, x, labels, input_grad=True)
    return loss, (grads, grad_x)


def _loss_bwd(residuals, g):
    grads, grad_x = residuals
    return jax.tree.map(lambda d: g * d, grads), g * grad_x, None


_loss = jax.custom_vjp(lambda params, x, labels: _value_and_grads(params, x, labels, input_grad=False)[0])
_loss.defvjp(_loss_fwd, _loss_bwd)


def loss(params, batch):
    """Mean softmax cross-entropy of an MLP on ``batch = (x, labels)``, differentiated by backprop.

    Same value and signature as ``fnn.mlp.loss``; its ``jax.grad`` runs the
    recursion above (the gradients are computed in the forward pass and kept
    as residuals). Forward mode is not available.
    """
    x, labels = batch
    return _loss(params, jnp.asarray(x), jnp.asarray(labels))
