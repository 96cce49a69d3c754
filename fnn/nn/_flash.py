"""The attention op's forward and backward as Pallas kernels (FlashAttention-2), compiled by Triton on a GPU.

The op of :mod:`fnn.nn._attention`, in its layout: ``q[B, T, H, D]``,
``k, v[B, S, H, D]``; per batch entry and head, ``L = q k^T / sqrt(D)``
``[T, S]`` (with ``causal``, ``-inf`` for key ``s > t``, aligned top left),
``m_t = log sum_s exp(L_ts)``, ``P = exp(L - m)`` and ``o = P v``.

**Forward** (:func:`forward`): one program per query block of ``bq`` rows,
batch entry and head (grid ``(T / bq, B, H)``). It loops over the key
blocks of ``bk`` rows that the block's rows see (with ``causal``, those up
to the diagonal), keeping per row the running maximum ``M``, sum ``l`` and
unnormalised output ``A`` of the online softmax; for key block ``j``:

- ``L_j = q k_j^T / sqrt(D)`` ``[bq, bk]``, ``M' = max(M, max_s L_j)``;
- ``l = exp(M - M') l + sum_s exp(L_j - M')``,
  ``A = exp(M - M') A + exp(L_j - M') v_j`` (the rescale by ``exp(M - M')``
  puts what came before on the new maximum);

then ``o = A / l`` ``[bq, D]`` and ``m = M + log l`` ``[bq]``. Key 0 is in
the first block and visible to every row, so ``M`` is finite from the first
block on (it starts at ``-inf``, and ``exp(-inf - M') = 0``).

**Backward** (:func:`backward`), with ``G = dJ/do`` and ``D_t = sum_d G_td
o_td`` (``= sum_s P_ts dP_ts``, computed here from ``o``, one number per row),
recomputing each tile's ``P = exp(L - m)`` from the saved ``m``:

- ``dv = P^T G``, ``dP = G v^T``, ``dL = P * (dP - D)``;
- ``dk = dL^T q / sqrt(D)``, ``dq = dL k / sqrt(D)``.

Two kernels share the work without atomics: one program per key block,
batch entry and head (grid ``(S / bk, B, H)``) sums ``dk`` and ``dv`` over the
query blocks that see the key block; one per query block (grid ``(T / bq, B,
H)``) sums ``dq`` over the key blocks it sees. Each recomputes ``L`` and
``dP`` for its tiles: seven ``[T, S]``-sized matrix products in all, as in
the GPU reference kernel that ships with JAX
(``jax/experimental/pallas/ops/gpu/attention.py``), whose structure these
follow.

**Shapes and padding.** A block has :data:`FORWARD_BLOCKS` or
:data:`BACKWARD_BLOCKS` rows (query rows, key rows), fewer for a short
sequence: the next power of two of its length, at least :data:`MIN_BLOCK`
(:func:`block_rows`). The sequences are padded with zero rows to whole
blocks and the head size to a power of two, at least 16 (Triton's tiles are
powers of two, and its matrix products at least 16 wide); zero features add
nothing to ``L``, and the padded keys are masked to ``-inf``. A padded query
row has ``q = 0`` and ``G = 0``, and in the backward ``m = 0`` and ``D = 0``:
its ``P`` is finite and it adds nothing to ``dk`` and ``dv``. The results are
cut back.

**Precision.** The matrix products take their operands in the inputs' dtype
(``P`` and ``dL`` rounded to it, as FlashAttention does) and sum in
:func:`_wide` of it (``preferred_element_type``): float32, or float64 for
float64 inputs. ``L``, the running maximum and sum, ``m`` and ``o`` (as
:func:`forward` returns it) are in that wide dtype; the gradients are
rounded to the inputs' dtype at the end. Products run at JAX's precision in
force (``jax.default_matmul_precision``): TF32 for float32 at the default
on a recent GPU, as XLA's.

**Where they run** (:func:`interpreted`): compiled by Triton where
``jax.default_backend() == "gpu"`` and the inputs are float32, bfloat16 or
float16; otherwise (a CPU, or float64) run by Pallas's interpreter, which
gives the same values with XLA's operations, slowly: what lets the tests
run the kernels on a CPU.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

__all__ = ["BACKWARD_BLOCKS", "FORWARD_BLOCKS", "MIN_BLOCK", "backward", "block_rows", "forward", "interpreted"]

#: ``(query rows, key rows)`` of the forward kernel's blocks: the reference kernel's.
FORWARD_BLOCKS = (128, 128)
#: ``(query rows, key rows)`` of the backward kernels' blocks: 64, which keeps a key block's ``dk`` and ``dv`` sums
#: (float32) with ``k``, ``v`` and a ``[bq, bk]`` tile in registers.
BACKWARD_BLOCKS = (64, 64)
#: The fewest rows of a block: Triton's matrix products are at least 16 wide.
MIN_BLOCK = 16


def block_rows(n, rows):
    """The rows of a block over ``n`` rows: ``rows``, or for a shorter sequence the next power of two of ``n``,
    at least :data:`MIN_BLOCK`."""
    return min(rows, max(MIN_BLOCK, pl.next_power_of_2(n)))


def interpreted(dtype):
    """Whether the kernels for inputs of ``dtype`` run in Pallas's interpreter rather than compiled by Triton:
    unless the backend is a GPU and ``dtype`` float32, bfloat16 or float16."""
    return jax.default_backend() != "gpu" or jnp.dtype(dtype) == jnp.float64


def _wide(dtype):
    """The dtype the kernels sum in: ``dtype`` or float32, whichever is wider."""
    return jnp.promote_types(dtype, jnp.float32)


def _padded(a, rows, width, axis=1):
    """``a`` with zero rows appended along ``axis`` up to ``rows`` and, for ``[B, n, H, D]``, features up to
    ``width``."""
    pads = [(0, 0)] * a.ndim
    pads[axis] = (0, rows - a.shape[axis])
    if a.ndim == 4:
        pads[3] = (0, width - a.shape[3])
    return a if all(p == (0, 0) for p in pads) else jnp.pad(a, pads)


def _product(a, b, contract, wide):
    """The matrix product of ``a`` and ``b`` over axes ``contract = (a's, b's)``, summed in ``wide``."""
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=wide)


def _logits(q, k, rows, cols, keys, causal, scale, wide):
    """A tile's ``L = q k^T / sqrt(D)`` ``[bq, bk]`` in ``wide``: ``-inf`` at padded keys (``cols >= keys``, only
    tested where the keys were padded) and, with ``causal``, at ``cols > rows``."""
    logits = _product(q, k, (1, 1), wide) * scale
    visible = None
    if keys is not None:
        visible = cols[None, :] < keys
    if causal:
        below = cols[None, :] <= rows[:, None]
        visible = below if visible is None else visible & below
    return logits if visible is None else jnp.where(visible, logits, -jnp.inf)


def _key_blocks(i, block_q, block_k, blocks, causal):
    """How many key blocks query block ``i`` sees: all, or with ``causal`` those starting at or before its last
    row."""
    return jnp.minimum(blocks, _div((i + 1) * block_q + block_k - 1, block_k)) if causal else _INDEX(blocks)


#: The dtype of the kernels' indices: the grid's (``pl.program_id``), also under x64, where a Python int's would
#: be int64.
_INDEX = jnp.int32


def _div(a, b):
    """``a // b`` for a grid index ``a`` and a Python int ``b >= 1``."""
    return lax.div(a, _INDEX(b))


