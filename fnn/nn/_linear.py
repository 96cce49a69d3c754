"""Matrix product and bias: the dense layer ``y = x W + b``.

Shapes: ``x[..., n]`` (any leading axes, the batch first), ``W[n, k]``,
``b[k]``, ``y[..., k]``. Backward, with ``G = dJ/dy`` and sums over every
leading axis (the rows):

- matmul ``y = x W``: ``dx = G W^T``, ``dW = x^T G``; saves ``x``.
- bias ``y = x + b``: ``dx = G``, ``db = sum of G over rows``; saves nothing.
"""

import jax
import jax.numpy as jnp

from fnn._errors import InputError, UsageError
from fnn.module import leaf, with_settings
from fnn.nn import _checks
from fnn.nn import initializers as _init

__all__ = ["BIAS", "DENSE", "DENSE_AXES", "MATMUL", "dense"]


def _rows(a):
    """The leading (row) axes of ``a[..., n]``."""
    return tuple(range(a.ndim - 1))


# ---------------------------------------------------------------- matmul
def _check_matmul(params, x, name="matmul"):
    _checks.require_float(name, "input", x)
    w = _checks.require_param(name, params, "w", x, ndim=2)
    hint = _checks.flatten_hint(x.shape[1:], w.shape[0])
    _checks.require_features(name, x, w.shape[0], f"w expects {w.shape[0]} (w shape {w.shape}){hint}")


def _matmul_forward(params, x):
    return x @ params["w"], x


def _matmul_backward(params, x, g):
    return {"w": jnp.tensordot(x, g, axes=(_rows(x), _rows(g)))}, g @ params["w"].T


# ---------------------------------------------------------------- bias
def _check_bias(params, x, name="add_bias"):
    _checks.require_float(name, "input", x)
    b = _checks.require_param(name, params, "b", x, ndim=1)
    _checks.require_features(name, x, b.shape[0], f"b has size {b.shape[0]} (b shape {b.shape})")


def _bias_forward(params, x):
    return x + params["b"], None


def _bias_backward(params, saved, g):
    del params, saved
    return {"b": jnp.sum(g, axis=_rows(g))}, g


#: ``y = x W`` with params ``{"w": W}`` (the op behind ``fnn.ops.*.matmul``).
MATMUL = leaf("matmul", forward=_matmul_forward, backward=_matmul_backward, check=_check_matmul)
#: ``y = x + b`` with params ``{"b": b}`` (the op behind ``fnn.ops.*.add_bias``).
BIAS = leaf("add_bias", forward=_bias_forward, backward=_bias_backward, check=_check_bias)


# ---------------------------------------------------------------- dense
def _dense_forward(params, x):
    y, saved = _matmul_forward(params, x)
    if "b" in params:
        y, _ = _bias_forward(params, y)
    return y, saved


def _dense_backward(params, saved, g):
    grads = {}
    if "b" in params:
        grads, g = _bias_backward(params, None, g)
    dw, dx = _matmul_backward(params, saved, g)
    return {**dw, **grads}, dx


def _check_dense(params, x):
    if isinstance(params, dict) and set(params) - {"w", "b"}:
        raise UsageError(f"dense: params must be a dict with key 'w' and optionally 'b', got keys {sorted(params)}")
    _check_matmul(params, x, "dense")
    if "b" in params:
        w, b = params["w"], _checks.require_param("dense", params, "b", x, ndim=1)
        if b.shape[0] != w.shape[1]:
            raise InputError(f"dense: b must have size {w.shape[1]} (w shape {w.shape}), got b shape {b.shape}")


#: ``y = x W (+ b)`` over given params ``{"w": W}`` or ``{"w": W, "b": b}``, without an init
#: (the projections of :func:`fnn.nn.attention`, whose init makes their params).
#: The names of the axes of a dense layer's parameters (see :func:`fnn.module.leaf`'s ``param_axes``).
DENSE_AXES = {"w": ("in", "out"), "b": ("out",)}
DENSE = leaf("dense", forward=_dense_forward, backward=_dense_backward, check=_check_dense, param_axes=DENSE_AXES)


@with_settings
def dense(n_out, *, bias=False, w_init="he", b_init="zeros", dtype=jnp.float32):
    """A fully connected layer ``y = x W (+ b)``: ``[..., n] -> [..., n_out]``.

    It acts on the last axis: flat rows ``[N, n]``, or sequences ``[N, T, n]``
    position by position. ``init`` refuses image-shaped inputs ``(H, W, C)``:
    put :func:`fnn.nn.flatten` before it.

    Args:
      n_out: output features ``k``.
      bias: whether the layer has a bias ``b[k]``.
      w_init, b_init: ``"he"`` (``randn * sqrt(2 / n)``, the notes'),
        ``"zeros"``, or any ``(key, shape, dtype) -> array`` such as
        ``jax.nn.initializers.glorot_normal()``.
      dtype: the parameters' floating dtype.

    Params: ``{"w": [n, n_out]}`` plus ``"b": [n_out]`` with ``bias=True``;
    their axes are named ``("in", "out")`` and ``("out",)``.
    Backward: ``dx = G W^T``, ``dW = x^T G``, ``db = sum of G over rows``.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise InputError(f"dense: n_out must be a positive int, got {n_out!r}")
    _checks.require_float_dtype("dense", dtype)
    make_w, make_b = _init.resolve(w_init), _init.resolve(b_init)

    def init(key, input_shape):
        shape = _checks.require_shape("dense", input_shape)
        if not shape:
            raise InputError("dense: input_shape must have a feature axis [..., n], got ()")
        if len(shape) >= 3:
            raise InputError(
                f"dense: input_shape {shape} is image-shaped; dense acts on the last axis only and would build a "
                f"({shape[-1]}, {n_out}) weight applied at every position. Put nn.flatten() before it "
                f"(nn.serial(nn.flatten(), nn.dense(...), ...)), or use nn.conv2d({n_out}, 1) for a per-pixel layer"
            )
        w_key, b_key = jax.random.split(key)
        params = {"w": jnp.asarray(make_w(w_key, (shape[-1], n_out), dtype), dtype)}
        if bias:
            params["b"] = jnp.asarray(make_b(b_key, (n_out,), dtype), dtype)
        return (*shape[:-1], n_out), params

    return leaf(
        "dense",
        init=init,
        forward=_dense_forward,
        backward=_dense_backward,
        check=_check_dense,
        param_axes=DENSE_AXES,
    )
