"""Ops whose gradients JAX derives from their plain ``jax.numpy`` forward code.

Same names, signatures, checks and values as :mod:`fnn.ops.custom`; each op
is a leaf of :mod:`fnn.nn` (or a loss of :mod:`fnn.losses`) applied to the
arrays it is given. Forward mode (``jax.jvp``, ``jax.jacfwd``) works here.
"""

from fnn.ops._define import NAMES, op_set

__all__ = NAMES

(
    matmul,
    add_bias,
    relu,
    sigmoid,
    tanh,
    leaky_relu,
    gelu,
    softplus,
    layer_norm,
    conv2d,
    cross_entropy,
    mse,
    logistic_loss,
    multiclass_hinge,
    conv1d,
    avg_pool,
    max_pool,
    group_norm,
    softmax,
    embedding,
    attention,
    batch_norm,
    dropout,
) = op_set("autodiff")
