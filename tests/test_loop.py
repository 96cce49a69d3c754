"""fnn.fit: the scanned epoch equals a loop of steps on every path; optimisers, losses, shapes, metrics, errors."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.loop._history import COLUMNS

CE = fnn.losses.cross_entropy


def toy_data(n_train=230, n_test=50, n=6, k=3, seed=0, dtype=np.float64):
    """A linear teacher's classes for Gaussian inputs ``[N, n]``, labels in ``[0, k)``."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((n, k))

    def split(m):
        x = rng.standard_normal((m, n)).astype(dtype)
        return x, np.argmax(x @ teacher, axis=1).astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def regression_data(n_train=120, n_test=40, n=3, k=2, seed=0):
    """Targets ``[N, k]`` of a noisy linear teacher, float64: a problem without an error rate."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((n, k))

    def split(m):
        x = rng.standard_normal((m, n))
        return x, x @ teacher + 0.1 * rng.standard_normal((m, k))

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def image_data(n_train=60, n_test=20, k=3, seed=0):
    """Images ``[N, 8, 8, 1]`` (NHWC), float64, labelled by a linear teacher on their pixels."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((64, k))

    def split(m):
        x = rng.standard_normal((m, 8, 8, 1))
        return x, np.argmax(x.reshape(m, 64) @ teacher, axis=1).astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


MODEL = fnn.nn.mlp([6, 8, 3], bias=True, dtype=jnp.float64)


def init(model=MODEL, input_shape=(6,), seed=0):
    return model.init(jax.random.key(seed), input_shape)[1]


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def assert_trees_close(actual, expected, **tolerances):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tolerances), actual, expected)


@pytest.mark.parametrize("path", fnn.PATHS)
def test_one_epoch_equals_a_loop_of_steps_with_a_remainder_batch(path):
    data = toy_data()  # 230 rows: 7 batches of 32 and one of 6
    params = init()
    step = fnn.train.sgd_step(MODEL, CE, 0.1, path=path)
    expected = copy(params)
    seen = []  # (rows, loss, error) of each batch, before its update
    for start in range(0, 230, 32):
        expected, metrics = step(expected, (data.x_train[start : start + 32], data.y_train[start : start + 32]))
        seen.append((len(data.x_train[start : start + 32]), metrics["loss"], metrics["error"]))
    trained, history = fnn.fit(
        MODEL, copy(params), data, loss=CE, path=path, epochs=1, batch_size=32, optimizer=0.1, progress=False
    )
    # The notes' training metrics: each batch's loss and error before its update, averaged over the examples.
    rows, losses, errors = map(np.array, zip(*seen))
    np.testing.assert_allclose(history.train_loss[0], np.sum(rows * losses) / 230, rtol=1e-6)  # summed in float32
    np.testing.assert_allclose(history.train_err[0], np.sum(rows * errors) / 230, rtol=1e-6)
    # The same float64 steps, compiled once inside a scan and once each on their own: XLA
    # may fuse them differently, so they agree to rounding, not bit for bit.
    assert_trees_close(trained, expected, rtol=1e-12, atol=1e-14)
    logits = MODEL.apply(expected, data.x_test)
    np.testing.assert_allclose(history.test_loss[0], CE.apply(logits, data.y_test), rtol=1e-12)
    # Error rates are float32 (a mean of booleans): equal up to its rounding.
    np.testing.assert_allclose(history.test_err[0], fnn.metrics.error_rate(logits, data.y_test), rtol=1e-7)


def test_full_training_metrics_evaluate_the_training_set_at_the_end_of_the_epoch():
    data = toy_data()
    trained, history = fnn.fit(
        MODEL, init(), data, epochs=1, batch_size=32, optimizer=0.1, progress=False, train_metrics="full"
    )
    logits = MODEL.apply(trained, data.x_train)
    np.testing.assert_allclose(history.train_loss[0], CE.apply(logits, data.y_train), rtol=1e-12)
    np.testing.assert_allclose(history.train_err[0], fnn.metrics.error_rate(logits, data.y_train), rtol=1e-7)
    with pytest.raises(ValueError, match="train_metrics must be 'batches' or 'full', got 'each'"):
        fnn.fit(MODEL, init(), data, epochs=1, progress=False, train_metrics="each")


