"""fnn.train: jitted SGD and optax steps on every gradient path, and a small end-to-end fit."""

import dataclasses
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn

CE = fnn.losses.cross_entropy


def toy_classes(n=200, seed=0):
    """A linear teacher's 3 classes of 6 Gaussian float64 features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    y = np.argmax(x @ rng.standard_normal((6, 3)), axis=1).astype(np.int32)
    return types.SimpleNamespace(x_train=x, y_train=y, x_test=x[:50], y_test=y[:50])


def spiral(n_per_class=100, seed=0, dtype=jnp.float32):
    """Two interleaved spirals in 2-D, labels 0/1: not linearly separable."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.25, 3 * np.pi, n_per_class)
    arms = [np.stack([t * np.cos(t + c), t * np.sin(t + c)], axis=1) for c in (0.0, np.pi)]
    x = np.concatenate(arms) / (3 * np.pi) + 0.02 * rng.standard_normal((2 * n_per_class, 2))
    y = np.repeat([0, 1], n_per_class)
    return jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32)


def model_and_params(sizes, *, bias=False, dtype=jnp.float32, seed=0):
    model = fnn.nn.mlp(sizes, bias=bias, dtype=dtype)
    _, params = model.init(jax.random.key(seed), (sizes[0],))
    return model, params


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def assert_trees_close(actual, expected, **tolerances):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tolerances), actual, expected)


@pytest.mark.parametrize("path", fnn.PATHS)
def test_sgd_step_is_one_gradient_step_on_every_path(path):
    """Each path's jitted step gives the parameters of one step along JAX's own gradient of the same loss.

    So every path gives the same parameters. The reference is
    ``jax.value_and_grad`` of ``loss.apply(model.apply(...))`` (plain JAX
    autodiff, none of fnn's path machinery), in float64. The autodiff path
    computes exactly that; custom and backprop apply the hand-written rules,
    whose sums run in another order: for these O(1) values that is a few ulps
    (eps 2.2e-16; measured at most 5e-15 relative), hence rtol 1e-13 (about
    450 ulps) and atol 1e-15 for entries that cancel to near zero.
    """
    model, params = model_and_params([2, 8, 2], bias=True, dtype=jnp.float64)
    batch = spiral(5, dtype=jnp.float64)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: CE.apply(model.apply(p, batch[0]), batch[1])))(params)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    new_params, metrics = fnn.train.sgd_step(model, CE, 0.5, path=path)(copy(params), batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-14)
    assert_trees_close(new_params, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("path", fnn.PATHS)
def test_steps_donate_parameter_buffers(path):
    model, params = model_and_params([2, 4, 2])
    step = fnn.train.sgd_step(model, CE, 0.1, path=path)
    lowered = step.lower(params, spiral(4))
    assert "donated" in lowered.as_text() or "tf.aliasing_output" in lowered.as_text()
    step(params, spiral(4))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))


def test_optimizer_step_accepts_any_optax_transformation():
    model, params = model_and_params([2, 16, 2], bias=True)
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(params)
    step = fnn.train.optimizer_step(model, CE, optimizer, path="custom")
    batch = spiral()
    first = None
    for _ in range(300):
        params, opt_state, metrics = step(params, opt_state, batch)
        first = metrics["loss"] if first is None else first
    assert metrics["loss"] < 0.5 * first


@pytest.mark.parametrize("path", fnn.PATHS)
def test_optimizer_step_with_a_number_is_plain_sgd(path):
    model, params = model_and_params([2, 4, 2], dtype=jnp.float64)
    batch = spiral(3, dtype=jnp.float64)
    via_sgd, _ = fnn.train.sgd_step(model, CE, 0.3, path=path)(copy(params), batch)
    opt_step = fnn.train.optimizer_step(model, CE, 0.3, path=path)
    via_optax, _, _ = opt_step(copy(params), optax.sgd(0.3).init(params), batch)
    # The same gradient, updated as p - 0.3 g (sgd_step) or p + (-0.3 g) (optax): equal to rounding.
    assert_trees_close(via_sgd, via_optax, rtol=1e-14)


@pytest.mark.parametrize(
    "bad, error",
    [(0.0, ValueError), (-1.0, ValueError), (np.float32(-1), ValueError), (np.inf, ValueError), ("0.1", TypeError)]
    + [(True, TypeError), (np.array([0.1]), TypeError)],
)
def test_learning_rate_errors(bad, error):
    model = fnn.nn.mlp([2, 2])
    with pytest.raises(error, match="learning_rate must be"):
        fnn.train.sgd_step(model, CE, bad)
    with pytest.raises(error, match="optimizer must be"):
        fnn.train.optimizer_step(model, CE, bad)


