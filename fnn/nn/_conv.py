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

Each leaf computes the three products in one of two forms, both written
once for either number of spatial axes, never with JAX autodiff:

- ``"convolution"``: XLA's convolution (``jax.lax.conv_general_dilated``)
  for ``y``, ``dx`` and ``dw``;
- ``"matmul"``: the notes' matrix form. The patches ``P[N, *out, K C]``
  hold, in row ``(n, i)``, the ``K`` window positions of output ``i`` times
  ``C`` channels (zeros in the padding), so that with the kernel as a matrix
  ``W[K C, O]``: ``y = P W``, ``dw = P^T G`` and ``dx = T(G W^T)``, where
  ``T`` (the transpose of taking patches) adds each patch entry back at the
  input position it was read from. One matrix product each, at the matrix
  product's rate, for ``K`` times the input's memory.

Which form a leaf takes is :func:`conv_form`'s rule, from the shapes (see
there for the measurements behind it); ``form=`` fixes it.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from fnn._errors import InputError
from fnn._numbers import positive_int
from fnn.module import leaf, with_settings
from fnn.nn import _checks, _windows
from fnn.nn import initializers as _init
from fnn.nn._linear import BIAS

__all__ = ["CONV_FORMS", "conv1d", "conv1d_leaf", "conv2d", "conv2d_leaf", "conv_form", "conv_leaf"]

#: Per number of spatial axes: (input, kernel, output) layouts.
_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}

#: The forms a convolution leaf computes its products in (see the module doc).
CONV_FORMS = ("convolution", "matmul")


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


# ---------------------------------------------------------------- the matrix form
def _patches(x, kernel, stride, padding):
    """``P[N, *out, K C]``: row ``(n, i)`` holds ``x[n, i s + a - lo, c]`` for each offset ``a``, then channel ``c``."""
    out = _windows.output_spatial(x.shape[1:-1], kernel, stride, padding)
    columns = [_windows.at_offset(x, a, kernel, stride, padding, out) for a in _windows.offsets(kernel)]
    return jnp.stack(columns, axis=-2).reshape(*x.shape[:1], *out, -1)


def _patches_transpose(dp, spatial, kernel, stride, padding):
    """``T(dP)``, the transpose of :func:`_patches`: every entry of ``dP[N, *out, K C]`` added back at the input
    position its patch entry was read from (entries read from the padding dropped); ``[N, *spatial, C]``."""
    dp = dp.reshape(*dp.shape[:-1], math.prod(kernel), -1)
    pieces = (
        _windows.place_at_offset(dp[..., j, :], spatial, kernel, stride, padding, a)
        for j, a in enumerate(_windows.offsets(kernel))
    )
    return sum(pieces)


def _accumulator(dtype):
    """The dtype the matrix form sums in: float32 for a narrower float (bfloat16, float16), as XLA's convolution
    does, else ``dtype`` itself."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _matmul_forward(x, w, stride, padding):
    """``y = P W``, summed in :func:`_accumulator`'s dtype."""
    kernel = w.shape[:-2]
    patches = _patches(x, kernel, stride, padding)
    y = jnp.matmul(patches, w.reshape(-1, w.shape[-1]), preferred_element_type=_accumulator(x.dtype))
    return y.astype(x.dtype)


def _matmul_backward(x, w, g, stride, padding):
    """``(dw, dx) = (P^T G, T(G W^T))``, each summed (the ``K`` pieces of ``dx`` too) in :func:`_accumulator`'s
    dtype."""
    kernel, matrix, wide = w.shape[:-2], w.reshape(-1, w.shape[-1]), _accumulator(g.dtype)
    rows = tuple(range(g.ndim - 1))
    patches = _patches(x, kernel, stride, padding)
    dw = jnp.tensordot(patches, g, axes=(rows, rows), preferred_element_type=wide).reshape(w.shape)
    dp = jnp.matmul(g, matrix.T, preferred_element_type=wide)
    dx = _patches_transpose(dp, x.shape[1:-1], kernel, stride, padding)
    return dw.astype(w.dtype), dx.astype(x.dtype)


# ---------------------------------------------------------------- which form
#: At most this many input channels, the matrix form on a CPU whatever the shapes: XLA's convolution is slow there.
FEW_CHANNELS = 4
#: The matrix form's largest inner size ``K C`` (a 3x3 kernel over 64 channels) for a 2-D convolution on a CPU.
MATMUL_MAX_DEPTH = 576
#: The matrix form's largest patch matrix ``P[N, *out, K C]`` in bytes for a 2-D convolution on a CPU.
MATMUL_MAX_PATCH_BYTES = 8 * 2**20


