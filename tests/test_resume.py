"""fit across interruptions and reuse: early stopping decided from the history, the configuration a resume checks,
and models that train in bfloat16/float16 or take token ids behind a flatten."""

import functools
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_loop import MODEL, init, toy_data

import fnn
from fnn import CheckpointError, DataError, nn
from fnn.loop import _config

OPTIONS = {"batch_size": 23, "progress": False}


def stopper():
    """Stops after epoch 2 on the toy problem: epoch 1 improves on inf, no later epoch improves by 10."""
    return fnn.loop.EarlyStopping("train_loss", patience=1, min_delta=10.0)


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_early_stopping_resumed_stops_where_the_uninterrupted_run_stops_and_a_rerun_trains_no_further(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    want, history = fnn.fit(MODEL, init(), toy_data(), epochs=6, **OPTIONS, callbacks=[stopper()])
    assert len(history.rows()) == 2
    first = fnn.loop.Checkpointing(tmp_path)
    fnn.fit(MODEL, init(), toy_data(), epochs=1, **OPTIONS, callbacks=[first, stopper()])  # "interrupted" after 1
    for _ in range(2):  # resumed, then the same command once more
        again = fnn.loop.Checkpointing(tmp_path, resume=True)
        got, resumed = fnn.fit(MODEL, init(), toy_data(), epochs=6, **OPTIONS, callbacks=[again, stopper()])
        assert len(resumed.rows()) == 2 and same(got, want)


def test_one_early_stopping_object_serves_two_runs_each_from_scratch():
    watch = fnn.loop.EarlyStopping("train_loss", patience=1)
    fnn.fit(MODEL, init(), toy_data(), epochs=3, **OPTIONS, callbacks=[watch])
    _, history = fnn.fit(MODEL, init(seed=1), toy_data(seed=1), epochs=2, **OPTIONS, callbacks=[watch])
    assert watch.best == min(history.train_loss) and watch.best_epoch == int(np.argmin(history.train_loss)) + 1


@pytest.mark.parametrize("first", [math.inf, math.nan])
def test_early_stopping_takes_a_first_value_that_is_not_finite(first):
    watch = fnn.loop.EarlyStopping("test_loss", patience=2)
    run = types.SimpleNamespace(history=[], stop=False)
    for epoch, value in enumerate([first, math.nan], start=1):
        run.history.append({"epoch": epoch, "test_loss": value})
        watch.on_epoch_end(run, run.history[-1])
    assert run.stop and watch.best_epoch is None  # two epochs without an improvement: patience spent


def bn_dropout(momentum, rate):
    f64 = {"dtype": jnp.float64}
    return nn.serial(nn.dense(8, **f64), nn.batch_norm(momentum, **f64), nn.relu, nn.dropout(rate), nn.dense(3, **f64))


def test_resuming_with_other_module_settings_or_another_optimizer_is_refused_naming_each_difference(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    model = bn_dropout(0.9, 0.1)
    params = model.init(jax.random.key(0), (6,))[1]
    state = model.init_state((6,))
    checkpoints = [fnn.loop.Checkpointing(tmp_path)]
    fnn.fit(model, params, toy_data(), epochs=1, optimizer=0.5, **OPTIONS, state=state, callbacks=checkpoints)
    resume = fnn.loop.Checkpointing(tmp_path, resume=True)
    with pytest.raises(CheckpointError) as caught:
        fnn.fit(
            bn_dropout(0.0, 0.9),
            params,
            toy_data(),
            epochs=2,
            optimizer=0.001,
            shuffle_key=jax.random.key(1),
            loss=fnn.losses.multiclass_hinge(2.0),
            **OPTIONS,
            state=state,
            callbacks=[resume],
        )
    message = str(caught.value)
    assert "model serial[1] batch_norm: momentum: checkpoint 0.9, this run 0.0" in message
    assert "model serial[3] dropout: rate: checkpoint 0.1, this run 0.9" in message
    assert (
        "optimizer differs: optimizer.update.update_fns[1].tx.update.step_size: checkpoint -0.5, this run -0.001"
        in (message)
    ), message
    assert "key: checkpoint [0, 0], this run [0, 1]" in message
    assert (
        "loss: checkpoint {'loss': 'cross_entropy'}, this run {'loss': 'multiclass_hinge', 'settings': {'margin': 2.0}}"
        in message
    )


def test_the_configuration_names_every_setting_and_tells_optimizers_apart():
    causal = [nn.serial(nn.attention(2, 4, causal=c), nn.flatten()).describe() for c in (False, True)]
    assert _config.differences({"model": causal[0]}, {"model": causal[1]}) == [
        "model serial[0] attention: causal: checkpoint False, this run True"
    ]
    params = init()
    probes = [_config.optimizer_updates(o, params, 40) for o in (optax.adam(1e-3), optax.adam(1e-3), optax.adam(2e-3))]
    assert probes[0] == probes[1] and list(probes[0]) == ["1", "2", "4", "8", "16", "32", "40"]
    assert _config.differences({"optimizer_updates": probes[0]}, {"optimizer_updates": probes[1]}) == []
    assert (
        "differ after 1 steps"
        in _config.differences({"optimizer_updates": probes[0]}, {"optimizer_updates": probes[2]})[0]
    )
    longer = _config.optimizer_updates(optax.adam(1e-3), params, 100)  # a run extended: the steps both cover agree
    assert _config.differences({"optimizer_updates": probes[0]}, {"optimizer_updates": longer}) == []
    assert "dense(n_out=8, dtype=float64)" in repr(nn.dense(8, dtype=jnp.float64))


@pytest.mark.parametrize(
    "dtype, path",
    [(jnp.bfloat16, p) for p in fnn.PATHS] + [(jnp.float16, "custom")],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_a_low_precision_model_trains_through_fit_with_float32_metrics_and_statistics(dtype, path):
    model = nn.serial(
        nn.dense(8, dtype=dtype), nn.batch_norm(dtype=dtype), nn.relu, nn.dropout(0.2), nn.dense(3, dtype=dtype)
    )
    data = toy_data()
    low = types.SimpleNamespace(**{k: v.astype(dtype) if k.startswith("x") else v for k, v in vars(data).items()})
    params = model.init(jax.random.key(0), (6,))[1]
    state = model.init_state((6,))
    trained, state, history = fnn.fit(model, params, low, path=path, epochs=2, optimizer=0.1, **OPTIONS, state=state)
    assert all(a.dtype == dtype for a in jax.tree.leaves(trained))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state))
    assert all(np.isfinite(row[c]) for row in history.rows() for c in ("train_loss", "test_loss", "test_err"))
    assert history.train_loss[-1] < history.train_loss[0]


def test_token_ids_behind_a_flatten_are_checked_by_the_embedding():
    model = nn.serial(
        nn.flatten(), nn.embedding(10, 4, dtype=jnp.float64), nn.flatten(), nn.dense(3, dtype=jnp.float64)
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, (40, 5))
    data = types.SimpleNamespace(x_train=ids, y_train=ids[:, 0] % 3, x_test=ids[:10], y_test=ids[:10, 0] % 3)
    params = model.init(jax.random.key(0), (5,))[1]
    _, history = fnn.fit(model, params, data, epochs=1, batch_size=10, progress=False)
    assert np.isfinite(history.train_loss[0])
    data.x_train = np.where(np.arange(40)[:, None] == 3, 10, ids)
    with pytest.raises(DataError, match=r"train inputs must be token ids in \[0, 10\)"):
        fnn.fit(model, params, data, epochs=1, batch_size=10, progress=False)


# ------------------------------------------------------------------ a resume is the same run: what identifies it
def _differences(a, b, name="optimizer"):
    return _config.differences({name: _config._identified(name, a)}, {name: _config._identified(name, b)})


@pytest.mark.parametrize(
    "before, after, setting",
    [
        (optax.cosine_decay_schedule(0.1, 1000), optax.cosine_decay_schedule(0.1, 100000), "decay_steps"),
        (optax.piecewise_constant_schedule(0.1, {5: 0.1}), optax.piecewise_constant_schedule(0.1, {500: 0.1}), "[5]"),
        (
            optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 1000),
            optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 5000),
            "decay_steps",
        ),
    ],
    ids=["cosine", "piecewise", "warmup_cosine"],
)
def test_an_optimizer_whose_schedule_differs_only_late_is_another_optimizer(before, after, setting):
    assert _differences(optax.sgd(before), optax.sgd(before)) == []
    found = _differences(optax.sgd(before), optax.sgd(after))
    assert len(found) == 1 and setting in found[0] and found[0].startswith("optimizer differs: "), found