def _span(n):
    """The offsets ``0 .. n - 1`` of a block's rows."""
    return jnp.arange(n, dtype=_INDEX)


def _rows_spec(rows, width):
    """Blocks of ``rows`` rows of a ``[B, n, H, D]`` array, the block index first in the grid."""
    return pl.BlockSpec((None, rows, None, width), lambda i, b, h: (b, i, h, 0))


def _whole_spec(rows, width):
    """All ``rows`` rows of a ``[B, n, H, D]`` array, for every block of the grid."""
    return pl.BlockSpec((None, rows, None, width), lambda i, b, h: (b, 0, h, 0))


def _row_stat_spec(rows, whole=False):
    """Blocks of ``rows`` entries (or, ``whole``, all of them) of a ``[B, H, n]`` per-row array."""
    return pl.BlockSpec((None, None, rows), (lambda i, b, h: (b, h, 0)) if whole else (lambda i, b, h: (b, h, i)))


def _call(kernel, name, grid, in_specs, out_specs, out_shape, dtype, width):
    """``pl.pallas_call`` over ``grid``, compiled or interpreted (:func:`interpreted`); the reference kernel's
    warps: 4 up to a head size of 64, else 8."""
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=4 if width <= 64 else 8, num_stages=2),
        interpret=interpreted(dtype),
        name=name,
    )


