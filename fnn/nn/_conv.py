"""Convolution over one or two spatial axes (Conv1D, Conv2D): a matrix product with shared parameters.

The notes' Conv1D-S (eq. 7.48) maps a sequence ``z[W]`` with a filter
``w[k]`` to ``y_i = sum_j w_j z_(i - l + j - 1)`` (zero padding); it is the
matrix product ``y = Q z`` (eq. 7.49) where ``Q[W, W]`` is banded, every
band holding the same ``k`` shared parameters. The multi-channel Conv1D (eq.
7.50) sums one Conv1D-S per pair of output channel ``o`` and input channel
``c``, ``y_o = sum_c Conv1D-S_(o, c)(z_c)``: ``C O k`` parameters. With a
stride ``s``, ``Q`` keeps every ``s``-th row. Conv2D is the same rule over two
spatial axes.

Layouts, channels last: input ``x[N, *spatial, C]`` (NWC or NHWC, exactly
one batch axis), kernel ``w[*k, C, O]`` (WIO or HWIO), output
``y[N, *out, O]``; with ``(lo, hi)`` padded per axis (see
:mod:`fnn.nn._windows`):

``y[n, i, o] = sum_{a, c} x[n, i s + a - lo, c] w[a, c, o]`` (one spatial axis; two alike).

Backward with ``G = dJ/dy`` (saves ``x``):

- ``dx = Q^T G``: the transposed convolution, ``G`` dilated by the stride
  (``s - 1`` zeros between positions), convolved with the kernel flipped in
  space and with its in/out axes swapped, padded so that the result has
  ``x``'s size;
- ``dw``: the input correlated with ``G`` (each shared parameter sums its
  uses), ``dw[a, c, o] = sum_{n, i} x[n, i s + a - lo, c] G[n, i, o]``, a
  convolution over the batch axis with ``G`` as a kernel dilated by the stride.

Both are written once for either number of spatial axes with
``jax.lax.conv_general_dilated``, never with JAX autodiff.
"""

import jax.numpy as jnp
from jax import lax

from fnn._errors import InputError
from fnn._numbers import positive_int
from fnn.module import leaf, with_settings
from fnn.nn import _checks, _windows
from fnn.nn import initializers as _init
from fnn.nn._linear import BIAS

__all__ = ["conv1d", "conv1d_leaf", "conv2d", "conv2d_leaf", "conv_leaf"]

#: Per number of spatial axes: (input, kernel, output) layouts.
_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _name(n):
    return f"conv{n}d"


def _convolve(x, w, stride, padding):
    """``y = Q x``: the forward convolution of ``x[N, *spatial, C]`` with ``w[*k, C, O]``."""
    n = w.ndim - 2
    pads = _windows.pads(x.shape[1:-1], w.shape[:n], stride, padding)
    return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_LAYOUTS[n])


def _convolve_backward(x, w, g, stride, padding):
    """``(dw, dx)`` of :func:`_convolve` for ``G = g[N, *out, O]``: ``dx = Q^T G`` and the correlation ``dw``."""
    n = w.ndim - 2
    kernel, spatial, out = w.shape[:n], x.shape[1:-1], g.shape[1:-1]
    los = [lo for lo, _ in _windows.pads(spatial, kernel, stride, padding)]
    layout = _LAYOUTS[n]
    # Both convolutions are written in the forward pass's own layouts (channels-last input,
    # spatial-first kernel): XLA's CPU backend runs other layouts through a slow generic
    # convolution when it cannot re-lay them out (inside a scan it does not), 30-40x slower.
    # dx: G dilated by the stride, convolved with the flipped, in/out-swapped kernel.
    dx_pads = _windows.transposed_pads(spatial, kernel, stride, padding, out)
    flipped = jnp.swapaxes(w[(slice(None, None, -1),) * n], n, n + 1)
    dx = lax.conv_general_dilated(g, flipped, (1,) * n, dx_pads, lhs_dilation=stride, dimension_numbers=layout)
    # dw: the input with batch and channels swapped ([C, *spatial, N]), correlated with G as a
    # kernel [*out, N, O] dilated by the stride; the result [C, *k, O] is moved to [*k, C, O].
    dw_pads = [(lo, k - m - lo + (o - 1) * s) for k, m, o, s, lo in zip(kernel, spatial, out, stride, los)]
    spatial_axes = tuple(range(1, n + 1))
    dw = lax.conv_general_dilated(
        jnp.transpose(x, (n + 1, *spatial_axes, 0)),
        jnp.transpose(g, (*spatial_axes, 0, n + 1)),
        (1,) * n,
        dw_pads,
        rhs_dilation=stride,
        dimension_numbers=layout,
    )
    return jnp.transpose(dw, (*spatial_axes, 0, n + 1)), dx


def _check(n, stride, padding, bias):
    """The trace-time check of a convolution leaf over ``n`` spatial axes."""
    name, (layout, kernel_layout, _), axes = _name(n), _LAYOUTS[n], _windows.AXES[n]

    def check(params, x):
        _checks.require_float(name, "input", x)
        w = _checks.require_param(name, params, "w", x, ndim=n + 2)
        hint = _checks.image_hint(x.shape[1:]) if n == 2 else ""
        _windows.require_batch(name, x, n, why=f" ({layout})", hint=hint)
        if x.shape[-1] != w.shape[n]:
            raise InputError(
                f"{name}: input has {x.shape[-1]} channels but the kernel expects {w.shape[n]} "
                f"(input shape {x.shape}, kernel shape {w.shape}, {kernel_layout})"
            )
        if padding == "VALID" and any(m < k for m, k in zip(x.shape[1:-1], w.shape[:n])):
            raise InputError(
                f"{name}: with VALID padding the input's {' x '.join(axes)} {x.shape[1:-1]} must be at least "
                f"the kernel's {w.shape[:n]}"
            )
        if bias:
            _checks.require_param(name, params, "b", x, ndim=1)
            if params["b"].shape != (w.shape[-1],):
                raise InputError(
                    f"{name}: b must have size {w.shape[-1]} (kernel shape {w.shape}), got {params['b'].shape}"
                )

    return check


