"""Scaled dot-product attention with a memory-saving backward, and multi-head self-attention.

**The op.** Queries ``q[B, T, H, D]``, keys and values ``k, v[B, S, H, D]``
(the layout of ``jax.nn.dot_product_attention``); per batch entry and head,
with ``q[T, D]``, ``k[S, D]``, ``v[S, D]``:

- logits ``L = q k^T / sqrt(D)`` ``[T, S]``; with ``causal=True``,
  ``L_ts = -inf`` for ``s > t``: query ``t`` sees keys ``0 .. t``, aligned at
  the top left as ``jax.nn.dot_product_attention`` and PyTorch align them, so
  that key 0 is visible to every query and no row is ever fully masked, also
  when ``T != S`` (for ``T > S`` the last ``T - S`` queries see every key);
- one log-sum-exp per row, ``m_t = log sum_s exp(L_ts)``, computed from the
  logits shifted by their row's maximum (logits of 1e4 neither overflow nor NaN);
- ``P = exp(L - m)``: each row a softmax; ``o = P v`` ``[T, D]``.

**The backward**, with ``G = dJ/do``:

- ``dv = P^T G`` and ``dP = G v^T``;
- the softmax Jacobian ``dP_ts/dL_tu = P_ts (1[s = u] - P_tu)`` gives
  ``dL = P * (dP - D)``, ``D_t = sum_s P_ts dP_ts`` (:func:`fnn.nn._softmax.softmax_backward`);
- ``dq = dL k / sqrt(D)``, ``dk = dL^T q / sqrt(D)``.

**Why the log-sum-exp is enough.** ``P`` is needed three times above, and
autodiff keeps it, ``[B, H, T, S]``: at ``T = S = 1024`` and ``D = 64``, 16
times the size of ``q``. But ``P = exp(q k^T / sqrt(D) - m)`` is a function of
``q``, ``k`` and the one number ``m_t`` per row, so the backward can
recompute it; and ``D_t = sum_s P_ts (G v^T)_ts = sum_d G_td (P v)_td =
sum_d G_td o_td`` comes from the output, without ``P``. So the rule keeps
only ``q``, ``k``, ``v``, ``o`` and ``m`` (FlashAttention's backward pass,
Dao et al. 2022, Algorithm 4).

**Working memory.** The hand-written forward and backward run over tiles
of the ``[T, S]`` matrix, ``lax.scan`` loops over query tiles (and, for
tiles narrower than the keys, key tiles within each), so that it never
exists whole: the forward combines a query tile's key tiles with the
running maximum and sum of the online softmax; the backward recomputes each
tile's ``P`` and adds its share to ``dq``, ``dk`` and ``dv`` (Algorithm 4,
tiled as FlashAttention tiles it). Besides its inputs and outputs the rule
then keeps ``o``, ``m`` and a tile. The tiles (:func:`tile_shape`):
:data:`QUERY_TILE` query rows by all keys, a ``T / 128``-th of the matrix:
wide tiles are faster on a CPU (larger matrix products, which its cores
share better). The price is computing ``q k^T`` twice, once in each pass:
five matrix products of ``[T, S]`` size in the backward where autodiff has
four; and the causal mask costs as much as none, every tile being computed.

**When ``P`` is kept.** Recomputing ``P`` pays where a tile is much smaller
than ``P``. The rule keeps ``P`` (as autodiff does, and with about its
memory) when there are at most four query tiles, ``T <= 4 * QUERY_TILE``
(:func:`keeps_probabilities`), where a tile would be a quarter of ``P`` or
more: the forward is the plain one, and the backward uses ``P`` as it is,
four matrix products. Beyond, with tiles smaller than a quarter of ``P``,
the tiled passes above, about as fast as autodiff's on a CPU (measured:
``experiments/attention_cost.py``). The rule depends on ``T`` only: with
many keys ``P`` is large, but autodiff keeps it all the same.

**The plain forward.** The ``autodiff`` path differentiates the leaf's
``apply``, every row at once: the textbook ``softmax(q k^T / sqrt(D)) v``,
which ``jax.grad`` differentiates by keeping ``P``; the rule's forward is the
same code where it keeps ``P``. The values agree with the tiled forward's to
rounding.

**Precision.** Every pass (the plain forward too) computes in the inputs'
dtype or float32, whichever is wider (:func:`_wide`): the logits, the
running maximum and sum, ``m``, the saved ``o`` and the gradients' sums.
Only the output and the gradients are rounded to the inputs' dtype: a
bfloat16 ``m`` near 8 would be off by up to 2^-5 from rounding alone, and
the recomputed ``P`` by 3%. The Pallas kernels keep ``m``, ``o`` and the
sums wide too, but round ``P`` and ``dL`` to the inputs' dtype for their
matrix products, as FlashAttention does (bfloat16 tensor cores).

**The Pallas kernels** (:mod:`fnn.nn._flash`): the same tiled forward and
backward as Pallas kernels, FlashAttention-2 (Dao 2023): one program per
block of 128 query rows in the forward, blocks of 64 rows in the backward,
one kernel for ``dk`` and ``dv`` over key blocks and one for ``dq`` over
query blocks, each tile's ``P`` recomputed from ``m`` in registers, and with
``causal`` only the tiles on or below the diagonal computed. They save what
the tiled rule saves (``q``, ``o`` and ``m``, in the same dtypes), take
their operands in the inputs' dtype and sum in :func:`_wide` of it; see
that module's doc.

**Which rule** (``attention_leaf(kernel=...)``, ``attention(kernel=...)``):
``"scan"``, the default on every backend, is the ``lax.scan`` rule above
(keeping ``P`` where :func:`keeps_probabilities` says so); ``"pallas"`` is
the kernels, compiled by Triton on a GPU for float32, bfloat16 and float16
and run by Pallas's interpreter elsewhere (the tests' way of running them on
a CPU). The kernels are asked for, not chosen for the user: they have been
checked on a CPU only, through the interpreter, and become the GPU's
default when the device check has timed them there against the scan rule,
autodiff and cuDNN. A ``tile`` given with ``kernel="pallas"`` is the
kernels' block, ``(query rows, key rows)`` in both passes, powers of two of
at least 16.

**The kernels' derivatives.** JAX cannot transpose a Pallas call, so the
kernels give values and the scan rule, the same function in
``jax.numpy``, gives their derivatives where something asks for them: the
forward and backward kernels' JVPs are the scan forward's and backward's
(second order), and the backward's transpose in ``G`` (forward mode,
:mod:`fnn._linear_map`) is the JVP of the scan forward. Reverse mode runs
the kernels alone.

**The module** :func:`attention` is multi-head self-attention over
sequences ``[N, T, D_model]``: dense projections ``x W_q``, ``x W_k``,
``x W_v`` to ``heads`` heads of ``head_dim``, the op, and an output
projection back to ``D_model``. Its backward is its leaves': the dense
layers' and the op's. It adds no residual connection and no normalisation:
compose them, e.g. ``nn.residual(nn.serial(nn.layer_norm(), nn.attention(4, 16)))``.
It sees no positions either: add :func:`fnn.nn.positional_embedding` before it.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from fnn._errors import InputError, UsageError
from fnn._linear_map import linear_map
from fnn._numbers import as_int, positive_int
from fnn.module import leaf, structural, with_settings
from fnn.nn import _checks, _flash
from fnn.nn import initializers as _init
from fnn.nn._linear import DENSE
from fnn.nn._softmax import softmax_backward

__all__ = ["KERNELS", "QUERY_TILE", "attention", "attention_leaf", "keeps_probabilities", "tile_shape"]

#: The rules ``attention_leaf(kernel=...)`` names.
KERNELS = ("pallas", "scan")

#: Query rows per tile of the hand-written forward and backward passes (see :func:`tile_shape`).
QUERY_TILE = 128


def tile_shape(t, s):
    """``(query rows, key rows)`` of the hand-written passes' tiles for ``T`` queries and ``S`` keys:
    :data:`QUERY_TILE` query rows (all of them if fewer) by all ``S`` keys."""
    return min(QUERY_TILE, t), s


def keeps_probabilities(t):
    """Whether the rule keeps ``P`` for ``T`` queries, rather than recomputing it in tiles: ``T <= 4 *
    QUERY_TILE``, where a tile would be at least a quarter of ``P`` (see the module doc)."""
    return t <= 4 * QUERY_TILE


# ---------------------------------------------------------------- tiles
def _heads(a):
    """``[B, n, H, D] -> [B, H, n, D]`` (and back): the layout of the tiles' matrix products."""
    return jnp.swapaxes(a, 1, 2)