@pytest.mark.parametrize(
    "rate", [np.float32(0.1), np.float64(0.1), jnp.float64(0.1)], ids=["numpy32", "numpy64", "jax"]
)
def test_a_numpy_or_jax_step_size_is_taken_as_a_python_number(rate):
    """Accepted, and a float64 one does not widen float32 parameters (traced by jax.eval_shape: nothing compiles)."""
    model, params = model_and_params([2, 2])
    batch, opt_state = spiral(2), optax.sgd(0.1).init(params)
    for update, state in ((fnn.train.sgd_update, ()), (fnn.train.optimizer_update, (opt_state,))):
        got, want = (jax.eval_shape(update(model, CE, r), params, *state, batch) for r in (rate, 0.1))
        assert got == want


def test_an_optimizer_named_by_a_string_gets_an_error_naming_the_argument_passed():
    with pytest.raises(
        TypeError, match=r"optimizer must be a step size .* such as optax.adam\(1e-3\), got the string 'adam'"
    ):
        fnn.train.as_optimizer("adam")


def test_steps_reject_unknown_paths_and_non_modules():
    model = fnn.nn.mlp([2, 2])
    with pytest.raises(ValueError, match="unknown gradient path 'manual'.*'backprop'"):
        fnn.train.sgd_step(model, CE, 0.1, path="manual")
    with pytest.raises(TypeError, match="model must be an fnn module"):
        fnn.train.sgd_step(lambda params, x: x, CE, 0.1)
    with pytest.raises(TypeError, match="loss must be an fnn loss"):
        fnn.train.optimizer_step(model, lambda outputs, y: 0.0, 0.1)


def test_two_layer_net_fits_a_spiral_on_every_path():
    x, y = spiral()
    model, init_params = model_and_params([2, 32, 32, 2], bias=True, seed=1)
    histories = {}
    for path in fnn.PATHS:
        params = copy(init_params)
        step = fnn.train.sgd_step(model, CE, 0.3, path=path, precision="highest")  # float32, not a GPU's TF32
        losses = []
        for _ in range(1500):
            params, metrics = step(params, (x, y))
            losses.append(float(metrics["loss"]))
        histories[path] = np.array(losses)
        assert losses[-1] < 0.05 * losses[0], path
        assert fnn.metrics.error_rate(model.apply(params, x), y) < 0.02, path
    # Same rules up to rounding: the float32 trajectories agree to float32 noise
    # until SGD's sensitivity to its own path (here from step ~300) amplifies it.
    for path in ("custom", "backprop"):
        np.testing.assert_allclose(histories[path][:200], histories["autodiff"][:200], rtol=1e-4)


def _precisions(hlo):
    return set(re.findall(r"stablehlo\.(?:dot_general|convolution).*?precision = \[(\w+), (\w+)\]", hlo))


@pytest.mark.parametrize("precision, shows", [(None, "DEFAULT"), ("highest", "HIGHEST"), ("tensorfloat32", "HIGH")])
def test_training_runs_its_products_at_the_precision_it_is_given(precision, shows):
    model = fnn.nn.serial(fnn.nn.conv2d(2, 3), fnn.nn.flatten(), fnn.nn.dense(3))
    params = model.init(jax.random.key(0), (5, 5, 1))[1]
    x, labels = jnp.ones((4, 5, 5, 1), jnp.float32), jnp.zeros(4, int)
    for path in fnn.PATHS:
        grads = fnn.value_and_grad(model, fnn.losses.cross_entropy, path=path, precision=precision)
        assert _precisions(jax.jit(grads).lower(params, x, labels).as_text()) == {(shows, shows)}, path
    step = fnn.train.optimizer_step(model, fnn.losses.cross_entropy, optax.sgd(0.1), precision=precision)
    hlo = step.lower(params, optax.sgd(0.1).init(params), (x, labels)).as_text()
    assert _precisions(hlo) == {(shows, shows)}


