"""Average and max pooling over one or two spatial axes, forward and backward side by side.

Layouts, channels last: ``x[N, *spatial, C]``, exactly ``len(window) + 2``
axes (an input without its channel axis is refused, not pooled over its
batch axis), ``window`` a tuple with one size per spatial axis (``(k,)`` for
``[N, W, C]``, ``(kh, kw)`` for ``[N, H, W, C]``; an int ``k`` is the square
``(k, k)`` of an image, as for ``conv2d``), ``stride`` defaulting to
the window, padding ``"VALID"`` (the default) or ``"SAME"`` (see
:mod:`fnn.nn._windows`).
Each channel is pooled on its own; no parameters.

- Average pooling: ``y = mean of the window``, the window's ``K`` positions
  counted whether in the input or in the zero padding (``"SAME"``; as Flax's
  ``avg_pool`` by default and PyTorch's ``count_include_pad=True``).
  Backward: ``dx`` spreads each ``G / K`` evenly over its window's positions,
  overlapping windows adding up: ``G`` dilated by the stride, correlated with
  a box of ones (saves nothing).
- Max pooling: ``y = max of the window`` (``"SAME"`` pads with ``-inf``).
  Backward: ``dx`` sends each ``G`` to the position of its window's maximum.
  **Ties**: to the *first* maximal position, the window read in row-major
  order (top row first, left to right). The result is one of the subgradients
  (equal splitting gives another), it costs no division, and it is the choice
  of JAX's own rule for ``lax.reduce_window`` with ``lax.max`` (XLA's
  ``select_and_scatter`` with ``>=``), of Flax's ``max_pool`` built on it,
  and of PyTorch's ``max_pool2d`` (which replaces its running maximum only
  on ``>``). ``jax.grad`` of ``jnp.max`` over an axis splits equally
  instead. A padded position never takes the gradient (JAX's rule can select
  one when a window's values are all ``-inf``, and loses that gradient).
  Saves ``x`` and ``y``; the backward walks the ``K`` window offsets in
  order, routing ``G`` where an offset first meets ``y``, one pass per
  offset.

  The autodiff path differentiates not ``reduce_window`` but a forward with
  the same values bit for bit: ``y`` from ``reduce_window`` without a
  derivative, made differentiable through ``x`` at each window's first
  maximal position, found by the backward's own routing (one helper for
  both). So JAX's derivative of it is the rule's, in both modes and on ties
  and padding alike. JAX's JVP of ``reduce_window`` with ``lax.max``,
  ``select_and_gather_add``, is not exact on a GPU: its lowering there packs
  each value and its tangent into one 64-bit word, which for float64 rounds
  both to 20 mantissa bits (``reduce_precision``; 5e-7 relative; float32
  pairs fit the word exactly), so the autodiff path's forward mode would
  differ from the rule's. (Its transpose, ``select_and_scatter_add``, is
  also over 10x slower on a CPU than this routing's.)
"""

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn._errors import InputError
from fnn._numbers import as_int
from fnn.module import leaf, with_settings
from fnn.nn import _checks, _windows

__all__ = ["avg_pool", "avg_pool_leaf", "max_pool", "max_pool_leaf"]


def _window(name, window):
    """The window as a tuple of 1 or 2 positive Python ints (the number of spatial axes); an int ``k`` is the square
    window ``(k, k)`` of an image, as ``conv2d``'s kernel."""
    if as_int(window) is not None:
        window = (window, window)
    values = tuple(map(as_int, window)) if isinstance(window, (tuple, list)) else ()
    if len(values) not in (1, 2) or not all(v is not None and v > 0 for v in values):
        raise InputError(
            f"{name}: window must be a positive int k (the square window (k, k) of [N, H, W, C] images) or a tuple "
            f"of 1 or 2 of them, one per spatial axis ((k,) for [N, W, C], (kh, kw) for [N, H, W, C]), got {window!r}"
        )
    return values


def _geometry(name, window, stride, padding):
    """``(window, stride, padding)`` checked, ``stride`` defaulting to ``window``."""
    window = _window(name, window)
    stride = window if stride is None else _windows.ints(name, "stride", stride, len(window))
    return window, stride, _windows.check_padding(name, padding)


