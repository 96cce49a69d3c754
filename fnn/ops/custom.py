"""Ops with hand-written backward rules: each traces to a ``jax.custom_jvp`` call differentiated by its rule.

Same names, signatures, checks and values as :mod:`fnn.ops.autodiff`; the
rules are the backward functions of the leaves in :mod:`fnn.nn` and the losses
in :mod:`fnn.losses`, where each sits beside its forward code with its
formula. Reverse mode runs the rule; forward mode (``jax.jvp``,
``jax.jacfwd``) runs its transpose; and, the rules being differentiable JAX
code, second order (``grad`` of ``grad``, ``jax.hessian``) works too.
Targets of the losses (labels) get no gradient.
"""

from fnn.ops._define import NAMES, op_set

__all__ = NAMES

globals().update(zip(NAMES, op_set("custom")))  # the ops, named as fnn.ops._define.OPS lists them
