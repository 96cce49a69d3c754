"""Window geometry shared by the convolutions and the pooling layers: sizes, strides, padding.

A window slides over ``n`` spatial axes of an input ``[N, *spatial, C]``
(``n`` = 1: ``[N, W, C]``; ``n`` = 2: ``[N, H, W, C]``), exactly one batch
axis first and the channels last. With stride ``s``, window ``k`` and
``(lo, hi)`` zeros padded on an axis of size ``L``, the output has
``(L + lo + hi - k) // s + 1`` positions and output position ``i`` covers
input positions ``i s - lo, ..., i s - lo + k - 1``. ``"SAME"`` pads as XLA
does (``ceil(L / s)`` outputs, the odd zero at the end), ``"VALID"`` pads
nothing.
"""

import itertools

import numpy as np
from jax import lax

from fnn._errors import InputError
from fnn._numbers import as_int

__all__ = [
    "AXES",
    "PADDINGS",
    "at_offset",
    "channel_hint",
    "check_padding",
    "ints",
    "offsets",
    "output_spatial",
    "pads",
    "place_at_offset",
    "require_batch",
    "transposed_pads",
    "valid_offsets",
]

#: The spatial axes' letters per number of spatial axes.
AXES = {1: ("W",), 2: ("H", "W")}
PADDINGS = ("SAME", "VALID")
_TUPLE = {1: "a 1-tuple", 2: "a pair"}


def ints(name, arg, value, n):
    """An int or a tuple of ``n`` ints (Python, NumPy or 0-d JAX), each positive, as a tuple of ``n`` Python ints."""
    values = (value,) * n if as_int(value) is not None else value
    try:
        values = tuple(map(as_int, values))
    except TypeError:
        values = ()
    if len(values) != n or not all(v is not None and v > 0 for v in values):
        raise InputError(f"{name}: {arg} must be a positive int or {_TUPLE[n]} of them, got {value!r}")
    return values


def check_padding(name, padding):
    """Returns ``padding`` if it is ``"SAME"`` or ``"VALID"``, else raises ``ValueError``."""
    if padding not in PADDINGS:
        raise InputError(f"{name}: padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding


def _layout(n):
    """The input layout over ``n`` spatial axes: ``"[N, W, C]"`` or ``"[N, H, W, C]"``."""
    return f"[N, {', '.join(AXES[n])}, C]"


def require_batch(name, x, n, why="", hint=""):
    """Checks that ``x`` has ``n + 2`` axes ``[N, *spatial, C]``: a batch axis first and a channel axis last.

    ``why`` follows the expected layout in the message, ``hint`` ends it.
    With one axis too few the message names both fixes (``x[..., None]``
    adds a channel axis, ``x[None]`` a batch axis): taken as it is, the
    window would slide over the batch axis, or the channels be spatial.
    """
    if x.ndim == n + 2:
        return
    if x.ndim == n + 1:
        hint = (
            f"; without a channel axis, add one: x[..., None] (shape {(*x.shape, 1)}); "
            f"without a batch axis, add one: x[None] (shape {(1, *x.shape)}){hint}"
        )
    elif x.ndim > n + 2:
        hint = f"; merge the leading axes into one batch axis: x.reshape(-1, *x.shape[-{n + 1}:]){hint}"
    raise InputError(f"{name}: input must be {_layout(n)}, {n + 2} axes{why}, got shape {x.shape}{hint}")


def channel_hint(shape, n):
    """A hint for an ``init`` input shape of ``n`` axes, the spatial ones without channels (batch axis excluded)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != n:
        return ""
    return f"; for inputs without a channel axis, give one: input_shape {(*shape, 1)} and x[..., None]"


def pads(spatial, window, stride, padding):
    """``[(lo, hi), ...]`` per spatial axis, as XLA pads."""
    return lax.padtype_to_pads(spatial, window, stride, padding)


def output_spatial(spatial, window, stride, padding):
    """The output's spatial sizes."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(spatial, window, stride, pads(spatial, window, stride, padding))
    )


def transposed_pads(spatial, window, stride, padding, out_spatial):
    """``[(lo, hi), ...]`` that pad an output ``G`` dilated by the stride so that sliding the window over it
    gives the input's size: the transpose of the forward's window (a convolution's ``dx``, average pooling's).

    Output position ``i`` sits at ``i s`` of the dilated ``G``; input position
    ``p`` collects the window offsets ``a`` with ``i s + a - lo = p``.
    """
    return [
        (k - 1 - lo, n - 1 - (o - 1) * s + lo)
        for k, n, o, s, (lo, _) in zip(window, spatial, out_spatial, stride, pads(spatial, window, stride, padding))
    ]


def valid_offsets(spatial, window, stride, padding, out_spatial, offset):
    """Whether window offset ``offset`` of each output position lands inside the input (not in the padding).

    A NumPy boolean array of shape ``out_spatial`` (a constant at trace time).
    """
    inside = np.ones(out_spatial, bool)
    axes = zip(spatial, stride, out_spatial, offset, pads(spatial, window, stride, padding))
    for axis, (n, s, o, a, (lo, _)) in enumerate(axes):
        position = (np.arange(o) * s + a - lo).reshape([-1 if i == axis else 1 for i in range(len(out_spatial))])
        inside = inside & (position >= 0) & (position < n)
    return inside


def offsets(window):
    """Every offset ``a`` within ``window``, in row-major order (as a kernel ``w[*k, C, O]`` is laid out)."""
    return list(itertools.product(*map(range, window)))


def at_offset(x, offset, window, stride, padding, out_spatial, fill=0):
    """``x[n, i s + a - lo, c]`` for every output position ``i`` at window offset ``a``: shape ``[N, *out, C]``.

    Positions in the padding read ``fill``. For ``fill = 0`` its adjoint is :func:`place_at_offset`.
    """
    spatial_pads = pads(x.shape[1:-1], window, stride, padding)
    padded = lax.pad(x, np.array(fill, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in spatial_pads), (0, 0, 0)])
    start = (0, *offset, 0)
    limit = (x.shape[0], *((o - 1) * s + a + 1 for o, s, a in zip(out_spatial, stride, offset)), x.shape[-1])
    return lax.slice(padded, start, limit, (1, *stride, 1))


def place_at_offset(g, spatial, window, stride, padding, offset):
    """The adjoint of :func:`at_offset`: ``g[N, *out, C]`` put at input positions ``i s + a - lo``, zeros elsewhere.

    Shape ``[N, *spatial, C]``; values that would land in the padding are
    dropped. Interior padding ``s - 1`` spaces the outputs by the stride, the
    low padding ``a - lo`` shifts them to the offset (negative pads crop), and
    the high padding fills the input's size.
    """
    config = [
        (a - lo, n - 1 - ((o - 1) * s + a - lo), s - 1)
        for n, s, o, a, (lo, _) in zip(spatial, stride, g.shape[1:-1], offset, pads(spatial, window, stride, padding))
    ]
    return lax.pad(g, np.array(0, g.dtype), [(0, 0, 0), *config, (0, 0, 0)])
