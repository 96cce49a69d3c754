"""Ops whose gradients JAX derives from their plain ``jax.numpy`` forward code.

Same names, signatures, checks and values as :mod:`fnn.ops.custom`; each op
is a leaf of :mod:`fnn.nn` (or a loss of :mod:`fnn.losses`) applied to the
arrays it is given. Forward mode (``jax.jvp``, ``jax.jacfwd``) works here.
"""

from fnn.ops._define import NAMES, op_set

__all__ = NAMES

globals().update(zip(NAMES, op_set("autodiff")))  # the ops, named as fnn.ops._define.OPS lists them