def conv_leaf(n, stride=1, padding="SAME", init=None, bias=False):
    """The convolution leaf over ``n`` (1 or 2) spatial axes for a given stride and padding.

    ``init`` and ``bias`` are the layer's (ops pass neither).
    """
    name = _name(n)
    stride, padding = _windows.ints(name, "stride", stride, n), _windows.check_padding(name, padding)

    def forward(params, x):
        y = _convolve(x, params["w"], stride, padding)
        if bias:
            y, _ = BIAS.forward(params, y)
        return y, x

    def backward(params, x, g):
        grads = {}
        if bias:
            grads, g = BIAS.backward(params, None, g)
        dw, dx = _convolve_backward(x, params["w"], g, stride, padding)
        return {"w": dw, **grads}, dx

    return leaf(name, init=init, forward=forward, backward=backward, check=_check(n, stride, padding, bias))


def conv1d_leaf(stride=1, padding="SAME", init=None, bias=False):
    """The 1-D convolution leaf (``x[N, W, C]``, ``w[K, C, O]``); see :func:`conv_leaf`."""
    return conv_leaf(1, stride, padding, init, bias)


def conv2d_leaf(stride=1, padding="SAME", init=None, bias=False):
    """The 2-D convolution leaf (``x[N, H, W, C]``, ``w[KH, KW, C, O]``); see :func:`conv_leaf`."""
    return conv_leaf(2, stride, padding, init, bias)


def _conv_layer(n, n_out, kernel, stride, padding, bias, w_init, dtype):
    """A convolution layer over ``n`` spatial axes with its own parameters (see :func:`conv1d`, :func:`conv2d`)."""
    name = _name(n)
    n_out = positive_int(name, "n_out", n_out)
    _checks.require_float_dtype(name, dtype)
    kernel = _windows.ints(name, "kernel", kernel, n)
    strides = _windows.ints(name, "stride", stride, n)
    make_w = _init.resolve(w_init)

    def init(key, input_shape):
        hint = (_checks.image_hint(input_shape) if n == 2 else "") or _windows.channel_hint(input_shape, n)
        shape = _checks.require_shape(name, input_shape, ndim=n + 1, hint=hint)
        if _windows.check_padding(name, padding) == "VALID" and any(m < k for m, k in zip(shape, kernel)):
            raise InputError(
                f"{name}: with VALID padding the input's {' x '.join(_windows.AXES[n])} {shape[:n]} must be at "
                f"least the kernel's {kernel}"
            )
        params = {"w": jnp.asarray(make_w(key, (*kernel, shape[n], n_out), dtype), dtype)}
        if bias:
            params["b"] = jnp.zeros((n_out,), dtype)
        return (*_windows.output_spatial(shape[:n], kernel, strides, padding), n_out), params

    return conv_leaf(n, strides, padding, init=init, bias=bias)


@with_settings
def conv1d(n_out, kernel, *, stride=1, padding="SAME", bias=False, w_init="he", dtype=jnp.float32):
    """A 1-D convolution layer, the notes' multi-channel Conv1D: ``[N, W, C] -> [N, Wo, n_out]`` (NWC, WIO kernel).

    Args:
      n_out: output channels ``O``.
      kernel: kernel size ``K`` (an int or a 1-tuple).
      stride: an int or a 1-tuple.
      padding: ``"SAME"`` (``Wo = ceil(W / s)``) or ``"VALID"`` (``Wo = (W - K) // s + 1``).
      bias: whether the layer adds a bias ``b[O]`` to every position.
      w_init: ``"he"`` (``randn * sqrt(2 / (K C))``), ``"zeros"`` or any
        ``(key, shape, dtype) -> array``.
      dtype: the parameters' floating dtype.

    Params: ``{"w": [K, C, O]}`` plus ``"b": [O]`` with ``bias=True``. See
    the module doc for the formulas (eq. 7.48-7.50 of the notes) and the backward.
    """
    return _conv_layer(1, n_out, kernel, stride, padding, bias, w_init, dtype)


@with_settings
def conv2d(n_out, kernel, *, stride=1, padding="SAME", bias=False, w_init="he", dtype=jnp.float32):
    """A 2-D convolution layer: ``[N, H, W, C] -> [N, Ho, Wo, n_out]`` (NHWC, HWIO kernel).

    Args:
      n_out: output channels ``O``.
      kernel: kernel size ``KH`` (square) or ``(KH, KW)``.
      stride: an int or a pair ``(sh, sw)``.
      padding: ``"SAME"`` or ``"VALID"``.
      bias: whether the layer adds a bias ``b[O]`` to every position.
      w_init: ``"he"`` (``randn * sqrt(2 / (KH KW C))``), ``"zeros"`` or any
        ``(key, shape, dtype) -> array``.
      dtype: the parameters' floating dtype.

    Params: ``{"w": [KH, KW, C, O]}`` plus ``"b": [O]`` with ``bias=True``.
    """
    return _conv_layer(2, n_out, kernel, stride, padding, bias, w_init, dtype)
