"""Structural modules: wiring whose backward functions call their children's.

- ``serial(m1, ..., mk)``: ``y = mk(...m1(x))``; params a list, one entry per
  module; backward applies the children's backward functions in reverse.
- ``residual(block)``: ``y = z + block(z)``; ``dz = G + B[block, z](G)``.
- ``flatten()``: ``[N, d1, ..., dr] -> [N, d1 * ... * dr]``; ``dx`` is ``G``
  reshaped back.
- ``identity()``: ``y = x``, ``dx = G``.

Built from these: ``mlp(sizes)`` (the notes' recipe model is
``mlp([784, 500, 10])``) and ``resnet_s(...)`` (the notes' ResNet-S).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from fnn import context
from fnn._errors import InputError, UsageError
from fnn.module import Module, block_axes, structural, with_settings
from fnn.nn import _checks
from fnn.nn._activations import relu
from fnn.nn._linear import dense
from fnn.nn._norm import layer_norm

__all__ = ["flatten", "identity", "mlp", "residual", "resnet_s", "serial"]


def _require_modules(name, modules):
    for i, m in enumerate(modules):
        if isinstance(m, Module):
            continue
        if callable(m) and getattr(m, "__module__", "").startswith("fnn."):
            raise UsageError(
                f"{name}: argument {i} is the constructor nn.{m.__name__}, not a module; call it: "
                f"nn.{m.__name__}(...) (e.g. nn.{m.__name__}())"
            )
        raise UsageError(f"{name}: argument {i} must be an fnn module, got {type(m).__name__} ({m!r})")


def serial(*modules):
    """Composes modules in order: ``y = mk(...m2(m1(x)))``.

    Params: a list ``[p1, ..., pk]`` with each module's params. Backward runs
    ``B[mk]``, then ``B[m(k-1)]``, ..., ``B[m1]``, each on the gradient the
    next one returned.

    >>> import jax, fnn
    >>> model = fnn.nn.serial(fnn.nn.dense(32), fnn.nn.relu, fnn.nn.dense(10))
    >>> out_shape, params = model.init(jax.random.key(0), (784,))
    >>> out_shape, [jax.tree.map(lambda a: a.shape, p) for p in params]
    ((10,), [{'w': (784, 32)}, (), {'w': (32, 10)}])
    """
    if not modules:
        raise InputError("serial: needs at least one module")
    _require_modules("serial", modules)

    def check(params):
        if not isinstance(params, (list, tuple)) or len(params) != len(modules):
            got = (
                f"a {type(params).__name__} of {len(params)}"
                if isinstance(params, (list, tuple))
                else type(params).__name__
            )
            raise UsageError(
                f"serial: params must be a list with one entry per module ({len(modules)}: "
                f"{', '.join(m.name for m in modules)}), got {got}"
            )

    has_state = any(m._has_state for m in modules)

    def init(key, input_shape):
        params = []
        for module, k in zip(modules, jax.random.split(key, len(modules))):
            input_shape, p = module.init(k, input_shape)
            params.append(p)
        return input_shape, params

    def child_contexts(state, key):
        return [(state[i] if has_state else (), context.child_key(key, i)) for i in range(len(modules))]

    def run(params, x, state, key, train):
        check(params)
        states = []
        for m, p, (s, k) in zip(modules, params, child_contexts(state, key)):
            x, new = m._run(p, x, s, k, train)
            states.append(new)
        return x, (states if has_state else state)

    def run_forward(params, x, state, key, train):
        check(params)
        saved, states = [], []
        for m, p, (s, k) in zip(modules, params, child_contexts(state, key)):
            x, kept, new = m._run_forward(p, x, s, k, train)
            saved.append(kept)
            states.append(new)
        return x, saved, (states if has_state else state)

    def backward(params, saved, g):
        grads = [None] * len(modules)
        for i in reversed(range(len(modules))):
            grads[i], g = modules[i].backward(params[i], saved[i], g)
        return grads, g

    def state_init(input_shape):
        states = []
        for m in modules:
            states.append(m.init_state(input_shape))
            input_shape = m._output_shape(input_shape)
        return states

    def check_inputs(x, split):  # the first module that does more than rearrange the values checks them
        first = next((m for m in modules if not m._only_rearranges), modules[0])
        return first._check_inputs(x, split)

    return structural(
        "serial",
        init=init,
        run=run,
        run_forward=run_forward,
        backward=backward,
        children=modules,
        rebuild=serial,
        child_contexts=child_contexts,
        state_init=state_init if has_state else None,
        check_inputs=check_inputs,
        only_rearranges=all(m._only_rearranges for m in modules),
        param_axes=lambda params, axes_of: [axes_of(m, p) for m, p in zip(modules, params)],
    )


def residual(block):
    """The residual connection ``y = z + block(z)``; ``block`` must keep the shape.

    Params: ``block``'s. Backward: ``dz = G + B[block, z](G)``.
    """
    _require_modules("residual", (block,))

    def check_shape(z, y):
        if y.shape != z.shape:
            raise InputError(f"residual: the block maps shape {z.shape} to {y.shape}; it must keep the shape")

    def init(key, input_shape):
        output_shape, params = block.init(key, input_shape)
        if tuple(output_shape) != tuple(input_shape):
            raise InputError(
                f"residual: the block maps input shape {tuple(input_shape)} to {tuple(output_shape)}; it must keep "
                f"the shape"
            )
        return output_shape, params

    def child_contexts(state, key):
        return [(state, context.child_key(key, 0))]

    def run(params, z, state, key, train):
        y, new_state = block._run(params, z, state, context.child_key(key, 0), train)
        check_shape(z, y)
        return z + y, new_state

    def run_forward(params, z, state, key, train):
        y, saved, new_state = block._run_forward(params, z, state, context.child_key(key, 0), train)
        check_shape(z, y)
        return z + y, saved, new_state

    def backward(params, saved, g):
        grads, dz = block.backward(params, saved, g)
        return grads, g + dz

    return structural(
        "residual",
        init=init,
        run=run,
        run_forward=run_forward,
        backward=backward,
        children=(block,),
        rebuild=residual,
        child_contexts=child_contexts,
        state_init=block.init_state if block._has_state else None,
        param_axes=block_axes(block),
    )


def _rearranging(name, init, apply, forward, backward):
    """Wiring without parameters whose output holds its input's values (``only_rearranges``): ``flatten``,
    ``identity``."""
    module = structural(
        name, init=init, apply=apply, forward=forward, backward=backward, rebuild=lambda: module, only_rearranges=True
    )
    return module


def flatten():
    """Flattens all but the batch axis, ``[N, *dims] -> [N, prod(dims)]``; no params."""

    def init(key, input_shape):
        shape = _checks.require_shape("flatten", input_shape)
        return (math.prod(shape),), ()

    def apply(params, x):
        _checks.require_no_params("flatten", params)
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise InputError("flatten: input must have a batch axis, got a scalar")
        return x.reshape(x.shape[0], -1)

    def forward(params, x):
        return apply(params, x), jnp.shape(x)

    def backward(params, shape, g):
        return (), g.reshape(shape)

    return _rearranging("flatten", init, apply, forward, backward)


def identity():
    """``y = x``, any shape and dtype; backward ``dx = G``; no params, nothing saved.

    A placeholder where a model needs a module but no computation: the
    model under a loss checked on its own (``fnn.value_and_grad(identity(),
    loss, ...)`` differentiates the loss alone), a skipped layer. It is
    wiring, like :func:`flatten`, not a leaf: on the ``custom`` path it adds
    no custom rule of its own, and ``fit`` checks its inputs with the
    next module's check (``serial(identity(), embedding(...))`` takes token
    ids).
    """

    def init(key, input_shape):
        return _checks.require_shape("identity", input_shape), ()

    def apply(params, x):
        _checks.require_no_params("identity", params)
        return jnp.asarray(x)

    def forward(params, x):
        return apply(params, x), None

    def backward(params, saved, g):
        return (), g

    return _rearranging("identity", init, apply, forward, backward)


@with_settings
def mlp(sizes, *, activation=relu, bias=False, w_init="he", dtype=jnp.float32):
    """The notes' multilayer perceptron ``[..., sizes[0]] -> [..., sizes[-1]]``.

    ``serial(dense(sizes[1]), activation, ..., dense(sizes[-1]))``: an
    activation between layers, the last layer linear. ``mlp([784, 500, 10])``
    is the notes' ``relu(X W1) W2``; ``mlp([784, 10])`` the linear model.
    ``init`` checks that the input has ``sizes[0]`` features.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise InputError(f"mlp: sizes must be at least two positive ints [n_in, ..., n_out], got {sizes!r}")
    _require_modules("mlp", (activation,))
    layers = []
    for n_out in sizes[1:]:
        layers += [dense(n_out, bias=bias, w_init=w_init, dtype=dtype), activation]
    net = serial(*layers[:-1])

    def init(key, input_shape):
        shape = _checks.require_shape("mlp", input_shape)
        if shape[-1:] != sizes[:1]:
            hint = _checks.flatten_hint(shape, sizes[0])
            raise InputError(f"mlp: built for {sizes[0]} input features, got input_shape {shape}{hint}")
        return net.init(key, shape)

    return dataclasses.replace(net, name="mlp", init=init)


