"""Trace-time argument checks and label indexing shared by both op sets.

Both op sets call the same checks, so a mistake raises the same error whichever
gradient path a model uses. Checks look only at shapes and dtypes, which are
static under ``jit`` and ``vmap``, so they cost nothing at run time.
"""

import jax.numpy as jnp


def _require_float(name, arg, value):
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{name}: {arg} must be a floating-point array, got dtype {value.dtype}"
        )


def check_matmul(x, w):
    """Checks ``x[..., n] @ w[n, k]``: floating, same dtype, matching inner size."""
    _require_float("matmul", "x", x)
    _require_float("matmul", "w", w)
    if w.ndim != 2:
        raise ValueError(f"matmul: w must be a matrix [n, k], got shape {w.shape}")
    if x.ndim < 1:
        raise ValueError("matmul: x must have at least one axis [..., n], got a scalar")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"matmul: x has {x.shape[-1]} features but w expects {w.shape[0]} "
            f"(x shape {x.shape}, w shape {w.shape})"
        )
    if x.dtype != w.dtype:
        raise TypeError(
            f"matmul: x and w must share a dtype, got x {x.dtype} and w {w.dtype}; "
            "cast one of them explicitly"
        )


def check_elementwise(name, x):
    """Checks that an elementwise op gets a floating-point array."""
    _require_float(name, "x", x)


def check_bias(x, b):
    """Checks ``x[..., k] + b[k]``: floating, same dtype, matching size."""
    _require_float("add_bias", "x", x)
    _require_float("add_bias", "b", b)
    if b.ndim != 1 or x.ndim < 1 or x.shape[-1] != b.shape[0]:
        raise ValueError(
            f"add_bias: b must be a vector of size x.shape[-1]; "
            f"got x shape {x.shape}, b shape {b.shape}"
        )
    if x.dtype != b.dtype:
        raise TypeError(
            f"add_bias: x and b must share a dtype, got x {x.dtype} and b {b.dtype}"
        )


def check_cross_entropy(logits, labels):
    """Checks ``logits[..., k]`` against integer ``labels[...]``."""
    _require_float("cross_entropy", "logits", logits)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            "cross_entropy: labels must be integer class ids, "
            f"got dtype {labels.dtype}"
        )
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            "cross_entropy: labels must have the shape of logits without its last "
            f"(class) axis; got logits {logits.shape} and labels {labels.shape}"
        )
    if labels.size == 0:
        raise ValueError("cross_entropy: the batch is empty (no labels)")


def label_logit(logits, labels):
    """Returns ``logits[..., labels]``: each row's logit at its label, shape ``labels.shape``.

    Label values are not known at trace time, so they cannot be checked there:
    a label outside ``[0, k)`` (negative ones included) yields NaN, never
    another class's logit.
    """
    k = logits.shape[-1]
    safe = jnp.where((labels >= 0) & (labels < k), labels, k)
    return jnp.take_along_axis(
        logits, safe[..., None], axis=-1, mode="fill", fill_value=jnp.nan
    )[..., 0]
