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

**Dynamic loss scaling** (:class:`DynamicLossScale`, carried in
:attr:`TrainState.loss_scale`): :func:`train_step` differentiates ``S L``
for the scale ``S``, so that a float16 backward's small values stay above
float16's underflow, and divides the gradients by ``S`` in float32. A step
whose gradients are all finite is applied and counts as good; after
``period`` good steps in a row ``S`` grows by ``factor``. A step with a
non-finite gradient (the float16 backward overflowed) is skipped: the
parameters, the optimizer's state and the model's state (batch norm's
statistics) stay as they were, ``S`` shrinks by ``factor`` (not below
``minimum``) and the count of good steps restarts. A model with a float16
:func:`fnn.nn.mixed_precision` block scales by default (:func:`loss_scale_for`).
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fnn import _precision
from fnn._errors import InputError, UsageError
from fnn._numbers import as_float, as_int, positive_int, real
from fnn._paths import gradients
from fnn.module import returned
from fnn.nn._mixed import needs_loss_scaling

__all__ = [
    "DynamicLossScale",
    "TrainState",
    "all_finite",
    "as_optimizer",
    "loss_scale_for",
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
    It does not scale the loss: a model with a float16 block trains with :func:`train_step`.
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
    It does not scale the loss: a model with a float16 block trains with :func:`train_step`, whose
    :class:`TrainState` carries the loss scale.
    """
    optimizer = as_optimizer(optimizer)
    grads_of = _training(model, loss, path, precision)
    if needs_loss_scaling(model):
        raise UsageError(
            "optimizer_update: the model computes in float16, whose gradients need dynamic loss scaling, which this "
            "step has no state for; train with fnn.train.train_step (or fnn.fit), which scales the loss"
        )

    def update(params, opt_state, batch, *, state=None, key=None):
        value, outputs, grads, new_state = grads_of(params, batch, state, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        result = (optax.apply_updates(params, updates), opt_state, _metrics(loss, value, outputs, batch[1]))
        return returned(result, state, new_state)

    return update


def _training(model, loss, path, precision):
    """``(params, batch, state, key, scale=None) -> (L, outputs, grads, new_state)`` in training mode at
    ``precision``, the state checked as :meth:`fnn.module.Module.apply` checks it; ``grads`` are ``scale`` times the
    gradient when a scale is given (see :func:`fnn._paths.gradients`)."""
    grads_of = gradients(model, loss, path)
    precision = _precision.check("a training step", precision)

    def fn(params, batch, state, key, scale=None):
        state, train = model._context(state, True)
        with _precision.training(precision):
            return grads_of(params, *batch, state, key, train, scale)

    return fn


def all_finite(tree):
    """Whether every floating entry of ``tree`` is finite: one boolean scalar (``True`` for a tree without any)."""
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """Dynamic loss scaling's settings and state, one pytree (:attr:`TrainState.loss_scale`), as in jmp and
    PyTorch's ``GradScaler``.

    A step differentiates ``scale * L``: the gradients come out ``scale``
    times too large, and :meth:`unscale` divides them back in float32. For
    ``scale`` a power of two both are exact: the gradient equals the unscaled
    one bit for bit unless a value over- or underflows, which is what the
    scale is there to prevent. :meth:`adjust` moves the scale after each step.

    Attributes:
      scale: ``S``, a float32 scalar; ``2**15`` to start with.
      good_steps: the steps with finite gradients since ``S`` last changed, an int32 scalar.
      period: good steps in a row after which ``S`` grows by ``factor`` (2000).
      factor: how much ``S`` grows after ``period`` good steps and shrinks after a non-finite gradient (2).
      minimum: the least ``S`` (1).

    ``period``, ``factor`` and ``minimum`` are settings, fixed with the
    pytree's structure; ``scale`` and ``good_steps`` are its arrays. Give
    your settings as ``DynamicLossScale(2.0**10, period=500)`` to
    :meth:`TrainState.create` or :func:`fnn.fit`'s ``loss_scale=``.
    """

    scale: Any = 2.0**15
    good_steps: Any = 0
    period: int = dataclasses.field(default=2000, metadata={"static": True})
    factor: float = dataclasses.field(default=2.0, metadata={"static": True})
    minimum: float = dataclasses.field(default=1.0, metadata={"static": True})

    def __post_init__(self):
        # only the settings are checked here: JAX rebuilds the pytree with other leaves (tracers, shardings)
        object.__setattr__(self, "period", positive_int("DynamicLossScale", "period", self.period))
        within = "a finite number above 1"
        factor = real("DynamicLossScale", "factor", self.factor, within=within, ok=lambda f: 1 < f < math.inf)
        object.__setattr__(self, "factor", factor)
        within = "a finite number above 0"
        minimum = real("DynamicLossScale", "minimum", self.minimum, within=within, ok=lambda m: 0 < m < math.inf)
        object.__setattr__(self, "minimum", minimum)

    def unscale(self, grads):
        """``grads / scale``, each leaf in its own dtype."""
        return jax.tree.map(lambda g: (g / self.scale).astype(g.dtype), grads)

    def adjust(self, finite):
        """The loss scale after a step whose gradients were all finite (``finite``, a boolean scalar) or not.

        Finite: ``good_steps + 1``, and at ``period`` the scale times
        ``factor`` (kept where that is no longer a finite float32) with the
        count back at 0. Not finite: ``max(scale / factor, minimum)`` and 0.
        The new scale is a float32 scalar, the count an int32 one.
        """
        scale, good_steps = jnp.asarray(self.scale, jnp.float32), jnp.asarray(self.good_steps, jnp.int32)
        grows = good_steps + 1 >= self.period
        larger = scale * self.factor
        kept = jnp.where(grows & jnp.isfinite(larger), larger, scale)
        scale = jnp.where(finite, kept, jnp.maximum(scale / self.factor, self.minimum))
        good_steps = jnp.where(finite & ~grows, good_steps + 1, 0)
        return dataclasses.replace(self, scale=scale, good_steps=good_steps)


def _started(loss_scale):
    """``loss_scale`` (a :class:`DynamicLossScale`, or ``None`` for none) checked, as arrays: a float32 scale, an
    int32 count."""
    if loss_scale is None:
        return None
    if not isinstance(loss_scale, DynamicLossScale):
        raise UsageError(
            "loss_scale must be a fnn.train.DynamicLossScale, e.g. DynamicLossScale(2.0**15, period=2000), or None, "
            f"got {type(loss_scale).__name__} {loss_scale!r}"
        )
    minimum, largest = loss_scale.minimum, float(jnp.finfo(jnp.float32).max)
    within = f"a number from minimum={minimum:g} to float32's largest, {largest:.4g}"
    scale = real("DynamicLossScale", "scale", loss_scale.scale, within=within, ok=lambda s: minimum <= s <= largest)
    good_steps = as_int(loss_scale.good_steps)
    if good_steps is None or not 0 <= good_steps < loss_scale.period:
        raise InputError(
            f"DynamicLossScale: good_steps must be an int from 0 to period - 1 = {loss_scale.period - 1}, got "
            f"{loss_scale.good_steps!r}"
        )
    return dataclasses.replace(loss_scale, scale=jnp.float32(scale), good_steps=jnp.int32(good_steps))


def loss_scale_for(model, loss_scale=None):
    """The loss scale a run of ``model`` starts with (:attr:`TrainState.loss_scale`), as arrays: ``loss_scale``
    checked, or for ``None`` the default: ``DynamicLossScale()`` for a model with a float16
    :func:`fnn.nn.mixed_precision` block, none (``None``) for any other.

    Example::

        state = fnn.train.TrainState.create(params, optimizer, loss_scale=fnn.train.loss_scale_for(model))
    """
    if loss_scale is None and needs_loss_scaling(model):
        loss_scale = DynamicLossScale()
    return _started(loss_scale)


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
      step: the steps taken (those a loss scale skipped included), an int32
        scalar: where the run is, and what the step's randomness is drawn from.
      key: the run's key data (``jax.random.key_data``), of implementation
        ``key_impl`` (not an array: fixed with the pytree's structure). Step
        ``t`` draws the model's randomness (dropout) from
        ``fold_in(fold_in(key, 0), t)``.
      loss_scale: the :class:`DynamicLossScale` the steps scale the loss by
        (its ``scale`` and its count of good steps), or ``None``: no loss
        scaling. A checkpoint keeps it, so a resumed run goes on with its scale.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: Any
    key: Any
    key_impl: str = dataclasses.field(default="threefry2x32", metadata={"static": True})
    loss_scale: Any = None

    @classmethod
    def create(cls, params, optimizer=0.5, *, model_state=(), key=None, loss_scale=None):
        """The state before the first step: ``optimizer``'s state (a step size is plain SGD, see :func:`as_optimizer`)
        for ``params``, step 0, ``key`` (a ``jax.random.key``; ``jax.random.key(0)`` by default), ``loss_scale`` (a
        :class:`DynamicLossScale`; ``None``: none; :func:`loss_scale_for` gives a model's default)."""
        key = jax.random.key(0) if key is None else key
        return cls(
            params,
            as_optimizer(optimizer).init(params),
            model_state,
            jnp.int32(0),
            jax.random.key_data(key),
            str(jax.random.key_impl(key)),
            _started(loss_scale),
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

    When the state carries a loss scale (:attr:`TrainState.loss_scale`, a
    :class:`DynamicLossScale`), the step differentiates ``S L`` and divides
    the gradients by ``S`` before the optimizer sees them; a step with a
    non-finite gradient is skipped (the parameters, the optimizer's state
    and the model's state kept, the step count still going up) and the
    scale adjusted (see the module doc). ``metrics`` then also holds
    ``"loss_scale"``, the ``S`` of this step, and ``"skipped"``, whether it
    was skipped. A model with a float16 :func:`fnn.nn.mixed_precision` block
    needs one: make its state with ``TrainState.create(...,
    loss_scale=loss_scale_for(model))``, as :func:`fnn.fit` does.

    Example::

        step = jax.jit(fnn.train.train_step(model, fnn.losses.cross_entropy, optax.adam(1e-3)))
        state = fnn.train.TrainState.create(params, optax.adam(1e-3))
        state, metrics = step(state, (x, labels))
    """
    optimizer = as_optimizer(optimizer)
    grads_of = _training(model, loss, path, precision)
    accumulate = positive_int("train_step", "accumulate", accumulate)
    float16 = needs_loss_scaling(model)

    def gradient(state, batch, scale):
        key = state.step_key() if model._has_randomness else None
        rows = batch[0].shape[0]
        if accumulate == 1 or rows % accumulate:
            return grads_of(state.params, batch, state.model_state, key, scale)
        return _accumulated(grads_of, accumulate, state.params, batch, state.model_state, key, scale)

    def step(state, batch):
        scaling = state.loss_scale
        if scaling is None and float16:
            raise UsageError(
                "train_step: the model computes in float16, whose gradients need dynamic loss scaling, and the state "
                "carries no loss scale; make it with TrainState.create(..., loss_scale=fnn.train.loss_scale_for(model))"
            )
        value, outputs, grads, model_state = gradient(state, batch, None if scaling is None else scaling.scale)
        if scaling is not None:
            grads = scaling.unscale(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = dataclasses.replace(
            state, params=params, opt_state=opt_state, model_state=model_state, step=state.step + 1
        )
        metrics = _metrics(loss, value, outputs, batch[1])
        if scaling is None:
            return new, metrics
        finite = all_finite(grads)
        return _applied_if(finite, state, new), {**metrics, "loss_scale": scaling.scale, "skipped": ~finite}

    return step


def _applied_if(finite, before, after):
    """``after`` (the step taken) if ``finite``, else ``before`` with ``after``'s step count (the step skipped);
    either way with ``before``'s loss scale adjusted (:meth:`DynamicLossScale.adjust`)."""
    kept = ("params", "opt_state", "model_state")
    chosen = optax.tree.where(finite, [getattr(after, n) for n in kept], [getattr(before, n) for n in kept])
    return dataclasses.replace(after, **dict(zip(kept, chosen)), loss_scale=before.loss_scale.adjust(finite))


def _accumulated(grads_of, k, params, batch, model_state, key, scale):
    """``grads_of`` over ``k`` equal microbatches of ``batch``: the mean of their losses and gradients (each
    microbatch's own mean, over ``k``; ``scale`` times it, for a scale), their outputs in the batch's order, the
    model's state carried through."""
    micro = jax.tree.map(lambda a: a.reshape(k, a.shape[0] // k, *a.shape[1:]), batch)

    def one(carry, inputs):
        (value, grads, model_state), (j, part) = carry, inputs
        part_key = None if key is None else jax.random.fold_in(key, j)
        v, outputs, g, model_state = grads_of(params, part, model_state, part_key, scale)
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