def test_an_optimizer_whose_first_updates_are_all_zero_is_told_apart_and_refused_on_resume(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    params = init()

    def run(learning_rate, **kwargs):
        optimizer = optax.MultiSteps(optax.sgd(learning_rate), 4)
        return fnn.fit(MODEL, params, toy_data(), epochs=2, optimizer=optimizer, **OPTIONS, **kwargs)

    run(0.1, callbacks=[fnn.loop.Checkpointing(tmp_path, every_epochs=1)])
    with pytest.raises(CheckpointError, match=r"step_size: checkpoint -0.1, this run -0.5"):
        run(0.5, callbacks=[fnn.loop.Checkpointing(tmp_path, resume=True)])
    run(0.1, callbacks=[fnn.loop.Checkpointing(tmp_path, resume=True)])  # the same run resumes


def make_noise(sigma):
    def noise(key, x):
        return x + sigma * jax.random.normal(key, x.shape, x.dtype)

    return noise


class Scaled:
    """A callable augmentation object."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, key, x):
        return x * self.factor


def _scale(key, x, factor):
    return x * factor


def test_an_augmentation_is_identified_by_its_code_and_bound_values():
    assert "augment differs: augment.sigma: checkpoint 0.1, this run 5.0" in _differences(
        make_noise(0.1), make_noise(5.0), "augment"
    )
    assert _differences(make_noise(0.1), make_noise(0.1), "augment") == []
    assert _differences(Scaled(2.0), Scaled(2.0), "augment") == []  # two instances, one augmentation
    assert "augment.factor: checkpoint 2.0, this run 3.0" in _differences(Scaled(2.0), Scaled(3.0), "augment")[0]
    partial = functools.partial(_scale, factor=2.0)
    assert _differences(partial, functools.partial(_scale, factor=2.0), "augment") == []
    assert "keywords['factor']" in _differences(partial, functools.partial(_scale, factor=0.5), "augment")[0]
    other_code = _differences(lambda key, x: x + 1, lambda key, x: x - 1, "augment")
    assert other_code == ["augment: its code differs (another function, or other values it reads)"]


IDENTITY_IN_A_NEW_PROCESS = """
import functools, json, sys
sys.path.insert(0, {tests!r})
import optax
from test_resume import Scaled, _scale, make_noise
from fnn.loop._identity import identify
adamw = optax.adamw(optax.cosine_decay_schedule(0.1, 99))
fns = [make_noise(0.1), Scaled(2.0), functools.partial(_scale, factor=2.0), adamw]
print(json.dumps([identify(f).digest for f in fns]))
"""


def test_identical_functions_have_one_identity_in_every_process():
    from fnn.loop._identity import identify

    here = [identify(f).digest for f in (make_noise(0.1), Scaled(2.0), functools.partial(_scale, factor=2.0))]
    here.append(identify(optax.adamw(optax.cosine_decay_schedule(0.1, 99))).digest)
    code = IDENTITY_IN_A_NEW_PROCESS.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == here


def test_a_resume_refuses_other_augmentation_or_other_training_data_of_the_same_size(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    params, data = init(), toy_data()
    reversed_data = types.SimpleNamespace(
        **{**vars(data), "x_train": data.x_train[::-1], "y_train": data.y_train[::-1]}
    )

    def run(folder, data, augment, resume=False):
        checkpoints = [fnn.loop.Checkpointing(tmp_path / folder, resume=resume)]
        return fnn.fit(MODEL, params, data, epochs=1 + resume, augment=augment, **OPTIONS, callbacks=checkpoints)

    run("noise", data, make_noise(0.1))
    with pytest.raises(CheckpointError, match=r"augment differs: augment.sigma: checkpoint 0.1, this run 5.0"):
        run("noise", data, make_noise(5.0), resume=True)
    run("noise", data, make_noise(0.1), resume=True)
    run("data", data, None)
    with pytest.raises(CheckpointError, match=r"training data: other contents \(checkpoint \w+ from arrays"):
        run("data", reversed_data, None, resume=True)


def test_training_data_is_identified_by_its_records_checksums_or_its_records():
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    assert _config.data_identity(x, y) == _config.data_identity(x.copy(), y.copy())
    assert _config.data_identity(x, y) != _config.data_identity(x[::-1], y[::-1])
    pairs = list(zip(x, y))
    assert _config.data_identity(source=pairs)["how"] == "every record"
    assert _config.data_identity(source=pairs) != _config.data_identity(source=pairs[::-1])
    named = types.SimpleNamespace(fingerprint="abc", __len__=lambda: 6)
    assert _config.data_identity(source=named) == {"digest": "abc", "how": "record checksums"}


def test_what_cannot_be_identified_is_said_in_one_line():
    class Opaque:
        __slots__ = ()

        def __call__(self, key, x):
            return x

    with pytest.warns(fnn.UnidentifiedWarning, match=r"the augment holds state that cannot be read \(augment "):
        _config._identified("augment", Opaque())