def _full(spatial, batch_pad=(0, 0)):
    """A per-spatial-axis config extended with the batch and channel axes."""
    return [batch_pad, *spatial, batch_pad]


def _reduce(x, init, op, window, stride, padding):
    """``lax.reduce_window`` of ``x[N, *spatial, C]`` over ``window`` with ``stride`` and ``padding``."""
    pads = _windows.pads(x.shape[1:-1], window, stride, padding)
    return lax.reduce_window(x, np.array(init, x.dtype), op, (1, *window, 1), (1, *stride, 1), _full(pads))


# ---------------------------------------------------------------- average
def _avg_forward(x, window, stride, padding):
    return _reduce(x, 0, lax.add, window, stride, padding) / math.prod(window)


def _avg_backward(shape, g, window, stride, padding):
    """``dx``: each ``G / K`` spread over its window: ``G`` dilated by the stride, summed over a sliding box."""
    transposed = _windows.transposed_pads(shape[1:-1], window, stride, padding, g.shape[1:-1])
    spread = [(lo, hi, s - 1) for (lo, hi), s in zip(transposed, stride)]  # interior: dilated by the stride
    dilated = lax.pad(g / math.prod(window), np.array(0, g.dtype), _full(spread, (0, 0, 0)))
    return _reduce(dilated, 0, lax.add, window, (1,) * len(window), "VALID")


# ---------------------------------------------------------------- max
def _max_forward(x, window, stride, padding):
    return _reduce(x, -np.inf, lax.max, window, stride, padding)


def _first_maxima(x, y, window, stride, padding):
    """Yields ``(a, x_a, hit_a)`` for each window offset ``a`` in row-major order, both ``[N, *out, C]``: ``x_a`` is
    ``x`` at offset ``a`` of each window (``-inf`` in the padding), ``hit_a`` whether ``a`` is that window's first
    maximal position: ``x_a == y`` at no earlier offset, and never in the padding (a window of ``-inf`` takes its
    first real position; one holding NaN has none). The one routing of both modes' rules."""
    spatial, out = x.shape[1:-1], y.shape[1:-1]
    unrouted = jnp.ones(y.shape, bool)  # windows whose maximum has not been found yet
    for offset in _windows.offsets(window):
        x_a = _windows.at_offset(x, offset, window, stride, padding, out, fill=-np.inf)
        hit = unrouted & (x_a == y)
        inside = _windows.valid_offsets(spatial, window, stride, padding, out, offset)
        if not inside.all():  # "SAME": an offset in the padding never takes the gradient
            hit = hit & inside[None, ..., None]
        unrouted = unrouted & ~hit
        yield offset, x_a, hit


def _max_apply(x, window, stride, padding):
    """``y`` of :func:`_max_forward` bit for bit, as plain code whose derivative (JAX's) is ``dy = dx`` at each
    window's first maximal position (:func:`_first_maxima`): what the autodiff path differentiates.

    ``y`` itself is computed without a derivative; ``picked``, ``x`` at the
    first maximum (``y`` where there is none), carries it. ``picked == y``,
    and is ``y`` bit for bit but for a zero's sign, so a finite window
    returns ``y - (stop_gradient(picked) - picked)``: ``y``'s bits,
    ``picked``'s derivative.
    """
    y = _max_forward(lax.stop_gradient(x), window, stride, padding)
    picked = y
    for _, x_a, hit in _first_maxima(x, y, window, stride, padding):
        picked = jnp.where(hit, x_a, picked)
    return jnp.where(jnp.isfinite(picked), y - (lax.stop_gradient(picked) - picked), picked)


def _max_backward(x, y, g, window, stride, padding):
    """``dx``: each ``G`` at its window's first maximal position (row-major order), one pass per window offset."""
    dx = jnp.zeros(x.shape, g.dtype)
    for offset, _, hit in _first_maxima(x, y, window, stride, padding):
        routed = jnp.where(hit, g, jnp.zeros_like(g))
        dx = dx + _windows.place_at_offset(routed, x.shape[1:-1], window, stride, padding, offset)
    return dx


