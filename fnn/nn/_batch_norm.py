"""Batch normalisation: LayerNorm's rule over the batch axes, with running statistics as state.

Channels last: for ``x[N, ..., C]`` the statistics are taken over every axis
but the channels, ``M`` values per channel (``N`` for ``[N, C]``,
``N H W`` for ``[N, H, W, C]``).

Training (the batch's own statistics, :mod:`fnn.nn._norm`'s rule):
``mu = mean z``, ``var = mean (z - mu)^2``, ``zhat = (z - mu) / sqrt(var + eps)``,
``y = gamma zhat + beta``. Backward with ``G = dJ/dy``: ``dbeta = sum G``,
``dgamma = sum G zhat``, ``d = G gamma``,
``dz = (d - mean(d) - zhat mean(d zhat)) / sqrt(var + eps)``, sums and means
over the ``M`` values of each channel: the gradient flows through the batch's
mean and variance, not only through the affine map. Saves ``zhat`` and
``sigma``. The state is updated as
``mean <- momentum mean + (1 - momentum) mu`` and
``var <- momentum var + (1 - momentum) var M / (M - 1)``.

The running variance is the *unbiased* one (``M / (M - 1)``, as PyTorch keeps
it; Flax keeps the biased one): it estimates the variance of the population
that evaluation divides by, which the batch's biased variance underestimates
by ``(M - 1) / M``. Training needs ``M >= 2`` (one value per channel has no
variance) and refuses less. The state is kept in float32 or wider (bfloat16
running statistics would round most updates away), the update computed in
its dtype.

Evaluation (the running statistics, a fixed affine map per channel):
``zhat = (z - mean) / sqrt(var + eps)``, ``y = gamma zhat + beta``;
``dz = G gamma / sqrt(var + eps)``, ``dgamma = sum G zhat``,
``dbeta = sum G``. Saves ``zhat`` and ``scale = 1 / sqrt(var + eps)``.
"""

import math

import jax.numpy as jnp

from fnn._errors import InputError, UsageError
from fnn._numbers import real
from fnn.module import leaf, with_settings
from fnn.nn import _checks
from fnn.nn._norm import (
    SCALE_AXES,
    affine_backward,
    check_eps,
    check_scale,
    moments,
    normalize,
    scale_params,
    standardize_backward,
)

__all__ = ["batch_norm", "batch_norm_leaf"]


def _batch_axes(x):
    """Every axis but the channels (the last)."""
    return tuple(range(x.ndim - 1))


def _train_forward(params, x, eps):
    """``(y, saved, (mu, var))`` with the batch's own statistics over every axis but the channels."""
    if math.prod(x.shape[:-1]) < 2:
        raise InputError(
            f"batch_norm: training normalises each channel by the statistics of at least 2 values, got input shape "
            f"{x.shape} (one value per channel has no variance; a last batch of one example? choose a batch_size "
            "that leaves another remainder, or evaluate with train=False)"
        )
    mu, var = moments(x, _batch_axes(x))
    zhat, sigma = normalize(x, mu, var, eps)
    return params["beta"] + params["gamma"] * zhat, {"zhat": zhat, "sigma": sigma}, (mu, var)


def _backward(params, saved, g):
    """Training's rule (through the batch statistics) or evaluation's (a fixed affine map), by what was saved."""
    grads, d = affine_backward(params, saved["zhat"], g)
    if "scale" in saved:  # evaluation: the statistics were constants
        return grads, d * saved["scale"]
    return grads, standardize_backward(d, saved["zhat"], saved["sigma"], _batch_axes(g))


def _check(eps):
    scale = check_scale("batch_norm", eps)

    def check(params, x):
        scale(params, x)
        if x.ndim < 2:
            raise InputError(f"batch_norm: input must be [N, ..., C] (a batch axis first), got shape {x.shape}")

    return check


def batch_norm_leaf(eps=1e-5):
    """Training-mode batch normalisation without state: the op behind ``fnn.ops.*.batch_norm``."""
    eps = check_eps("batch_norm", eps)

    def forward(params, x):
        y, saved, _ = _train_forward(params, x, eps)
        return y, saved

    return _leaf(forward, eps)


#: The names of the axes of the running statistics, those of ``gamma`` and ``beta`` (see :func:`fnn.module.leaf`).
STATE_AXES = {"mean": ("features",), "var": ("features",)}


def _leaf(forward, eps, **contextual):
    """The batch norm leaf over ``forward``: the op's (no state) or the module's (``state_init``)."""
    return leaf(
        "batch_norm",
        forward=forward,
        backward=_backward,
        check=_check(eps),
        edge_values=(4.0,),
        param_axes=SCALE_AXES,
        **contextual,
    )


def _check_state(state, x):
    if not isinstance(state, dict) or set(state) != {"mean", "var"}:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"batch_norm: state must be a dict with keys 'mean' and 'var', got {got}")
    for name, value in state.items():
        if jnp.shape(value) != x.shape[-1:]:
            raise InputError(f"batch_norm: state[{name!r}] must have shape {x.shape[-1:]}, got {jnp.shape(value)}")


@with_settings
def batch_norm(momentum=0.9, eps=1e-5, *, dtype=jnp.float32):
    """Batch normalisation, channels last: ``[N, ..., C] -> [N, ..., C]``, with running statistics.

    Args:
      momentum: how much of the running statistics each training step keeps,
        ``r <- momentum r + (1 - momentum) batch statistic`` (PyTorch's
        ``momentum=0.1`` is this ``0.9``).
      eps: added to the variance before the square root.
      dtype: the parameters' floating dtype; the state's is it or float32,
        whichever is wider.

    Params: ``{"gamma": [C], "beta": [C]}``, ones and zeros at init. State:
    ``{"mean": [C], "var": [C]}``, zeros and ones at init
    (``model.init_state(input_shape)``). In training (``train=True``) the
    batch's statistics normalise and update the state; in evaluation the
    state normalises. See the module doc for the formulas. A bias just
    before batch norm is subtracted again with the batch mean (its gradient is
    exactly zero in training): build that layer without one
    (``nn.dense(n)``, ``nn.conv2d(n, k)``); ``beta`` is the bias.
    """
    momentum = real("batch_norm", "momentum", momentum, within="in [0, 1)", ok=lambda m: 0 <= m < 1)
    eps = check_eps("batch_norm", eps)
    init = scale_params("batch_norm", dtype)

    state_dtype = jnp.promote_types(dtype, jnp.float32)

    def state_init(input_shape):
        channels = _checks.require_shape("batch_norm", input_shape)[-1:]
        return {"mean": jnp.zeros(channels, state_dtype), "var": jnp.ones(channels, state_dtype)}

    def forward(params, x, *, state, key, train):
        _check_state(state, x)
        if not train:
            zhat, sigma = normalize(x, jnp.asarray(state["mean"], x.dtype), jnp.asarray(state["var"], x.dtype), eps)
            return params["beta"] + params["gamma"] * zhat, {"zhat": zhat, "scale": 1 / sigma}, state
        y, saved, (mu, var) = _train_forward(params, x, eps)
        count = math.prod(x.shape[:-1])
        batch = {"mean": mu.reshape(-1), "var": var.reshape(-1) * (count / (count - 1))}
        update = {k: momentum * state[k] + (1 - momentum) * batch[k].astype(jnp.result_type(state[k])) for k in state}
        return y, saved, update

    return _leaf(forward, eps, init=init, state_init=state_init, state_axes=STATE_AXES)
