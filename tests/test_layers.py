"""The layers for images and sequences beyond the conformance table: edge values on every path, references, host checks.

The conformance table (``test_modules.py``) checks each rule against autodiff
and finite differences at generic inputs. Here, on all three paths:
max-pool ties (apart from the generic case, so that the table is not
confused by them), softmax and attention logits large enough to overflow a
naive softmax, GroupNorm's constant group, an embedding's repeated and
out-of-range ids; then values against independent references
(``jax.nn.dot_product_attention``, NumPy, the 2-D convolution), the tiled
attention against the plain one, and the host-side input checks of ``fit``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
from fnn import DataError, nn
from fnn.nn import _attention as attend
from fnn.nn import _conv as conv

paths = pytest.mark.parametrize("path", fnn.PATHS)


def module_vjp(path, module, params, x, g=None):
    """``(y, dparams, dx)`` of ``module`` at ``(params, x)`` for the output cotangent ``g`` (ones), by ``path``."""
    if path == "backprop":
        y, saved = module.forward(params, x)
        return (y, *module.backward(params, saved, jnp.ones_like(y) if g is None else g))
    apply = module.by_rules.apply if path == "custom" else module.apply
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):  # integer ids: no cotangent
        y, pullback = jax.vjp(lambda p: apply(p, x), params)
        return (y, *pullback(jnp.ones_like(y) if g is None else g), None)
    y, pullback = jax.vjp(apply, params, x)
    return (y, *pullback(jnp.ones_like(y) if g is None else g))


def image(rows):
    """A ``[1, H, W, 1]`` float64 image from nested lists."""
    return jnp.asarray(rows, jnp.float64)[None, :, :, None]


# ------------------------------------------------------------------ max pooling: ties
@paths
def test_max_pool_sends_a_tied_gradient_to_the_first_maximum(path):
    # Windows 2x2, stride 2: the first window ties 4 times, the second twice in its bottom row,
    # the third has a single maximum; the gradient goes to the first maximal position (row-major).
    x = image([[5.0, 5.0, 1.0, 2.0, 0.0, 9.0], [5.0, 5.0, 3.0, 3.0, 1.0, 1.0]])
    y, _, dx = module_vjp(path, nn.max_pool((2, 2)), (), x, jnp.asarray([2.0, 3.0, 4.0]).reshape(1, 1, 3, 1))
    np.testing.assert_array_equal(y[0, 0, :, 0], [5.0, 3.0, 9.0])
    np.testing.assert_array_equal(dx[0, :, :, 0], [[2.0, 0.0, 0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 3.0, 0.0, 0.0, 0.0]])


@paths
def test_max_pool_ties_in_overlapping_windows_and_same_padding(path):
    # 1-D, window 3, stride 1, SAME (one -inf pad each side): every window of a constant row
    # picks its first real position, so position 0 gets two windows' gradients.
    x = jnp.full((1, 4, 1), 7.0, jnp.float64)
    y, _, dx = module_vjp(path, nn.max_pool((3,), stride=1, padding="SAME"), (), x)
    np.testing.assert_array_equal(y[0, :, 0], [7.0, 7.0, 7.0, 7.0])
    np.testing.assert_array_equal(dx[0, :, 0], [2.0, 1.0, 1.0, 0.0])


@paths
def test_max_pool_of_infinite_values_never_routes_to_the_padding(path):
    x = jnp.full((1, 3, 3, 1), -jnp.inf, jnp.float64)
    y, _, dx = module_vjp(path, nn.max_pool((2, 2), padding="SAME"), (), x)
    assert np.all(y == -np.inf)
    # The windows start at rows/columns 0 and 2; each sends its gradient to its first real position.
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])


@paths
def test_max_pool_of_all_infinite_windows_routes_to_the_first_real_position(path):
    # Window 3, stride 1, SAME: one pad on each side, so the first window's first position is a pad.
    # Every path sends every window's gradient to a real position (JAX's rule for reduce_window,
    # XLA's select_and_scatter, would select the pad there and lose that gradient; the autodiff
    # path differentiates the routed forward instead).
    x = jnp.full((1, 3, 1), -jnp.inf, jnp.float64)
    _, _, dx = module_vjp(path, nn.max_pool((3,), stride=1, padding="SAME"), (), x)
    np.testing.assert_array_equal(dx[0, :, 0], [2.0, 1.0, 0.0])


@paths
def test_avg_pool_spreads_the_gradient_and_counts_the_padding(path):
    # SAME padding adds a zero column on the right: the last window averages one real value and a pad.
    x = jnp.asarray([[1.0, 2.0, 3.0, 4.0, 5.0]])[None, :, :, None].reshape(1, 5, 1)
    y, _, dx = module_vjp(path, nn.avg_pool((2,), padding="SAME"), (), x)
    np.testing.assert_allclose(y[0, :, 0], [1.5, 3.5, 2.5], rtol=1e-15)
    np.testing.assert_array_equal(dx[0, :, 0], [0.5, 0.5, 0.5, 0.5, 0.5])


def test_pooling_against_numpy():
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 3))
    windows = x.reshape(2, 3, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 3, 2, 4, 3)
    np.testing.assert_allclose(fnn.ops.custom.avg_pool(x, (2, 2)), windows.mean(axis=3), rtol=1e-14)
    np.testing.assert_array_equal(fnn.ops.custom.max_pool(x, (2, 2)), windows.max(axis=3))
    for pool in (nn.max_pool, nn.avg_pool):  # an int is the square window of an image, as conv2d's kernel
        assert pool(2).init(jax.random.key(0), (6, 4, 3)) == pool((2, 2)).init(jax.random.key(0), (6, 4, 3))
        np.testing.assert_array_equal(pool(2).apply((), x), pool((2, 2)).apply((), x))


# ------------------------------------------------------------------ softmax
@paths
def test_softmax_of_huge_logits_is_finite(path):
    x = jnp.asarray([[1e4, 0.0, -1e4], [1e4, 1e4, -1e4]])
    g = jnp.asarray([[1.0, 2.0, 3.0], [1.0, 3.0, 5.0]])
    y, _, dx = module_vjp(path, nn.softmax, (), x, g)
    np.testing.assert_array_equal(y, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    # dx = p (g - sum(g p)): row 0 is saturated (0), row 1 is 0.5 (g - 2) on the two maxima.
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0], [-0.5, 0.5, 0.0]])


# ------------------------------------------------------------------ GroupNorm
@paths
def test_group_norm_of_a_constant_group_is_beta_with_finite_gradients(path):
    # [1, 2 positions, 4 channels], 2 groups: group 0 (channels 0, 1) is constant.
    x = jnp.asarray([[[3.0, 3.0, 1.0, 2.0], [3.0, 3.0, 4.0, 0.0]]])
    params = {"gamma": jnp.asarray([1.0, 2.0, 3.0, 4.0]), "beta": jnp.asarray([0.5, -0.5, 1.0, 2.0])}
    g = jnp.asarray([[[1.0, 0.0, 1.0, 1.0], [0.0, 2.0, 1.0, 1.0]]])
    y, dparams, dx = module_vjp(path, nn.group_norm(2), params, x, g)
    np.testing.assert_array_equal(y[0, :, :2], [[0.5, -0.5], [0.5, -0.5]])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((dparams, dx)))
    # Group 0: zhat = 0 and sigma = sqrt(eps), so dx = (d - mean(d)) / sqrt(eps) with d = g gamma,
    # d = [[1, 0], [0, 4]] (mean 1.25), and the group adds nothing to dgamma.
    np.testing.assert_allclose(dx[0, :, :2], np.array([[-0.25, -1.25], [-1.25, 2.75]]) / np.sqrt(1e-5), rtol=1e-13)
    np.testing.assert_array_equal(dparams["gamma"][:2], [0.0, 0.0])
    np.testing.assert_array_equal(dparams["beta"], [1.0, 2.0, 2.0, 2.0])


def test_group_norm_against_numpy_and_its_special_cases():
    rng = np.random.default_rng(0)
    x, gamma, beta = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal(6), rng.standard_normal(6)
    grouped = x.reshape(2, 3, 5, 3, 2)
    mean, var = grouped.mean(axis=(1, 2, 4), keepdims=True), grouped.var(axis=(1, 2, 4), keepdims=True)
    want = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * gamma + beta
    np.testing.assert_allclose(fnn.ops.custom.group_norm(x, gamma, beta, groups=3), want, rtol=1e-12, atol=1e-14)
    # One group over [N, C] is LayerNorm: the same rule over the same axis, bit for bit as XLA:CPU compiles both
    # programs; a GPU may order the two programs' reductions differently (an ulp), which is not the rule's.
    flat = x[:, 0, 0]
    grouped, layered = (
        fnn.ops.custom.group_norm(flat, gamma, beta, groups=1),
        fnn.ops.custom.layer_norm(flat, gamma, beta),
    )
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(grouped, layered)
    else:
        np.testing.assert_allclose(grouped, layered, rtol=4 * np.finfo(np.float64).eps)


# ------------------------------------------------------------------ embedding
@paths
def test_embedding_adds_the_gradients_of_repeated_ids(path):
    table = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.asarray([[1, 1, 3], [1, 0, 0]])
    g = jnp.arange(1.0, 19.0).reshape(2, 3, 3)
    y, dparams, dx = module_vjp(path, nn.embedding(4, 3), {"table": table}, ids, g)
    np.testing.assert_array_equal(y, table[ids])
    assert dx is None  # integer ids get no gradient
    want = np.zeros((4, 3))
    for (i, j), v in np.ndenumerate(np.asarray(ids)):
        want[v] += g[i, j]
    np.testing.assert_array_equal(dparams["table"], want)
    assert want[2].sum() == 0 and want[1].sum() == (1 + 2 + 3) + (4 + 5 + 6) + (10 + 11 + 12)


@paths
def test_embedding_of_ids_out_of_range_is_nan_and_adds_nothing(path):
    table = jnp.arange(6.0).reshape(3, 2)
    ids = jnp.asarray([0, 3, -1, 2])
    y, dparams, _ = module_vjp(path, nn.embedding(3, 2), {"table": table}, ids)
    y = np.asarray(y)
    np.testing.assert_array_equal(y[[0, 3]], np.asarray(table)[[0, 2]])
    assert np.isnan(y[[1, 2]]).all()  # neither clamped to row 2 nor wrapped around to row 2
    np.testing.assert_array_equal(dparams["table"], [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])


# ------------------------------------------------------------------ attention
def attention_reference(q, k, v, causal):
    """``softmax(q k^T / sqrt(D)) v`` in NumPy, float64, top-left causal mask."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.einsum("bhts,bshd->bthd", p / p.sum(axis=-1, keepdims=True), v)


