"""Fixing a module's context: its state, its random key, and training or evaluation.

Every module takes ``state=``, ``key=`` and ``train=`` (see :mod:`fnn.module`);
:func:`bind` fixes them once, making a plain module of a contextual one, for
the checks that differentiate plain modules (:func:`fnn.testing.check_module`,
:func:`fnn.inspect.compare_paths`, :func:`fnn.inspect.wrong_rules`).

Keys: a composite module hands child ``i`` the key ``fold_in(key, i)``
(:func:`child_key`), so that two dropout layers draw different masks.
"""

import dataclasses

import jax

from fnn._errors import InputError, UsageError
from fnn.module import Module

__all__ = ["bind", "child_key"]


def child_key(key, i):
    """The key of child ``i``: ``fold_in(key, i)``, or ``None`` when there is no key."""
    return None if key is None else jax.random.fold_in(key, i)


def bind(module, *, state=(), key=None, train=False):
    """``module`` with its context fixed: a plain module whose functions take ``(params, x)``.

    Each contextual leaf becomes a leaf that runs in its share of the context
    (its state, its key) and drops the new state, and whose ``backward`` is
    its own; the wiring is rebuilt around them, so the custom path still has
    one custom rule per leaf. A module that is not contextual is returned as
    it is.
    """
    if not isinstance(module, Module):
        raise UsageError(f"bind takes an fnn module, got {type(module).__name__}")
    if not isinstance(train, bool):
        raise UsageError(f"bind: train must be True or False, got {train!r}")
    if not module._contextual:
        return module
    if module._is_leaf:
        return _bound_leaf(module, state, key, train)
    shares = module._kind.child_contexts(state, key)
    return module._kind.rebuild(*(bind(c, state=s, key=k, train=train) for c, (s, k) in zip(module.children, shares)))


def fix(caller, module, input_shape, *, state=None, key=None, train=True, seed=0):
    """``(bound module, state, key)``: :func:`bind` with defaults, to check ``module`` on inputs ``[N, *input_shape]``.

    The state defaults to ``module.init_state(input_shape)``, the key to
    ``jax.random.key(seed)``. A module without state or randomness is returned
    as it is, and giving it a ``state`` or ``key`` is an error (``caller``
    names the function in the message).
    """
    if not isinstance(train, bool):
        raise UsageError(f"{caller}: train must be True or False, got {train!r}")
    if not module._contextual:
        if state is not None or key is not None:
            raise InputError(f"{caller}: {module.name} keeps no state and draws no key; pass neither state= nor key=")
        return module, state, key
    state = module.init_state(tuple(input_shape)) if state is None else state
    key = jax.random.key(seed) if key is None else key
    return bind(module, state=state, key=key, train=train), state, key


def _bound_leaf(module, state, key, train):
    def run(params, x, _state, _key, _train):
        return module._run(params, x, state, key, train)[0], _state

    def run_forward(params, x, _state, _key, _train):
        y, saved, _ = module._run_forward(params, x, state, key, train)
        return y, saved, _state

    mode = "train" if train else "eval"
    return dataclasses.replace(
        module,
        name=f"{module.name}[{mode}]",
        _run=run,
        _run_forward=run_forward,
        _kind=dataclasses.replace(module._kind, state_init=None, stochastic=False),
    )