def _plan(n, tile):
    """``(rows per tile, tiles)`` for ``n`` rows: one tile of all rows when they fit in one."""
    size = min(tile, n)
    return size, -(-n // size)


def _pad(a, rows, axis=1):
    """``a`` with zero rows appended along ``axis`` up to ``rows`` (itself when it has them)."""
    extra = rows - a.shape[axis]
    return a if not extra else jnp.pad(a, [(0, extra if i == axis else 0) for i in range(a.ndim)])


def _rows(a, start, size, axis=1):
    return lax.dynamic_slice_in_dim(a, start, size, axis)


def _wide(dtype):
    """The dtype the tiles are computed in: ``dtype`` or float32, whichever is wider (see the module doc)."""
    return jnp.promote_types(dtype, jnp.float32)


def _tile(a, start, size, dtype):
    """Rows ``start .. start + size - 1`` of ``a[B, n, H, D]`` as ``[B, H, size, D]`` in ``dtype``."""
    return _heads(_rows(a, start, size)).astype(dtype)


def _add_rows(a, update, start, axis=1):
    return lax.dynamic_update_slice_in_dim(a, _rows(a, start, update.shape[axis], axis) + update, start, axis)


def _loop(body, carry, first, last):
    """``carry`` through ``body(carry, i)`` for ``i = first .. last - 1``: a ``lax.scan``, or a plain call for one."""
    if last - first <= 1:
        return body(carry, first) if last > first else carry
    return lax.scan(lambda c, i: (body(c, i), None), carry, jnp.arange(first, last))[0]


def _tile_logits(q, k, q_start, k_start, keys, causal):
    """A tile's logits ``q k^T`` ``[B, H, tq, tk]`` (``q`` scaled).

    ``-inf`` at the padded keys (``cols >= keys``) and, if causal, above the diagonal.
    """
    logits = jnp.einsum("bhtd,bhsd->bhts", q, k)
    cols = k_start + jnp.arange(k.shape[2])
    visible = cols < keys
    if causal:
        visible = visible & (cols <= (q_start + jnp.arange(q.shape[2]))[:, None])
    return jnp.where(visible, logits, -jnp.inf)


# ---------------------------------------------------------------- forward and backward
#: The forward and backward sweeps are compiled functions (inlined where they are traced inside another): called op by
#: op (a rule run eagerly), each compiles once per shapes, not its tile loops' fresh closures on every call.
_kernel = functools.partial(jax.jit, static_argnames=("causal", "tile"))


@_kernel
def _attend(q, k, v, causal, tile):
    """``(o [B, T, H, D], m [B, H, T])``: the output and each row's log-sum-exp, over tiles of ``tile`` rows.

    Both in :func:`_wide` of the inputs' dtype.
    """
    (b, t, h, d), s, scale = q.shape, k.shape[1], 1 / math.sqrt(q.shape[-1])
    (tq, nq), (tk, nk) = _plan(t, tile[0]), _plan(s, tile[1])
    q, k, v = _pad(q, nq * tq), _pad(k, nk * tk), _pad(v, nk * tk)
    wide = _wide(q.dtype)

    def query_tile(out, i):
        o, m = out
        q_i = _tile(q, i * tq, tq, wide) * scale

        def key_tile(j):  # the tile's logits and values, in the wide dtype
            k_j, v_j = _tile(k, j * tk, tk, wide), _tile(v, j * tk, tk, wide)
            return _tile_logits(q_i, k_j, i * tq, j * tk, s, causal), v_j

        def combine(run, j):  # the online softmax: rescale what came before to the new running maximum
            peak, total, acc = run
            logits, v_j = key_tile(j)
            new_peak = jnp.maximum(peak, lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
            decay, exps = jnp.exp(peak - new_peak), jnp.exp(logits - new_peak)
            return new_peak, decay * total + jnp.sum(exps, -1, keepdims=True), decay * acc + exps @ v_j

        logits, v_0 = key_tile(0)  # key 0 is visible to every row, so every row's maximum is finite
        peak = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        exps = jnp.exp(logits - peak)
        peak, total, acc = _loop(combine, (peak, jnp.sum(exps, -1, keepdims=True), exps @ v_0), 1, nk)
        o = lax.dynamic_update_slice_in_dim(o, _heads(acc / total), i * tq, 1)
        return o, lax.dynamic_update_slice_in_dim(m, (peak + jnp.log(total))[..., 0], i * tq, 2)

    o, m = _loop(query_tile, (jnp.zeros((b, nq * tq, h, d), wide), jnp.zeros((b, h, nq * tq), wide)), 0, nq)
    return o[:, :t], m[:, :, :t]


def _attend_whole(q, k, v, causal):
    """``(o [B, T, H, D], P [B, H, T, S])``: the plain forward, every row at once, ``P`` in :func:`_wide` of the
    inputs' dtype and ``o`` in the inputs' dtype."""
    wide, t, s = _wide(q.dtype), q.shape[1], k.shape[1]
    logits = _tile_logits(_tile(q, 0, t, wide) / math.sqrt(q.shape[-1]), _tile(k, 0, s, wide), 0, 0, s, causal)
    peak = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))  # key 0 is visible: finite
    exps = jnp.exp(logits - peak)
    total = jnp.sum(exps, -1, keepdims=True)
    return _heads((exps @ _tile(v, 0, s, wide)) / total).astype(q.dtype), exps / total


