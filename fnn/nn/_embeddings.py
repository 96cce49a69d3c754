"""Embedding lookup and learned positions, forward and backward side by side.

- ``embedding``: a table ``T[V, D]`` and integer ids ``ids[...]`` give
  ``y[..., D] = T[ids]``. Backward with ``G = dJ/dy``: ``dT`` is ``G``
  scatter-added into the rows ``ids`` (``dT[v] = sum of G[i] over the i with
  ids[i] = v``: repeated ids add up, unused rows get 0). Ids are integers:
  they get no gradient (the backward's ``dx`` is ``None``, as a custom rule
  returns for an integer input; ``jax.grad`` gives
  ``float0`` there). Saves the ids. An id outside ``[0, V)`` gives a row of
  NaN (never clamped or wrapped around, so never silently another token's
  row) and adds nothing to ``dT``; ``fnn.fit`` refuses such ids on the host
  before training (:meth:`fnn.module.Module.check_inputs`).
- ``positional_embedding``: ``y = x + P`` with one learned vector per
  position, ``P[T, D]`` for inputs ``x[N, T, D]``; ``dP = sum of G over the
  batch``, ``dx = G``. Attention is blind to order without it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn import validate
from fnn._errors import InputError, UsageError
from fnn._numbers import positive_int
from fnn.module import leaf, with_settings
from fnn.nn import _checks
from fnn.nn import initializers as _init

__all__ = ["EMBEDDING", "embed_normal", "embedding", "positional_embedding"]


def embed_normal(key, shape, dtype=jnp.float32):
    """``randn(*shape) / sqrt(D)`` for a table ``[..., D]``: unit-variance dot products of rows (Flax's default)."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(shape[-1])


def _table(name, params):
    """``params["table"]``, checked to be a floating 2-D array."""
    if not isinstance(params, dict) or set(params) != {"table"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise UsageError(f"{name}: params must be a dict with the key 'table', got {got}")
    table = jnp.asarray(params["table"])
    _checks.require_float(name, "table", table)
    if table.ndim != 2:
        raise InputError(f"{name}: table must have 2 axes [V, D], got shape {table.shape}")
    return table


# ---------------------------------------------------------------- embedding
def _check_embedding(params, ids):
    _table("embedding", params)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise UsageError(f"embedding: ids must be integer token ids, got dtype {ids.dtype}")


def _in_range(ids, vocab):
    """``ids`` with each id outside ``[0, vocab)`` set to ``vocab``, which the lookup fills and the scatter drops."""
    return jnp.where((ids >= 0) & (ids < vocab), ids, vocab)


def _embedding_forward(params, ids):
    table = params["table"]
    rows = _in_range(ids, table.shape[0])
    return jnp.take(table, rows, axis=0, mode="fill", fill_value=jnp.nan), rows


def _embedding_backward(params, rows, g):
    table = params["table"]
    return {"table": jnp.zeros_like(table).at[rows].add(g.astype(table.dtype), mode="drop")}, None


#: ``y = table[ids]`` over given params ``{"table": [V, D]}`` (the op behind ``fnn.ops.*.embedding``).
EMBEDDING = leaf("embedding", forward=_embedding_forward, backward=_embedding_backward, check=_check_embedding)


def _check_ids(vocab):
    """The host-side check of a split's inputs: integer ids in ``[0, vocab)``."""

    def check(x, split):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise validate.DataError(
                f"{split} inputs must be integer token ids in [0, {vocab}) for the embedding, got dtype {x.dtype}"
            )
        bad = (x < 0) | (x >= vocab)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise validate.DataError(
                f"{split} inputs must be token ids in [0, {vocab}) for an embedding of {vocab} rows; id {int(x[at])} "
                f"at index {at[0] if len(at) == 1 else at} ({int(bad.sum())} of {bad.size} ids out of range; "
                f"min {int(x.min())}, max {int(x.max())})"
            )

    return check


@with_settings
def embedding(vocab, dim, *, w_init=embed_normal, dtype=jnp.float32):
    """An embedding lookup: integer ids ``[N, ...]`` in ``[0, vocab)`` -> ``[N, ..., dim]``.

    Args:
      vocab: the number of rows ``V`` (ids ``0 .. V - 1``).
      dim: the size ``D`` of each row.
      w_init: ``(key, shape, dtype) -> array`` for the table, by default
        normal (standard deviation ``1 / sqrt(D)``); or ``"he"``,
        ``"zeros"``.
      dtype: the table's floating dtype.

    Params: ``{"table": [V, D]}``. Backward: a scatter-add of ``G`` into the
    rows used; ids get no gradient. ``fnn.fit`` refuses, on the host, inputs
    that are not integers in ``[0, V)``, naming the split, the first bad id
    and its index. See the module doc.
    """
    vocab, dim = positive_int("embedding", "vocab", vocab), positive_int("embedding", "dim", dim)
    _checks.require_float_dtype("embedding", dtype)
    make_table = _init.resolve(w_init)

    def init(key, input_shape):
        shape = _checks.require_shape("embedding", input_shape)
        return (*shape, dim), {"table": jnp.asarray(make_table(key, (vocab, dim), dtype), dtype)}

    return leaf(
        "embedding",
        init=init,
        forward=_embedding_forward,
        backward=_embedding_backward,
        check=_check_embedding,
        check_inputs=_check_ids(vocab),
    )


# ---------------------------------------------------------------- positions
def _check_positions(params, x):
    table = _table("positional_embedding", params)
    _checks.require_float("positional_embedding", "input", x)
    if table.dtype != x.dtype:
        raise UsageError(
            f"positional_embedding: input and table must share a dtype, got input {x.dtype} and table {table.dtype}"
        )
    if x.ndim < 2 or x.shape[-2:] != table.shape:
        raise InputError(
            f"positional_embedding: input must be [..., T, D] with [T, D] the table's shape {table.shape}, "
            f"got shape {x.shape}"
        )


def _positions_backward(params, saved, g):
    return {"table": jnp.sum(g, axis=tuple(range(g.ndim - 2)))}, g


@with_settings
def positional_embedding(*, w_init=embed_normal, dtype=jnp.float32):
    """A learned vector per position added to a sequence: ``[N, T, D] -> [N, T, D]``, ``y = x + P``.

    ``P[T, D]`` is sized by ``init`` from the input shape ``(T, D)``;
    ``w_init`` as in :func:`embedding`. Backward: ``dP = sum of G over the
    batch``, ``dx = G``. Attention treats its inputs as a set: this is how a
    sequence model learns where each element sits.
    """
    _checks.require_float_dtype("positional_embedding", dtype)
    make_table = _init.resolve(w_init)

    def init(key, input_shape):
        shape = _checks.require_shape("positional_embedding", input_shape, ndim=2)
        return shape, {"table": jnp.asarray(make_table(key, shape, dtype), dtype)}

    return leaf(
        "positional_embedding",
        init=init,
        forward=lambda params, x: (x + params["table"], None),
        backward=_positions_backward,
        check=_check_positions,
    )