#: optax optimisers run through fit, one table for every path (optax's alias_test habit).
OPTIMIZERS = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.05, momentum=0.9),
    "adam": optax.adam(1e-2),
    "schedule": optax.sgd(optax.exponential_decay(0.3, transition_steps=4, decay_rate=0.5)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optax_optimizers_train_through_fit_on_every_path(name):
    """Two epochs of fit on every path equal the same optax steps taken one by one, and lower the loss.

    Taking the steps one by one, with the optimizer state passed along, checks
    that fit threads that state (momentum, Adam's moments, the schedule's
    step count) through its scan and from one epoch to the next. The steps
    are taken on the autodiff path; each path's fit must land on the same
    parameters. float64 throughout: the paths' gradients differ by a few ulps
    (other summation orders) and the steps are compiled two ways (scan and
    single steps); 20 steps of these optimisers, Adam's division by
    ``sqrt(v)`` included, keep that far below rtol 1e-10.
    """
    optimizer, data = OPTIMIZERS[name], toy_data()  # batches of 23: 10 steps per epoch
    params = init()
    step = fnn.train.optimizer_step(MODEL, CE, optimizer, path="autodiff")
    expected, opt_state = copy(params), optimizer.init(params)
    for _ in range(2):
        for start in range(0, 230, 23):
            batch = (data.x_train[start : start + 23], data.y_train[start : start + 23])
            expected, opt_state, _ = step(expected, opt_state, batch)
    initial_loss = CE.apply(MODEL.apply(params, data.x_train), data.y_train)
    for path in fnn.PATHS:
        trained, history = fnn.fit(
            MODEL, copy(params), data, path=path, epochs=2, batch_size=23, optimizer=optimizer, progress=False
        )
        assert_trees_close(trained, expected, rtol=1e-10, atol=1e-12)
        assert history.train_loss[-1] < 0.8 * initial_loss, (path, history.train_loss, initial_loss)


def test_history_and_callback():
    rows = []
    _, history = fnn.fit(
        MODEL, init(), toy_data(), epochs=3, batch_size=23, optimizer=0.5, progress=False, callbacks=[rows.append]
    )
    for column in COLUMNS + ("epoch_s",):
        assert getattr(history, column).shape == (3,)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and history.rows() == rows
    assert set(rows[0]) == {"epoch", *COLUMNS, "epoch_s"}
    assert history.train_loss[-1] < history.train_loss[0]
    assert 0 < history.compile_s < history.wall_s
    assert np.all((0 <= history.test_err) & (history.test_err <= 1))


@pytest.mark.parametrize("train_metrics", ["batches", "full"])
def test_the_history_counts_each_epochs_work_and_sets_its_rate_against_the_machine(train_metrics):
    n_train, n_test, batch = 230, 50, 32  # 7 full batches and one of 6
    model = fnn.nn.mlp([6, 8, 3], dtype=jnp.float64)  # no biases: the products are the whole of the counted work
    _, history = fnn.fit(
        model, init(model), toy_data(), epochs=2, batch_size=batch, progress=False, train_metrics=train_metrics
    )
    # per example, a forward pass is 2 (6*8 + 8*3) FLOPs of products; training triples it but for the first dx,
    # which nothing uses
    products = 2 * (6 * 8 + 8 * 3)
    evaluated = n_test + (n_train if train_metrics == "full" else 0)
    least = n_train * (products + 2 * products - 2 * 6 * 8) + evaluated * products
    assert history.epoch_flops.shape == (2,) and history.epoch_flops[0] == history.epoch_flops[1] == least
    assert history.work.dtype == "float64" and history.work.note == ""
    np.testing.assert_allclose(history.flops_per_s, history.epoch_flops / history.epoch_s)
    np.testing.assert_allclose(history.machine_fraction(1e9), history.flops_per_s / 1e9)
    rate = types.SimpleNamespace(flops_per_s=2e9)  # a fnn.bench.MachineRate: fit measures none itself
    np.testing.assert_allclose(history.machine_fraction(rate), history.flops_per_s / 2e9)


def test_a_loss_without_an_error_rate_has_no_error_columns():
    """mse on a regression problem: the errors are None and rows() leave them out."""
    data, rows = regression_data(), []
    model = fnn.nn.mlp([3, 8, 2], bias=True, dtype=jnp.float64)
    params = init(model, (3,))
    trained, history = fnn.fit(
        model,
        copy(params),
        data,
        loss=fnn.losses.mse,
        epochs=4,
        batch_size=10,
        optimizer=0.05,
        progress=False,
        callbacks=[rows.append],
    )
    assert history.train_err is None and history.test_err is None
    assert history.rows() == rows and set(rows[0]) == {"epoch", "train_loss", "test_loss", "epoch_s"}
    assert history.train_loss.shape == (4,) and history.train_loss[-1] < 0.5 * history.train_loss[0]
    loss, err = fnn.loop.evaluate(model, fnn.losses.mse, trained, data.x_test, data.y_test)
    assert err is None
    np.testing.assert_allclose(history.test_loss[-1], loss, rtol=1e-12)  # the same float64 mean, chunked once more


def test_fit_takes_any_input_shape_a_conv_net_on_images():
    """A small conv net on ``[N, 8, 8, 1]`` images trains through fit (the backprop path: flatten's
    backward must give the gradient its image shape back); 60 rows in batches of 16 leave a remainder."""
    model = fnn.nn.serial(
        fnn.nn.conv2d(4, 3, dtype=jnp.float64), fnn.nn.relu, fnn.nn.flatten(), fnn.nn.dense(3, dtype=jnp.float64)
    )
    data = image_data()
    _, history = fnn.fit(
        model, init(model, (8, 8, 1)), data, path="backprop", epochs=3, batch_size=16, optimizer=0.05, progress=False
    )
    assert history.train_loss[-1] < 0.8 * history.train_loss[0], history.train_loss
    assert history.train_err.shape == history.test_err.shape == (3,)


def test_shuffling_is_seeded_and_changes_the_path():
    data = toy_data()
    runs = [
        fnn.fit(MODEL, init(), data, epochs=2, batch_size=10, progress=False, shuffle_key=key)[1].train_loss
        for key in (jax.random.key(1), jax.random.key(1), jax.random.key(2), None)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) and not np.array_equal(runs[0], runs[3])


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_evaluation_equals_one_pass(chunk):
    data = toy_data()
    params = init()
    loss, err = fnn.loop.evaluate(MODEL, CE, params, data.x_train, data.y_train, chunk=chunk)
    logits = MODEL.apply(params, data.x_train)
    np.testing.assert_allclose(loss, CE.apply(logits, data.y_train), rtol=1e-13)
    np.testing.assert_allclose(err, fnn.metrics.error_rate(logits, data.y_train), rtol=1e-7)


def test_fit_errors():
    data = toy_data()
    with pytest.raises(TypeError, match="data must have x_train, y_train, x_test and y_test"):
        fnn.fit(MODEL, init(), (data.x_train, data.y_train))
    with pytest.raises(ValueError, match="epochs must be .*got 0"):
        fnn.fit(MODEL, init(), data, epochs=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 230\]"):
        fnn.fit(MODEL, init(), data, batch_size=231)
    bad = types.SimpleNamespace(**{**vars(data), "y_test": data.y_test[:-1]})
    with pytest.raises(ValueError, match=r"test split.*\(50, 6\).*\(49,\)"):
        fnn.fit(MODEL, init(), bad)
    with pytest.raises(ValueError, match=r"unknown gradient path 'manual'.*'backprop'"):
        fnn.fit(MODEL, init(), data, path="manual")
    with pytest.raises(TypeError, match="loss must be an fnn loss"):
        fnn.fit(MODEL, init(), data, loss=fnn.ops.autodiff.cross_entropy)
    with pytest.raises(TypeError, match="model must be an fnn module"):
        fnn.fit(MODEL.apply, init(), data)


def test_one_epoch_of_the_recipe_on_mnist(mnist):
    """The notes' recipe, one epoch, on real MNIST: under 5% test error on every path."""
    dataset, _, _ = mnist
    model = fnn.nn.mlp([784, 500, 10])
    for path in fnn.PATHS:
        _, params = model.init(jax.random.key(0), (784,))
        _, history = fnn.fit(model, params, dataset, path=path, epochs=1, batch_size=100, optimizer=0.5, progress=False)
        assert history.test_err[0] < 0.05, (path, history.test_err)


# ------------------------------------------------------------------ callbacks and how steps are compiled
class Interrupt(fnn.loop.Callback):
    """Presses Ctrl-C at the end of ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, row):
        if run.epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_run_releases_its_checkpoints_and_resumes_to_the_same_end(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    options = {"epochs": 3, "batch_size": 23, "progress": False}
    want, _ = fnn.fit(MODEL, init(), toy_data(), **options)
    saving = fnn.loop.Checkpointing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fnn.fit(MODEL, init(), toy_data(), **options, callbacks=[saving, Interrupt(2)])
    assert saving.checkpoints.closed
    resumed = fnn.loop.Checkpointing(tmp_path, resume=True)
    got, history = fnn.fit(MODEL, init(), toy_data(), **options, callbacks=[resumed])
    assert resumed.checkpoints.closed and len(history.train_loss) == 3
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


class CountSteps(fnn.loop.Callback):
    every_steps = 3

    def __init__(self):
        self.seen = []

    def on_steps(self, run):
        self.seen.append((run.epoch, run.step))


def test_a_callback_runs_every_n_steps_and_can_stop_training_early():
    counter = CountSteps()
    stopper = fnn.loop.EarlyStopping("train_loss", patience=1, min_delta=10.0)  # no epoch improves by 10
    _, history = fnn.fit(
        MODEL, init(), toy_data(), epochs=5, batch_size=23, progress=False, callbacks=[counter, stopper]
    )
    # 230 rows: 10 full batches of 23 a epoch; the callback runs after steps 3, 6 and 9 of each epoch trained.
    assert len(history.train_loss) == 2 and stopper.best_epoch == 1
    assert counter.seen == [(1, 3), (1, 6), (1, 9), (2, 3), (2, 6), (2, 9)]


CONV = fnn.nn.serial(
    fnn.nn.conv2d(4, 3, dtype=jnp.float64), fnn.nn.relu, fnn.nn.flatten(), fnn.nn.dense(3, dtype=jnp.float64)
)


@pytest.mark.parametrize("model, data", [(MODEL, toy_data), (CONV, image_data)], ids=["mlp", "conv"])
@pytest.mark.parametrize("path", fnn.PATHS)
def test_a_step_at_a_time_gives_the_whole_epoch_scans_result_bit_for_bit(model, data, path):
    data = data()
    params = init(model, data.x_train.shape[1:])
    runs = [
        fnn.fit(
            model, params, data, path=path, epochs=2, batch_size=16, optimizer=0.05, progress=False, steps_per_call=n
        )
        for n in (1, 2, None)
    ]
    for got, _ in runs[:2]:
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(runs[2][0])))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a rule for XLA's CPU backend")
def test_the_autodiff_path_steps_one_at_a_time_where_its_program_runs_an_xla_convolution(monkeypatch):
    """Read from the step's program, not from the layers' names: a convolution in XLA's form makes JAX's own
    gradient run XLA convolutions (slow inside a loop body on a CPU), the matrix form none."""
    from fnn.loop import _fit

    chosen, choose = [], _fit._steps_per_call
    monkeypatch.setattr(_fit, "_steps_per_call", lambda *args: chosen.append(choose(*args)) or chosen[-1])
    data = fnn.data.synthetic(96, 16, shape=(6, 6, 1), classes=3)
    for form, path, steps in (("convolution", "autodiff", 1), ("matmul", "autodiff", 3), ("convolution", "custom", 3)):
        model = fnn.nn.serial(fnn.nn.conv2d(2, 3, form=form), fnn.nn.flatten(), fnn.nn.dense(3))
        params = model.init(jax.random.key(0), (6, 6, 1))[1]
        fnn.fit(model, params, data, epochs=1, batch_size=32, path=path, progress=False)
        assert chosen[-1] == steps, (form, path)


CACHED_RUN = """
import sys, jax, jax.monitoring, fnn
hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event) if event.endswith("cache_hits") else None)
folder = fnn.use_compilation_cache(sys.argv[1])
data = fnn.data.synthetic(64, 16, shape=(4,), classes=3)
model = fnn.nn.mlp([4, 8, 3])
_, history = fnn.fit(model, model.init(jax.random.key(0), (4,))[1], data, epochs=1, batch_size=16, progress=False)
print(len(hits), sorted(history.compile_seconds))
"""


def test_a_second_run_finds_its_programs_compiled_and_the_history_times_each_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's own cache, which this run must not see
    runs = [
        subprocess.run([sys.executable, "-c", CACHED_RUN, str(tmp_path)], capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    (first, names), (second, _) = (r.stdout.split(maxsplit=1) for r in runs)
    assert int(first) == 0 and int(second) >= 2, (first, second)  # the epoch's end and its steps, found on disk
    assert names.strip() == "['end', 'steps[4]']"
