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
:func:`sweep_backward` are the two halves of the third, :func:`gradients`
puts them behind one positional form, and :func:`value_and_grad` is the
public entry point. Everything else in fnn (training, :mod:`fnn.inspect`,
:mod:`fnn.testing`, :mod:`fnn.ops`) calls these.
"""

import jax
import jax.numpy as jnp

from fnn._errors import InputError, UsageError
from fnn.module import Loss, Module

PATHS = ("autodiff", "custom", "backprop")


def check_path(path):
    """Returns ``path`` if it names a gradient path, else raises ``ValueError`` listing :data:`PATHS`."""
    if path not in PATHS:
        raise InputError(f"unknown gradient path {path!r}; expected one of {', '.join(map(repr, PATHS))}")
    return path


def check_pair(model, loss):
    """Raises ``TypeError`` unless ``model`` is an fnn module and ``loss`` an fnn loss."""
    if not isinstance(model, Module):
        raise UsageError(f"model must be an fnn module (e.g. fnn.nn.mlp([784, 500, 10])), got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise UsageError(f"loss must be an fnn loss (e.g. fnn.losses.cross_entropy), got {type(loss).__name__}")


def objective(model, loss, path):
    """What JAX differentiates on ``path`` (``"autodiff"`` or ``"custom"``).

    ``f(params, x, targets, *, state=None, key=None, train=None) -> (L,
    outputs)``, or ``(L, (outputs, new_state))`` exactly when ``state=`` was
    passed; the keywords are :meth:`fnn.module.Module.apply`'s. On the
    ``custom`` path every leaf and the loss are their ``jax.custom_vjp``
    forms (:attr:`fnn.module.Module.custom`); on ``autodiff`` their plain
    ``apply``. The ``backprop`` path differentiates nothing: see
    :func:`sweep_forward` and :func:`sweep_backward`.
    """
    if check_path(path) == "backprop":
        raise InputError("the backprop path has no objective for JAX to differentiate; see sweep_forward")
    run_model, run_loss = (model.custom, loss.custom) if path == "custom" else (model, loss)

    def fn(params, x, targets, *, state=None, key=None, train=None):
        context = model.checked_context(state, train)
        outputs, new_state = run_model.run(params, x, context[0], key, context[1])
        return run_loss.apply(outputs, targets), (outputs if state is None else (outputs, new_state))

    return fn


def sweep_forward(model, loss):
    """The reverse sweep's forward half: ``(params, x, targets) -> (L, outputs, saved)``.

    ``saved = (model_saved, loss_saved)``: what the model's and the loss's
    forward functions keep for their backward functions. The keywords are
    :meth:`fnn.module.Module.apply`'s; the new state comes last exactly when
    ``state=`` was passed, ``(L, outputs, saved, state)``.
    """

    def forward(params, x, targets, *, state=None, key=None, train=None):
        context = model.checked_context(state, train)
        outputs, model_saved, new_state = model.run_forward(params, x, context[0], key, context[1])
        value, loss_saved = loss.forward(outputs, targets)
        kept = (value, outputs, (model_saved, loss_saved))
        return kept if state is None else (*kept, new_state)

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


def gradients(model, loss, path, *, inputs=False):
    """Any path in one positional form: ``(params, x, targets, state, key, train) -> (L, outputs, grads,
    new_state)``.

    ``state`` is ``()`` for a model without state and ``key`` ``None`` for
    one without randomness; ``grads`` is ``dparams`` in the structure of
    ``params``, or with ``inputs`` the pair ``(dparams, dx)``. What the
    training steps and :func:`value_and_grad` run.
    """
    check_pair(model, loss)
    if check_path(path) == "backprop":
        forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

        def by_sweep(params, x, targets, state, key, train):
            value, outputs, saved, new_state = forward(params, x, targets, state=state, key=key, train=train)
            grads = backward(params, saved, jnp.ones_like(value))
            return value, outputs, (grads if inputs else grads[0]), new_state

        return by_sweep
    fn = objective(model, loss, path)
    grad = jax.value_and_grad(
        lambda params, x, targets, state, key, train: fn(params, x, targets, state=state, key=key, train=train),
        argnums=(0, 1) if inputs else 0,
        has_aux=True,
    )

    def by_jax(params, x, targets, state, key, train):
        (value, (outputs, new_state)), grads = grad(params, x, targets, state, key, train)
        return value, outputs, grads, new_state

    return by_jax


def value_and_grad(model, loss, *, path="custom", train=None, outputs=False, inputs=False):
    """The loss of ``model`` on a batch and its gradient, by one of :data:`PATHS`.

    Args:
      model: any :class:`fnn.module.Module` (e.g. ``fnn.nn.mlp([784, 500, 10])``).
      loss: any :class:`fnn.module.Loss` (e.g. ``fnn.losses.cross_entropy``).
      path: ``"autodiff"``, ``"custom"`` or ``"backprop"``.
      train: ``True`` (training: batch statistics, dropout masks) or
        ``False`` (evaluation); required for a contextual model (batch norm,
        dropout), ignored by the others. Fixed here, so that the returned
        function takes arrays only and goes under ``jax.jit`` as it is.
      outputs: also return the model's outputs (from the same forward pass),
        as ``jax.value_and_grad(..., has_aux=True)`` returns its aux.
      inputs: also return the gradient with respect to the inputs ``x``.

    Returns:
      ``f(params, x, targets, *, state=None, key=None) -> (loss_value,
      grads)``: ``loss_value`` is ``(L, outputs)`` with ``outputs``,
      ``grads`` is ``dparams`` (in the structure of ``params``) or with
      ``inputs`` the pair ``(dparams, dx)``. ``state`` and ``key`` are
      :meth:`fnn.module.Module.apply`'s, and as there the model's new state
      comes back last, ``(loss_value, grads, state)``, exactly when
      ``state=`` was passed. Every path gives the same value and, up to
      rounding, the same gradient.

    Example::

        loss, grads = fnn.value_and_grad(model, fnn.losses.cross_entropy, path="backprop")(params, x, labels)
        # batch norm, dropout: the mode is fixed here, the state comes back because it went in
        grad_fn = fnn.value_and_grad(model, fnn.losses.cross_entropy, train=True)
        loss, grads, state = grad_fn(params, x, labels, state=state, key=key)
    """
    grads_of = gradients(model, loss, path, inputs=inputs)
    model.checked_context((), train)  # the mode: required for a contextual model

    def value_and_grads(params, x, targets, *, state=None, key=None):
        context = model.checked_context(state, train)
        value, out, grads, new_state = grads_of(params, x, targets, context[0], key, context[1])
        result = ((value, out) if outputs else value, grads)
        return result if state is None else (*result, new_state)

    return value_and_grads
