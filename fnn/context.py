"""Running a module in a context: its state, a random key, and training or evaluation.

A *contextual* module (:attr:`fnn.module.Module.contextual`: batch norm,
dropout, or wiring around them) takes ``state=``, ``key=`` and ``train=``
and, if it has state, returns the new state too (see :mod:`fnn.module`).
Code that runs any module, contextual or not (the gradient paths, ``fit``,
:mod:`fnn.inspect`, :mod:`fnn.testing`), calls :func:`apply` and
:func:`forward` here, which always take and return the state (``()`` for a
module without any); :func:`bind` fixes a context once, making a plain module
of a contextual one, for the checks that take plain modules.

Keys: a composite module hands child ``i`` the key ``fold_in(key, i)``
(:func:`child_key`), so that two dropout layers draw different masks.
"""

import dataclasses

import jax

from fnn.module import Module

__all__ = ["apply", "bind", "child_key", "fix", "forward"]


def child_key(key, i):
    """The key of child ``i``: ``fold_in(key, i)``, or ``None`` when there is no key."""
    return None if key is None else jax.random.fold_in(key, i)


def apply(module, params, x, *, state=(), key=None, train=False):
    """``(y, new_state)`` of any module; a module without state gets none and returns ``state`` as given."""
    if not module.contextual:
        return module.apply(params, x), state
    if module.has_state:
        return module.apply(params, x, state=state, key=key, train=train)
    return module.apply(params, x, key=key, train=train), state


def forward(module, params, x, *, state=(), key=None, train=False):
    """``(y, saved, new_state)`` of any module's ``forward``; as :func:`apply` for the state."""
    if not module.contextual:
        return (*module.forward(params, x), state)
    if module.has_state:
        return module.forward(params, x, state=state, key=key, train=train)
    return (*module.forward(params, x, key=key, train=train), state)


def bind(module, *, state=(), key=None, train=False):
    """``module`` with its context fixed: a plain module whose functions take ``(params, x)``.

    Each contextual leaf becomes a leaf whose ``forward``/``apply`` run in
    its share of the context (its state, its key) and drop the new state, and
    whose ``backward`` is its own; the wiring is rebuilt around them, so the
    custom path still has one custom VJP per leaf. A module that is not
    contextual is returned as it is. What the gradient checks
    (:func:`fnn.testing.check_module`, :func:`fnn.inspect.compare_paths`,
    :func:`fnn.inspect.wrong_rules`) take for a module with state or
    randomness.
    """
    if not isinstance(module, Module):
        raise TypeError(f"bind takes an fnn module, got {type(module).__name__}")
    if not module.contextual:
        return module
    if module.is_leaf:
        return _bound_leaf(module, state, key, train)
    shares = module.split_context(state, key)
    return module.rebuild(*(bind(c, state=s, key=k, train=train) for c, (s, k) in zip(module.children, shares)))


def fix(caller, module, input_shape, *, state=None, key=None, train=True, seed=0):
    """``(bound module, state, key)``: :func:`bind` with defaults, to check ``module`` on inputs ``[N, *input_shape]``.

    The state defaults to ``module.init_state(input_shape)``, the key to
    ``jax.random.key(seed)``. A module without state or randomness is returned
    as it is, and giving it a ``state`` or ``key`` is an error (``caller``
    names the function in the message).
    """
    if not isinstance(train, bool):
        raise TypeError(f"{caller}: train must be True or False, got {train!r}")
    if not module.contextual:
        if state is not None or key is not None:
            raise ValueError(f"{caller}: {module.name} keeps no state and draws no key; pass neither state= nor key=")
        return module, state, key
    state = module.init_state(tuple(input_shape)) if state is None else state
    key = jax.random.key(seed) if key is None else key
    return bind(module, state=state, key=key, train=train), state, key


def _bound_leaf(module, state, key, train):
    def bound_forward(params, x):
        return forward(module, params, x, state=state, key=key, train=train)[:2]

    def bound_apply(params, x):
        return apply(module, params, x, state=state, key=key, train=train)[0]

    mode = "train" if train else "eval"
    return dataclasses.replace(
        module,
        name=f"{module.name}[{mode}]",
        apply=bound_apply,
        forward=bound_forward,
        state_init=None,
        stochastic=False,
    )