def qkv(t, s, seed=0, dtype=jnp.float64, b=2, h=2, d=4, scale=1.0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(scale * rng.standard_normal((b, n, h, d)), dtype) for n in (t, s, s))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t, s", [(5, 5), (6, 3), (3, 7)], ids=["square", "t_gt_s", "t_lt_s"])
def test_attention_against_jax_and_numpy(t, s, causal):
    q, k, v = qkv(t, s)
    want = attention_reference(q, k, v, causal)
    for ops in (fnn.ops.custom, fnn.ops.autodiff):  # float64: the same sums in another order
        np.testing.assert_allclose(ops.attention(q, k, v, causal=causal), want, rtol=1e-12, atol=1e-14)
    q, k, v = (a.astype(jnp.float32) for a in (q, k, v))  # jax.nn computes in float32
    jax_attention = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(fnn.ops.custom.attention(q, k, v, causal=causal), jax_attention, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_equals_the_plain_one(causal):
    """Several tiles with padding (300 = 2 x 128 + 44 queries, 200 keys) against one tile of all rows, float32:
    outputs and gradients within 1e-5 of the largest entry (rounding of sums in another order, eps 1.2e-7), at full
    float32 precision (a GPU's default TF32 rounds each product to about 1e-3)."""
    q, k, v = qkv(300, 200, dtype=jnp.float32, b=1, h=2, d=8)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    leaf = attend.attention_leaf(causal)

    @jax.jit
    def both(q, k, v):
        kv = {"k": k, "v": v}
        (y, saved), plain = leaf.forward(kv, q), jax.vjp(leaf.apply, kv, q)
        return (y, leaf.backward(kv, saved, g)), (plain[0], plain[1](g))

    with jax.default_matmul_precision("highest"):
        tiled, plain = both(q, k, v)
    for a, b in zip(jax.tree.leaves(tiled), jax.tree.leaves(plain)):
        assert fnn.testing.relative_error(a, b) < 1e-5


def test_attention_gradients_in_bfloat16_are_as_accurate_as_autodiffs():
    """The backward recomputes ``P = exp(L - m)`` from the saved log-sum-exp ``m``: a bfloat16 ``m`` near 8 is
    off by up to 2^-5, ``P`` by 3%, and ``dv`` was 3x less accurate than autodiff's. Against float64 at the same
    (rounded) values, each gradient is within 1.5x autodiff's own bfloat16 error, and within one rounding to
    bfloat16 of the largest entry (unit roundoff 2^-8, to float32 noise)."""
    q, k, v = qkv(64, 64, dtype=jnp.bfloat16, d=16, scale=2.0)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.bfloat16)
    leaf = attend.attention_leaf(causal=True, tile=(16, 16))  # 4 x 4 tiles: the online softmax across tiles

    def gradients(apply, dtype, q, k, v, g):
        dkv, dq = jax.vjp(apply, {"k": k.astype(dtype), "v": v.astype(dtype)}, q.astype(dtype))[1](g.astype(dtype))
        return dq, dkv["k"], dkv["v"]

    @jax.jit
    def all_three(*args):
        apply, custom = leaf.apply, leaf.by_rules.apply
        return (
            gradients(apply, jnp.float64, *args),
            gradients(apply, jnp.bfloat16, *args),
            gradients(custom, jnp.bfloat16, *args),
        )

    for name, truth, autodiff, rule in zip(("dq", "dk", "dv"), *all_three(q, k, v, g)):
        error, reference = fnn.testing.relative_error(rule, truth), fnn.testing.relative_error(autodiff, truth)
        assert error <= 1.5 * reference and error <= 1.01 * 2**-8, (name, error, reference)


