"""The identity module: ``y = x``, ``dx = G``, no parameters."""

import jax.numpy as jnp

from fnn.module import structural
from fnn.nn import _checks

__all__ = ["identity"]


def identity():
    """``y = x``, any shape and dtype; backward ``dx = G``; no params, nothing saved.

    A placeholder where a model needs a module but no computation: the
    model under a loss checked on its own (``fnn.value_and_grad(identity(),
    loss, ...)`` differentiates the loss alone), a skipped layer. It is
    wiring, like :func:`~fnn.nn.flatten`, not a leaf: on the ``custom`` path
    it adds no ``jax.custom_vjp`` of its own, and ``fit`` checks its inputs
    with the next module's check (``serial(identity(), embedding(...))``
    takes token ids).
    """

    def init(key, input_shape):
        return _checks.require_shape("identity", input_shape), ()

    def apply(params, x):
        _checks.require_no_params("identity", params)
        return jnp.asarray(x)

    def forward(params, x):
        return apply(params, x), None

    def backward(params, saved, g):
        return (), g

    module = structural(
        "identity",
        init=init,
        apply=apply,
        forward=forward,
        backward=backward,
        rebuild=lambda: module,
        passes_values=True,
    )
    return module
