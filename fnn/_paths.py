"""Three gradient paths, each derived from the modules' forward/backward pairs.

- ``"autodiff"``: ``jax.value_and_grad`` through the plain ``apply`` functions;
  JAX derives every rule from the ``jax.numpy`` forward code.
- ``"custom"``: ``jax.value_and_grad`` through :attr:`fnn.module.Module.by_rules`,
  where every leaf is differentiated by its hand-written backward (forward mode:
  by its transpose).
- ``"backprop"``: the notes' explicit reverse sweep: ``forward`` keeps what
  each backward function needs, then the loss's and the model's ``backward``
  run in reverse order. No JAX autodiff is involved.

Forward mode (:func:`jvp`) comes the same three ways: ``jax.jvp`` through
the plain code, ``jax.jvp`` through the custom leaves (each leaf's JVP the
transpose of its backward function), and the notes' forward sweep on the
``backprop`` path (:func:`sweep_tangent`).

This module is the one place where a path is chosen: :func:`objective` is
what JAX differentiates on the first two paths, :func:`sweep_forward` and
:func:`sweep_backward` are the two halves of the third, :func:`gradients`
puts them behind one positional form, and :func:`value_and_grad` and
:func:`jvp` are the public entry points. Everything else in fnn (training, :mod:`fnn.inspect`,
:mod:`fnn.testing`, :mod:`fnn.ops`) calls these.
"""

import jax
import jax.numpy as jnp

from fnn import _precision
from fnn._errors import InputError, UsageError
from fnn.module import Loss, Module, returned

PATHS = ("autodiff", "custom", "backprop")


def check_path(path):
    """Returns ``path`` if it names a gradient path, else raises ``ValueError`` listing :data:`PATHS`."""
    if path not in PATHS:
        raise InputError(f"unknown gradient path {path!r}; expected one of {', '.join(map(repr, PATHS))}")
    return path


def check_model(model):
    """Raises ``TypeError`` unless ``model`` is an fnn module."""
    if not isinstance(model, Module):
        raise UsageError(f"model must be an fnn module (e.g. fnn.nn.mlp([784, 500, 10])), got {type(model).__name__}")


def check_pair(model, loss):
    """Raises ``TypeError`` unless ``model`` is an fnn module and ``loss`` an fnn loss."""
    check_model(model)
    if not isinstance(loss, Loss):
        raise UsageError(f"loss must be an fnn loss (e.g. fnn.losses.cross_entropy), got {type(loss).__name__}")


def objective(model, loss, path):
    """What JAX differentiates on ``path`` (``"autodiff"`` or ``"custom"``).

    ``f(params, x, targets, *, state=None, key=None, train=None) -> (L,
    outputs)``, or ``(L, (outputs, new_state))`` exactly when ``state=`` was
    passed; the keywords are :meth:`fnn.module.Module.apply`'s. On the
    ``custom`` path every leaf and the loss are their hand-differentiated
    forms (:attr:`fnn.module.Module.by_rules`); on ``autodiff`` their plain
    ``apply``. The ``backprop`` path differentiates nothing: see
    :func:`sweep_forward` and :func:`sweep_backward`.
    """
    if check_path(path) == "backprop":
        raise InputError("the backprop path has no objective for JAX to differentiate; see sweep_forward")
    run_model, run_loss = (model.by_rules, loss.by_rules) if path == "custom" else (model, loss)

    def fn(params, x, targets, *, state=None, key=None, train=None):
        context = model._context(state, train)
        outputs, new_state = run_model._run(params, x, context[0], key, context[1])
        return run_loss.apply(outputs, targets), returned((outputs,), state, new_state)

    return fn


def sweep_forward(model, loss):
    """The reverse sweep's forward half: ``(params, x, targets) -> (L, outputs, saved)``.

    ``saved = (model_saved, loss_saved)``: what the model's and the loss's
    forward functions keep for their backward functions. The keywords are
    :meth:`fnn.module.Module.apply`'s; the new state comes last exactly when
    ``state=`` was passed, ``(L, outputs, saved, state)``.
    """

    def forward(params, x, targets, *, state=None, key=None, train=None):
        context = model._context(state, train)
        outputs, model_saved, new_state = model._run_forward(params, x, context[0], key, context[1])
        value, loss_saved = loss.forward(outputs, targets)
        kept = (value, outputs, (model_saved, loss_saved))
        return returned(kept, state, new_state)

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