def test_fit_records_its_precision_and_refuses_an_unknown_one():
    model = fnn.nn.mlp([4, 3])
    data = fnn.data.synthetic(64, 16, shape=(4,), classes=3)
    params = model.init(jax.random.key(0), (4,))[1]
    _, history = fnn.fit(model, params, data, epochs=1, batch_size=16, progress=False, precision="highest")
    assert history.config["precision"] == "highest"
    with pytest.raises(fnn.InputError, match=r"fit: precision must be None \(the backend's default\) or one of"):
        fnn.fit(model, params, data, epochs=1, batch_size=16, progress=False, precision="double")


# ------------------------------------------------------------------ the train step: the seam of training
def weight_decayed_step(model, path, optimizer, decay=1e-3):
    """A step of one's own: cross-entropy plus ``decay * sum(w^2)``, the penalty reported beside the loss."""
    grads_of = fnn.value_and_grad(model, CE, path=path, outputs=True)

    def step(state, batch):
        (value, outputs), grads = grads_of(state.params, *batch)
        penalty = sum(jnp.sum(w * w) for w in jax.tree.leaves(state.params))
        grads = jax.tree.map(lambda g, w: g + 2 * decay * w, grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = dataclasses.replace(state, params=params, opt_state=opt_state, step=state.step + 1)
        return state, {"loss": value + decay * penalty, "error": fnn.metrics.error_rate(outputs, batch[1])}

    return step


@pytest.mark.parametrize("path", fnn.PATHS)
def test_a_step_of_ones_own_trains_through_fit_with_checkpoints_and_resume(path, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    model, data = fnn.nn.mlp([6, 8, 3], bias=True, dtype=jnp.float64), toy_classes()
    params, optimizer = model.init(jax.random.key(0), (6,))[1], optax.sgd(0.1, momentum=0.9)
    options = {"batch_size": 32, "optimizer": optimizer, "progress": False, "path": path}

    def run(epochs, **kwargs):
        return fnn.fit(model, params, data, epochs=epochs, step=weight_decayed_step(model, path, optimizer), **options,
                       **kwargs)  # fmt: skip

    want, history = run(3)
    assert history.train_loss[-1] < history.train_loss[0] and history.config["step"]["values"]
    run(1, callbacks=[fnn.loop.Checkpointing(tmp_path)])
    got, resumed = run(3, callbacks=[fnn.loop.Checkpointing(tmp_path, resume=True)])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert resumed.train_loss.tolist() == history.train_loss.tolist()


def test_gradient_accumulation_is_the_large_batch_step_to_float64_rounding():
    model, data = fnn.nn.mlp([6, 8, 3], bias=True, dtype=jnp.float64), toy_classes()
    params = model.init(jax.random.key(0), (6,))[1]
    runs = {
        k: fnn.fit(
            model, params, data, epochs=2, batch_size=40, optimizer=optax.adam(1e-2), accumulate=k, progress=False
        )  # fmt: skip
        for k in (1, 4)
    }
    for a, b in zip(*(jax.tree.leaves(runs[k][0]) for k in (1, 4))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(runs[1][1].train_loss, runs[4][1].train_loss, rtol=1e-12)
    assert runs[4][1].config["accumulate"] == 4
    with pytest.raises(fnn.UsageError, match="accumulate= sets fit's own step"):
        fnn.fit(model, params, data, step=weight_decayed_step(model, "custom", optax.sgd(0.1)), accumulate=2)


def test_the_train_step_carries_the_state_and_counts_its_steps():
    model = fnn.nn.serial(fnn.nn.dense(4, dtype=jnp.float64), fnn.nn.batch_norm(dtype=jnp.float64), fnn.nn.relu,
                          fnn.nn.dropout(0.5), fnn.nn.dense(3, dtype=jnp.float64))  # fmt: skip
    params, data = model.init(jax.random.key(0), (6,))[1], toy_classes()
    state = fnn.train.TrainState.create(params, optax.sgd(0.1), model_state=model.init_state((6,)))
    step = jax.jit(fnn.train.train_step(model, CE, optax.sgd(0.1)))
    batch = (jnp.asarray(data.x_train[:8]), jnp.asarray(data.y_train[:8]))
    one, metrics = step(state, batch)
    two, _ = step(one, batch)
    assert int(one.step) == 1 and int(two.step) == 2 and set(metrics) == {"loss", "error"}
    assert not np.array_equal(one.model_state[1]["mean"], state.model_state[1]["mean"])  # the running statistics
    assert not np.array_equal(one.step_key(), two.step_key())  # a new dropout mask each step
