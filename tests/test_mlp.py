"""fnn.mlp: parameter pytrees, forward pass, and whole-model gradients on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import fnn
from fnn.ops import autodiff, custom


def batch_for(seed, m, n, k, dtype=jnp.float64):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (m, n), dtype), jax.random.randint(ky, (m,), 0, k)


def loss_and_grads(params, batch, ops):
    return jax.jit(jax.value_and_grad(fnn.mlp.loss), static_argnames="ops")(params, batch, ops=ops)


def assert_trees_close(actual, expected, rtol, atol=0.0):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected)


def test_init_shapes_for_the_notes_network():
    params = fnn.mlp.init(jax.random.key(0), [784, 500, 10])
    assert [{k: v.shape for k, v in layer.items()} for layer in params] == [{"w": (784, 500)}, {"w": (500, 10)}]
    assert all(layer["w"].dtype == jnp.float32 for layer in params)
    with_bias = fnn.mlp.init(jax.random.key(0), [784, 500, 10], bias=True)
    assert with_bias[1]["b"].shape == (10,) and not with_bias[1]["b"].any()


def test_he_init_has_std_sqrt_2_over_fan_in():
    w = fnn.mlp.init(jax.random.key(1), [784, 500])[0]["w"]
    # 392,000 draws: the sample std is within 1% of sqrt(2/784) with overwhelming probability.
    np.testing.assert_allclose(np.std(w), np.sqrt(2 / 784), rtol=0.01)
    np.testing.assert_allclose(np.mean(w), 0.0, atol=3e-4)


def test_other_initializers():
    zero = fnn.mlp.init(jax.random.key(0), [3, 4, 2], init="zeros")
    assert not any(leaf.any() for leaf in jax.tree.leaves(zero))
    glorot = fnn.mlp.init(jax.random.key(0), [30, 40], init=jax.nn.initializers.glorot_normal(), dtype=jnp.float64)
    assert glorot[0]["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.std(glorot[0]["w"]), np.sqrt(2 / 70), rtol=0.1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sizes": [784]}, ValueError, "at least two positive ints"),
        ({"sizes": [784, 0]}, ValueError, r"got \(784, 0\)"),
        ({"sizes": [784, 10], "init": "xavier"}, ValueError, r"unknown initializer 'xavier'; expected one of \['he', 'zeros'\]"),
        ({"sizes": [784, 10], "dtype": jnp.int32}, TypeError, "dtype must be floating, got int32"),
    ],
)
def test_init_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        fnn.mlp.init(jax.random.key(0), **kwargs)


@pytest.mark.parametrize("ops", [custom, autodiff])
def test_apply_is_the_notes_formula(ops):
    x, _ = batch_for(0, 4, 6, 3)
    linear = fnn.mlp.init(jax.random.key(1), [6, 3], dtype=jnp.float64)
    np.testing.assert_allclose(fnn.mlp.apply(linear, x, ops=ops), x @ linear[0]["w"], rtol=1e-14)
    two = fnn.mlp.init(jax.random.key(2), [6, 5, 3], bias=True, dtype=jnp.float64)
    two = jax.tree.map(lambda p: p + 0.1, two)  # nonzero biases
    expected = np.maximum(x @ two[0]["w"] + two[0]["b"], 0) @ two[1]["w"] + two[1]["b"]
    np.testing.assert_allclose(fnn.mlp.apply(two, x, ops=ops), expected, rtol=1e-13)
    np.testing.assert_allclose(fnn.mlp.apply(two, x, ops=ops.__name__.rsplit(".", 1)[-1]), expected, rtol=1e-13)


def test_apply_errors():
    x = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="params must be a non-empty list of layer dicts"):
        fnn.mlp.apply([], x)
    with pytest.raises(TypeError, match=r"params\[0\] must be a dict with key 'w'"):
        fnn.mlp.apply([{"weight": jnp.zeros((3, 2))}], x)
    with pytest.raises(ValueError, match="matmul: x has 3 features but w expects 4"):
        fnn.mlp.apply(fnn.mlp.init(jax.random.key(0), [4, 2]), x)


@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    m=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mlp_gradients_custom_match_autodiff_float64(sizes, m, bias, seed):
    params = fnn.mlp.init(jax.random.key(seed), sizes, bias=bias, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.05, params)  # nonzero biases too
    batch = batch_for(seed, m, sizes[0], sizes[-1])
    loss_c, grads_c = loss_and_grads(params, batch, custom)
    loss_a, grads_a = loss_and_grads(params, batch, autodiff)
    np.testing.assert_allclose(loss_c, loss_a, rtol=1e-12)
    # Entries are O(1e-2..1); atol covers entries that are exactly zero on one path
    # and a rounding residue of ~1e-17 on the other.
    assert_trees_close(grads_c, grads_a, rtol=1e-12, atol=1e-15)


@given(sizes=st.lists(st.integers(2, 40), min_size=2, max_size=4), seed=st.integers(0, 2**16))
def test_mlp_gradients_custom_match_autodiff_float32(sizes, seed):
    params = fnn.mlp.init(jax.random.key(seed), sizes, bias=True)
    batch = batch_for(seed, 16, sizes[0], sizes[-1], jnp.float32)
    loss_c, grads_c = loss_and_grads(params, batch, custom)
    loss_a, grads_a = loss_and_grads(params, batch, autodiff)
    # float32 eps is 1.2e-7; sums of up to 40 products per entry leave ~1e-6
    # relative noise, and entries of a few 1e-3 get an absolute floor of 1e-6.
    np.testing.assert_allclose(loss_c, loss_a, rtol=1e-6)
    assert_trees_close(grads_c, grads_a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ops", [custom, autodiff])
@given(m=st.integers(1, 8), n=st.integers(1, 8), d=st.integers(1, 8), k=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_two_layer_gradient_matches_the_notes_closed_form(ops, m, n, d, k, seed):
    """grad W2 = relu(X W1)^T (S - I_Y) / m; grad W1 = X^T (1[X W1 > 0] * ((S - I_Y) W2^T)) / m."""
    params = fnn.mlp.init(jax.random.key(seed), [n, d, k], dtype=jnp.float64)
    x, y = batch_for(seed, m, n, k)
    w1, w2 = params[0]["w"], params[1]["w"]
    z = x @ w1
    logits = np.maximum(z, 0) @ w2
    s = np.exp(logits - logits.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    residual = s - np.eye(k)[y]
    grad_w2 = np.maximum(z, 0).T @ residual / m
    grad_w1 = x.T @ ((z > 0) * (residual @ w2.T)) / m
    _, grads = loss_and_grads(params, (x, y), ops)
    np.testing.assert_allclose(grads[0]["w"], grad_w1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads[1]["w"], grad_w2, rtol=1e-12, atol=1e-15)


def test_mlp_loss_against_finite_differences():
    params = fnn.mlp.init(jax.random.key(3), [5, 6, 4, 3], bias=True, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.1, params)
    batch = batch_for(3, 7, 5, 3)
    check_grads(lambda p: fnn.mlp.loss(p, batch, ops=custom), (params,), order=2, modes=["rev"], eps=1e-4, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("ops", [custom, autodiff])
def test_zero_init_is_a_saddle_point(ops):
    params = fnn.mlp.init(jax.random.key(0), [6, 5, 3], init="zeros", dtype=jnp.float64)
    loss, grads = loss_and_grads(params, batch_for(0, 8, 6, 3), ops)
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-14)
    assert not any(g.any() for g in jax.tree.leaves(grads))


def test_error_rate():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_allclose(fnn.metrics.error_rate(logits, jnp.array([1, 1, 1])), 1 / 3)
    with pytest.raises(ValueError, match=r"labels shape \(2,\) must equal logits shape without the class axis, \(3,\)"):
        fnn.metrics.error_rate(logits, jnp.array([1, 1]))
