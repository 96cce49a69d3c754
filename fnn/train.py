"""Jit-compiled training steps for a model, a loss and a gradient path.

A step is ``(params, batch) -> (params, metrics)`` (SGD) or
``(params, opt_state, batch) -> (params, opt_state, metrics)`` (optax), with
``batch = (x, targets)`` and ``metrics = {"loss": L, "error": E}``: the loss
and, for a loss with an error rate, the error of the batch at the parameters
passed in (before the update), from the forward pass the gradient needs
anyway. The gradient comes from ``path``, one of :data:`fnn.PATHS`. A step
trains (``train=True``): it takes the context keywords ``state=`` and
``key=`` of :meth:`fnn.module.Module.apply` and returns the model's new
state last exactly when ``state=`` was passed. Jitted
steps donate their parameter (and optimizer-state) buffers, so the update
happens in place on every backend; the arrays passed in must not be used
afterwards. Nothing here is device-specific.
"""

import math

import jax
import optax

from fnn import _precision
from fnn._errors import InputError, UsageError
from fnn._numbers import as_float
from fnn._paths import gradients

__all__ = ["as_optimizer", "optimizer_step", "optimizer_update", "sgd_step", "sgd_update"]


def _step_size(value, name="learning_rate"):
    """``value``, passed as ``name``, as a Python float: a positive finite step size (Python, NumPy or 0-d JAX).

    A Python float, so that the step size's own dtype never widens the update's.
    """
    number = as_float(value)
    if number is None:
        got = f"the string {value!r}" if isinstance(value, str) else type(value).__name__
        raise UsageError(
            f"{name} must be a step size (a positive number, for plain SGD) or an optax.GradientTransformation "
            f"such as optax.adam(1e-3), got {got}"
        )
    if not 0 < number < math.inf:
        raise InputError(f"{name} must be a positive step size, a finite number above 0, got {number!r}")
    return number


def as_optimizer(optimizer):
    """Returns ``optimizer`` as an ``optax.GradientTransformation``; a number becomes ``optax.sgd``, an object with
    ``init`` and ``update`` methods (``optax.MultiSteps``) the transformation of those."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        return optax.GradientTransformation(optimizer.init, optimizer.update)
    return optax.sgd(_step_size(optimizer, "optimizer"))


def _metrics(loss, value, outputs, targets):
    """The batch's loss and, if the loss has one, its error rate."""
    if loss.error is None:
        return {"loss": value}
    return {"loss": value, "error": loss.error(outputs, targets)}


def sgd_update(model, loss, learning_rate, *, path="custom", precision=None):
    """Pure (unjitted) SGD update ``(params, batch) -> (params, metrics)``.

    Implements ``W <- W - learning_rate * dL/dW`` for every leaf. Use it in
    your own compiled loops (e.g. ``jax.lax.scan``); :func:`sgd_step` is its
    jitted form. With ``state=`` it returns the new state last (see the module doc).
    ``precision`` sets the products' precision (see :func:`fnn.value_and_grad`).
    """
    learning_rate = _step_size(learning_rate)
    grads_of = _training(model, loss, path, precision)

    def update(params, batch, *, state=None, key=None):
        value, outputs, grads, new_state = grads_of(params, batch, state, key)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        return _out((params, _metrics(loss, value, outputs, batch[1])), state, new_state)

    return update


def optimizer_update(model, loss, optimizer, *, path="custom", precision=None):
    """Pure (unjitted) optax update ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

    ``optimizer`` is any ``optax.GradientTransformation`` (SGD, momentum, Adam,
    schedules, chains); a number means plain SGD with that step size.
    Initialise the state with ``as_optimizer(optimizer).init(params)``. With
    ``state=`` it returns the model's new state last (see the module doc).
    ``precision`` sets the products' precision (see :func:`fnn.value_and_grad`).
    """
    optimizer = as_optimizer(optimizer)
    grads_of = _training(model, loss, path, precision)

    def update(params, opt_state, batch, *, state=None, key=None):
        value, outputs, grads, new_state = grads_of(params, batch, state, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        result = (optax.apply_updates(params, updates), opt_state, _metrics(loss, value, outputs, batch[1]))
        return _out(result, state, new_state)

    return update


def _training(model, loss, path, precision):
    """``(params, batch, state, key) -> (L, outputs, grads, new_state)`` in training mode at ``precision``, the
    state checked as :meth:`fnn.module.Module.apply` checks it."""
    grads_of = gradients(model, loss, path)
    precision = _precision.check("a training step", precision)

    def fn(params, batch, state, key):
        state, train = model.checked_context(state, True)
        with _precision.training(precision):
            return grads_of(params, *batch, state, key, train)

    return fn


def _out(result, state, new_state):
    """``result``, with the model's new state last exactly when a ``state`` was passed."""
    return result if state is None else (*result, new_state)


def sgd_step(model, loss, learning_rate, *, path="custom", precision=None):
    """Jitted :func:`sgd_update`, donating ``params``."""
    return jax.jit(sgd_update(model, loss, learning_rate, path=path, precision=precision), donate_argnums=0)


def optimizer_step(model, loss, optimizer, *, path="custom", precision=None):
    """Jitted :func:`optimizer_update`, donating ``params`` and ``opt_state``."""
    update = optimizer_update(model, loss, optimizer, path=path, precision=precision)
    return jax.jit(update, donate_argnums=(0, 1))
