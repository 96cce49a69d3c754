"""Layers and models, each a module (see :mod:`fnn.module`): ``init``, ``apply``, ``forward``, ``backward``.

Leaves: :func:`dense`, :data:`relu`, :data:`sigmoid`, :data:`tanh`,
:func:`leaky_relu`, :data:`gelu`, :func:`softplus`, :data:`silu`, :func:`layer_norm`,
:func:`conv2d`. Wiring: :func:`serial`, :func:`residual`, :func:`flatten`.
Models: :func:`mlp`, :func:`resnet_s`. Initialisers: :mod:`fnn.nn.initializers`.
"""

from fnn.nn import initializers
from fnn.nn.activations import activation, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from fnn.nn.compose import flatten, mlp, residual, resnet_s, serial
from fnn.nn.conv import conv2d
from fnn.nn.linear import dense
from fnn.nn.norm import layer_norm

__all__ = [
    "activation",
    "conv2d",
    "dense",
    "flatten",
    "gelu",
    "initializers",
    "layer_norm",
    "leaky_relu",
    "mlp",
    "relu",
    "residual",
    "resnet_s",
    "serial",
    "sigmoid",
    "silu",
    "softplus",
    "tanh",
]
