"""Multilayer perceptrons as pure ``init``/``apply`` functions over pytrees.

Parameters are a list with one dict per layer, ``{"w": [n_in, n_out]}`` plus
``"b": [n_out]`` when biases are on. The forward pass is the notes' recursion
``Z1 = X``, ``Z(i+1) = relu(Zi Wi + bi)``, with the last layer linear, so
``sizes=[784, 500, 10]`` is ``h(X) = relu(X W1) W2`` and ``sizes=[784, 10]``
the linear model ``h(X) = X W``.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from fnn import ops as _ops


def he_normal(key, shape, dtype=jnp.float32):
    """``randn(n_in, n_out) * sqrt(2 / n_in)``: He initialisation, the notes' default."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / shape[0])


def zeros(key, shape, dtype=jnp.float32):
    """All-zero weights: every gradient of a ReLU net is then zero (a saddle point)."""
    del key
    return jnp.zeros(shape, dtype)


INITIALIZERS = {"he": he_normal, "zeros": zeros}


def _initializer(init):
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise ValueError(
            f"unknown initializer {init!r}; expected one of {sorted(INITIALIZERS)} "
            "or a function (key, shape, dtype) -> array such as a jax.nn.initializers one"
        ) from None


def init(
    key,
    sizes: Sequence[int],
    *,
    bias: bool = False,
    init: str | Callable = "he",
    dtype=jnp.float32,
):
    """Creates MLP parameters.

    Args:
      key: a ``jax.random`` key.
      sizes: layer widths ``[n_in, d_1, ..., n_out]``; at least two.
      bias: whether each layer gets a bias vector (initialised to zero).
      init: ``"he"`` (``randn * sqrt(2/fan_in)``), ``"zeros"``, or any function
        ``(key, shape, dtype) -> array``, e.g. ``jax.nn.initializers.glorot_normal()``.
      dtype: floating dtype of every parameter.

    Returns:
      A list of ``len(sizes) - 1`` dicts ``{"w": [sizes[i], sizes[i+1]]}``
      (plus ``"b": [sizes[i+1]]`` with ``bias=True``).
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(
            f"sizes must be at least two positive ints [n_in, ..., n_out], got {sizes!r}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be floating, got {jnp.dtype(dtype)}")
    make = _initializer(init)
    params = []
    for key_i, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        layer = {"w": jnp.asarray(make(key_i, (n_in, n_out), dtype), dtype)}
        if bias:
            layer["b"] = jnp.zeros((n_out,), dtype)
        params.append(layer)
    return params


def check_params(params):
    """Raises TypeError unless ``params`` is a non-empty list of ``{"w", "b"?}`` layer dicts."""
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(
            "params must be a non-empty list of layer dicts {'w': ..., 'b'?: ...} "
            f"as made by fnn.mlp.init, got {type(params).__name__}"
        )
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or "w" not in layer or set(layer) - {"w", "b"}:
            raise TypeError(
                f"params[{i}] must be a dict with key 'w' and optionally 'b', got {layer!r}"
            )


def apply(params, x, *, ops=_ops.custom):
    """Runs the MLP forward: ``x[..., n_in] -> logits[..., n_out]``.

    ReLU between layers, last layer linear. ``ops`` picks the gradient path:
    ``fnn.ops.custom`` (hand-written VJPs) or ``fnn.ops.autodiff`` (or their names).
    """
    check_params(params)
    ops = _ops.get(ops)
    z = x
    for i, layer in enumerate(params):
        z = ops.matmul(z, layer["w"])
        if "b" in layer:
            z = ops.add_bias(z, layer["b"])
        if i < len(params) - 1:
            z = ops.relu(z)
    return z


def loss(params, batch, *, ops=_ops.custom):
    """Mean softmax cross-entropy of the MLP on ``batch = (x[m, n_in], labels[m])``."""
    x, labels = batch
    ops = _ops.get(ops)
    return ops.cross_entropy(apply(params, x, ops=ops), labels)
