"""fnn.backprop: the notes' explicit recursion agrees with both jax.grad paths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fnn
from fnn.testing import compare_vjp


def problem(seed, sizes, m, bias, dtype=jnp.float64):
    params = fnn.mlp.init(jax.random.key(seed), sizes, bias=bias, dtype=dtype)
    params = jax.tree.map(lambda p: p + 0.05, params)  # nonzero biases too
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    return params, jax.random.normal(kx, (m, sizes[0]), dtype), jax.random.randint(ky, (m,), 0, sizes[-1])


@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=5),
    m=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backprop_matches_both_grad_paths_float64(sizes, m, bias, seed):
    params, x, labels = problem(seed, sizes, m, bias)
    loss, grads = jax.jit(fnn.backprop.value_and_grad)(params, x, labels)
    for ops in ("custom", "autodiff"):
        want_loss, want = jax.jit(jax.value_and_grad(functools.partial(fnn.mlp.loss, ops=ops)))(params, (x, labels))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
        assert jax.tree.structure(grads) == jax.tree.structure(want)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15), grads, want)


def test_backprop_loss_through_the_checker():
    """jax.grad of fnn.backprop.loss is the recursion: values, VJPs, jit, vmap, second order."""
    params, x, labels = problem(0, [5, 6, 4, 3], 7, bias=True)
    treedef = jax.tree.structure(params)

    def as_fn(loss_fn):
        return lambda *leaves: loss_fn(jax.tree.unflatten(treedef, leaves[:-1]), (leaves[-1], labels))

    reference = as_fn(functools.partial(fnn.mlp.loss, ops="autodiff"))
    compare_vjp(as_fn(fnn.backprop.loss), reference, *jax.tree.leaves(params), x)


def test_backprop_trains_like_autodiff():
    params, x, labels = problem(3, [4, 8, 3], 16, bias=False, dtype=jnp.float32)
    results = []
    for loss_fn in (fnn.backprop.loss, functools.partial(fnn.mlp.loss, ops="autodiff")):
        p = jax.tree.map(jnp.array, params)
        step = fnn.train.sgd_step(loss_fn, 0.5)
        for _ in range(20):
            p, _ = step(p, (x, labels))
        results.append(p)
    # float32, 20 steps: rounding differences stay ~100 ulps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), *results)


def test_backprop_errors():
    params, x, labels = problem(0, [4, 3], 2, bias=False)
    with pytest.raises(ValueError, match=r"x must be a batch of rows \[m, n_in\], got shape \(4,\)"):
        fnn.backprop.value_and_grad(params, x[0], labels[:1])
    with pytest.raises(ValueError, match="matmul: x has 4 features but w expects 5"):
        fnn.backprop.value_and_grad(fnn.mlp.init(jax.random.key(0), [5, 3], dtype=jnp.float64), x, labels)
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        fnn.backprop.value_and_grad(params, x, labels.astype(jnp.float64))
    with pytest.raises(TypeError, match="params must be a non-empty list"):
        fnn.backprop.value_and_grad({"w": params[0]["w"]}, x, labels)