def test_attention_tiles():
    """128 query rows (never more than there are) by all keys."""
    assert attend.tile_shape(512, 512) == (128, 512)
    assert attend.tile_shape(1000, 700) == (128, 700)
    assert attend.tile_shape(1024, 300) == (128, 300)
    assert attend.tile_shape(4096, 4096) == (128, 4096)
    assert attend.tile_shape(28, 28) == (28, 28)


@pytest.mark.parametrize("t, kept", [(512, True), (513, False)])
def test_attention_keeps_the_probabilities_up_to_four_query_tiles_and_recomputes_them_beyond(t, kept):
    """Up to T = 512 the rule saves P [B, H, T, S]; beyond, q, o and m only. Either way its gradient is autodiff's to
    float64 rounding (1e-12 of the largest entry)."""
    assert attend.keeps_probabilities(t) is kept
    q, k, v = qkv(t, 24, seed=4, b=1, h=1, d=4)
    g = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape))
    leaf = attend.attention_leaf(causal=True)
    _, saved = leaf.forward({"k": k, "v": v}, q)
    shapes = [a.shape for a in saved]
    assert shapes == ([q.shape, (1, 1, t, 24)] if kept else [q.shape, q.shape, (1, 1, t)])
    got, want = (module_vjp(path, leaf, {"k": k, "v": v}, q, g) for path in ("custom", "autodiff"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(b))


@paths
@pytest.mark.parametrize("causal", [False, True])
def test_attention_logits_that_overflow_a_naive_softmax(path, causal):
    # Logits q k / sqrt(D) of order 1e4: exp overflows, so a softmax must shift by the row's maximum.
    q, k, v = qkv(4, 4, seed=2, b=1, h=1, d=2, scale=100.0)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(2)
    assert np.abs(logits).max() > 1e3 and np.abs(logits).max() > np.log(np.finfo(np.float64).max)
    leaf = attend.attention_leaf(causal, tile=(2, 2))  # tiled: the online softmax rescales across tiles
    g = jnp.asarray(np.random.default_rng(3).standard_normal(q.shape))
    y, dkv, dq = module_vjp(path, leaf, {"k": k, "v": v}, q, g)
    visible = np.tril(np.ones((4, 4), bool)) if causal else np.ones((4, 4), bool)
    masked = np.where(visible, logits[0, 0], -np.inf)
    top = masked.argmax(axis=-1)  # each row's dominant key
    gaps = np.sort(masked, axis=-1)[:, -1] - np.sort(masked, axis=-1)[:, -2]
    assert gaps[np.isfinite(gaps)].min() > 30  # so P is one-hot to within exp(-30) ~ 1e-13
    # o = v at the dominant key, dv collects G there, and dq = dk = 0 (P (dP - D) vanishes), each up to
    # the exp(-30) of the runners-up times |v| ~ 1e2 (and |k| ~ 1e2 for dq, dk): 1e-10 relative, 1e-8 absolute.
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((y, dkv, dq)))
    np.testing.assert_allclose(y[0, :, 0], v[0, top, 0], rtol=1e-10)
    want_dv = np.zeros((4, 2))
    np.add.at(want_dv, top, g[0, :, 0])
    np.testing.assert_allclose(dkv["v"][0, :, 0], want_dv, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dq, 0.0, atol=1e-8)
    np.testing.assert_allclose(dkv["k"], 0.0, atol=1e-8)


