"""Memory for compute: rematerialisation and a block repeated as one loop.

- ``remat(block)``: the same function as ``block``; its forward pass saves
  only its input (and the context it ran in), and its backward function
  re-runs ``block``'s forward pass, then ``block``'s backward function:
  ``B[remat(M), z](G) = B[M, z](G)`` with ``M``'s saved values recomputed
  from ``z``. On the ``autodiff`` and ``custom`` paths the block runs under
  ``jax.checkpoint`` (nothing saved inside it), so JAX's reverse mode does the
  same with the block's own rules. In training, state updates come from the
  forward pass only: batch norm's statistics move once per step.
- ``repeat(block, n)``: ``block`` applied ``n`` times, ``y = M_n(...M_1(x))``,
  each with its own parameters, stacked along a new leading axis, as one
  ``lax.scan``: a deep network is compiled once instead of ``n`` times.
  Backward: a reverse ``lax.scan`` of ``B[M]`` over the stacked saved values
  and parameters. ``block`` must keep the shape.

**Why both.** XLA sees through ``jax.checkpoint`` in a straight-line
program: on XLA:CPU the compiled gradient of 32 unrolled blocks, each
rematerialised, kept as much temporary memory as without
(``python -m experiments.remat``).
Inside a loop it cannot: ``repeat(remat(block), n)`` keeps one input per
block and recomputes the rest block by block.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from fnn import context
from fnn._errors import InputError, UsageError
from fnn._linear_map import Layout
from fnn._numbers import positive_int
from fnn.module import Module, block_axes, structural, with_settings

__all__ = ["remat", "repeat"]


@jax.tree_util.register_pytree_node_class
class _Saved:
    """Saved values as a pytree of their arrays only (:class:`fnn._linear_map.Layout` holds the rest as static
    data), so that the whole goes through ``jax.jit`` and ``lax.scan`` as it is.

    ``_Saved.of(value).value`` is ``value`` again; ``arrays`` may be stacked along a leading axis
    (:func:`repeat`), then :meth:`at` gives one slice's ``value``.
    """

    def __init__(self, arrays, layout):
        self.arrays, self.layout = arrays, layout

    @classmethod
    def of(cls, value):
        return cls(*Layout.split(value))

    def at(self, arrays):
        """The saved value with these arrays (one slice of stacked ones) in place of :attr:`arrays`."""
        return self.layout.join(arrays)

    @property
    def value(self):
        return self.at(self.arrays)

    def tree_flatten(self):
        return (self.arrays,), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], layout)


def _require_module(name, block):
    if not isinstance(block, Module):
        raise UsageError(
            f"{name}: block must be an fnn module (e.g. nn.serial(nn.dense(256), nn.relu)), got {type(block).__name__}"
        )


@with_settings
def remat(block):
    """``block``, rematerialised: its forward saves only its input; its backward re-runs ``block``'s forward.

    Params, state and output are ``block``'s. See the module doc.
    """
    _require_module("remat", block)

    def checkpointed(train):
        return jax.checkpoint(lambda params, x, state, key: block._run(params, x, state, key, train))

    def run(params, x, state, key, train):
        return checkpointed(train)(params, x, state, key)

    def run_forward(params, x, state, key, train):
        y, _, new_state = block._run_forward(params, x, state, key, train)
        return y, _Saved.of((x, state, key, train)), new_state

    def backward(params, saved, g):
        x, state, key, train = saved.value
        x = lax.optimization_barrier(x)  # as jax.checkpoint does: the recomputation is not merged with the forward
        _, block_saved, _ = block._run_forward(params, x, state, key, train)
        return block.backward(params, block_saved, g)

    return structural(
        "remat",
        init=block.init,
        run=run,
        run_forward=run_forward,
        backward=backward,
        children=(block,),
        rebuild=remat,
        child_contexts=lambda state, key: [(state, key)],
        state_init=block.init_state if block._has_state else None,
        check_inputs=block._check_inputs,
        param_axes=block_axes(block),
    )


@with_settings
def repeat(block, n):
    """``block`` applied ``n`` times, each with its own parameters: ``[N, *shape] -> [N, *shape]``, one ``lax.scan``.

    Params: ``block``'s, each leaf with a leading axis of ``n`` (drawn with
    ``n`` keys); state likewise. Child ``i`` gets the key ``fold_in(key, i)``.
    ``repeat(remat(block), n)`` keeps one ``[N, *shape]`` input per block for
    the backward pass. See the module doc.
    """
    _require_module("repeat", block)
    n = positive_int("repeat", "n", n)

    def init(key, input_shape):
        shape = tuple(input_shape)
        out_shape = block._output_shape(shape)
        if tuple(out_shape) != shape:
            raise InputError(
                f"repeat: the block maps input shape {shape} to {tuple(out_shape)}; it must keep the shape"
            )
        params = jax.vmap(lambda k: block.init(k, shape)[1])(jax.random.split(key, n))
        return shape, params

    def state_init(input_shape):
        one = block.init_state(input_shape)
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), one)

    def run(params, x, state, key, train):
        def body(x, inputs):
            p, s, i = inputs
            y, s = block._run(p, x, s, context.child_key(key, i), train)
            return y, s

        y, states = lax.scan(body, jnp.asarray(x), (params, state, jnp.arange(n)))
        return y, states

    def run_forward(params, x, state, key, train):
        def body(x, inputs):
            p, s, i = inputs
            y, saved, s = block._run_forward(p, x, s, context.child_key(key, i), train)
            return y, (_Saved.of(saved), s)

        y, (saved, states) = lax.scan(body, jnp.asarray(x), (params, state, jnp.arange(n)))
        return y, saved, states  # saved: every block's arrays stacked

    def backward(params, saved, g):
        def body(g, inputs):
            p, arrays = inputs
            dp, dx = block.backward(p, saved.at(arrays), g)
            return dx, dp

        dx, dparams = lax.scan(body, g, (params, saved.arrays), reverse=True)
        return dparams, dx

    def param_axes(params, axes_of):  # the block's, after a leading axis "layers"
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params)
        return jax.tree.map(lambda spec: P("layers", *spec), axes_of(block, one))

    def child_contexts(state, key):
        raise UsageError(
            "repeat: a repeated block with state or randomness cannot be given one fixed context per block "
            "(fnn.context.bind); run it with apply(..., state=, key=, train=) instead"
        )

    return structural(
        "repeat",
        init=init,
        run=run,
        run_forward=run_forward,
        backward=backward,
        children=(block,),
        rebuild=lambda block: repeat(block, n),
        child_contexts=child_contexts,
        state_init=state_init if block._has_state else None,
        check_inputs=block._check_inputs,
        param_axes=param_axes,
    )
