"""2-D convolution: a matrix product with shared parameters, forward and backward side by side.

Layouts: input ``x[..., H, W, C]`` (NHWC, any leading batch axes), kernel
``w[KH, KW, C, O]`` (HWIO), output ``y[..., Ho, Wo, O]``; stride ``(sh, sw)``;
padding ``"SAME"`` (``Ho = ceil(H / sh)``) or ``"VALID"`` (``Ho = floor((H - KH) / sh) + 1``),
``(top, bottom)`` rows padded as XLA pads them.

``y[n, i, j, o] = sum_{a, b, c} x[n, i sh + a - top, j sw + b - left, c] w[a, b, c, o]``.

Backward with ``G = dJ/dy`` (saves ``x``):

- ``dx``: the transposed convolution: ``G`` dilated by the stride (``sh - 1``
  zeros between rows), convolved with the kernel flipped in space and with its
  in/out axes swapped, padded so that the result has ``x``'s size;
- ``dw``: the input correlated with ``G``:
  ``dw[a, b, c, o] = sum_{n, i, j} x[n, i sh + a - top, j sw + b - left, c] G[n, i, j, o]``,
  a convolution over the batch axis with ``G`` as a kernel dilated by the stride.

Both are written with ``jax.lax.conv_general_dilated``, never with JAX autodiff.
"""

import math

import jax.numpy as jnp
from jax import lax

from fnn.module import leaf
from fnn.nn import _checks
from fnn.nn import initializers as _init
from fnn.nn.linear import BIAS

__all__ = ["conv2d", "conv2d_leaf"]

_PADDINGS = ("SAME", "VALID")
_LAYOUT = ("NHWC", "HWIO", "NHWC")  # input, kernel, output


def _pair(name, arg, value):
    """An int or a pair of ints, each positive, as a pair."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name}: {arg} must be a positive int or a pair of them, got {value!r}")
    return pair


def _check_padding(name, padding):
    if padding not in _PADDINGS:
        raise ValueError(f"{name}: padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding


def _as_batch(x):
    """``x[..., H, W, C]`` as ``[N, H, W, C]`` (``N`` = the product of the leading axes, 1 if none)."""
    return x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])


def _pads(spatial, kernel, stride, padding):
    return lax.padtype_to_pads(spatial, kernel, stride, padding)


def _output_spatial(spatial, kernel, stride, padding):
    pads = _pads(spatial, kernel, stride, padding)
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(spatial, kernel, stride, pads))


def conv2d_leaf(stride=1, padding="SAME", init=None, bias=False):
    """The convolution leaf for a given stride and padding (``init`` and ``bias`` are the layer's)."""
    stride, padding = _pair("conv2d", "stride", stride), _check_padding("conv2d", padding)

    def check(params, x):
        _checks.require_float("conv2d", "input", x)
        w = _checks.require_param("conv2d", params, "w", x, ndim=4)
        if x.ndim < 3:
            hint = _checks.image_hint(x.shape[1:])
            raise ValueError(f"conv2d: input must be [..., H, W, C] (NHWC), got shape {x.shape}{hint}")
        if x.shape[-1] != w.shape[2]:
            raise ValueError(
                f"conv2d: input has {x.shape[-1]} channels but the kernel expects {w.shape[2]} "
                f"(input shape {x.shape}, kernel shape {w.shape}, HWIO)"
            )
        if padding == "VALID" and (x.shape[-3] < w.shape[0] or x.shape[-2] < w.shape[1]):
            raise ValueError(
                f"conv2d: with VALID padding the input's H x W {x.shape[-3:-1]} must be at least the kernel's "
                f"{w.shape[:2]}"
            )
        if bias:
            _checks.require_param("conv2d", params, "b", x, ndim=1)
            if params["b"].shape != (w.shape[3],):
                raise ValueError(
                    f"conv2d: b must have size {w.shape[3]} (kernel shape {w.shape}), got {params['b'].shape}"
                )

    def forward(params, x):
        w = params["w"]
        pads = _pads(x.shape[-3:-1], w.shape[:2], stride, padding)
        y = lax.conv_general_dilated(_as_batch(x), w, stride, pads, dimension_numbers=_LAYOUT)
        y = y.reshape(*x.shape[:-3], *y.shape[1:])
        if bias:
            y, _ = BIAS.forward(params, y)
        return y, x

    def backward(params, x, g):
        grads = {}
        if bias:
            grads, g = BIAS.backward(params, None, g)
        w = params["w"]
        (kh, kw), (h, wd) = w.shape[:2], x.shape[-3:-1]
        (top, _), (left, _) = _pads((h, wd), (kh, kw), stride, padding)
        xb, gb = _as_batch(x), _as_batch(g)
        ho, wo = gb.shape[1:3]
        # Both convolutions are written in the forward pass's own layouts (NHWC input, HWIO
        # kernel): XLA's CPU backend runs other layouts through a slow generic convolution
        # when it cannot re-lay them out (inside a scan it does not), 30-40x slower.
        # dx: G dilated by the stride, convolved with the flipped, in/out-swapped kernel.
        dx_pads = [
            (k - 1 - lo, n - 1 - (o - 1) * s + lo)
            for k, n, o, s, lo in zip((kh, kw), (h, wd), (ho, wo), stride, (top, left))
        ]
        dx = lax.conv_general_dilated(
            gb, jnp.swapaxes(w[::-1, ::-1], 2, 3), (1, 1), dx_pads, lhs_dilation=stride, dimension_numbers=_LAYOUT
        )
        # dw: the input with batch and channels swapped ([C, H, W, N]), correlated with G as a
        # kernel [Ho, Wo, N, O] dilated by the stride; the result [C, KH, KW, O] is moved to HWIO.
        dw_pads = [
            (lo, k - n - lo + (o - 1) * s) for k, n, o, s, lo in zip((kh, kw), (h, wd), (ho, wo), stride, (top, left))
        ]
        dw = lax.conv_general_dilated(
            jnp.transpose(xb, (3, 1, 2, 0)),
            jnp.transpose(gb, (1, 2, 0, 3)),
            (1, 1),
            dw_pads,
            rhs_dilation=stride,
            dimension_numbers=_LAYOUT,
        )
        dw = jnp.transpose(dw, (1, 2, 0, 3))
        return {"w": dw, **grads}, dx.reshape(x.shape)

    return leaf("conv2d", init=init, forward=forward, backward=backward, check=check)


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
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"conv2d: n_out must be a positive int, got {n_out!r}")
    _checks.require_float_dtype("conv2d", dtype)
    kernel = _pair("conv2d", "kernel", kernel)
    strides = _pair("conv2d", "stride", stride)
    make_w = _init.resolve(w_init)

    def init(key, input_shape):
        shape = _checks.require_shape("conv2d", input_shape, ndim=3, hint=_checks.image_hint(input_shape))
        if _check_padding("conv2d", padding) == "VALID" and (shape[0] < kernel[0] or shape[1] < kernel[1]):
            raise ValueError(
                f"conv2d: with VALID padding the input's H x W {shape[:2]} must be at least the kernel's {kernel}"
            )
        params = {"w": jnp.asarray(make_w(key, (*kernel, shape[2], n_out), dtype), dtype)}
        if bias:
            params["b"] = jnp.zeros((n_out,), dtype)
        return (*_output_spatial(shape[:2], kernel, strides, padding), n_out), params

    return conv2d_leaf(strides, padding, init=init, bias=bias)
