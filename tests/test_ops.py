"""Both op sets: values and VJPs agree, edge cases hold, mistakes raise clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import fnn
from fnn.ops import autodiff, custom
from fnn.testing import compare_vjp

OPS = {"custom": custom, "autodiff": autodiff}

# Tolerances: compare_vjp's defaults, relative to the largest reference entry:
# 1e-12 for float64 (eps 2.2e-16; sums of at most a few dozen terms),
# 1e-5 for float32 (eps 1.2e-7, ~100 ulps), 3e-2 for bfloat16 (eps 7.8e-3).
dims = st.integers(1, 9)
# Property tests skip the eager "vjp" check: eager mode compiles every primitive
# for every new shape. The eager rules are checked once per op below.
COMPILED = ("value", "jit", "vmap", "second_order")
float_dtypes = st.sampled_from([jnp.float64, jnp.float32])


def normal(seed, shape, dtype=jnp.float64, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape, dtype)


def labels_for(seed, m, k):
    return jax.random.randint(jax.random.key(seed + 1), (m,), 0, k)


@given(m=dims, n=dims, k=dims, seed=st.integers(0, 2**16), dtype=float_dtypes)
def test_matmul_vjp_matches_autodiff(m, n, k, seed, dtype):
    compare_vjp(
        custom.matmul, autodiff.matmul, normal(seed, (m, n), dtype), normal(seed + 7, (n, k), dtype), checks=COMPILED
    )


@given(m=dims, k=dims, seed=st.integers(0, 2**16), dtype=float_dtypes)
def test_add_bias_vjp_matches_autodiff(m, k, seed, dtype):
    compare_vjp(
        custom.add_bias, autodiff.add_bias, normal(seed, (m, k), dtype), normal(seed + 3, (k,), dtype), checks=COMPILED
    )


@given(m=dims, k=dims, seed=st.integers(0, 2**16), dtype=float_dtypes)
def test_relu_vjp_matches_autodiff(m, k, seed, dtype):
    compare_vjp(custom.relu, autodiff.relu, normal(seed, (m, k), dtype), checks=COMPILED)


@given(m=dims, k=st.integers(2, 12), seed=st.integers(0, 2**16), dtype=float_dtypes, scale=st.sampled_from([0.1, 3.0, 30.0]))
def test_cross_entropy_vjp_matches_autodiff(m, k, seed, dtype, scale):
    logits = normal(seed, (m, k), dtype, scale)
    compare_vjp(custom.cross_entropy, autodiff.cross_entropy, logits, labels_for(seed, m, k), checks=COMPILED)


@pytest.mark.parametrize("name", ["matmul", "add_bias", "relu", "cross_entropy"])
def test_every_check_including_eager_rules(name):
    x = normal(0, (4, 5))
    args = {
        "matmul": (x, normal(1, (5, 3))),
        "add_bias": (x, normal(2, (5,))),
        "relu": (x,),
        "cross_entropy": (x, labels_for(0, 4, 5)),
    }[name]
    report = compare_vjp(getattr(custom, name), getattr(autodiff, name), *args)
    assert {row.check for row in report.rows} == set(fnn.testing.CHECKS)


def test_matmul_over_leading_axes():
    x, w = normal(0, (2, 3, 4)), normal(1, (4, 5))
    compare_vjp(custom.matmul, autodiff.matmul, x, w)
    compare_vjp(custom.matmul, autodiff.matmul, x[0, 0], w)  # one row, as under vmap
    np.testing.assert_allclose(custom.matmul(x, w), np.einsum("abn,nk->abk", x, w), rtol=1e-13)


def test_bfloat16_ops_keep_dtype_and_match_autodiff():
    x, w = normal(0, (6, 5), jnp.bfloat16), normal(1, (5, 4), jnp.bfloat16)
    labels = labels_for(0, 6, 4)
    compare_vjp(custom.matmul, autodiff.matmul, x, w)
    compare_vjp(custom.relu, autodiff.relu, x)
    compare_vjp(custom.cross_entropy, autodiff.cross_entropy, x @ w, labels)
    dx, dw = jax.grad(lambda x, w: custom.cross_entropy(custom.matmul(x, w), labels), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["matmul", "add_bias", "relu", "cross_entropy"])
def test_custom_ops_against_finite_differences(name):
    """Central differences in float64, first and second order, reverse mode."""
    x = normal(0, (4, 5))
    args = {
        "matmul": (x, normal(1, (5, 3))),
        "add_bias": (x, normal(2, (5,))),
        "relu": (x,),
        "cross_entropy": (x,),
    }[name]
    fn = getattr(custom, name)
    if name == "cross_entropy":
        labels = labels_for(0, 4, 5)
        fn = lambda logits: custom.cross_entropy(logits, labels)  # noqa: E731
    check_grads(fn, args, order=2, modes=["rev"], eps=1e-4, atol=1e-6, rtol=1e-6)


def test_custom_ops_refuse_forward_mode():
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(custom.relu, (normal(0, (3,)),), (normal(1, (3,)),))


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
def test_relu_derivative_at_zero_is_zero(ops):
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: ops.relu(x).sum())(x), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cross_entropy_is_stable_for_huge_logits(ops, dtype):
    logits = jnp.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype)
    labels = jnp.array([1, 2])
    loss, grad = jax.value_and_grad(ops.cross_entropy)(logits, labels)
    # Row 0: logsumexp = 1e4, picked 0 -> 1e4; row 1: picked the max -> 0.
    np.testing.assert_allclose(loss, 5e3, rtol=1e-7)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
def test_cross_entropy_batch_of_one_matches_closed_form(ops):
    logits, label = normal(0, (1, 6)), jnp.array([4])
    loss, grad = jax.value_and_grad(ops.cross_entropy)(logits, label)
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(loss, -np.log(probs[4]), rtol=1e-13)
    np.testing.assert_allclose(grad[0], probs - np.eye(6)[4], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
def test_cross_entropy_out_of_range_label_gives_nan(ops):
    logits = normal(0, (2, 3))
    assert np.isnan(ops.cross_entropy(logits, jnp.array([0, 3])))
    assert np.isnan(ops.cross_entropy(logits, jnp.array([-1, 0])))


def _per_example_loss(ops, params, x, label):
    return fnn.mlp.loss(params, (x[None], label[None]), ops=ops)


def test_per_example_gradients_under_vmap_match_autodiff_and_batch_gradient():
    params = fnn.mlp.init(jax.random.key(0), [5, 7, 3], bias=True, dtype=jnp.float64)
    x, labels = normal(1, (6, 5)), labels_for(1, 6, 3)
    per_example = {
        name: jax.jit(jax.vmap(jax.grad(lambda p, x, y, o=ops: _per_example_loss(o, p, x, y)), in_axes=(None, 0, 0)))(
            params, x, labels
        )
        for name, ops in OPS.items()
    }
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), *per_example.values())
    batch_grad = jax.grad(fnn.mlp.loss)(params, (x, labels), ops=custom)
    mean_grad = jax.tree.map(lambda g: g.mean(axis=0), per_example["custom"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), mean_grad, batch_grad)


def test_hessian_vector_products_match_autodiff():
    params = fnn.mlp.init(jax.random.key(0), [4, 6, 3], bias=True, dtype=jnp.float64)
    batch = (normal(1, (5, 4)), labels_for(1, 5, 3))
    vector = jax.tree.map(lambda p: normal(p.size, p.shape), params)

    def hvp(ops):
        grad = lambda p: jax.grad(fnn.mlp.loss)(p, batch, ops=ops)  # noqa: E731
        return jax.jit(jax.grad(lambda p: sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grad(p)), jax.tree.leaves(vector)))))(params)

    got, want = hvp(custom), hvp(autodiff)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want)) > 1e-3  # not trivially zero
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13), got, want)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
class TestErrors:
    def test_matmul_feature_mismatch(self, ops):
        with pytest.raises(ValueError, match="matmul: x has 784 features but w expects 785"):
            ops.matmul(jnp.zeros((2, 784)), jnp.zeros((785, 10)))

    def test_matmul_under_jit_raises_at_trace_time(self, ops):
        with pytest.raises(ValueError, match="x has 3 features but w expects 4"):
            jax.jit(ops.matmul)(jnp.zeros((2, 3)), jnp.zeros((4, 5)))

    def test_matmul_needs_matrix_w(self, ops):
        with pytest.raises(ValueError, match=r"w must be a matrix \[n, k\], got shape \(3,\)"):
            ops.matmul(jnp.zeros((2, 3)), jnp.zeros((3,)))

    def test_matmul_rejects_scalar_x(self, ops):
        with pytest.raises(ValueError, match="got a scalar"):
            ops.matmul(jnp.zeros(()), jnp.zeros((1, 2)))

    def test_matmul_rejects_integer_and_mixed_dtypes(self, ops):
        with pytest.raises(TypeError, match="matmul: x must be a floating-point array, got dtype int"):
            ops.matmul(jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 2)))
        with pytest.raises(TypeError, match="share a dtype, got x float32 and w float64"):
            ops.matmul(jnp.zeros((2, 3), jnp.float32), jnp.zeros((3, 2), jnp.float64))

    def test_add_bias_mismatch(self, ops):
        with pytest.raises(ValueError, match=r"x shape \(2, 3\), b shape \(4,\)"):
            ops.add_bias(jnp.zeros((2, 3)), jnp.zeros((4,)))

    def test_relu_rejects_integers(self, ops):
        with pytest.raises(TypeError, match="relu: x must be a floating-point array"):
            ops.relu(jnp.arange(3))

    def test_cross_entropy_rejects_float_labels(self, ops):
        with pytest.raises(TypeError, match="labels must be integer class ids, got dtype float"):
            ops.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,)))

    def test_cross_entropy_rejects_label_shape(self, ops):
        with pytest.raises(ValueError, match=r"got logits \(2, 3\) and labels \(3,\)"):
            ops.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))
        with pytest.raises(ValueError, match="labels must have the shape"):
            ops.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 1), jnp.int32))

    def test_cross_entropy_rejects_empty_batch(self, ops):
        with pytest.raises(ValueError, match="batch is empty"):
            ops.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


def test_get_op_set():
    assert fnn.ops.get("custom") is custom and fnn.ops.get(autodiff) is autodiff
    with pytest.raises(ValueError, match=r"unknown op set 'jvp'; expected one of \['autodiff', 'custom'\]"):
        fnn.ops.get("jvp")
    with pytest.raises(TypeError, match="ops must be fnn.ops.custom"):
        fnn.ops.get(jnp)
