"""Mixed precision as a module: parameters in float32, the compute in bfloat16 or float16, the output in float32.

``mixed_precision(block)`` is ``block`` run on a copy of its parameters and
its input rounded to ``compute_dtype`` (bfloat16 or float16; every floating
leaf, ``cast``), with its output given back in float32:

``y = float32(block(cast(params), cast(x)))``.

The parameters stay what ``init`` made them (float32), and so do the
gradients and the optimizer's state: the optimizer updates float32 master
weights, and an update smaller than a bfloat16 ulp of its weight is not
lost. The loss gets float32 outputs, so that its log-sum-exp and its mean
over the batch are float32 sums. The model's state is not cast: batch
norm's running statistics stay float32 (each batch's mean and variance are
computed in bfloat16, as the rest of the forward pass, and averaged into
them in float32).

**The backward** is the chain rule through the casts, each of which is the
identity up to rounding: with ``(dparams_c, dx_c) = B[block](cast(g))``,
``dparams`` is ``dparams_c`` in each parameter's dtype and ``dx`` is
``dx_c`` in the input's. Since it is a module like any other, the three
paths apply to it as they are (``autodiff`` differentiates the casts,
``custom`` and ``backprop`` run this backward). What the casts leave to
check are the block's own rules in the compute dtype, which the checker
does: ``fnn.testing.check_module(block, shape, dtypes=(compute_dtype,))``
holds each rule, computed in bfloat16 or float16, to the float64 reference
within that dtype's tolerance (the tests do so for every leaf kind). The
wrapped module itself is no subject for the checker's float64 checks:
its outputs are float32 whatever its inputs, and its products round to the
compute dtype, which finite differences cannot resolve.

**float16 and loss scaling.** float16's range (normal numbers from about
``6e-5`` to ``65504``) loses small gradients to underflow unless the loss is
scaled up and the gradients down again, with a scale that adapts as training
goes: dynamic loss scaling. A model with a float16 block
(:func:`needs_loss_scaling`) gets it from :func:`fnn.train.train_step` and
:func:`fnn.fit` (:class:`fnn.train.DynamicLossScale`): the float32 loss is
multiplied by ``S`` before differentiation, so the float32 cotangent ``g``
that enters the backward above is ``S`` times the loss's, and
``cast(g)`` carries it into float16's range. bfloat16 has float32's range
and needs none. On an H100 both run matrix products at the same rate.
"""

import jax
import jax.numpy as jnp

from fnn._errors import InputError
from fnn.module import Module, block_axes, structural, with_settings

__all__ = ["COMPUTE_DTYPES", "mixed_precision"]

#: The dtypes :func:`mixed_precision` computes in.
COMPUTE_DTYPES = (jnp.bfloat16, jnp.float16)


def _cast(tree, dtype):
    """``tree`` with every floating leaf in ``dtype`` (integer leaves, token ids, as they are)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _like(tree, reference):
    """``tree`` with each floating leaf in the dtype of ``reference``'s leaf at its place."""
    return jax.tree.map(lambda a, r: a.astype(r.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree, reference)


@with_settings
def mixed_precision(block, compute_dtype=jnp.bfloat16):
    """``block`` computed in ``compute_dtype`` (bfloat16 or float16) from float32 parameters, with float32 outputs.

    ``[N, *shape] -> [N, *block's output shape]``, float32. Params and state
    are ``block``'s, in their own dtypes. See the module doc for the formula
    and the backward.
    """
    if not isinstance(block, Module):
        raise InputError(f"mixed_precision: block must be an fnn module, got {type(block).__name__}")
    try:
        known = jnp.dtype(compute_dtype) in [jnp.dtype(d) for d in COMPUTE_DTYPES]
    except TypeError:
        known = False
    if not known:
        names = ", ".join(jnp.dtype(d).name for d in COMPUTE_DTYPES)
        raise InputError(
            f"mixed_precision: compute_dtype must be one of {names}, got {compute_dtype!r}; for float32 leave the "
            "block unwrapped"
        )
    dtype = jnp.dtype(compute_dtype)

    def run(params, x, state, key, train):
        x = jnp.asarray(x)
        y, new_state = block._run(_cast(params, dtype), _cast(x, dtype), state, key, train)
        return y.astype(jnp.float32), new_state

    def run_forward(params, x, state, key, train):
        x = jnp.asarray(x)
        y, saved, new_state = block._run_forward(_cast(params, dtype), _cast(x, dtype), state, key, train)
        return y.astype(jnp.float32), (saved, jnp.zeros((), x.dtype)), new_state

    def backward(params, saved, g):
        block_saved, x_like = saved
        dparams, dx = block.backward(_cast(params, dtype), block_saved, g.astype(dtype))
        floating = dx is not None and jnp.issubdtype(x_like.dtype, jnp.floating)
        return _like(dparams, params), (dx.astype(x_like.dtype) if floating else dx)

    return structural(
        "mixed_precision",
        init=block.init,
        run=run,
        run_forward=run_forward,
        backward=backward,
        children=(block,),
        rebuild=lambda child: mixed_precision(child, compute_dtype),
        child_contexts=lambda state, key: [(state, key)],
        state_init=block.init_state if block._has_state else None,
        check_inputs=block._check_inputs,
        param_axes=block_axes(block),
    )


def needs_loss_scaling(model):
    """Whether ``model`` or a module inside it is a :func:`mixed_precision` block computing in float16, whose small
    gradients underflow without dynamic loss scaling (:class:`fnn.train.DynamicLossScale`)."""
    settings = {s.name: s.value for s in model.settings}
    if model.name == "mixed_precision" and jnp.dtype(settings["compute_dtype"]) == jnp.float16:
        return True
    return any(needs_loss_scaling(child) for child in model.children)
