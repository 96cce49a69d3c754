"""Losses, each a forward and its backward side by side (see :class:`fnn.module.Loss`).

Every loss returns a scalar mean; ``g`` below is the cotangent of that scalar
(1 for a plain gradient), ``m`` the number of rows averaged over.

- ``cross_entropy``: ``mean(logsumexp(h) - h_y)``; ``dh = g (softmax(h) - onehot(y)) / m``.
- ``mse``: ``mean((a - y)^2)`` over all ``N`` entries; ``da = 2 g (a - y) / N``.
- ``logistic``: ``mean(softplus(t) - y t)``, ``y`` in {0, 1}; ``dt = g (sigmoid(t) - y) / m``.
- ``multiclass_hinge(margin)``: ``mean_i sum_{j != y_i} max(0, s_j - s_y + margin)``;
  ``ds_j = g 1[s_j - s_y + margin > 0] / m`` for ``j != y``, ``ds_y`` minus the
  sum of those; 0 at exactly zero margin.

Label values are not known at trace time: a class id outside ``[0, k)``, or
a logistic label other than 0 or 1, gives a NaN loss rather than a silently
wrong one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn import validate
from fnn._errors import InputError, UsageError
from fnn._numbers import real
from fnn.metrics import error_rate
from fnn.module import loss, with_settings
from fnn.nn import _checks

__all__ = ["cross_entropy", "logistic", "mse", "multiclass_hinge"]


def _check_class_labels(name, scores_arg):
    def check(scores, labels):
        _checks.require_float(name, scores_arg, scores)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise UsageError(f"{name}: labels must be integer class ids, got dtype {labels.dtype}")
        if scores.ndim < 1 or labels.shape != scores.shape[:-1]:
            raise InputError(
                f"{name}: labels must have the shape of {scores_arg} without its last (class) axis; "
                f"got {scores_arg} {scores.shape} and labels {labels.shape}"
            )
        if labels.size == 0:
            raise InputError(f"{name}: the batch is empty (no labels)")

    return check


def _out_of_bounds(labels, k):
    """``labels`` with every id outside ``[0, k)`` (negative ones too) replaced by ``k``, so that
    indexing with it fills or drops instead of wrapping around."""
    return jnp.where((labels >= 0) & (labels < k), labels, k)


def _label_score(scores, labels):
    """``scores[..., labels]``, shape ``labels.shape``; NaN where a label is outside ``[0, k)``."""
    safe = _out_of_bounds(labels, scores.shape[-1])
    return jnp.take_along_axis(scores, safe[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]


def _huge_scores(shape):
    """Scores of -1e4, 0 and 1e4 in turn: ``exp`` of any of them overflows unless the rule shifts it (an edge value)."""
    return 1e4 * (np.arange(math.prod(shape)) % 3 - 1.0).reshape(shape)


# ---------------------------------------------------------------- cross-entropy
def _cross_entropy_forward(logits, labels):
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    exps = jnp.exp(shifted)  # once: the loss needs their sum, the backward softmax = exps / sum
    total = jnp.sum(exps, axis=-1, keepdims=True)
    value = jnp.mean(jnp.log(total)[..., 0] - _label_score(shifted, labels))
    return value, (exps / total, labels)


def _add_at_labels(scores, labels, values):
    """``scores`` with ``values[...]`` added at each row's label entry (an in-place scatter, not a one-hot matrix).

    Rows whose label is outside ``[0, k)`` are left alone (their loss is NaN).
    """
    k = scores.shape[-1]
    flat, rows = scores.reshape(-1, k), _out_of_bounds(labels.reshape(-1), k)
    flat = flat.at[jnp.arange(rows.size), rows].add(values.reshape(-1).astype(scores.dtype), mode="drop")
    return flat.reshape(scores.shape)


def _cross_entropy_backward(saved, g):
    probs, labels = saved
    scale = (g / labels.size).astype(probs.dtype)
    # g softmax(h) / m everywhere, minus g / m at the labels: one pass and a scatter, no one-hot matrix.
    return _add_at_labels(probs * scale, labels, jnp.broadcast_to(-scale, labels.shape))


#: Mean softmax cross-entropy of ``logits[..., k]`` against integer ``labels[...]``,
#: through ``logsumexp`` of the max-shifted logits (logits of 1e4 neither overflow nor NaN).
#: Saves ``softmax(h)`` and the labels. Edge values: logits of +-1e4.
cross_entropy = loss(
    "cross_entropy",
    forward=_cross_entropy_forward,
    backward=_cross_entropy_backward,
    check=_check_class_labels("cross_entropy", "logits"),
    error=error_rate,
    check_targets=validate.check_class_labels,
    edge_values=(_huge_scores,),
)


# ---------------------------------------------------------------- mean squared error
def _check_mse(pred, target):
    _checks.require_float("mse", "pred", pred)
    _checks.require_float("mse", "target", target)
    if pred.shape != target.shape:
        raise InputError(
            f"mse: pred and target must have the same shape, got pred {pred.shape} and target {target.shape}"
        )
    if pred.dtype != target.dtype:
        raise UsageError(f"mse: pred and target must share a dtype, got pred {pred.dtype} and target {target.dtype}")
    if pred.size == 0:
        raise InputError("mse: the batch is empty")


def _mse_forward(pred, target):
    diff = pred - target
    return jnp.mean(diff * diff), diff


#: ``mean((a - y)^2)`` over all entries; saves ``a - y``.
mse = loss(
    "mse",
    forward=_mse_forward,
    backward=lambda diff, g: g * 2 * diff / diff.size,
    check=_check_mse,
    check_targets=validate.check_values,
)


# ---------------------------------------------------------------- logistic
def _check_logistic(logits, labels):
    _checks.require_float("logistic", "logits", logits)
    if not (
        jnp.issubdtype(labels.dtype, jnp.integer) or jnp.issubdtype(labels.dtype, jnp.floating) or labels.dtype == bool
    ):
        raise UsageError(f"logistic: labels must be 0/1 (integer, boolean or floating), got dtype {labels.dtype}")
    if labels.shape != logits.shape:
        raise InputError(
            f"logistic: labels must have the shape of logits, got logits {logits.shape} and labels {labels.shape}"
        )
    if logits.size == 0:
        raise InputError("logistic: the batch is empty")


def _logistic_forward(logits, labels):
    y = jnp.where((labels == 0) | (labels == 1), labels.astype(logits.dtype), jnp.nan)
    return jnp.mean(jnp.logaddexp(logits, 0.0) - y * logits), (jax.nn.sigmoid(logits), y)


def _logistic_backward(saved, g):
    probs, y = saved
    return g * (probs - y) / y.size


#: Binary logistic loss ``mean(softplus(t) - y t)`` of logits ``t`` and labels ``y`` in {0, 1}
#: (same shape), finite for logits of 1e4 (its edge values); saves ``sigmoid(t)`` and ``y``.
logistic = loss(
    "logistic",
    forward=_logistic_forward,
    backward=_logistic_backward,
    check=_check_logistic,
    error=lambda logits, labels: jnp.mean((logits > 0) != (labels == 1)),
    check_targets=validate.check_binary_labels,
    edge_values=(_huge_scores,),
)


# ---------------------------------------------------------------- multiclass hinge
@with_settings
def multiclass_hinge(margin=1.0):
    """The notes' multiclass SVM loss ``mean_i sum_{j != y_i} max(0, s_j - s_{y_i} + margin)``.

    Scores ``s[..., k]``, integer labels of shape ``s.shape[:-1]``. Backward:
    ``ds_j = g 1[s_j - s_y + margin > 0] / m`` for ``j != y``, and
    ``ds_y = -sum_{j != y} ds_j``; the derivative at exactly zero margin is 0.
    Saves the indicator matrix and the labels. Edge value: scores ``s_j = j margin``,
    so that ``s_(y-1) - s_y + margin = 0`` exactly in every row with ``y > 0``.
    """
    margin = real("multiclass_hinge", "margin", margin, within="in [0, inf)", ok=lambda m: 0 <= m < math.inf)

    def forward(scores, labels):
        margins = scores - _label_score(scores, labels)[..., None] + margin
        others = jax.nn.one_hot(labels, scores.shape[-1], dtype=jnp.bool_) == False  # noqa: E712
        violated = others & (margins > 0)
        value = jnp.sum(jnp.where(violated, margins, jnp.zeros_like(margins))) / labels.size
        # NaN for an out-of-range label; added, not selected, so that autodiff's gradient stays the backward's.
        in_range = jnp.all((labels >= 0) & (labels < scores.shape[-1]))
        value = value + jnp.where(in_range, 0.0, jnp.nan).astype(value.dtype)
        return value, (violated, labels)  # booleans: a quarter of a float32 matrix

    def backward(saved, g):
        violated, labels = saved
        ds = jnp.where(violated, g / labels.size, 0.0).astype(jnp.result_type(g))
        return _add_at_labels(ds, labels, -jnp.sum(ds, axis=-1))

    def zero_margins(shape):
        return np.broadcast_to(margin * np.arange(shape[-1], dtype=np.float64), shape)

    return loss(
        "multiclass_hinge",
        forward=forward,
        backward=backward,
        check=_check_class_labels("multiclass_hinge", "scores"),
        error=error_rate,
        check_targets=validate.check_class_labels,
        edge_values=(zero_margins,),
    )
