"""Op-level functions for users who write their own forward functions.

- :mod:`fnn.ops.autodiff`: ``jax.grad`` derives the rules from plain ``jax.numpy``.
- :mod:`fnn.ops.custom`: ``jax.custom_vjp`` ops with the hand-written rules.

Both provide, with identical signatures: ``matmul``, ``add_bias``, ``relu``,
``sigmoid``, ``tanh``, ``leaky_relu``, ``gelu``, ``softplus``, ``layer_norm``,
``conv2d``, ``cross_entropy``, ``mse``, ``logistic_loss``, ``multiclass_hinge``,
``conv1d``, ``avg_pool``, ``max_pool``, ``group_norm``, ``softmax``,
``embedding``, ``attention``, ``batch_norm``, ``dropout``.
"""

from fnn.ops import autodiff, custom

OP_SETS = {"autodiff": autodiff, "custom": custom}


def get(ops):
    """Returns the op set named ``"custom"`` or ``"autodiff"``; an op set module is returned as is."""
    if isinstance(ops, str):
        try:
            return OP_SETS[ops]
        except KeyError:
            raise ValueError(f"unknown op set {ops!r}; expected one of {sorted(OP_SETS)}") from None
    if ops not in OP_SETS.values():
        raise TypeError(f"ops must be fnn.ops.custom, fnn.ops.autodiff or their name, got {ops!r}")
    return ops


__all__ = ["OP_SETS", "autodiff", "custom", "get"]
