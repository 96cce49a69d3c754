"""Jit-compiled training steps built from any loss function over a parameter pytree.

``loss_fn(params, batch) -> scalar``. The gradient path is a property of the
loss: ``functools.partial(fnn.mlp.loss, ops=fnn.ops.autodiff)`` differentiates
plain ``jax.numpy`` ops, ``ops=fnn.ops.custom`` the hand-written VJPs. Steps
donate their parameter (and optimizer-state) buffers, so the update happens in
place on every backend; the arrays passed in must not be used afterwards.
Nothing here is device-specific: the same code runs on CPU, GPU and TPU.
"""

import jax
import optax


def _check_learning_rate(learning_rate):
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise TypeError(
            f"learning_rate must be a number, got {type(learning_rate).__name__}"
        )
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")


def sgd_update(loss_fn, learning_rate):
    """Pure (unjitted) SGD update ``(params, batch) -> (params, {"loss": L})``.

    Implements ``W <- W - learning_rate * dL/dW`` for every leaf. Use it inside
    your own compiled loops (e.g. ``jax.lax.scan``); :func:`sgd_step` is its
    jitted form.
    """
    _check_learning_rate(learning_rate)

    def update(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        return params, {"loss": loss}

    return update


def optimizer_update(loss_fn, optimizer):
    """Pure (unjitted) optax update ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

    ``optimizer`` is any ``optax.GradientTransformation``; a number means plain
    SGD with that step size (``optax.sgd``). Initialise the state with
    ``optimizer.init(params)``.
    """
    optimizer = as_optimizer(optimizer)

    def update(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    return update


def as_optimizer(optimizer):
    """Returns ``optimizer`` as an ``optax.GradientTransformation``; a number becomes ``optax.sgd``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    _check_learning_rate(optimizer)
    return optax.sgd(optimizer)


def sgd_step(loss_fn, learning_rate):
    """Jitted SGD step ``(params, batch) -> (params, {"loss": L})`` donating ``params``.

    ``L`` is the loss at the parameters passed in (before the update).
    """
    return jax.jit(sgd_update(loss_fn, learning_rate), donate_argnums=0)


def optimizer_step(loss_fn, optimizer):
    """Jitted optax step ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

    Donates ``params`` and ``opt_state``. ``optimizer`` is any
    ``optax.GradientTransformation`` (or a step size for plain SGD).
    """
    return jax.jit(optimizer_update(loss_fn, optimizer), donate_argnums=(0, 1))