def test_attention_module_is_its_leaves():
    """The self-attention block equals its projections and the op, written out with fnn.ops."""
    model = nn.attention(2, 3, causal=True, bias=True, dtype=jnp.float64)
    _, params = model.init(jax.random.key(0), (5, 4))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5, 4)))

    def project(name, a):
        y = fnn.ops.autodiff.matmul(a, params[name]["w"])
        return fnn.ops.autodiff.add_bias(y, params[name]["b"]) if "b" in params[name] else y

    q, k, v = (project(p, x).reshape(3, 5, 2, 3) for p in "qkv")
    want = project("o", fnn.ops.autodiff.attention(q, k, v, causal=True).reshape(3, 5, 6))
    assert "b" not in params["k"] and params["o"]["w"].shape == (6, 4)
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-13)
    np.testing.assert_allclose(model.apply(params, x[0]), want[0], rtol=1e-13)  # one sequence, as under vmap


# ------------------------------------------------------------------ conv1d
def test_conv1d_is_conv2d_with_a_height_of_one():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 9, 3)), rng.standard_normal((3, 3, 4))
    for stride, padding in [(1, "SAME"), (2, "VALID"), (3, "SAME")]:
        got = fnn.ops.custom.conv1d(x, w, stride=stride, padding=padding)
        want = fnn.ops.custom.conv2d(x[:, None], w[None], stride=(1, stride), padding=padding)[:, 0]
        np.testing.assert_allclose(got, want, rtol=1e-13)
        # the notes' Conv1D-S on channel pair (c, o), SAME with K = 3: y_i = sum_j w_j z_(i - 1 + j)
        if (stride, padding) == (1, "SAME"):
            z = np.pad(x[0, :, 1], 1)
            np.testing.assert_allclose(got[0, :, 2] - want[0, :, 2], 0.0, atol=1e-13)
            single = np.array([sum(w[j, 1, 2] * z[i + j] for j in range(3)) for i in range(9)])
            np.testing.assert_allclose(fnn.ops.custom.conv1d(x[:1, :, 1:2], w[:, 1:2, 2:3])[0, :, 0], single)


