"""Three gradient paths, each derived from the modules' forward/backward pairs.

- ``"autodiff"``: ``jax.value_and_grad`` through the plain ``apply`` functions;
  JAX derives every rule from the ``jax.numpy`` forward code.
- ``"custom"``: ``jax.value_and_grad`` through :attr:`fnn.module.Module.custom`,
  where every leaf is a ``jax.custom_vjp`` made from its hand-written backward.
- ``"backprop"``: the notes' explicit reverse sweep: ``forward`` keeps what
  each backward function needs, then the loss's and the model's ``backward``
  run in reverse order. No JAX autodiff is involved.
"""

import jax
import jax.numpy as jnp

from fnn.module import Loss, Module

__all__ = ["PATHS", "check_pair", "check_path", "value_and_grad"]

PATHS = ("autodiff", "custom", "backprop")


def check_path(path):
    """Returns ``path`` if it names a gradient path, else raises ``ValueError`` listing :data:`PATHS`."""
    if path not in PATHS:
        raise ValueError(f"unknown gradient path {path!r}; expected one of {', '.join(map(repr, PATHS))}")
    return path


def check_pair(model, loss):
    """Raises ``TypeError`` unless ``model`` is an fnn module and ``loss`` an fnn loss."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be an fnn module (e.g. fnn.nn.mlp([784, 500, 10])), got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be an fnn loss (e.g. fnn.losses.cross_entropy), got {type(loss).__name__}")


def backprop(model, loss):
    """The notes' reverse sweep: ``f(params, x, targets) -> ((loss_value, outputs), grads)``, no JAX autodiff."""

    def value_and_grads(params, x, targets):
        outputs, saved = model.forward(params, x)
        value, loss_saved = loss.forward(outputs, targets)
        grads, _ = model.backward(params, saved, loss.backward(loss_saved, jnp.ones_like(value)))
        return (value, outputs), grads

    return value_and_grads


def value_and_grad(model, loss, *, path="custom", outputs=False):
    """The loss of ``model`` on a batch and its gradient, by one of :data:`PATHS`.

    Args:
      model: any :class:`fnn.module.Module` (e.g. ``fnn.nn.mlp([784, 500, 10])``).
      loss: any :class:`fnn.module.Loss` (e.g. ``fnn.losses.cross_entropy``).
      path: ``"autodiff"``, ``"custom"`` or ``"backprop"``.
      outputs: also return the model's outputs (from the same forward pass),
        as ``jax.value_and_grad(..., has_aux=True)`` returns its aux.

    Returns:
      ``f(params, x, targets) -> (loss_value, grads)``, or with ``outputs``
      ``f(...) -> ((loss_value, outputs), grads)``; ``grads`` in the structure
      of ``params``. Every path gives the same value and, up to rounding, the
      same gradient.
    """
    check_pair(model, loss)
    if check_path(path) == "backprop":
        with_outputs = backprop(model, loss)
    else:
        if path == "custom":
            model, loss = model.custom, loss.custom

        def objective(params, x, targets):
            out = model.apply(params, x)
            return loss.apply(out, targets), out

        with_outputs = jax.value_and_grad(objective, has_aux=True)
    if outputs:
        return with_outputs

    def value_and_grads(params, x, targets):
        (value, _), grads = with_outputs(params, x, targets)
        return value, grads

    return value_and_grads
