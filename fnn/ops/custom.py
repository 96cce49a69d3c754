"""Ops with hand-written backward rules: each traces to a ``jax.custom_vjp`` call.

Same names, signatures, checks and values as :mod:`fnn.ops.autodiff`; the
rules are the backward functions of the leaves in :mod:`fnn.nn` and the losses
in :mod:`fnn.losses`, where each sits beside its forward code with its
formula. They are written in differentiable JAX ops, so reverse-over-reverse
(``grad`` of ``grad``, Hessian-vector products) works; forward mode
(``jax.jvp``, ``jax.jacfwd``) does not: use :mod:`fnn.ops.autodiff` for it.
Targets of the losses (labels) get no gradient.
"""

from fnn.ops._define import NAMES, op_set

__all__ = NAMES

globals().update(zip(NAMES, op_set("custom")))  # the ops, named as fnn.ops._define.OPS lists them