# ------------------------------------------------------------------ the two forms of a convolution
@settings(max_examples=12, deadline=None)
@given(
    n=st.sampled_from([1, 2]),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]),
    size=st.integers(4, 9),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    bias=st.booleans(),
)
def test_both_forms_of_a_convolution_compute_the_same_three_products(n, kernel, stride, padding, size, channels, bias):
    """The matrix form (patches, one product each) equals XLA's convolution for y, dw and dx, to float64 rounding."""
    c, o = channels
    rng = np.random.default_rng(size * 7 + kernel)
    x = jnp.asarray(rng.standard_normal((2, *(size,) * n, c)))
    params = {"w": jnp.asarray(rng.standard_normal((*(kernel,) * n, c, o)))}
    if bias:
        params["b"] = jnp.asarray(rng.standard_normal(o))
    leaves = [conv.conv_leaf(n, stride, padding, bias=bias, form=form) for form in nn.CONV_FORMS]

    @jax.jit  # one compilation per draw, not one per operation
    def products(params, x, g):
        return [(leaf.apply(params, x), *leaf.backward(params, leaf.forward(params, x)[1], g)) for leaf in leaves]

    y_shape = jax.eval_shape(leaves[0].apply, params, x).shape
    g = jnp.asarray(rng.standard_normal(y_shape))
    by_convolution, by_matmul = products(params, x, g)  # (y, dparams, dx) each
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), by_matmul, by_convolution)