def _attend_kept_backward(q, k, v, p, g):
    """``(dq, dk, dv)`` from the kept ``P``: ``dv = P^T G``, ``dL = P * (G v^T - D)``, ``dq = dL k``, ``dk = dL^T q``
    (both over ``sqrt(D)``); each product written in the ``[B, n, H, D]`` layout it returns."""
    wide, scale = _wide(q.dtype), 1 / math.sqrt(q.shape[-1])
    q_h, k_h, v_h, g_h = (_heads(a).astype(wide) for a in (q, k, v, g))
    dv = jnp.einsum("bhts,bhtd->bshd", p, g_h)
    dlogits = softmax_backward(p, jnp.einsum("bhtd,bhsd->bhts", g_h, v_h)) * scale
    dq, dk = jnp.einsum("bhts,bhsd->bthd", dlogits, k_h), jnp.einsum("bhts,bhtd->bshd", dlogits, q_h)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@_kernel
def _attend_backward(q, k, v, o, m, g, causal, tile):
    """``(dq, dk, dv)`` of :func:`_attend`, each tile's ``P`` recomputed from ``q``, ``k`` and ``m``."""
    t, s, scale, wide = q.shape[1], k.shape[1], 1 / math.sqrt(q.shape[-1]), _wide(q.dtype)
    (tq, nq), (tk, nk) = _plan(t, tile[0]), _plan(s, tile[1])
    row_dot = _heads(jnp.sum(g * o, axis=-1)[..., None])[..., 0]  # D_t = sum_d G_td o_td = sum_s P_ts dP_ts
    q, g, k, v = _pad(q, nq * tq), _pad(g, nq * tq), _pad(k, nk * tk), _pad(v, nk * tk)
    m, row_dot = _pad(m, nq * tq, 2), _pad(row_dot, nq * tq, 2)

    def query_tile(grads, i):
        dq, dk, dv = grads
        q_i, g_i = _tile(q, i * tq, tq, wide) * scale, _tile(g, i * tq, tq, wide)
        m_i, d_i = _rows(m, i * tq, tq, 2)[..., None], _rows(row_dot, i * tq, tq, 2)[..., None]

        def key_tile(acc, j):
            dq_i, dk, dv = acc
            k_j, v_j = _tile(k, j * tk, tk, wide), _tile(v, j * tk, tk, wide)
            p = jnp.exp(_tile_logits(q_i, k_j, i * tq, j * tk, s, causal) - m_i)
            dv = _add_rows(dv, _heads(jnp.einsum("bhts,bhtd->bhsd", p, g_i)), j * tk)
            dlogits = softmax_backward(p, jnp.einsum("bhtd,bhsd->bhts", g_i, v_j), row_dot=d_i)
            dk = _add_rows(dk, _heads(jnp.einsum("bhts,bhtd->bhsd", dlogits, q_i)), j * tk)  # q_i carries 1/sqrt(D)
            return dq_i + dlogits @ k_j, dk, dv

        dq_i, dk, dv = _loop(key_tile, (jnp.zeros_like(q_i), dk, dv), 0, nk)
        return lax.dynamic_update_slice_in_dim(dq, _heads(dq_i * scale), i * tq, 1), dk, dv

    zeros = tuple(jnp.zeros(a.shape, wide) for a in (q, k, v))
    dq, dk, dv = _loop(query_tile, zeros, 0, nq)
    return dq[:, :t].astype(q.dtype), dk[:, :s].astype(k.dtype), dv[:, :s].astype(v.dtype)


