"""fnn.fit: the scanned epoch equals a loop of steps; metrics, options and errors."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn


def toy_data(n_train=230, n_test=50, n=6, k=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((n, k))

    def split(m):
        x = rng.standard_normal((m, n)).astype(dtype)
        return x, np.argmax(x @ teacher, axis=1).astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def init(sizes=(6, 8, 3), dtype=jnp.float64):
    return fnn.mlp.init(jax.random.key(0), list(sizes), bias=True, dtype=dtype)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("ops", ["custom", "autodiff"])
def test_one_epoch_equals_a_loop_of_steps_with_a_remainder_batch(ops):
    data = toy_data()  # 230 rows: 7 batches of 32 and one of 6
    params = init()
    step = fnn.train.sgd_step(functools.partial(fnn.mlp.loss, ops=ops), 0.1)
    expected = copy(params)
    for start in range(0, 230, 32):
        expected, _ = step(expected, (data.x_train[start : start + 32], data.y_train[start : start + 32]))
    trained, history = fnn.fit(copy(params), data, epochs=1, batch_size=32, optimizer=0.1, ops=ops, progress=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), trained, expected)
    logits = fnn.mlp.apply(expected, data.x_test)
    np.testing.assert_allclose(history.test_loss[0], fnn.ops.autodiff.cross_entropy(logits, data.y_test), rtol=1e-12)
    # Error rates are float32 (a mean of booleans): equal up to its rounding.
    np.testing.assert_allclose(history.test_err[0], fnn.metrics.error_rate(logits, data.y_test), rtol=1e-7)


def test_history_and_callback():
    rows = []
    _, history = fnn.fit(init(), toy_data(), epochs=3, batch_size=23, optimizer=0.5, progress=False, on_epoch=rows.append)
    for column in fnn.loop.COLUMNS + ("epoch_s",):
        assert getattr(history, column).shape == (3,)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and history.rows() == rows
    assert history.train_loss[-1] < history.train_loss[0]
    assert 0 < history.compile_s < history.wall_s
    assert np.all((0 <= history.test_err) & (history.test_err <= 1))


def test_shuffling_is_seeded_and_changes_the_path():
    data = toy_data()
    runs = [
        fnn.fit(init(), data, epochs=2, batch_size=10, progress=False, shuffle_key=key)[1].train_loss
        for key in (jax.random.key(1), jax.random.key(1), jax.random.key(2), None)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) and not np.array_equal(runs[0], runs[3])


def test_any_optax_optimizer():
    _, history = fnn.fit(init(dtype=jnp.float32), toy_data(dtype=np.float32), epochs=5, batch_size=23, optimizer=optax.adam(1e-2), progress=False)
    assert history.train_loss[-1] < 0.7 * history.train_loss[0]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_evaluation_equals_one_pass(chunk):
    data = toy_data()
    params = init()
    loss, err = fnn.loop.evaluate(fnn.mlp.apply, params, data.x_train, data.y_train, chunk=chunk)
    logits = fnn.mlp.apply(params, data.x_train)
    np.testing.assert_allclose(loss, fnn.ops.autodiff.cross_entropy(logits, data.y_train), rtol=1e-13)
    np.testing.assert_allclose(err, fnn.metrics.error_rate(logits, data.y_train), rtol=1e-7)


def test_fit_errors():
    data = toy_data()
    with pytest.raises(TypeError, match="data must have x_train, y_train, x_test and y_test"):
        fnn.fit(init(), (data.x_train, data.y_train))
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        fnn.fit(init(), data, epochs=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 230\]"):
        fnn.fit(init(), data, batch_size=231)
    bad = types.SimpleNamespace(**{**vars(data), "y_test": data.y_test[:-1]})
    with pytest.raises(ValueError, match=r"test split: expected x \[N, features\] and y \[N\], got x \(50, 6\) and y \(49,\)"):
        fnn.fit(init(), bad)


def test_one_epoch_of_the_recipe_on_mnist(mnist):
    """The notes' recipe, one epoch, on real MNIST: under 5% test error on both paths."""
    dataset, _, _ = mnist
    for ops in ("custom", "autodiff"):
        params = fnn.mlp.init(jax.random.key(0), [784, 500, 10])
        _, history = fnn.fit(params, dataset, epochs=1, batch_size=100, optimizer=0.5, ops=ops, progress=False)
        assert history.test_err[0] < 0.05, (ops, history.test_err)