@pytest.mark.parametrize("kernel, channels", [(9, 5), (3, 32)])
def test_the_matrix_form_is_as_accurate_as_xlas_convolution_in_bfloat16(kernel, channels):
    """Both forms sum in float32 for bfloat16 operands: y, dw and dx within 1.25x of XLA's error against float64."""
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((4, 12, 12, channels))
    params = {"w": rng.standard_normal((kernel, kernel, channels, 8)) / np.sqrt(kernel * kernel * channels)}
    g = rng.standard_normal((4, 12, 12, 8))

    @jax.jit
    def products(params, x, g):
        leaves = [conv.conv_leaf(2, form=form) for form in nn.CONV_FORMS]
        return [(leaf.apply(params, x), *leaf.backward(params, leaf.forward(params, x)[1], g)) for leaf in leaves]

    exact = products(params, x, g)[0]
    low = products(*jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), (params, x, g)))

    def errors(found):
        return [float(np.max(np.abs(np.asarray(a, np.float64) - e)) / np.max(np.abs(e))) for a, e in
                zip(jax.tree.leaves(found), jax.tree.leaves(exact))]  # fmt: skip

    by_convolution, by_matmul = errors(low[0]), errors(low[1])
    assert all(m <= 1.25 * c for m, c in zip(by_matmul, by_convolution)), (by_matmul, by_convolution)


def test_a_convolution_runs_the_form_it_is_given_or_the_rules_choice():
    x = jnp.ones((2, 8, 8, 3), jnp.float32)
    params = {"w": jnp.ones((3, 3, 3, 4), jnp.float32)}

    def ops(module):
        text = jax.jit(jax.grad(lambda p: module.apply(p, x).sum())).lower(params).as_text()
        return "convolution" if "stablehlo.convolution" in text else "matmul"

    for form in nn.CONV_FORMS:
        assert ops(conv.conv_leaf(2, form=form)) == form
    assert ops(conv.conv_leaf(2)) == nn.conv_form(x.shape, params["w"].shape, (1, 1))  # on this platform
    # The CPU's rule, wherever the test runs: 32 images of 16 x 16 x 32, 3 x 3 kernel: patches of 9.0 MiB with SAME
    # padding, 6.9 MiB with VALID (bound 8 MiB); few channels always in the matrix form.
    assert nn.conv_form((32, 16, 16, 32), (3, 3, 32, 64), (1, 1), backend="cpu") == "convolution"
    assert nn.conv_form((32, 16, 16, 32), (3, 3, 32, 64), (1, 1), "VALID", backend="cpu") == "matmul"
    assert nn.conv_form(x.shape, params["w"].shape, (1, 1), backend="cpu") == "matmul"
    for accelerator in ("gpu", "tpu"):  # XLA's convolution (cuDNN's on a GPU) whatever the shapes
        assert nn.conv_form(x.shape, params["w"].shape, (1, 1), backend=accelerator) == "convolution"
    assert "form='matmul'" in repr(nn.conv2d(4, 3, form="matmul"))
    with pytest.raises(
        ValueError, match=r"conv2d: form must be None .* or one of \('convolution', 'matmul'\), got 'im2col'"
    ):
        nn.conv2d(4, 3, form="im2col")


