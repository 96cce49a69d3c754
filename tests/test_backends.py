"""Rules whose results must not depend on the backend: run on the CPU, they check what a GPU would run.

- The embedding's backward sums the rows of repeated ids in an order fixed
  by the shapes, never by a scatter-add (a GPU adds colliding rows in the
  order its threads arrive): read from the lowered program, which is what
  every backend compiles, and held to the old scatter-add's sums in float64.
- Max pooling's autodiff path never meets ``select_and_gather_add`` (JAX's
  JVP of ``reduce_window`` with ``lax.max``, which a GPU computes with float64
  rounded to 20 mantissa bits) nor its transpose: read from the jaxpr; its
  forward mode, checked on the default backend (a GPU where there is one),
  equals the hand-written rule's, and its values are ``reduce_window``'s bit
  for bit.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import fnn
from fnn import nn
from fnn._gradcheck import dtypes as _dtypes
from fnn.nn import _embeddings, _windows

F64 = jnp.float64
EPS = np.finfo(np.float64).eps


def colliding_scatter_adds(fn, *args):
    """The scatters in ``fn``'s lowered program (StableHLO, before any backend's passes) whose combiner adds and
    whose indices are not declared distinct: the ones whose colliding rows a GPU adds in a racing order."""
    text = jax.jit(fn).lower(*args).as_text()
    scatters = re.findall(r'"stablehlo\.scatter".*?\n\s*\}\)', text, re.S)
    return [s for s in scatters if "stablehlo.add" in s and "unique_indices = true" not in s]


# ------------------------------------------------------------------ embedding
def scatter_add(table, rows, g):
    """The old rule, the reference: ``G`` scatter-added into the rows ``rows``, those out of range dropped."""
    return jnp.zeros_like(table).at[rows].add(g, mode="drop")


@st.composite
def lookups(draw):
    """``(table[V, D], ids[...], G[..., D])`` in float64: ids drawn from a few values (so that they repeat), some
    out of range on either side, with NaN in ``G`` at some of those; ``V`` on both sides of the one-hot rule's
    bound, and empty batches."""
    vocab = draw(st.one_of(st.integers(1, _embeddings.ONE_HOT_ROWS), st.integers(_embeddings.ONE_HOT_ROWS + 1, 300)))
    dim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    choices = rng.integers(-3, vocab + 3, draw(st.integers(1, 8)))
    ids = rng.choice(choices, shape)
    g = rng.standard_normal((*shape, dim)) * 10.0 ** rng.integers(-3, 4, (*shape, dim))
    outside = (ids < 0) | (ids >= vocab)
    g[outside & (rng.random(shape) < 0.5)] = np.nan  # the NaN rows a lookup out of range gives, and adds nothing
    return rng.standard_normal((vocab, dim)), ids, g


@given(lookups())
def test_the_embeddings_row_sums_equal_the_scatter_adds_to_rounding(lookup):
    table, ids, g = lookup

    @jax.jit  # one program per draw, not one per operation
    def both(table, ids, g):
        rows = _embeddings._in_range(ids, table.shape[0])
        dparams, dx = _embeddings._embedding_backward({"table": table}, rows, g)
        assert dx is None  # integer ids get no gradient
        return dparams["table"], scatter_add(table, rows, g)

    got, want = (np.asarray(a) for a in both(jnp.asarray(table), jnp.asarray(ids), jnp.asarray(g)))
    assert np.isfinite(got).all() and got.dtype == want.dtype
    # Two orders of summing n terms differ by at most (n - 1) eps sum|terms| (first order, u = eps / 2 each);
    # n eps covers the rest. Row v sums the n_v rows of G whose id is v.
    counts, magnitude = np.zeros(table.shape[0]), np.zeros(table.shape)
    inside = (ids >= 0) & (ids < table.shape[0])
    np.add.at(counts, ids[inside], 1)
    np.add.at(magnitude, ids[inside], np.abs(g[inside]))
    bound = counts[:, None] * EPS * magnitude
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) - bound)
    np.testing.assert_allclose(got, want, rtol=0, atol=np.max(bound, initial=0.0))


@pytest.mark.parametrize("vocab", [6, 100], ids=["one_hot", "sorted"])
def test_the_embeddings_gradient_has_no_scatter_add_on_the_rules_paths(vocab):
    rng = np.random.default_rng(0)
    module = nn.embedding(vocab, 3, dtype=F64)
    table = jnp.asarray(rng.standard_normal((vocab, 3)))
    ids = jnp.asarray(rng.integers(0, 5, (4, 6)))  # ids repeat: a scatter-add's rows would collide
    g = jnp.asarray(rng.standard_normal((4, 6, 3)))

    def grad(apply):
        return lambda t: jax.grad(lambda t: jnp.sum(apply({"table": t}, ids) * g))(t)

    def backprop(t):
        _, saved = module.forward({"table": t}, ids)
        return module.backward({"table": t}, saved, g)[0]

    assert colliding_scatter_adds(grad(module.by_rules.apply), table) == []
    assert colliding_scatter_adds(backprop, table) == []
    # JAX's own transpose of the lookup, which the autodiff path differentiates: a scatter-add, as the test sees.
    assert len(colliding_scatter_adds(grad(module.apply), table)) == 1
    report = fnn.testing.check_module(
        module, (6,), batch_size=4, x=lambda rng, s: rng.integers(0, 5, s), checks=["determinism", "backward"]
    )
    assert report.ok, str(report)


# ------------------------------------------------------------------ max pooling
#: ``(window, stride, padding, input shape)``: windows apart, overlapping with padding, 1-D with padding.
POOLS = [
    ((2, 2), None, "VALID", (2, 4, 6, 2)),
    ((3, 3), 2, "SAME", (2, 5, 5, 2)),
    ((3,), 1, "SAME", (2, 5, 3)),
]
pools = pytest.mark.parametrize("window, stride, padding, shape", POOLS, ids=["apart", "overlap_same", "1d_same"])


def pool_inputs(shape, dtype=F64):
    """Generic values, then small integers (ties in most windows), then the same with two rows of ``-inf``: with
    ``"SAME"`` padding, windows wholly ``-inf`` whose first position is a pad (JAX's rule for ``reduce_window``
    selects the pad there, the hand-written rule the first real position)."""
    rng = np.random.default_rng(0)
    generic = rng.standard_normal(shape)
    ties = rng.integers(0, 3, shape).astype(np.float64)
    infinite = ties.copy()
    infinite[:, :2] = -np.inf
    return [jnp.asarray(x, dtype) for x in (generic, ties, infinite)]


@pools
def test_max_pools_autodiff_path_meets_no_select_and_gather(window, stride, padding, shape):
    module = nn.max_pool(window, stride=stride, padding=padding)
    x = pool_inputs(shape)[0]
    jvp = jax.make_jaxpr(lambda x: jax.jvp(module.apply, ((), x), ((), x)))(x)
    grad = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(module.apply((), x))))(x)
    for jaxpr in (jvp, grad):
        assert not re.search(r"select_and_(gather|scatter)_add", str(jaxpr)), str(jaxpr)


@pools
def test_max_pools_forward_mode_equals_the_rules_on_this_backend(window, stride, padding, shape):
    """On ``jax.default_backend()``: the autodiff path's forward mode against the custom path's (the transposed
    rule), float64, to the checker's tolerance; outputs bit for bit, and every path's reverse-mode gradient alike."""
    module = nn.max_pool(window, stride=stride, padding=padding)

    @jax.jit
    def both(x, u, g):
        tangents = [jax.jvp(apply, ((), x), ((), u)) for apply in (module.apply, module.by_rules.apply)]
        grads = [jax.vjp(apply, (), x)[1](g)[1] for apply in (module.apply, module.by_rules.apply)]
        y, saved = module.forward((), x)
        return tangents, [*grads, module.backward((), saved, g)[1]]

    rng = np.random.default_rng(1)
    for x in pool_inputs(shape):
        u = jnp.asarray(rng.standard_normal(shape))
        g = jnp.asarray(rng.standard_normal(module.apply((), x).shape))
        ((y, dy), (y_rule, dy_rule)), grads = both(x, u, g)
        assert np.asarray(y).tobytes() == np.asarray(y_rule).tobytes()
        assert fnn.testing.relative_error(dy, dy_rule) <= _dtypes.rtol(np.float64), jax.default_backend()
        for other in grads[1:]:  # overlapping windows add up in another order
            assert fnn.testing.relative_error(grads[0], other) <= _dtypes.rtol(np.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, F64])
@pools
def test_max_pools_values_are_reduce_windows_bit_for_bit(window, stride, padding, shape, dtype):
    rng = np.random.default_rng(2)
    # Zeros of both signs in one window (their maximum's sign is reduce_window's), NaN, infinities, ties.
    x = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 2.5]), shape)
    x[..., 0] = rng.choice([-0.0, 0.0], shape[:-1])
    x = jnp.asarray(x, dtype)
    module = nn.max_pool(window, stride=stride, padding=padding)
    n = len(window)
    pads = _windows.pads(shape[1:-1], window, stride or window, padding)
    strides = (1, *(window if stride is None else (stride,) * n), 1)
    want = lax.reduce_window(x, np.array(-np.inf, dtype), lax.max, (1, *window, 1), strides, [(0, 0), *pads, (0, 0)])
    for got in (module.apply((), x), jax.jit(module.apply)((), x), module.by_rules.apply((), x)):
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
