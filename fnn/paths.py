"""Three gradient paths, each derived from the modules' forward/backward pairs.

- ``"autodiff"``: ``jax.value_and_grad`` through the plain ``apply`` functions;
  JAX derives every rule from the ``jax.numpy`` forward code.
- ``"custom"``: ``jax.value_and_grad`` through :attr:`fnn.module.Module.custom`,
  where every leaf is a ``jax.custom_vjp`` made from its hand-written backward.
- ``"backprop"``: the notes' explicit reverse sweep: ``forward`` keeps what
  each backward function needs, then the loss's and the model's ``backward``
  run in reverse order. No JAX autodiff is involved.

This module is the one place where a path is chosen: :func:`objective` is
what JAX differentiates on the first two paths, :func:`sweep_forward` and
:func:`sweep_backward` are the two halves of the third, and
:func:`value_and_grad` puts them behind one signature. Everything else in fnn
(training, :mod:`fnn.inspect`, :mod:`fnn.ops`) calls these.
"""

import jax
import jax.numpy as jnp

from fnn.module import Loss, Module

__all__ = [
    "PATHS",
    "backprop",
    "check_pair",
    "check_path",
    "objective",
    "sweep_backward",
    "sweep_forward",
    "value_and_grad",
]

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


def objective(model, loss, path):
    """What JAX differentiates on ``path`` (``"autodiff"`` or ``"custom"``): ``(params, x, targets) -> (L, outputs)``.

    On the ``custom`` path every leaf and the loss are their ``jax.custom_vjp``
    forms (:attr:`fnn.module.Module.custom`); on ``autodiff`` their plain
    ``apply``. The ``backprop`` path differentiates nothing: see
    :func:`sweep_forward` and :func:`sweep_backward`.
    """
    if check_path(path) == "backprop":
        raise ValueError("the backprop path has no objective for JAX to differentiate; see sweep_forward")
    if path == "custom":
        model, loss = model.custom, loss.custom

    def fn(params, x, targets):
        outputs = model.apply(params, x)
        return loss.apply(outputs, targets), outputs

    return fn


def sweep_forward(model, loss):
    """The reverse sweep's forward half: ``(params, x, targets) -> (L, outputs, saved)``.

    ``saved = (model_saved, loss_saved)``: what the model's and the loss's
    forward functions keep for their backward functions.
    """

    def forward(params, x, targets):
        outputs, model_saved = model.forward(params, x)
        value, loss_saved = loss.forward(outputs, targets)
        return value, outputs, (model_saved, loss_saved)

    return forward


def sweep_backward(model, loss):
    """The reverse sweep's backward half: ``(params, saved, g) -> (dparams, dx)`` for the loss's cotangent ``g``.

    The loss's backward function, then the model's (which applies its
    children's in reverse order): ``B[model](B[loss](g))``.
    """

    def backward(params, saved, g):
        model_saved, loss_saved = saved
        return model.backward(params, model_saved, loss.backward(loss_saved, g))

    return backward


def backprop(model, loss):
    """The notes' reverse sweep: ``(params, x, targets) -> ((L, outputs), (dparams, dx))``, no JAX autodiff."""
    forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

    def value_and_grads(params, x, targets):
        value, outputs, saved = forward(params, x, targets)
        return (value, outputs), backward(params, saved, jnp.ones_like(value))

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
        sweep = backprop(model, loss)

        def with_outputs(params, x, targets):
            value_outputs, (grads, _) = sweep(params, x, targets)
            return value_outputs, grads

    else:
        with_outputs = jax.value_and_grad(objective(model, loss, path), has_aux=True)
    if outputs:
        return with_outputs

    def value_and_grads(params, x, targets):
        (value, _), grads = with_outputs(params, x, targets)
        return value, grads

    return value_and_grads