# ------------------------------------------------------------------ identity
@paths
def test_identity_returns_its_input_and_passes_the_gradient_through(path):
    x = jnp.arange(12.0, dtype=jnp.float64).reshape(3, 4)
    g = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float64).reshape(3, 4)
    y, dparams, dx = module_vjp(path, nn.identity(), (), x, g)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, g)
    assert dparams == ()
    # Inside a model, the loss and the gradient are those of the model without it, on every path.
    model, bare = nn.serial(nn.dense(2, bias=True), nn.identity()), nn.serial(nn.dense(2, bias=True))
    _, params = model.init(jax.random.key(0), (4,))
    targets = jnp.ones((3, 2), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    loss, grads = fnn.value_and_grad(model, fnn.losses.mse, path=path)(params, x, targets)
    loss_bare, grads_bare = fnn.value_and_grad(bare, fnn.losses.mse, path=path)(params[:1], x, targets)
    assert loss == loss_bare
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads_bare[0]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert grads[1] == ()


def test_identity_is_wiring_that_keeps_shape_dtype_and_the_next_modules_input_check():
    module = nn.identity()
    assert not module._is_leaf and module._only_rearranges and repr(module) == "identity"
    assert module.init(jax.random.key(0), (5, 2)) == ((5, 2), ())
    ids = np.array([[0, 4, 2], [1, 3, 4]])
    np.testing.assert_array_equal(module.apply((), ids), ids)
    assert module.apply((), ids).dtype == ids.dtype
    nn.serial(module, nn.embedding(5, 2))._check_inputs(ids, "train")  # token ids: the embedding's check
    with pytest.raises(TypeError, match=r"identity: has no parameters and takes params=\(\)"):
        module.apply({"w": 1.0}, ids)
    report = fnn.testing.check_module(module, (4,), batch_size=3)
    assert report.ok, report


# ------------------------------------------------------------------ settings given as NumPy and JAX scalars
def traced(input_shape, dtype=jnp.float32):
    """``module -> (y, state)`` shapes and dtypes, initialised for and run in training on ``input_shape``.

    By ``jax.eval_shape``: nothing is compiled or computed.
    """

    def run(module):
        def train(key):
            _, params = module.init(key, input_shape[1:])
            x = jnp.zeros(input_shape, dtype)
            return module.apply(params, x, state=module.init_state(input_shape[1:]), key=key, train=True)

        return jax.eval_shape(train, jax.random.key(0))

    return run


def hinge_value(loss):
    return jax.eval_shape(loss.apply, jnp.zeros((2, 3), jnp.float32), jnp.zeros(2, jnp.int32))


# (id, build from the setting, a valid value, run: module -> shapes and dtypes)
SETTINGS = [
    ("dropout_rate", nn.dropout, 0.5, traced((2, 3))),
    ("batch_norm_momentum", lambda v: nn.batch_norm(momentum=v), 0.9, traced((4, 3))),
    ("batch_norm_eps", lambda v: nn.batch_norm(eps=v), 1e-3, traced((4, 3))),
    ("layer_norm_eps", nn.layer_norm, 1e-3, traced((2, 3))),
    ("group_norm_eps", lambda v: nn.group_norm(2, eps=v), 1e-3, traced((2, 3, 4))),
    ("group_norm_groups", nn.group_norm, 2, traced((2, 3, 4))),
    ("leaky_relu_negative_slope", nn.leaky_relu, 0.2, traced((2, 3))),
    ("softplus_beta", nn.softplus, 2.0, traced((2, 3))),
    ("multiclass_hinge_margin", fnn.losses.multiclass_hinge, 0.5, hinge_value),
    ("conv2d_n_out", lambda v: nn.conv2d(v, 2), 3, traced((2, 4, 4, 1))),
    ("conv2d_kernel_and_stride", lambda v: nn.conv2d(3, (v, 2), stride=v), 2, traced((2, 4, 4, 1))),
    ("max_pool_window", lambda v: nn.max_pool((v, 2)), 2, traced((2, 4, 4, 1))),
    ("embedding_vocab_and_dim", lambda v: nn.embedding(v, v), 3, traced((2, 4), jnp.int32)),
    ("attention_heads", lambda v: nn.attention(v, 3), 2, traced((2, 5, 4))),
]  # fmt: skip
#: Per kind: (the real scalar, the integer scalar) of that kind.
SCALARS = {"numpy32": (np.float32, np.int32), "numpy64": (np.float64, np.int64), "jax": (jnp.float64, jnp.int32)}


@pytest.mark.parametrize("kind", list(SCALARS))
@pytest.mark.parametrize("build, value, run", [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_settings_take_numpy_and_jax_scalars_as_python_numbers(build, value, run, kind):
    """The same shapes and dtypes as with the Python number: a float64 scalar does not widen float32 values."""
    scalar = SCALARS[kind][isinstance(value, int)](value)
    assert run(build(scalar)) == run(build(value))


# ------------------------------------------------------------------ host-side input checks
def test_module_input_checks_on_the_host():
    ids = np.array([[0, 4, 2], [5, 1, 7]])
    model = nn.serial(nn.embedding(5, 2), nn.flatten(), nn.dense(3))
    message = r"train inputs must be token ids in \[0, 5\) for an embedding of 5 rows; id 5 at index \(1, 0\) "
    with pytest.raises(DataError, match=message + r"\(2 of 6 ids out of range; min 0, max 7\)"):
        model._check_inputs(ids, "train")
    with pytest.raises(DataError, match=r"test inputs must be integer token ids in \[0, 5\) .*got dtype float32"):
        nn.residual(nn.embedding(5, 5))._check_inputs(ids.astype(np.float32), "test")
    model._check_inputs(ids % 5, "train")
    with pytest.raises(DataError, match="train inputs must be floating-point, got dtype int64"):
        nn.mlp([3, 2])._check_inputs(ids, "train")
    with pytest.raises(DataError, match="test inputs must be finite"):
        nn.attention(1, 2)._check_inputs(np.array([[[np.nan, 1.0]]]), "test")


def test_fit_trains_a_sequence_classifier_on_token_ids_and_refuses_bad_ids():
    """Integer inputs through fit (the backprop path's dx is None), and the host check before anything compiles."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, (40, 5))
    y = (x[:, 0] > 2).astype(np.int32)  # the class is decided by the first token
    model = nn.serial(
        nn.embedding(6, 4),
        nn.positional_embedding(),
        nn.residual(nn.serial(nn.layer_norm(), nn.attention(2, 2))),
        nn.avg_pool((5,)),
        nn.flatten(),
        nn.dense(2),
    )
    _, params = model.init(jax.random.key(0), (5,))
    data = fnn.data.Dataset("tokens", x[:32], y[:32], x[32:], y[32:])
    _, history = fnn.fit(model, params, data, path="backprop", epochs=2, batch_size=8, optimizer=0.1)
    assert len(history.rows()) == 2 and np.isfinite(history.train_loss).all()
    bad = fnn.data.Dataset("tokens", x[:32], y[:32], np.where(x[32:] == 3, 6, x[32:]), y[32:])
    with pytest.raises(DataError, match=r"test inputs must be token ids in \[0, 6\) .*id 6 at index \(\d+, \d+\)"):
        fnn.fit(model, params, bad, epochs=1, batch_size=8)