@with_settings
def resnet_s(n_out, *, width, hidden=None, n_blocks=2, activation=relu, normalize=False, dtype=jnp.float32):
    """The notes' ResNet-S ``MM(Res(Res(...Res(MM(x)))))`` for inputs ``[N, ...]``.

    The input is flattened and projected to ``width`` features by a dense
    layer; then ``n_blocks`` residual blocks
    ``Res(z) = z + sigma(MM(sigma(MM(z))))`` (``width -> hidden -> width``);
    then a dense layer to ``n_out``. With ``normalize=True`` each block is the
    notes' LayerNorm variant ``z + sigma(LN(MM(sigma(LN(MM(z))))))``.
    Every ``MM`` has a bias.
    """
    hidden = width if hidden is None else hidden
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
        raise InputError(f"resnet_s: n_blocks must be a non-negative int, got {n_blocks!r}")

    def mm(n):
        return [dense(n, bias=True, dtype=dtype)] + ([layer_norm(dtype=dtype)] if normalize else [])

    def block():
        return serial(*mm(hidden), activation, *mm(width), activation)

    net = serial(
        flatten(),
        dense(width, bias=True, dtype=dtype),
        *(residual(block()) for _ in range(n_blocks)),
        dense(n_out, bias=True, dtype=dtype),
    )
    return dataclasses.replace(net, name="resnet_s")
