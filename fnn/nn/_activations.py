"""Elementwise activations, each a forward and its backward side by side.

Every activation maps ``x`` to ``y`` of the same shape, has no parameters
(``params == ()``), and its backward is ``dx = G * sigma'(x)``, written from
what the forward saved. Where the output alone determines the derivative, the
output is saved: the next layer keeps it alive anyway, so the backward pass
costs no extra memory.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from fnn._numbers import real
from fnn.module import leaf, with_settings
from fnn.nn import _checks

__all__ = ["activation", "gelu", "leaky_relu", "relu", "sigmoid", "silu", "softplus", "tanh"]


def activation(name, forward, backward, edge_values=()):
    """Makes a parameter-free elementwise leaf module (stax's ``elementwise``).

    Args:
      name: the module's name.
      forward: ``x -> (y, saved)`` in plain ``jax.numpy``.
      backward: ``(saved, g) -> dx``.
      edge_values: inputs at which the rule is delicate, e.g. ``(0.0,)`` for a
        kink at 0 (see :func:`fnn.module.leaf`).
    """

    def init(key, input_shape):
        return _checks.require_shape(name, input_shape), ()

    def check(params, x):
        _checks.require_no_params(name, params)
        _checks.require_float(name, "input", x)

    return leaf(
        name,
        init=init,
        forward=lambda params, x: forward(x),
        backward=lambda params, saved, g: ((), backward(saved, g)),
        check=check,
        edge_values=edge_values,
    )


def _relu_forward(x):
    y = jnp.where(x > 0, x, jnp.zeros_like(x))
    return y, y


#: Saturated inputs: the derivative underflows to exactly 0 and must not become ``0 * inf``.
_SATURATED = (1e4, -1e4)

#: ``y = max(x, 0)``; ``dx = G * 1[x > 0]`` (``relu'(0) = 0``, as in the notes); saves ``y``. Edge value: 0.
relu = activation("relu", _relu_forward, lambda y, g: jnp.where(y > 0, g, jnp.zeros_like(g)), edge_values=(0.0,))


def _sigmoid_forward(x):
    s = jax.nn.sigmoid(x)
    return s, s


#: ``s = 1 / (1 + exp(-x))``; ``dx = G s (1 - s)``; saves ``s``. Edge values: +-1e4 (saturated).
sigmoid = activation("sigmoid", _sigmoid_forward, lambda s, g: g * s * (1 - s), edge_values=_SATURATED)


def _tanh_forward(x):
    t = jnp.tanh(x)
    return t, t


#: ``t = tanh(x)``; ``dx = G (1 - t^2)``; saves ``t``. Edge values: +-1e4 (saturated).
tanh = activation("tanh", _tanh_forward, lambda t, g: g * (1 - t * t), edge_values=_SATURATED)


@with_settings
def leaky_relu(negative_slope=0.01):
    """``y = max(x, a x)`` for ``0 <= a < 1``; ``dx = G`` where ``x > 0``, else ``a G``.

    At exactly 0 the derivative is the negative side's ``a`` (as ``relu'(0) = 0``).
    Saves ``y`` (``y > 0`` exactly where ``x > 0``). Edge value: 0.
    """
    a = real("leaky_relu", "negative_slope", negative_slope, within="in [0, 1)", ok=lambda a: 0 <= a < 1)

    def forward(x):
        y = jnp.where(x > 0, x, a * x)
        return y, y

    return activation("leaky_relu", forward, lambda y, g: jnp.where(y > 0, g, a * g), edge_values=(0.0,))


_SQRT_HALF = 1 / math.sqrt(2.0)
_INV_SQRT_2PI = 1 / math.sqrt(2.0 * math.pi)


def _gelu_forward(x):
    return x * 0.5 * (1 + erf(x * _SQRT_HALF)), x


def _gelu_backward(x, g):
    cdf = 0.5 * (1 + erf(x * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return g * (cdf + x * pdf)


#: Exact GELU ``y = x Phi(x)``, ``Phi`` the standard normal CDF (through ``erf``);
#: ``dx = G (Phi(x) + x phi(x))``, ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``; ``gelu'(0) = 1/2``; saves ``x``.
#: Edge values: 0 and +-1e4 (saturated).
gelu = activation("gelu", _gelu_forward, _gelu_backward, edge_values=(0.0, *_SATURATED))


@with_settings
def softplus(beta=1.0):
    """``y = log(1 + exp(beta x)) / beta``, computed stably (``x = 800`` gives 800, not inf).

    ``dx = G sigmoid(beta x)``. Saves ``x`` (alive anyway) and computes
    ``sigmoid`` by XLA's logistic op, one exponential per entry, accurate to
    rounding for tiny and huge ``x`` alike (``sigmoid(-800) = 0``, ``sigmoid(800) = 1``). Edge values: +-800
    (``exp(800)`` overflows even in float64).
    """
    b = real("softplus", "beta", beta, within="in (0, inf)", ok=lambda b: 0 < b < math.inf)

    def forward(x):
        return jnp.logaddexp(b * x, 0.0) / b, x

    return activation("softplus", forward, lambda x, g: g * jax.nn.sigmoid(b * x), edge_values=(800.0, -800.0))


def _silu_forward(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


def _silu_backward(saved, g):
    x, s = saved
    return g * (s + x * s * (1 - s))


#: SiLU (swish) ``y = x s``, ``s = sigmoid(x)``; ``dx = G (s + x s (1 - s))``; saves ``x`` and ``s``.
#: Edge values: +-1e4 (saturated).
silu = activation("silu", _silu_forward, _silu_backward, edge_values=_SATURATED)
