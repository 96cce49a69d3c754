"""fnn.train: jitted SGD and optax steps, and a small end-to-end fit on both paths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn


def spiral(n_per_class=100, seed=0):
    """Two interleaved spirals in 2-D, labels 0/1: not linearly separable."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.25, 3 * np.pi, n_per_class)
    arms = [np.stack([t * np.cos(t + c), t * np.sin(t + c)], axis=1) for c in (0.0, np.pi)]
    x = np.concatenate(arms) / (3 * np.pi) + 0.02 * rng.standard_normal((2 * n_per_class, 2))
    y = np.repeat([0, 1], n_per_class)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("ops", ["custom", "autodiff"])
def test_sgd_step_is_one_gradient_step(ops):
    loss_fn = functools.partial(fnn.mlp.loss, ops=ops)
    params = fnn.mlp.init(jax.random.key(0), [2, 8, 2], bias=True, dtype=jnp.float64)
    batch = spiral(5)
    batch = (batch[0].astype(jnp.float64), batch[1])
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    new_params, metrics = fnn.train.sgd_step(loss_fn, 0.5)(copy(params), batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-14)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15), new_params, expected)


def test_steps_donate_parameter_buffers():
    loss_fn = functools.partial(fnn.mlp.loss, ops="custom")
    params = fnn.mlp.init(jax.random.key(0), [2, 4, 2])
    step = fnn.train.sgd_step(loss_fn, 0.1)
    lowered = step.lower(params, spiral(4))
    assert "donated" in lowered.as_text() or "tf.aliasing_output" in lowered.as_text()
    step(params, spiral(4))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))


def test_optimizer_step_accepts_any_optax_transformation():
    loss_fn = functools.partial(fnn.mlp.loss, ops="custom")
    params = fnn.mlp.init(jax.random.key(0), [2, 16, 2], bias=True)
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(params)
    step = fnn.train.optimizer_step(loss_fn, optimizer)
    batch = spiral()
    first = None
    for _ in range(300):
        params, opt_state, metrics = step(params, opt_state, batch)
        first = metrics["loss"] if first is None else first
    assert metrics["loss"] < 0.5 * first


def test_optimizer_step_with_a_number_is_plain_sgd():
    loss_fn = functools.partial(fnn.mlp.loss, ops="autodiff")
    params = fnn.mlp.init(jax.random.key(0), [2, 4, 2], dtype=jnp.float64)
    batch = (spiral(3)[0].astype(jnp.float64), spiral(3)[1])
    via_sgd, _ = fnn.train.sgd_step(loss_fn, 0.3)(copy(params), batch)
    via_optax, state, _ = fnn.train.optimizer_step(loss_fn, 0.3)(copy(params), optax.sgd(0.3).init(params), batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-14), via_sgd, via_optax)


@pytest.mark.parametrize("bad, error", [(0.0, ValueError), (-1.0, ValueError), ("0.1", TypeError), (True, TypeError)])
def test_learning_rate_errors(bad, error):
    with pytest.raises(error, match="learning_rate must be"):
        fnn.train.sgd_step(fnn.mlp.loss, bad)
    with pytest.raises(error, match="learning_rate must be"):
        fnn.train.optimizer_step(fnn.mlp.loss, bad)


def test_two_layer_net_fits_a_spiral_on_both_paths():
    x, y = spiral()
    histories = {}
    for ops in ("custom", "autodiff"):
        params = fnn.mlp.init(jax.random.key(1), [2, 32, 32, 2], bias=True)
        step = fnn.train.sgd_step(functools.partial(fnn.mlp.loss, ops=ops), 0.3)
        losses = []
        for _ in range(1500):
            params, metrics = step(params, (x, y))
            losses.append(float(metrics["loss"]))
        histories[ops] = np.array(losses)
        assert losses[-1] < 0.05 * losses[0]
        assert fnn.metrics.error_rate(fnn.mlp.apply(params, x), y) < 0.02
    # Same rules up to rounding: the trajectories agree to float32 noise until
    # SGD's sensitivity to its own path (here from step ~300) amplifies it.
    np.testing.assert_allclose(histories["custom"][:200], histories["autodiff"][:200], rtol=1e-4)
