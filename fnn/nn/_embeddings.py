"""Embedding lookup and learned positions, forward and backward side by side.

- ``embedding``: a table ``T[V, D]`` and integer ids ``ids[...]`` give
  ``y[..., D] = T[ids]``. Backward with ``G = dJ/dy``: ``dT`` is ``G``
  summed into the rows ``ids`` (``dT[v] = sum of G[i] over the i with
  ids[i] = v``: repeated ids add up, unused rows get 0), in an order fixed
  by the shapes, so the same bit for bit on every run and backend: for
  ``V <= 64`` as the product ``onehot(ids, V)^T @ G``, else with ``G``'s
  rows sorted by id, each run of equal ids summed by a segmented scan and
  written once (never a scatter-add, whose colliding rows a GPU adds in the
  order its threads arrive). The ``autodiff`` path's gradient is JAX's own
  transpose of the lookup, a scatter-add: deterministic on a GPU only with
  ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``. Ids are integers:
  they get no gradient (the backward's ``dx`` is ``None``, as a custom rule
  returns for an integer input; ``jax.grad`` gives
  ``float0`` there). Saves the ids. An id outside ``[0, V)`` gives a row of
  NaN (never clamped or wrapped around, so never silently another token's
  row) and adds nothing to ``dT``; ``fnn.fit`` refuses such ids on the host
  before training (:func:`fnn.module.leaf`'s ``check_inputs``).
- ``positional_embedding``: ``y = x + P`` with one learned vector per
  position, ``P[T, D]`` for inputs ``x[N, T, D]``; ``dP = sum of G over the
  batch``, ``dx = G``. Attention is blind to order without it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    """``ids`` with each id outside ``[0, vocab)`` set to ``vocab``, which the lookup fills and the backward drops."""
    return jnp.where((ids >= 0) & (ids < vocab), ids, vocab)


def _embedding_forward(params, ids):
    table = params["table"]
    rows = _in_range(ids, table.shape[0])
    return jnp.take(table, rows, axis=0, mode="fill", fill_value=jnp.nan), rows


#: The most rows ``V`` for which the backward sums by a one-hot product (below: sorted runs); see :func:`_row_sums`.
ONE_HOT_ROWS = 64


def _row_sums(rows, g, vocab):
    """``dT[V, D]`` with ``dT[v] = sum of g[i] over the i with rows[i] = v``, in an order fixed by the shapes alone.

    ``rows[M]`` in ``[0, V]`` (``V``: an id out of range, which adds
    nothing), ``g[M, D]``. No two additions race, so the result is the same
    bit for bit on every run and backend (a scatter-add, JAX's transpose of
    the lookup, adds colliding rows in a GPU's order of arrival). The rule:
    ``V <= ONE_HOT_ROWS``: ``onehot(rows, V)^T @ g``, ``2 M V D`` FLOPs;
    else sorted runs, ``O(M D log M)`` (on a CPU, for 3200 ids of ``D = 64``,
    the product takes 0.2x the sorted runs' time at ``V = 10``, 0.8x at 64,
    1.3x at 128).
    """
    if vocab <= ONE_HOT_ROWS:
        return _one_hot_row_sums(rows, g, vocab)
    return _sorted_row_sums(rows, g, vocab)


def _one_hot_row_sums(rows, g, vocab):
    """``dT = onehot(rows, V)^T @ g``: ``[V, M] @ [M, D]`` at full precision (TF32 would round ``g``).

    The rows of out-of-range ids are zeroed first, so that a NaN there adds
    nothing (``0 * NaN`` is NaN); a non-finite ``g`` at an id in range makes
    its column non-finite in every row of ``dT``, not only in that id's.
    """
    g = jnp.where((rows < vocab)[:, None], g, jnp.zeros_like(g))
    onehot = (jnp.arange(vocab, dtype=rows.dtype)[:, None] == rows[None, :]).astype(g.dtype)
    return jnp.matmul(onehot, g, precision=lax.Precision.HIGHEST)


def _sorted_row_sums(rows, g, vocab):
    """``dT``: ``g``'s rows sorted by id (stably), each run of equal ids summed by a segmented scan, written once.

    The sort keys ``rows[i] M + i`` are distinct, so a plain sort is stable
    (and cheaper than a stable argsort, used when the keys overflow int32).
    The segmented :func:`jax.lax.associative_scan` combines ``(value,
    starts_run)`` pairs, ``a`` then ``b``: ``(b if b starts a run else a + b,
    a or b starts one)``, a tree of adds fixed by ``M``. The last row of each
    run writes the run's total with a scatter-*set*; every other row, and
    the run of ``V``, writes to ``V + i``, out of range and dropped, so that
    the indices are all distinct and no two writes meet.
    """
    m, d = g.shape
    if (vocab + 1) * m <= np.iinfo(np.int32).max:
        keys = jnp.sort(rows * m + jnp.arange(m, dtype=rows.dtype))
        rows, order = keys // m, keys % m
    else:
        order = jnp.argsort(rows, stable=True)
        rows = rows[order]
    g = jnp.take(g, order, axis=0, unique_indices=True)
    differs = rows[1:] != rows[:-1]
    starts = jnp.concatenate([jnp.ones((1,), bool), differs])
    last = jnp.concatenate([differs, jnp.ones((1,), bool)])

    def combine(a, b):
        (value_a, start_a), (value_b, start_b) = a, b
        return jnp.where(start_b, value_b, value_a + value_b), start_a | start_b

    sums = lax.associative_scan(combine, (g, starts[:, None]))[0]
    target = jnp.where(last & (rows < vocab), rows, vocab + jnp.arange(m, dtype=rows.dtype))
    return jnp.zeros((vocab, d), g.dtype).at[target].set(sums, mode="drop", unique_indices=True)


def _embedding_backward(params, rows, g):
    """``dT[v] = sum of G[i] over ids[i] = v`` (:func:`_row_sums`): ``T[V, D]``, ``rows[...]`` (ids, out of range
    mapped to ``V``; counted in int32, so ``V + M < 2^31`` for ``M`` ids), ``G[..., D]``."""
    table = params["table"]
    vocab, dim = table.shape
    rows, g = rows.reshape(-1).astype(jnp.int32), g.astype(table.dtype).reshape(-1, dim)
    if rows.size == 0:
        return {"table": jnp.zeros_like(table)}, None
    return {"table": _row_sums(rows, g, vocab)}, None


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

    Params: ``{"table": [V, D]}``. Backward: ``G`` summed into the rows
    used, in a fixed order, so the same bit for bit on every backend (a
    one-hot product for ``V <= 64``, sorted runs above); ids get no
    gradient. ``fnn.fit`` refuses, on the host, inputs that are not integers
    in ``[0, V)``, naming the split, the first bad id and its index. See the
    module doc.
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
        param_axes={"table": ("vocab", "embed")},
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
        param_axes={"table": ("positions", "embed")},
    )
