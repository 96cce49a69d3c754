"""Two op sets with identical signatures, one per gradient path.

- :mod:`fnn.ops.autodiff`: plain ``jax.numpy``; ``jax.grad`` derives the rules.
- :mod:`fnn.ops.custom`: ``jax.custom_vjp`` ops with hand-written rules.

Both provide ``matmul``, ``add_bias``, ``relu`` and ``cross_entropy``.
"""

from fnn.ops import autodiff, custom

OP_SETS = {"autodiff": autodiff, "custom": custom}


def get(ops):
    """Returns the op set named ``"custom"`` or ``"autodiff"``; an op set module is returned as is."""
    if isinstance(ops, str):
        try:
            return OP_SETS[ops]
        except KeyError:
            raise ValueError(
                f"unknown op set {ops!r}; expected one of {sorted(OP_SETS)}"
            ) from None
    if ops not in OP_SETS.values():
        raise TypeError(
            f"ops must be fnn.ops.custom, fnn.ops.autodiff or their name, got {ops!r}"
        )
    return ops


__all__ = ["autodiff", "custom", "get", "OP_SETS"]
