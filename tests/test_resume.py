"""fit across interruptions and reuse: early stopping decided from the history, the configuration a resume checks,
and models that train in bfloat16/float16 or take token ids behind a flatten."""

import math
import types

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
    assert "optimizer: its first updates on a fixed probe differ" in message
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
    probes = [_config.optimizer_updates(o, params) for o in (optax.adam(1e-3), optax.adam(1e-3), optax.adam(2e-3))]
    assert probes[0] == probes[1]
    assert _config.differences({"optimizer_updates": probes[0]}, {"optimizer_updates": probes[1]}) == []
    assert _config.differences({"optimizer_updates": probes[0]}, {"optimizer_updates": probes[2]})
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
