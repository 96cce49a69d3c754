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

from fnn import context
from fnn.module import Loss, Module

__all__ = [
    "PATHS",
    "backprop",
    "check_pair",
    "check_path",
    "differentiate",
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
    :func:`sweep_forward` and :func:`sweep_backward`. A contextual model
    (:mod:`fnn.context`) runs in training mode unless told otherwise, with the
    keywords ``state=``, ``key=`` and ``train=``; a model with state returns
    ``(L, (outputs, state))``, the new state last, never differentiated.
    """
    if check_path(path) == "backprop":
        raise ValueError("the backprop path has no objective for JAX to differentiate; see sweep_forward")
    run_model, run_loss = (model.custom, loss.custom) if path == "custom" else (model, loss)

    def fn(params, x, targets, *, state=None, key=None, train=True):
        outputs, new_state = context.apply(run_model, params, x, state=state, key=key, train=train)
        return run_loss.apply(outputs, targets), ((outputs, new_state) if model.has_state else outputs)

    return fn


def sweep_forward(model, loss):
    """The reverse sweep's forward half: ``(params, x, targets) -> (L, outputs, saved)``.

    ``saved = (model_saved, loss_saved)``: what the model's and the loss's
    forward functions keep for their backward functions. A contextual model
    takes ``state=``, ``key=`` and ``train=`` (default ``True``); a model with
    state returns its new state last, ``(L, outputs, saved, state)``.
    """

    def forward(params, x, targets, *, state=None, key=None, train=True):
        outputs, model_saved, new_state = context.forward(model, params, x, state=state, key=key, train=train)
        value, loss_saved = loss.forward(outputs, targets)
        kept = (value, outputs, (model_saved, loss_saved))
        return (*kept, new_state) if model.has_state else kept

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


def differentiate(model, loss, path):
    """Any path in one form: ``(params, x, targets, state, key) -> (L, outputs, grads, new_state)``.

    The training step of every path (``train=True``); ``state`` and the new
    state are ``()``/as given for a model without state, ``key`` ``None``
    for one without randomness. :func:`value_and_grad` is its public face.
    """
    check_pair(model, loss)
    if check_path(path) == "backprop":
        forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

        def by_sweep(params, x, targets, state, key):
            value, outputs, saved, *new_state = forward(params, x, targets, state=state, key=key)
            return value, outputs, backward(params, saved, jnp.ones_like(value))[0], (*new_state, state)[0]

        return by_sweep
    grad = jax.value_and_grad(objective(model, loss, path), has_aux=True)

    def by_jax(params, x, targets, state, key):
        (value, aux), grads = grad(params, x, targets, state=state, key=key)
        outputs, new_state = aux if model.has_state else (aux, state)
        return value, outputs, grads, new_state

    return by_jax


def backprop(model, loss):
    """The notes' reverse sweep: ``(params, x, targets) -> ((L, outputs), (dparams, dx))``, no JAX autodiff.

    A contextual model takes ``state=`` and ``key=`` (training mode); a model
    with state returns its new state last.
    """
    forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

    def value_and_grads(params, x, targets, *, state=None, key=None):
        value, outputs, saved, *new_state = forward(params, x, targets, state=state, key=key)
        return ((value, outputs), backward(params, saved, jnp.ones_like(value)), *new_state)

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
      same gradient. A contextual model (batch norm, dropout) runs in
      training mode: ``f`` takes ``state=`` and ``key=``, and for a model with
      state returns the new state last, ``(loss_value, grads, state)``.
    """
    grads_of = differentiate(model, loss, path)

    def value_and_grads(params, x, targets, *, state=None, key=None):
        value, out, grads, new_state = grads_of(params, x, targets, state, key)
        result = ((value, out) if outputs else value, grads)
        return (*result, new_state) if model.has_state else result

    return value_and_grads