def _layout(q, k, blocks):
    """``(block_q, block_k, T padded, S padded, D padded)`` for ``q[B, T, H, D]`` and ``k[B, S, H, D]``."""
    (t, d), s = q.shape[1::2], k.shape[1]
    block_q, block_k = block_rows(t, blocks[0]), block_rows(s, blocks[1])
    return block_q, block_k, -(-t // block_q) * block_q, -(-s // block_k) * block_k, max(16, pl.next_power_of_2(d))


# ---------------------------------------------------------------- forward
def _forward_kernel(q_ref, k_ref, v_ref, o_ref, m_ref, *, causal, keys, block_k, scale):
    """One query block: ``o [bq, D]`` and ``m [bq]`` from ``q [bq, D]`` and all of ``k, v [S, D]``."""
    block_q, wide = q_ref.shape[0], o_ref.dtype
    i = pl.program_id(0)
    q, rows = q_ref[...], i * block_q + _span(block_q)

    def key_block(j, run):
        out, peak, total = run
        k, v = k_ref[pl.ds(j * block_k, block_k), :], v_ref[pl.ds(j * block_k, block_k), :]
        logits = _logits(q, k, rows, j * block_k + _span(block_k), keys, causal, scale, wide)
        new_peak = jnp.maximum(peak, jnp.max(logits, axis=1))
        decay, exps = jnp.exp(peak - new_peak), jnp.exp(logits - new_peak[:, None])
        out = decay[:, None] * out + _product(exps.astype(v.dtype), v, (1, 0), wide)
        return out, new_peak, decay * total + jnp.sum(exps, axis=1)

    start = (jnp.zeros(o_ref.shape, wide), jnp.full((block_q,), -jnp.inf, wide), jnp.zeros((block_q,), wide))
    seen = _key_blocks(i, block_q, block_k, k_ref.shape[0] // block_k, causal)
    out, peak, total = lax.fori_loop(_INDEX(0), seen, key_block, start)
    o_ref[...] = out / total[:, None]
    m_ref[...] = peak + jnp.log(total)


@functools.partial(jax.jit, static_argnames=("causal", "blocks"))
def forward(q, k, v, causal, blocks=FORWARD_BLOCKS):
    """``(o [B, T, H, D], m [B, H, T])``: the op's output and each row's log-sum-exp, both in :func:`_wide` of the
    inputs' dtype (what :func:`backward` takes), over blocks of ``blocks = (query rows, key rows)``."""
    (b, t, h, d), s = q.shape, k.shape[1]
    block_q, block_k, t_pad, s_pad, width = _layout(q, k, blocks)
    q, k, v = _padded(q, t_pad, width), _padded(k, s_pad, width), _padded(v, s_pad, width)
    wide = _wide(q.dtype)
    kernel = functools.partial(
        _forward_kernel, causal=causal, keys=s if s < s_pad else None, block_k=block_k, scale=1 / math.sqrt(d)
    )
    o, m = _call(
        kernel,
        "fnn_attention_forward",
        (t_pad // block_q, b, h),
        [_rows_spec(block_q, width), _whole_spec(s_pad, width), _whole_spec(s_pad, width)],
        [_rows_spec(block_q, width), _row_stat_spec(block_q)],
        [jax.ShapeDtypeStruct((b, t_pad, h, width), wide), jax.ShapeDtypeStruct((b, h, t_pad), wide)],
        q.dtype,
        width,
    )(q, k, v)
    return o[:, :t, :, :d], m[:, :, :t]


# ---------------------------------------------------------------- backward
def _key_grads_kernel(q_ref, g_ref, m_ref, dot_ref, k_ref, v_ref, dk_ref, dv_ref, *, causal, keys, block_q, scale):
    """One key block: ``dk, dv [bk, D]`` summed over the query blocks that see it, from all of ``q``, ``G [T, D]``,
    ``m`` and ``D [T]``, and the block's ``k, v [bk, D]``."""
    block_k, wide = k_ref.shape[0], m_ref.dtype
    j = pl.program_id(0)
    k, v, cols = k_ref[...], v_ref[...], j * block_k + _span(block_k)

    def query_block(i, grads):
        dk, dv = grads
        rows = pl.ds(i * block_q, block_q)
        q, g, m, row_dot = q_ref[rows, :], g_ref[rows, :], m_ref[rows], dot_ref[rows]
        logits = _logits(q, k, i * block_q + _span(block_q), cols, keys, causal, scale, wide)
        p = jnp.exp(logits - m[:, None])
        dv = dv + _product(p.astype(g.dtype), g, (0, 0), wide)
        dlogits = p * (_product(g, v, (1, 1), wide) - row_dot[:, None])
        return dk + _product(dlogits.astype(q.dtype), q, (0, 0), wide), dv

    first = _div(j * block_k, block_q) if causal else _INDEX(0)  # with causal, the rows before the block see none of it
    zeros = jnp.zeros(dk_ref.shape, wide)
    dk, dv = lax.fori_loop(first, _INDEX(q_ref.shape[0] // block_q), query_block, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _query_grads_kernel(q_ref, g_ref, m_ref, dot_ref, k_ref, v_ref, dq_ref, *, causal, keys, block_k, scale):
    """One query block: ``dq [bq, D]`` summed over the key blocks it sees, from the block's ``q``, ``G [bq, D]``,
    ``m`` and ``D [bq]``, and all of ``k, v [S, D]``."""
    block_q, wide = q_ref.shape[0], m_ref.dtype
    i = pl.program_id(0)
    q, g, m, row_dot = q_ref[...], g_ref[...], m_ref[...], dot_ref[...]
    rows = i * block_q + _span(block_q)

    def key_block(j, dq):
        k, v = k_ref[pl.ds(j * block_k, block_k), :], v_ref[pl.ds(j * block_k, block_k), :]
        p = jnp.exp(_logits(q, k, rows, j * block_k + _span(block_k), keys, causal, scale, wide) - m[:, None])
        dlogits = p * (_product(g, v, (1, 1), wide) - row_dot[:, None])
        return dq + _product(dlogits.astype(k.dtype), k, (1, 0), wide)

    seen = _key_blocks(i, block_q, block_k, k_ref.shape[0] // block_k, causal)
    dq = lax.fori_loop(_INDEX(0), seen, key_block, jnp.zeros(dq_ref.shape, wide))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


@functools.partial(jax.jit, static_argnames=("causal", "blocks"))
def backward(q, k, v, o, m, g, causal, blocks=BACKWARD_BLOCKS):
    """``(dq, dk, dv)``, each in its input's dtype, from :func:`forward`'s ``o`` and ``m`` and ``G = dJ/do``
    ``[B, T, H, D]``, over blocks of ``blocks = (query rows, key rows)``."""
    (b, t, h, d), s = q.shape, k.shape[1]
    block_q, block_k, t_pad, s_pad, width = _layout(q, k, blocks)
    wide = _wide(q.dtype)
    row_dot = jnp.swapaxes(jnp.sum(g.astype(wide) * o, axis=-1), 1, 2)  # D_t = sum_d G_td o_td, [B, H, T]
    q, g = _padded(q, t_pad, width), _padded(g.astype(q.dtype), t_pad, width)
    k, v = _padded(k, s_pad, width), _padded(v, s_pad, width)
    m, row_dot = _padded(m, t_pad, width, axis=2), _padded(row_dot, t_pad, width, axis=2)
    settings = dict(causal=causal, keys=s if s < s_pad else None, scale=1 / math.sqrt(d))
    rows = [_whole_spec(t_pad, width)] * 2 + [_row_stat_spec(t_pad, whole=True)] * 2
    dk, dv = _call(
        functools.partial(_key_grads_kernel, block_q=block_q, **settings),
        "fnn_attention_backward_dk_dv",
        (s_pad // block_k, b, h),
        [*rows, _rows_spec(block_k, width), _rows_spec(block_k, width)],
        [_rows_spec(block_k, width)] * 2,
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        q.dtype,
        width,
    )(q, g, m, row_dot, k, v)
    row_blocks = [_rows_spec(block_q, width)] * 2 + [_row_stat_spec(block_q)] * 2
    (dq,) = _call(
        functools.partial(_query_grads_kernel, block_k=block_k, **settings),
        "fnn_attention_backward_dq",
        (t_pad // block_q, b, h),
        [*row_blocks, _whole_spec(s_pad, width), _whole_spec(s_pad, width)],
        [_rows_spec(block_q, width)],
        [jax.ShapeDtypeStruct(q.shape, q.dtype)],
        q.dtype,
        width,
    )(q, g, m, row_dot, k, v)
    return dq[:, :t, :, :d], dk[:, :s, :, :d], dv[:, :s, :, :d]