def sweep_tangent(model):
    """The notes' forward sweep: ``(params, x, dparams, dx, state, key, train) -> (y, dy, new_state)``.

    The forward pass keeps what each backward function needs; then the
    tangents go through the modules in the order they run, each module
    mapping its input's tangent (and its parameters') to its output's by the
    transpose of its backward function (:meth:`fnn.module.Module.pushforward`:
    ``J u`` from ``J^T g``, by ``jax.linear_transpose``). No JAX
    differentiation is involved, only JAX's transposition of linear code.
    """

    def forward_sweep(params, x, dparams, dx, state, key, train):
        y, saved, new_state = model._run_forward(params, x, state, key, train)
        return y, model.pushforward(params, saved, y, dparams, dx), new_state

    return forward_sweep


def gradients(model, loss, path, *, inputs=False):
    """Any path in one positional form: ``(params, x, targets, state, key, train, scale=None) -> (L, outputs,
    grads, new_state)``.

    ``state`` is ``()`` for a model without state and ``key`` ``None`` for
    one without randomness; ``grads`` is ``dparams`` in the structure of
    ``params``, or with ``inputs`` the pair ``(dparams, dx)``. A ``scale``
    ``S`` (a scalar) differentiates ``S L`` in place of ``L``: the loss's
    cotangent is ``S`` instead of 1 on every path, so the whole backward
    runs on ``S`` times its values and ``grads`` comes back ``S`` times the
    gradient, ``L`` unscaled (loss scaling, :class:`fnn.train.DynamicLossScale`).
    What the training steps and :func:`value_and_grad` run.
    """
    check_pair(model, loss)
    if check_path(path) == "backprop":
        forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

        def by_sweep(params, x, targets, state, key, train, scale=None):
            value, outputs, saved, new_state = forward(params, x, targets, state=state, key=key, train=train)
            seed = jnp.ones_like(value) if scale is None else jnp.full_like(value, scale)
            grads = backward(params, saved, seed)
            return value, outputs, (grads if inputs else grads[0]), new_state

        return by_sweep
    fn = objective(model, loss, path)

    def scaled(params, x, targets, state, key, train, scale):
        value, (outputs, new_state) = fn(params, x, targets, state=state, key=key, train=train)
        return (value if scale is None else value * scale), (value, outputs, new_state)

    grad = jax.value_and_grad(scaled, argnums=(0, 1) if inputs else 0, has_aux=True)

    def by_jax(params, x, targets, state, key, train, scale=None):
        (_, (value, outputs, new_state)), grads = grad(params, x, targets, state, key, train, scale)
        return value, outputs, grads, new_state

    return by_jax


def _fixed_mode(model, train, where):
    """Checks the mode a function of ``model`` is made with (required for a contextual model), naming ``where`` it
    goes."""
    try:
        model._context((), train)
    except UsageError as exc:
        raise UsageError(f"{exc}, to {where}: the mode is fixed when the function is made") from None


def _refuse_mode(given, where):
    """Refuses keywords the made function does not take: ``train=`` belongs to the call that made it."""
    if "train" in given:
        raise UsageError(f"train is fixed when the function is made, not when it is called: {where}")
    if given:
        raise UsageError(f"unexpected keywords {sorted(given)}: the function takes state= and key= only")


def value_and_grad(model, loss, *, path="custom", train=None, outputs=False, inputs=False, precision=None):
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
      precision: the precision of the matrix products and convolutions
        (``jax.default_matmul_precision``'s names: ``"default"``, ``"highest"``,
        ``"tensorfloat32"``, ``"bfloat16"``, ...):
        ``None`` keeps the backend's default, under which a recent GPU runs
        float32 products in TF32 (about 2^-10 relative error, several times
        faster); ``"highest"`` asks for full float32. Fixed when tracing, so
        it shows in the compiled program.

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
    _fixed_mode(model, train, "fnn.value_and_grad(model, loss, train=...)")
    precision = _precision.check("value_and_grad", precision)

    def value_and_grads(params, x, targets, *, state=None, key=None, **given):
        _refuse_mode(given, "fnn.value_and_grad(model, loss, train=True)")
        context = model._context(state, train)
        with _precision.training(precision):
            value, out, grads, new_state = grads_of(params, x, targets, context[0], key, context[1])
        result = ((value, out) if outputs else value, grads)
        return returned(result, state, new_state)

    return value_and_grads


