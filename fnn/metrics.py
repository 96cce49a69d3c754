"""Classification metrics that need no gradient."""

import jax.numpy as jnp

from fnn._errors import InputError, UsageError

__all__ = ["error_rate"]


def error_rate(logits, labels):
    """Fraction of rows whose arg-max logit is not the label: ``mean(argmax(h) != y)``.

    Args:
      logits: ``[..., k]`` scores.
      labels: integer class ids of shape ``logits.shape[:-1]``.
    """
    if isinstance(logits, (tuple, list)) and len(logits) == 2 and not hasattr(logits[1], "shape"):
        raise UsageError(
            "error_rate: logits is a pair (outputs, state), what model.apply returns when given state=; "
            "pass the outputs: y, state = model.apply(...); error_rate(y, labels)"
        )
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if labels.shape != logits.shape[:-1]:
        raise InputError(
            f"error_rate: labels shape {labels.shape} must equal logits shape "
            f"without the class axis, {logits.shape[:-1]}"
        )
    return jnp.mean(jnp.argmax(logits, axis=-1) != labels)