# ---------------------------------------------------------------- the Pallas kernels, differentiable
def _valued_by(kernel, reference):
    """``kernel``'s values with ``reference``'s derivatives: ``reference`` is the same function in ``jax.numpy``,
    which JAX can differentiate and transpose where it cannot a Pallas call."""
    fn = jax.custom_jvp(kernel)
    fn.defjvp(lambda primals, tangents: (kernel(*primals), jax.jvp(reference, primals, tangents)[1]))
    return fn


def _pallas_forward(q, k, v, causal, blocks):
    """``(o, m)`` as :func:`_attend` returns them, by the forward kernel (derivatives: :func:`_attend`'s)."""
    tile = tile_shape(q.shape[1], k.shape[1])
    return _valued_by(
        functools.partial(_flash.forward, causal=causal, blocks=blocks[0]),
        functools.partial(_attend, causal=causal, tile=tile),
    )(q, k, v)


def _pallas_backward(q, k, v, o, m, g, causal, blocks):
    """``(dq, dk, dv)`` as :func:`_attend_backward` returns them, by the backward kernels.

    Linear in ``g``, with the JVP of the scan forward as its transpose (``u -> J u``, what forward mode runs), and
    :func:`_attend_backward`'s derivatives with respect to the rest.
    """
    tile = tile_shape(q.shape[1], k.shape[1])
    backward = _valued_by(
        functools.partial(_flash.backward, causal=causal, blocks=blocks[1]),
        functools.partial(_attend_backward, causal=causal, tile=tile),
    )

    def pullback(residuals, g):
        return backward(*residuals, g)

    def push(residuals, tangents):  # J u: the output's tangent for tangents u = (dq, dk, dv)
        def output(q, k, v):
            return _attend(q, k, v, causal, tile)[0].astype(q.dtype)

        return jax.jvp(output, residuals[:3], tuple(tangents))[1]

    return tuple(linear_map(pullback, push, (q, k, v, o, m), g))