def conv_form(x_shape, w_shape, stride, padding="SAME", dtype=jnp.float32, backend=None):
    """The form (one of :data:`CONV_FORMS`) a convolution of ``x[N, *spatial, C]`` with ``w[*k, C, O]`` takes on
    ``backend`` (``"cpu"``, ``"gpu"``, ``"tpu"``; ``None``: JAX's default backend, where it will run).

    On a CPU, the matrix form ``"matmul"`` when

    - the input has at most ``FEW_CHANNELS`` channels (an image net's first
      layer), or
    - the convolution is 2-D, its inner size ``K C`` is at most
      ``MATMUL_MAX_DEPTH`` and its patch matrix at most
      ``MATMUL_MAX_PATCH_BYTES``;

    XLA's ``"convolution"`` otherwise, and on every other backend (the
    patches are sized by the leaf's ``stride``, ``padding`` and ``dtype``). Measured
    (``experiments/conv_forms.py``: one step's ``y``, ``dw`` and ``dx`` of a
    leaf, alone and inside a ``lax.scan`` of 8 steps as ``fnn.fit`` runs
    them, on a 2-core AVX-512 CPU): with 1 or 3 input channels the matrix
    form takes 0.3-0.7x the convolution's time, XLA's convolution with few
    channels being slow. For 2-D convolutions over 32-64 channels, inside a
    loop XLA runs a convolution on one core and a matrix product on all, and
    the matrix form takes 0.5-0.9x the time up to patches of about 30 MiB;
    alone, XLA's convolution uses every core too, and the matrix form is no
    slower only while its patches stay small (0.7-1.0x up to 7 MiB, 1.2-2.0x
    from 14 MiB), hence the 8 MiB bound: the rule is no slower than the
    convolution in either setting, at the cost of some of the matrix form's
    gain inside loops (0.6-0.9x at 14-30 MiB, left to the convolution). With
    a deeper inner size (128 channels: 1.0-1.2x) and for 1-D convolutions
    over 28-128 channels (1.0-1.3x), XLA's convolution is the faster.
    Accelerators were not measured: there XLA's convolution is kept.
    """
    if (backend or jax.default_backend()) != "cpu":
        return "convolution"
    n, channels = len(w_shape) - 2, x_shape[-1]
    if channels <= FEW_CHANNELS:
        return "matmul"
    depth = math.prod(w_shape[:-1])
    out = _windows.output_spatial(x_shape[1:-1], w_shape[:n], stride, padding)
    patch_bytes = x_shape[0] * math.prod(out) * depth * jnp.dtype(dtype).itemsize
    if n == 2 and depth <= MATMUL_MAX_DEPTH and patch_bytes <= MATMUL_MAX_PATCH_BYTES:
        return "matmul"
    return "convolution"


_FORWARD = {"convolution": _convolve, "matmul": _matmul_forward}
_BACKWARD = {"convolution": _convolve_backward, "matmul": _matmul_backward}


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


def _check_form(name, form):
    if form is not None and form not in CONV_FORMS:
        raise InputError(
            f"{name}: form must be None (chosen by conv_form from the shapes) or one of {CONV_FORMS}, got {form!r}"
        )
    return form


def conv_leaf(n, stride=1, padding="SAME", init=None, bias=False, form=None):
    """The convolution leaf over ``n`` (1 or 2) spatial axes for a given stride and padding.

    ``init`` and ``bias`` are the layer's (ops pass neither). ``form`` is one
    of :data:`CONV_FORMS`, or ``None`` to let :func:`conv_form` choose from the
    shapes at trace time.
    """
    name = _name(n)
    stride, padding = _windows.ints(name, "stride", stride, n), _windows.check_padding(name, padding)
    form = _check_form(name, form)

    def form_of(x, w):
        return form or conv_form(x.shape, w.shape, stride, padding, x.dtype)

    def forward(params, x):
        y = _FORWARD[form_of(x, params["w"])](x, params["w"], stride, padding)
        if bias:
            y, _ = BIAS.forward(params, y)
        return y, x

    def backward(params, x, g):
        grads = {}
        if bias:
            grads, g = BIAS.backward(params, None, g)
        dw, dx = _BACKWARD[form_of(x, params["w"])](x, params["w"], g, stride, padding)
        return {"w": dw, **grads}, dx

    axes = {"w": ("window",) * n + ("in", "out"), "b": ("out",)} if init is not None else None
    return leaf(
        name, init=init, forward=forward, backward=backward, check=_check(n, stride, padding, bias), param_axes=axes
    )


def conv1d_leaf(stride=1, padding="SAME", init=None, bias=False, form=None):
    """The 1-D convolution leaf (``x[N, W, C]``, ``w[K, C, O]``); see :func:`conv_leaf`."""
    return conv_leaf(1, stride, padding, init, bias, form)


def conv2d_leaf(stride=1, padding="SAME", init=None, bias=False, form=None):
    """The 2-D convolution leaf (``x[N, H, W, C]``, ``w[KH, KW, C, O]``); see :func:`conv_leaf`."""
    return conv_leaf(2, stride, padding, init, bias, form)


def _conv_layer(n, n_out, kernel, stride, padding, bias, w_init, dtype, form):
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

    return conv_leaf(n, strides, padding, init=init, bias=bias, form=form)


@with_settings
def conv1d(n_out, kernel, *, stride=1, padding="SAME", bias=False, w_init="he", dtype=jnp.float32, form=None):
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
      form: how the three products are computed, ``"convolution"`` or
        ``"matmul"`` (see the module doc); ``None`` lets :func:`conv_form` choose.

    Params: ``{"w": [K, C, O]}`` plus ``"b": [O]`` with ``bias=True``. See
    the module doc for the formulas (eq. 7.48-7.50 of the notes) and the backward.
    """
    return _conv_layer(1, n_out, kernel, stride, padding, bias, w_init, dtype, form)


@with_settings
def conv2d(n_out, kernel, *, stride=1, padding="SAME", bias=False, w_init="he", dtype=jnp.float32, form=None):
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
      form: as for :func:`conv1d`.

    Params: ``{"w": [KH, KW, C, O]}`` plus ``"b": [O]`` with ``bias=True``.
    """
    return _conv_layer(2, n_out, kernel, stride, padding, bias, w_init, dtype, form)
