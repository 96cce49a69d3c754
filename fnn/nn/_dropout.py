"""Inverted dropout: a fresh random mask each training step, the identity in evaluation.

Training, keep probability ``1 - rate``: ``m ~ Bernoulli(1 - rate)`` per
entry from the step's key, ``y = x m / (1 - rate)`` (the expected output is
``x``, so evaluation needs no rescaling); backward ``dx = G m / (1 - rate)``
with the saved mask (booleans, a byte an entry). Evaluation: ``y = x``,
``dx = G``, nothing saved.

The mask is drawn as float32 uniforms whatever the input's dtype (and
whether or not float64 is enabled), so a key gives one mask everywhere.
"""

import jax
import jax.numpy as jnp

from fnn._numbers import real
from fnn.module import leaf, with_settings
from fnn.nn import _checks

__all__ = ["dropout"]


@with_settings
def dropout(rate):
    """Inverted dropout of rate ``rate`` in ``[0, 1)``: ``[...] -> [...]``, no params, a key in training.

    In training (``train=True, key=k``) each entry is zeroed with
    probability ``rate`` and the rest scaled by ``1 / (1 - rate)``; in
    evaluation it is the identity. The same key gives the same mask on every
    gradient path.
    """
    rate = real("dropout", "rate", rate, within="in [0, 1)", ok=lambda r: 0 <= r < 1)
    keep = 1.0 - rate

    def init(key, input_shape):
        return _checks.require_shape("dropout", input_shape), ()

    def check(params, x):
        _checks.require_no_params("dropout", params)
        _checks.require_float("dropout", "input", x)

    def forward(params, x, *, state, key, train):
        if not train or rate == 0:
            return x, None, state
        mask = jax.random.uniform(key, x.shape, jnp.float32) < keep  # float32 draws: one mask in every dtype
        return jnp.where(mask, x / keep, jnp.zeros_like(x)), mask, state

    def backward(params, mask, g):
        if mask is None:
            return (), g
        return (), jnp.where(mask, g / keep, jnp.zeros_like(g))

    return leaf("dropout", init=init, forward=forward, backward=backward, check=check, stochastic=True)