# ---------------------------------------------------------------- leaves and layers
def _check(name, window, padding):
    n = len(window)

    def check(params, x):
        _checks.require_no_params(name, params)
        _checks.require_float(name, "input", x)
        _windows.require_batch(name, x, n, why=f" for the window {window}")
        if padding == "VALID" and any(m < k for m, k in zip(x.shape[1:-1], window)):
            raise InputError(
                f"{name}: with VALID padding the input's spatial sizes {x.shape[1:-1]} must be at least "
                f"the window {window}"
            )

    return check


def _pool_leaf(name, forward, backward, window, stride, padding, init, saves_input, apply=None):
    """A pooling leaf: ``forward(x, ...)`` and ``backward(saved, g, ...)`` over ``[N, *spatial, C]`` batches;
    ``apply(x, ...)``, if given, is the autodiff path's forward (the same values)."""

    def leaf_forward(params, x):
        y = forward(x, window, stride, padding)
        # Average pooling needs only x's shape: a zero-size array carries it (no bytes).
        return y, ((x, y) if saves_input else jnp.zeros((*x.shape, 0), x.dtype))

    def leaf_backward(params, saved, g):
        if saves_input:
            x, y = saved
            return (), backward(x, y, g, window, stride, padding)
        return (), backward(saved.shape[:-1], g, window, stride, padding)

    return leaf(
        name,
        init=init,
        forward=leaf_forward,
        backward=leaf_backward,
        check=_check(name, window, padding),
        apply=None if apply is None else (lambda params, x: apply(x, window, stride, padding)),
        linear=not saves_input,  # average pooling: linear in x, so its forward is its JVP
    )


def avg_pool_leaf(window, stride=None, padding="VALID", init=None):
    """The average pooling leaf (``init`` is the layer's; ops pass none)."""
    window, stride, padding = _geometry("avg_pool", window, stride, padding)
    return _pool_leaf("avg_pool", _avg_forward, _avg_backward, window, stride, padding, init, saves_input=False)


def max_pool_leaf(window, stride=None, padding="VALID", init=None):
    """The max pooling leaf (``init`` is the layer's; ops pass none)."""
    window, stride, padding = _geometry("max_pool", window, stride, padding)
    return _pool_leaf(
        "max_pool", _max_forward, _max_backward, window, stride, padding, init, saves_input=True, apply=_max_apply
    )


def _layer(name, make_leaf, window, stride, padding):
    window, stride, padding = _geometry(name, window, stride, padding)
    n = len(window)

    def init(key, input_shape):
        shape = _checks.require_shape(name, input_shape, ndim=n + 1, hint=_windows.channel_hint(input_shape, n))
        if padding == "VALID" and any(m < k for m, k in zip(shape, window)):
            raise InputError(
                f"{name}: with VALID padding the input's spatial sizes {shape[:n]} must be at least the window {window}"
            )
        return (*_windows.output_spatial(shape[:n], window, stride, padding), shape[n]), ()

    return make_leaf(window, stride, padding, init=init)


@with_settings
def avg_pool(window, *, stride=None, padding="VALID"):
    """Average pooling: ``[N, *spatial, C] -> [N, *out, C]``, one or two spatial axes (``len(window)``; an int
    ``k`` is ``(k, k)``).

    ``avg_pool(2)`` or ``avg_pool((2, 2))`` halves an image's height and width (the Flax MNIST
    tutorial's pooling); ``avg_pool((T,))`` averages a sequence ``[N, T, D]``
    to ``[N, 1, D]``. See the module doc for the rule.
    """
    return _layer("avg_pool", avg_pool_leaf, window, stride, padding)


@with_settings
def max_pool(window, *, stride=None, padding="VALID"):
    """Max pooling: ``[N, *spatial, C] -> [N, *out, C]``, one or two spatial axes (``len(window)``; an int ``k``
    is ``(k, k)``, ``max_pool(2)`` halving an image's height and width).

    The gradient of a window goes to its first maximal position (row-major
    order); see the module doc for that choice and the rule.
    """
    return _layer("max_pool", max_pool_leaf, window, stride, padding)
