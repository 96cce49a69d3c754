"""Layers and models, each a module (see :mod:`fnn.module`): ``init``, ``apply``, ``forward``, ``backward``.

Leaves: :func:`dense`, :data:`relu`, :data:`sigmoid`, :data:`tanh`,
:func:`leaky_relu`, :data:`gelu`, :func:`softplus`, :data:`silu`, :func:`layer_norm`,
:func:`conv2d`, :func:`conv1d`, :func:`avg_pool`, :func:`max_pool`,
:func:`group_norm`, :data:`softmax`, :func:`embedding`,
:func:`positional_embedding`; with state or randomness (see :mod:`fnn.module`):
:func:`batch_norm`, :func:`dropout`. Wiring: :func:`serial`, :func:`residual`,
:func:`flatten`, :func:`identity`, :func:`attention` (multi-head
self-attention over the attention leaf); memory for compute:
:func:`remat` (rematerialisation) and :func:`repeat` (a block ``n`` times,
one loop); speed for precision: :func:`mixed_precision` (bfloat16 compute,
float32 parameters and outputs). Models: :func:`mlp`,
:func:`resnet_s`. Initialisers: :mod:`fnn.nn.initializers`.
"""

from fnn.nn import initializers
from fnn.nn._activations import activation, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from fnn.nn._attention import attention
from fnn.nn._batch_norm import batch_norm
from fnn.nn._compose import flatten, identity, mlp, residual, resnet_s, serial
from fnn.nn._conv import CONV_FORMS, conv1d, conv2d, conv_form
from fnn.nn._dropout import dropout
from fnn.nn._embeddings import embedding, positional_embedding
from fnn.nn._linear import dense
from fnn.nn._mixed import mixed_precision
from fnn.nn._norm import group_norm, layer_norm
from fnn.nn._pool import avg_pool, max_pool
from fnn.nn._remat import remat, repeat
from fnn.nn._softmax import softmax

__all__ = [
    "activation",
    "attention",
    "avg_pool",
    "batch_norm",
    "CONV_FORMS",
    "conv1d",
    "conv2d",
    "conv_form",
    "dense",
    "dropout",
    "embedding",
    "flatten",
    "gelu",
    "group_norm",
    "identity",
    "initializers",
    "layer_norm",
    "leaky_relu",
    "max_pool",
    "mixed_precision",
    "mlp",
    "positional_embedding",
    "relu",
    "remat",
    "repeat",
    "residual",
    "resnet_s",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
