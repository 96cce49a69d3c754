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

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fnn import _precision
from fnn._errors import InputError, UsageError
from fnn._numbers import as_float, positive_int
from fnn._paths import gradients
from fnn.module import returned

__all__ = [
    "TrainState",
    "as_optimizer",
    "optimizer_step",
    "optimizer_update",
    "sgd_step",
    "sgd_update",
    "train_step",
]


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
    sgd = optax.sgd(_step_size(learning_rate))  # p + (-lr g): the same bits as p - lr g
    update_with_state = optimizer_update(model, loss, sgd, path=path, precision=precision)

    def update(params, batch, *, state=None, key=None):
        params, _, *rest = update_with_state(params, sgd.init(params), batch, state=state, key=key)  # SGD keeps none
        return (params, *rest)

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
        return returned(result, state, new_state)

    return update


def _training(model, loss, path, precision):
    """``(params, batch, state, key) -> (L, outputs, grads, new_state)`` in training mode at ``precision``, the
    state checked as :meth:`fnn.module.Module.apply` checks it."""
    grads_of = gradients(model, loss, path)
    precision = _precision.check("a training step", precision)

    def fn(params, batch, state, key):
        state, train = model._context(state, True)
        with _precision.training(precision):
            return grads_of(params, *batch, state, key, train)

    return fn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """What training carries from one optimizer step to the next, as one pytree (``fit``'s state, and a
    checkpoint's).

    Attributes:
      params: the model's parameters.
      opt_state: the optimizer's state (``optimizer.init(params)``).
      model_state: the model's state (``model.init_state(input_shape)``;
        ``()`` for a model without state).
      step: the optimizer steps taken, an int32 scalar: where the run is, and
        what the step's randomness is drawn from.
      key: the run's key data (``jax.random.key_data``), of implementation
        ``key_impl`` (not an array: fixed with the pytree's structure). Step
        ``t`` draws the model's randomness (dropout) from
        ``fold_in(fold_in(key, 0), t)``.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: Any
    key: Any
    key_impl: str = dataclasses.field(default="threefry2x32", metadata={"static": True})

    @classmethod
    def create(cls, params, optimizer=0.5, *, model_state=(), key=None):
        """The state before the first step: ``optimizer``'s state (a step size is plain SGD, see :func:`as_optimizer`)
        for ``params``, step 0, ``key`` (a ``jax.random.key``; ``jax.random.key(0)`` by default)."""
        key = jax.random.key(0) if key is None else key
        return cls(
            params,
            as_optimizer(optimizer).init(params),
            model_state,
            jnp.int32(0),
            jax.random.key_data(key),
            str(jax.random.key_impl(key)),
        )

    def step_key(self):
        """The key of this step's randomness (dropout): ``fold_in(fold_in(key, 0), step)``."""
        run_key = jax.random.wrap_key_data(self.key, impl=self.key_impl)
        return jax.random.fold_in(jax.random.fold_in(run_key, 0), self.step)


def train_step(model, loss, optimizer=0.5, *, path="custom", precision=None, accumulate=1):
    """One optimizer step, ``step(state, batch) -> (state, metrics)``: the seam of training.

    ``state`` is a :class:`TrainState`, ``batch`` a pair ``(x, targets)``;
    ``metrics`` holds the batch's ``"loss"`` (and ``"error"`` for a loss with
    an error rate) at the parameters passed in, from the forward pass the
    gradient needs. The gradient comes from ``path`` (one of
    :data:`fnn.PATHS`) at ``precision`` (see :func:`fnn.value_and_grad`);
    the model trains (batch statistics, dropout masks drawn from
    :meth:`TrainState.step_key`), its new state is carried, and the step
    count goes up by one. :func:`fnn.fit` scans this step over each epoch; a
    step of your own with the same signature (a loss with auxiliary outputs,
    two optimizers) trains through ``fit(..., step=...)``.

    ``accumulate=k`` splits the batch into ``k`` equal microbatches, sums
    their gradients (each weighted by its share) in one ``lax.scan``, and
    applies the optimizer once: the large batch's step in ``1/k`` of its
    activation memory, equal to it to rounding for a model without batch
    statistics (batch norm normalises each microbatch by its own, and
    updates its running statistics once per microbatch; dropout draws each
    microbatch's mask from ``fold_in(step key, j)``). A batch whose rows do
    not divide by ``k`` (an epoch's last smaller batch) is taken whole.

    Example::

        step = jax.jit(fnn.train.train_step(model, fnn.losses.cross_entropy, optax.adam(1e-3)))
        state = fnn.train.TrainState.create(params, optax.adam(1e-3))
        state, metrics = step(state, (x, labels))
    """
    optimizer = as_optimizer(optimizer)
    grads_of = _training(model, loss, path, precision)
    accumulate = positive_int("train_step", "accumulate", accumulate)

    def gradient(state, batch):
        key = state.step_key() if model._has_randomness else None
        rows = batch[0].shape[0]
        if accumulate == 1 or rows % accumulate:
            return grads_of(state.params, batch, state.model_state, key)
        return _accumulated(grads_of, accumulate, state.params, batch, state.model_state, key)

    def step(state, batch):
        value, outputs, grads, model_state = gradient(state, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = dataclasses.replace(
            state, params=params, opt_state=opt_state, model_state=model_state, step=state.step + 1
        )
        return new, _metrics(loss, value, outputs, batch[1])

    return step


def _accumulated(grads_of, k, params, batch, model_state, key):
    """``grads_of`` over ``k`` equal microbatches of ``batch``: the mean of their losses and gradients (each
    microbatch's own mean, over ``k``), their outputs in the batch's order, the model's state carried through."""
    micro = jax.tree.map(lambda a: a.reshape(k, a.shape[0] // k, *a.shape[1:]), batch)

    def one(carry, inputs):
        (value, grads, model_state), (j, part) = carry, inputs
        part_key = None if key is None else jax.random.fold_in(key, j)
        v, outputs, g, model_state = grads_of(params, part, model_state, part_key)
        return (value + v / k, jax.tree.map(lambda a, b: a + b / k, grads, g), model_state), outputs

    zeros = jax.tree.map(jnp.zeros_like, params)
    dtype = jnp.result_type(*[a.dtype for a in jax.tree.leaves(params)] or [jnp.float32])
    start = (jnp.zeros((), dtype), zeros, model_state)
    (value, grads, model_state), outputs = jax.lax.scan(one, start, (jnp.arange(k), micro))
    return value, outputs.reshape(-1, *outputs.shape[2:]), grads, model_state


def sgd_step(model, loss, learning_rate, *, path="custom", precision=None):
    """Jitted :func:`sgd_update`, donating ``params``."""
    return jax.jit(sgd_update(model, loss, learning_rate, path=path, precision=precision), donate_argnums=0)


def optimizer_step(model, loss, optimizer, *, path="custom", precision=None):
    """Jitted :func:`optimizer_update`, donating ``params`` and ``opt_state``."""
    update = optimizer_update(model, loss, optimizer, path=path, precision=precision)
    return jax.jit(update, donate_argnums=(0, 1))
