"""Classification metrics that need no gradient."""

import jax.numpy as jnp


def error_rate(logits, labels):
    """Fraction of rows whose arg-max logit is not the label: ``mean(argmax(h) != y)``.

    Args:
      logits: ``[..., k]`` scores.
      labels: integer class ids of shape ``logits.shape[:-1]``.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"error_rate: labels shape {labels.shape} must equal logits shape "
            f"without the class axis, {logits.shape[:-1]}"
        )
    return jnp.mean(jnp.argmax(logits, axis=-1) != labels)
