"""Host-side checks of a training run's inputs, made once before anything compiles.

Values that no trace-time check can see (a label out of range, a NaN pixel)
would otherwise train to a meaningless model without a word: a label outside
``[0, k)`` gives a NaN loss, a NaN input is mapped to 0 by ReLU and silences
the network. :func:`check_splits` and :func:`check_targets` refuse them with
a :class:`fnn.DataError` that says what was wrong, where, and what was expected;
:func:`check_params` refuses parameters that do not fit the model.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fnn._errors import DataError

__all__ = [
    "check_binary_labels",
    "check_class_labels",
    "check_inputs",
    "check_params",
    "check_splits",
    "check_state",
    "check_targets",
    "check_values",
]


def _first_bad(mask):
    """The first index (as a tuple) where ``mask`` is True."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _position(at, rows):
    """Where entry ``at`` of an array of ``rows`` examples is: ``example 3 (index (3, 1))``, or for one example
    (a record checked alone, which names itself) its index within the example."""
    if rows == 1:
        return f"index {at[1:]}" if len(at) > 1 else "its value"
    return f"example {at[0]} (index {at})"


def check_class_labels(targets, output_shape, split):
    """Integer class ids in ``[0, k)``, ``k = output_shape[-1]``, one per row (shape ``output_shape[:-1]``)."""
    k = output_shape[-1]
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        one_hot = targets.shape == tuple(output_shape) and jnp.issubdtype(targets.dtype, jnp.floating)
        fix = "; these look one-hot: pass y.argmax(-1)" if one_hot else ""
        raise DataError(
            f"{split} labels must be integer class ids in [0, {k}), got dtype {targets.dtype} with shape "
            f"{targets.shape}{fix}"
        )
    if targets.shape != tuple(output_shape[:-1]):
        raise DataError(
            f"{split} labels must have shape {tuple(output_shape[:-1])} (one class id per example), got {targets.shape}"
        )
    bad = (targets < 0) | (targets >= k)
    if bad.any():
        at = _first_bad(bad)
        raise DataError(
            f"{split} labels must be class ids in [0, {k}) for a model with {k} outputs; "
            f"label {int(targets[at])} at index {at[0] if len(at) == 1 else at} "
            f"({int(bad.sum())} of {bad.size} labels out of range; min {int(targets.min())}, max {int(targets.max())})"
        )


def check_binary_labels(targets, output_shape, split):
    """Labels 0 or 1 of the outputs' shape."""
    if targets.shape != tuple(output_shape):
        raise DataError(f"{split} labels must have the model's output shape {tuple(output_shape)}, got {targets.shape}")
    bad = (targets != 0) & (targets != 1)
    if bad.any():
        at = _first_bad(bad)
        raise DataError(
            f"{split} labels must be 0 or 1; got {targets[at].item()} at {_position(at, targets.shape[0])} "
            f"({int(bad.sum())} of {bad.size} labels are neither 0 nor 1)"
        )


def check_values(targets, output_shape, split):
    """Finite floating targets of the outputs' shape (regression)."""
    if targets.shape != tuple(output_shape):
        raise DataError(
            f"{split} targets must have the model's output shape {tuple(output_shape)}, got {targets.shape}"
        )
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise DataError(f"{split} targets must be floating-point values, got dtype {targets.dtype}")
    _check_finite(targets, f"{split} targets")


def _check_finite(array, what):
    if jnp.issubdtype(array.dtype, jnp.floating) and not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        at = _first_bad(bad)
        raise DataError(
            f"{what} must be finite; {int(bad.sum())} of {bad.size} entries are NaN or infinite, the first "
            f"{array[at].item()} at {_position(at, array.shape[0])}"
        )