def jvp(model, *, path="custom", train=None, precision=None):
    """The model's outputs and their directional derivative (forward mode), by one of :data:`PATHS`.

    ``dy = J_params dparams + J_x dx``, the Jacobian-vector product, where
    :func:`value_and_grad` gives ``J^T g``. ``"autodiff"``: ``jax.jvp`` of
    the plain forward code; ``"custom"``: ``jax.jvp`` through the custom
    leaves, each leaf's JVP the transpose of its hand-written backward
    function; ``"backprop"``: the notes' forward sweep (the forward pass,
    then the model's :meth:`fnn.module.Module.pushforward`, its modules'
    transposed backward functions in order).

    Args:
      model: any :class:`fnn.module.Module`.
      path: ``"autodiff"``, ``"custom"`` or ``"backprop"``.
      train: as for :func:`value_and_grad`: required by a contextual model.
      precision: as for :func:`value_and_grad`.

    Returns:
      ``f(params, x, dparams=None, dx=None, *, state=None, key=None) -> (y,
      dy)``, ``dparams`` in the structure of ``params`` and ``dx`` of ``x``'s
      shape, at least one of them given (``None``: held fixed, and nothing is
      computed for it; integer token ids are always fixed); the new
      state comes back last, ``(y, dy, state)``, exactly when ``state=`` was
      passed. The state and the key are not differentiated. Every path gives
      the same ``dy`` up to rounding.

    Example::

        y, dy = fnn.jvp(model)(params, x, dparams)  # how y moves along dparams
        y, dy = fnn.jvp(model, path="backprop")(params, x, dx=dx)  # along the input only
    """
    check_model(model)
    if check_path(path) == "backprop":
        by_path = sweep_tangent(model)
    else:
        run = model.by_rules._run if path == "custom" else model._run

        def by_path(params, x, dparams, dx, state, key, train):
            moving = [i for i, t in enumerate((dparams, dx)) if t is not None]  # the others held fixed

            def fn(*moved):
                args = [params, x]
                for i, value in zip(moving, moved):
                    args[i] = value
                return run(*args, state, key, train)

            primals, tangents = ((params, x)[i] for i in moving), ((dparams, dx)[i] for i in moving)
            return jax.jvp(fn, tuple(primals), tuple(tangents), has_aux=True)

    _fixed_mode(model, train, "fnn.jvp(model, train=...)")
    precision = _precision.check("jvp", precision)

    def tangent(params, x, dparams=None, dx=None, *, state=None, key=None, **given):
        _refuse_mode(given, "fnn.jvp(model, train=True)")
        context = model._context(state, train)
        x = jnp.asarray(x)
        if dparams is None and dx is None:
            raise UsageError("jvp: pass the tangent of the parameters (dparams), of the input (dx), or both")
        for name, tangent, primal in (("dparams", dparams, params), ("dx", dx, x)):
            if tangent is not None and jax.tree.structure(tangent) != jax.tree.structure(primal):
                raise UsageError(
                    f"jvp: {name} must have the structure of {name[1:]}, {jax.tree.structure(primal)}, got "
                    f"{jax.tree.structure(tangent)}"
                )
            if tangent is not None and any(
                jnp.shape(t) != jnp.shape(v) for t, v in zip(jax.tree.leaves(tangent), jax.tree.leaves(primal))
            ):
                raise InputError(f"jvp: every leaf of {name} must have its {name[1:]} leaf's shape")
        with _precision.training(precision):
            y, dy, new_state = by_path(params, x, dparams, dx, context[0], key, context[1])
        return returned((y, dy), state, new_state)

    return tangent