def _check(params, q):
    _checks.require_float("attention", "q", q)
    if q.ndim != 4:
        raise InputError(f"attention: q must be [B, T, H, D] (batch, queries, heads, head size), got shape {q.shape}")
    k, v = (_checks.require_param("attention", params, key, q, ndim=4) for key in ("k", "v"))
    if k.shape != v.shape:
        raise InputError(f"attention: k and v must have the same shape [B, S, H, D], got k {k.shape} and v {v.shape}")
    if (k.shape[0], *k.shape[2:]) != (q.shape[0], *q.shape[2:]):
        raise InputError(
            f"attention: k and v [B, S, H, D] must match q [B, T, H, D] in batch, heads and head size, "
            f"got q {q.shape} and k {k.shape}"
        )
    if 0 in (q.shape[1], k.shape[1], q.shape[3]):
        raise InputError(
            f"attention: needs at least one query, one key and one feature per head (T, S, D >= 1), "
            f"got q {q.shape} [B, T, H, D] and k, v {k.shape} [B, S, H, D]"
        )


def attention_leaf(causal=False, tile=None, kernel="scan"):
    """The attention op as a leaf: input ``q``, params ``{"k": k, "v": v}`` (so that all three get gradients).

    ``kernel`` picks the rule: ``"scan"`` or ``"pallas"`` (see the module
    doc). The scan rule's ``forward`` keeps ``P`` where
    :func:`keeps_probabilities` says so; otherwise ``forward`` and
    ``backward`` run over tiles of ``tile = (query rows, key rows)``, by
    default :func:`tile_shape`'s. A ``tile`` given here always tiles; with
    ``kernel="pallas"`` it is the kernels' block in both passes (powers of
    two, at least 16), by default :data:`fnn.nn._flash.FORWARD_BLOCKS` and
    :data:`~fnn.nn._flash.BACKWARD_BLOCKS`. ``apply`` (the ``autodiff`` path)
    computes every row at once.
    """
    if not isinstance(causal, bool):
        raise UsageError(f"attention: causal must be True or False, got {causal!r}")
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise UsageError(f"attention: kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
    if tile is not None:
        rows = tuple(map(as_int, tile))
        if len(rows) != 2 or not all(n is not None and n > 0 for n in rows):
            raise InputError(f"attention: tile must be two positive ints (query rows, key rows), got {tile!r}")
        if kernel == "pallas" and not all(n >= _flash.MIN_BLOCK and n & (n - 1) == 0 for n in rows):
            raise InputError(
                f"attention: with kernel='pallas', tile must be two powers of two of at least {_flash.MIN_BLOCK} "
                f"(the kernels' blocks), got {tile!r}"
            )
        tile = rows
    blocks = (_flash.FORWARD_BLOCKS, _flash.BACKWARD_BLOCKS) if tile is None else (tile, tile)

    def tiles(q, k):
        return tile_shape(q.shape[1], k.shape[1]) if tile is None else tile

    def apply(params, q):
        return _attend_whole(q, params["k"], params["v"], causal)[0]

    def forward(params, q):
        k, v = params["k"], params["v"]
        if kernel == "pallas":
            o, m = _pallas_forward(q, k, v, causal, blocks)
        elif tile is None and keeps_probabilities(q.shape[1]):
            o, p = _attend_whole(q, k, v, causal)
            return o, (q, p)
        else:
            o, m = _attend(q, k, v, causal, tiles(q, k))
        return o.astype(q.dtype), (q, o, m)

    def backward(params, saved, g):
        k, v = params["k"], params["v"]
        if len(saved) == 2:  # P kept: (q, P)
            dq, dk, dv = _attend_kept_backward(saved[0], k, v, saved[1], g)
            return {"k": dk, "v": dv}, dq
        q, o, m = saved
        if kernel == "pallas":
            dq, dk, dv = _pallas_backward(q, k, v, o, m, g, causal, blocks)
        else:
            dq, dk, dv = _attend_backward(q, k, v, o, m, g, causal, tiles(q, k))
        return {"k": dk, "v": dv}, dq

    return leaf("attention", forward=forward, backward=backward, check=_check, apply=apply)


# ---------------------------------------------------------------- multi-head self-attention
_PROJECTIONS = ("q", "k", "v", "o")


def _self_attention(project, attend, heads, head_dim, init):
    """Self-attention wired from a projection leaf (dense) and the attention leaf; see :func:`attention`."""

    def split(a):
        return a.reshape(*a.shape[:-1], heads, head_dim)

    def check(params, x):
        if not isinstance(params, dict) or set(params) != set(_PROJECTIONS):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise UsageError(f"attention: params must be a dict with keys {list(_PROJECTIONS)}, got {got}")
        if jnp.ndim(x) < 2:
            raise InputError(f"attention: input must be [..., T, D_model], got shape {jnp.shape(x)}")
        if 0 in jnp.shape(x)[-2:]:
            raise InputError(
                f"attention: needs at least one position T and one feature D_model, got input shape {jnp.shape(x)} "
                "[..., T, D_model]"
            )
        return jnp.asarray(x).reshape(-1, *jnp.shape(x)[-2:])  # one batch axis

    def apply(params, x):
        xb = check(params, x)
        q, k, v = (split(project.apply(params[p], xb)) for p in "qkv")
        a = attend.apply({"k": k, "v": v}, q)
        return project.apply(params["o"], a.reshape(*a.shape[:2], -1)).reshape(jnp.shape(x))

    def forward(params, x):
        xb = check(params, x)
        (q, sq), (k, sk), (v, sv) = (project.forward(params[p], xb) for p in "qkv")
        kv = {"k": split(k), "v": split(v)}
        a, sa = attend.forward(kv, split(q))
        y, so = project.forward(params["o"], a.reshape(*a.shape[:2], -1))
        return y.reshape(jnp.shape(x)), (sq, sk, sv, kv, sa, so)

    def backward(params, saved, g):
        sq, sk, sv, kv, sa, so = saved
        grads = {}
        grads["o"], da = project.backward(params["o"], so, g.reshape(-1, *g.shape[-2:]))
        dkv, dq = attend.backward(kv, sa, split(da))
        dx = 0
        for p, s, d in (("q", sq, dq), ("k", sk, dkv["k"]), ("v", sv, dkv["v"])):
            grads[p], dxp = project.backward(params[p], s, d.reshape(*d.shape[:2], -1))
            dx = dx + dxp
        return {p: grads[p] for p in _PROJECTIONS}, dx.reshape(g.shape)

    def rebuild(project, attend):
        return _self_attention(project, attend, heads, head_dim, init)

    def param_axes(params, axes_of):  # the projections' ("in", "out") named as what they map between
        names = {p: {"in": "embed", "out": "heads"} for p in "qkv"} | {"o": {"in": "heads", "out": "embed"}}
        return {
            p: jax.tree.map(lambda spec, p=p: P(*(names[p].get(n, n) for n in spec)), axes_of(project, params[p]))
            for p in _PROJECTIONS
        }

    return structural(
        "attention",
        init=init,
        apply=apply,
        forward=forward,
        backward=backward,
        children=(project, attend),
        rebuild=rebuild,
        param_axes=param_axes,
    )


@with_settings
def attention(heads, head_dim, *, causal=False, bias=False, w_init=None, dtype=jnp.float32, kernel="scan"):
    """Multi-head self-attention: ``[N, T, D_model] -> [N, T, D_model]``.

    ``y = concat_h(attention(x W_q^h, x W_k^h, x W_v^h)) W_o``: queries, keys
    and values projected to ``heads`` heads of ``head_dim`` features, the
    attention op (see the module doc, with its memory-saving backward), the
    heads concatenated and projected back to ``D_model``.

    Args:
      heads, head_dim: the number of heads ``H`` and the size ``D`` of each.
      causal: each position attends only to itself and earlier ones.
      bias: whether the projections have biases: the queries', values' and
        output's. The keys' would add ``q b`` to every logit of a row, which
        the softmax ignores, so it would never learn (its gradient is zero):
        it has none.
      w_init: the projections' initialiser, by default
        ``jax.nn.initializers.lecun_normal()`` (variance ``1 / fan_in``, as
        Flax's attention); or ``"he"``, ``"zeros"``, any ``(key, shape, dtype) -> array``.
      dtype: the parameters' floating dtype.
      kernel: the attention op's rule: ``"scan"``, the ``lax.scan`` rule, or
        ``"pallas"``, the Pallas kernels (compiled by Triton on a GPU).

    Params: ``{"q": {"w": [D_model, H D]}, "k": ..., "v": ..., "o": {"w": [H D, D_model]}}``,
    ``q``, ``v`` and ``o`` with ``"b"`` with ``bias=True``. No residual connection, no
    normalisation and no positions: compose them (see the module doc).
    """
    heads, head_dim = positive_int("attention", "heads", heads), positive_int("attention", "head_dim", head_dim)
    _checks.require_float_dtype("attention", dtype)
    make_w = _init.resolve(jax.nn.initializers.lecun_normal() if w_init is None else w_init)

    def init(key, input_shape):
        shape = _checks.require_shape("attention", input_shape, ndim=2)
        width = heads * head_dim
        params = {}
        for p, k in zip(_PROJECTIONS, jax.random.split(key, 4)):
            fan_in, fan_out = (shape[1], width) if p != "o" else (width, shape[1])
            params[p] = {"w": jnp.asarray(make_w(k, (fan_in, fan_out), dtype), dtype)}
            if bias and p != "k":
                params[p]["b"] = jnp.zeros((fan_out,), dtype)
        return shape, params

    return _self_attention(DENSE, attention_leaf(causal, kernel=kernel), heads, head_dim, init)