def check_inputs(x, split):
    """Finite floating-point inputs: the default host-side check of a module's inputs (a leaf may bring its own:
    :func:`fnn.module.leaf`'s ``check_inputs``)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        fix = " (pixels 0-255: pass x / 255, or x.astype(np.float32) / 255)" if x.dtype == np.uint8 else ""
        raise DataError(
            f"{split} inputs must be floating-point, got dtype {x.dtype}; convert them, e.g. x.astype(np.float32){fix}"
        )
    _check_finite(x, f"{split} inputs")


def check_splits(splits, model=None):
    """Checks each split's arrays: not empty, one target per input, and the inputs by the model's own check.

    Args:
      splits: ``{"train": (x, y), "test": (x, y)}`` of NumPy arrays.
      model: the module the inputs are for; without one, :func:`check_inputs`
        (finite floating-point inputs).

    Raises:
      DataError: saying which split is wrong, how, and what was expected.
    """
    for split, (x, y) in splits.items():
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"the {split} split is empty (x has shape {x.shape}); it needs at least one example")
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"the {split} split has {x.shape[0]} inputs but {y.shape[0] if y.ndim else 'no'} targets "
                f"(x shape {x.shape}, targets shape {y.shape}); they must match one to one"
            )
        (check_inputs if model is None else model._check_inputs)(x, split)


def check_targets(model, loss, splits, output_shape=None):
    """Checks each split's targets with ``loss.check_targets`` against the model's output shape.

    The output shape is the one ``model.init`` gives for the inputs (nothing
    is computed), or ``output_shape`` (batch axis excluded) when the caller
    knows it (a stream checks every batch against one).
    """
    if loss.check_targets is None:
        return
    for split, (x, y) in splits.items():
        shape = model._output_shape(x.shape[1:]) if output_shape is None else output_shape
        loss.check_targets(y, (x.shape[0], *shape), split)


def check_state(model, state, input_shape):
    """Raises ``DataError`` unless ``state`` has the structure and shapes ``model.init_state`` makes."""
    if not model._has_state and state != ():
        raise DataError(
            f"{model.name} keeps no state: pass state=() (what model.init_state gives) or no state, got {state!r}"
        )
    _check_like("state", model.init_state(tuple(input_shape)), state, model, input_shape)


def check_params(model, params, input_shape):
    """Raises ``DataError`` unless ``params`` has the structure and shapes ``model.init`` makes.

    ``input_shape`` excludes the batch axis. Each mismatch names the leaf's
    path and both shapes.
    """
    input_shape = tuple(input_shape)
    _, expected = jax.eval_shape(lambda key: model.init(key, input_shape), jax.random.key(0))
    if _is_init_result(params, model._output_shape(input_shape), expected):
        raise DataError(
            "params is the whole result of model.init, which returns (output_shape, params): "
            "take the second part, _, params = model.init(key, input_shape)"
        )
    _check_like("params", expected, params, model, input_shape)


def _is_init_result(params, shape, expected):
    """Whether ``params`` looks like ``model.init``'s ``(output_shape, params)`` pair rather than the params."""
    if not (isinstance(params, tuple) and len(params) == 2):
        return False
    first, second = params
    same_shape = isinstance(first, tuple) and tuple(first) == shape
    return same_shape and jax.tree.structure(second) == jax.tree.structure(expected)


def _check_like(what, expected, got, model, input_shape):
    """Raises ``DataError`` unless the pytree ``got`` has ``expected``'s structure and leaf shapes."""
    want, want_def = jax.tree_util.tree_flatten_with_path(expected)
    have, have_def = jax.tree_util.tree_flatten_with_path(got)
    if want_def != have_def:
        verb = "does" if what == "state" else "do"
        raise DataError(
            f"{what} {verb} not match the model {model!r} for inputs of shape {input_shape}: "
            f"expected the structure {want_def}, got {have_def}"
        )
    for (path, w), (_, g) in zip(want, have):
        if tuple(np.shape(g)) != tuple(np.shape(w)):
            raise DataError(
                f"{what}{jax.tree_util.keystr(path)} has shape {tuple(np.shape(g))}, but the model {model!r} "
                f"expects {tuple(np.shape(w))} for inputs of shape {input_shape}"
            )
