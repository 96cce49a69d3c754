"""State and randomness: batch norm and dropout, the contract around them, the paths, fit and the checks.

The rules themselves are in the conformance table (``test_modules.py``,
both modes); kills, resumption and several devices with a stateful model in
``test_robust.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loop import toy_data as loop_toy_data

import fnn
from fnn import DataError, context, nn
from fnn.module import leaf, structural

CE = fnn.losses.cross_entropy
F64 = jnp.float64


def normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def bn_reference(x, gamma, beta, state, momentum, eps):
    """NumPy batch norm in training: ``(y, new_state)``, statistics over every axis but the last."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - 1))
    mu, var, m = x.mean(axes), x.var(axes), x.size // x.shape[-1]
    y = beta + gamma * (x - mu) / np.sqrt(var + eps)
    new = {
        "mean": momentum * state["mean"] + (1 - momentum) * mu,
        "var": momentum * state["var"] + (1 - momentum) * var * m / (m - 1),
    }
    return y, new


# ------------------------------------------------------------------ batch norm
@given(shape=st.sampled_from([(5, 3), (2, 3, 4, 2), (4, 6, 1)]), momentum=st.sampled_from([0.0, 0.5, 0.9]))
def test_batch_norm_training_normalises_by_the_batch_and_updates_the_running_statistics(shape, momentum):
    """Float64 against NumPy: the same formula in another order, so within 1e-12."""
    bn = nn.batch_norm(momentum, eps=1e-3, dtype=F64)
    c = shape[-1]
    params = {"gamma": normal(1, c), "beta": normal(2, c)}
    state = {"mean": normal(3, c), "var": 1 + normal(4, c) ** 2}
    x = normal(0, *shape)
    y, new_state = bn.apply(params, x, state=state, train=True)
    want_y, want_state = bn_reference(x, params["gamma"], params["beta"], jax.device_get(state), momentum, 1e-3)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    for name in ("mean", "var"):
        np.testing.assert_allclose(new_state[name], want_state[name], rtol=1e-12)
        assert new_state[name].dtype == state[name].dtype


def test_batch_norm_evaluation_uses_the_running_statistics_and_keeps_them():
    bn = nn.batch_norm(eps=1e-3, dtype=F64)
    params = {"gamma": normal(1, 3), "beta": normal(2, 3)}
    state = {"mean": normal(3, 3), "var": 1 + normal(4, 3) ** 2}
    x = normal(0, 4, 3)
    y, kept = bn.apply(params, x, state=state, train=False)
    np.testing.assert_allclose(y, params["beta"] + params["gamma"] * (x - state["mean"]) / np.sqrt(state["var"] + 1e-3))
    assert kept is state
    # One example at a time gives the same rows: evaluation does not depend on the batch.
    rows = jnp.concatenate([bn.apply(params, x[i : i + 1], state=state, train=False)[0] for i in range(4)])
    np.testing.assert_allclose(rows, y, rtol=1e-14)


def test_batch_norm_state_and_init():
    bn = nn.batch_norm()
    shape, params = bn.init(jax.random.key(0), (5, 5, 4))
    assert shape == (5, 5, 4) and params["gamma"].shape == params["beta"].shape == (4,)
    state = bn.init_state((5, 5, 4))
    np.testing.assert_array_equal(state["mean"], np.zeros(4))
    np.testing.assert_array_equal(state["var"], np.ones(4))
    assert bn._has_state and not bn._has_randomness and bn._contextual


def test_batch_norm_refuses_to_train_on_one_value_per_channel():
    params = {"gamma": jnp.ones(3), "beta": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"batch_norm: training normalises each channel by .* at least 2 values"):
        nn.batch_norm().apply(params, jnp.ones((1, 3)), state=nn.batch_norm().init_state((3,)), train=True)
    evaluated = nn.batch_norm().apply(params, jnp.ones((1, 3)), state=nn.batch_norm().init_state((3,)), train=False)
    assert evaluated[0].shape == (1, 3)


def test_batch_norm_keeps_bfloat16_models_statistics_in_float32():
    """bfloat16 running statistics would round most updates away (a change under 0.4% of the value is lost)."""
    bn = nn.batch_norm(dtype=jnp.bfloat16)
    params, state = bn.init(jax.random.key(0), (3,))[1], bn.init_state((3,))
    assert state["mean"].dtype == state["var"].dtype == jnp.float32
    x = (1.1 * normal(0, 64, 3)).astype(jnp.bfloat16)
    step = jax.jit(lambda p, x, s: bn.apply(p, x, state=s, train=True))
    for _ in range(30):
        y, state = step(params, x, state)
    assert y.dtype == jnp.bfloat16 and state["var"].dtype == jnp.float32
    want = np.var(np.asarray(x, np.float64), axis=0, ddof=1)
    np.testing.assert_allclose(state["var"], want * (1 - 0.9**30) + 0.9**30, rtol=1e-2)


# ------------------------------------------------------------------ dropout
def test_dropout_zeroes_a_fraction_rate_and_scales_the_rest():
    x = jnp.ones((200, 50))
    y = nn.dropout(0.3).apply((), x, key=jax.random.key(0), train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)  # five standard deviations of a binomial fraction
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_is_the_identity_in_evaluation_and_at_rate_zero():
    x = normal(0, 4, 5)
    np.testing.assert_array_equal(nn.dropout(0.5).apply((), x, train=False), x)
    np.testing.assert_array_equal(nn.dropout(0.0).apply((), x, key=jax.random.key(0), train=True), x)


def test_dropout_masks_follow_the_key_in_every_dtype():
    x = jnp.ones((8, 16))
    drop = nn.dropout(0.5)
    masks = [
        drop.apply((), x.astype(d), key=jax.random.key(1), train=True) != 0 for d in (F64, jnp.float32, jnp.bfloat16)
    ]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    assert not np.array_equal(masks[0], drop.apply((), x, key=jax.random.key(2), train=True) != 0)


# ------------------------------------------------------------------ the contract
def test_contextual_calls_explain_what_is_missing():
    with pytest.raises(TypeError, match=r"batch_norm keeps state: pass state=model.init_state\(input_shape\)"):
        nn.batch_norm().apply({"gamma": jnp.ones(3), "beta": jnp.zeros(3)}, jnp.ones((2, 3)), train=True)
    with pytest.raises(TypeError, match=r"serial keeps state \(in batch_norm\): pass state=model.init_state"):
        nn.serial(nn.dense(3), nn.batch_norm()).apply([{"w": jnp.ones((3, 3))}, {}], jnp.ones((2, 3)), train=True)
    with pytest.raises(
        TypeError,
        match=r"serial behaves differently in training and in evaluation \(through "
        r"dropout\): pass train=True or train=False",
    ):
        nn.serial(nn.dropout(0.5)).apply([()], jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="dropout: training draws from a random key; pass key="):
        nn.dropout(0.5).apply((), jnp.ones((2, 3)), train=True)
    params = {"gamma": jnp.ones(3), "beta": jnp.zeros(3)}
    with pytest.raises(TypeError, match=r"batch_norm: state must be a dict with keys 'mean' and 'var', got \['mu'\]"):
        nn.batch_norm().apply(params, jnp.ones((2, 3)), state={"mu": 0}, train=False)
    with pytest.raises(ValueError, match=r"batch_norm: state\['var'\] must have shape \(3,\), got \(2,\)"):
        nn.batch_norm().apply(params, jnp.ones((2, 3)), state={"mean": jnp.zeros(3), "var": jnp.ones(2)}, train=False)
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be in \[0, 1\), got 1.0"):
        nn.batch_norm(momentum=1)
    with pytest.raises(ValueError, match=r"dropout: rate must be in \[0, 1\), got -0.1"):
        nn.dropout(-0.1)


def test_the_wiring_must_pass_the_context_on():
    with pytest.raises(TypeError, match="a leaf with state or randomness computes apply from its forward"):
        leaf("x", forward=lambda p, x, **k: (x, None, ()), backward=None, apply=lambda p, x: x, stochastic=True)
    with pytest.raises(TypeError, match="wrap: a child has state or randomness; the wiring must pass it on"):
        structural(
            "wrap",
            init=None,
            apply=lambda p, x: x,
            forward=lambda p, x: (x, None),
            backward=None,
            children=(nn.dropout(0.5),),
            rebuild=print,
        )
    with pytest.raises(TypeError, match="wrap: give either apply and forward .* or run and run_forward"):
        structural("wrap", init=None, apply=lambda p, x: x, backward=None, rebuild=print)


def test_serial_gives_each_child_its_own_state_and_key():
    net = nn.serial(nn.dropout(0.5), nn.dense(4), nn.batch_norm(), nn.dropout(0.5))
    state = net.init_state((4,))
    assert state[0] == () and state[1] == () and set(state[2]) == {"mean", "var"} and state[3] == ()
    # Both dropouts see ones: the first directly, the second through an identity dense and no-op batch norm.
    ones = jnp.ones((64, 4))
    first = nn.dropout(0.5).apply((), ones, key=context.child_key(jax.random.key(0), 0), train=True)
    second = nn.dropout(0.5).apply((), ones, key=context.child_key(jax.random.key(0), 3), train=True)
    assert not np.array_equal(first != 0, second != 0)
    plain_mlp = nn.mlp([4, 4, 2])
    assert not plain_mlp._contextual and plain_mlp.init_state((4,)) == ()


def test_residual_gives_its_block_the_key_fold_in_key_0():
    x, key = jnp.ones((16, 8)), jax.random.key(0)
    through = nn.residual(nn.dropout(0.5)).apply((), x, key=key, train=True) - x
    np.testing.assert_array_equal(through, nn.dropout(0.5).apply((), x, key=context.child_key(key, 0), train=True))


def test_the_mode_is_a_python_bool_and_state_is_never_optional():
    params = {"gamma": jnp.ones(3), "beta": jnp.zeros(3)}
    for module in (nn.batch_norm(), nn.batch_norm().by_rules):
        with pytest.raises(TypeError, match="batch_norm keeps state: pass state="):
            module.apply(params, jnp.ones((2, 3)), train=False)
        with pytest.raises(TypeError, match="batch_norm behaves differently in training and in evaluation: pass"):
            module.apply(params, jnp.ones((2, 3)), state=module.init_state((3,)))
    with pytest.raises(TypeError, match="dropout: train must be True or False .*, got 'no'"):
        nn.dropout(0.5).apply((), jnp.ones((2, 3)), key=jax.random.key(0), train="no")
    with pytest.raises(TypeError, match="serial: train must be True or False"):
        nn.serial(nn.dropout(0.5)).apply([()], jnp.ones((2, 3)), train=1)


def test_residual_threads_the_state_of_its_block():
    block = nn.residual(nn.serial(nn.dense(3, dtype=F64), nn.batch_norm(dtype=F64)))
    _, params = block.init(jax.random.key(0), (3,))
    state = block.init_state((3,))
    x = normal(0, 6, 3)
    y, new_state = block.apply(params, x, state=state, train=True)
    inner, inner_state = block.children[0].apply(params, x, state=state, train=True)
    np.testing.assert_array_equal(y, x + inner)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(inner_state)))


# ------------------------------------------------------------------ the paths
LAYERS = {
    "dense": lambda: nn.dense(5, dtype=F64),
    "tanh": lambda: nn.tanh,
    "batch_norm": lambda: nn.batch_norm(0.8, dtype=F64),
    "dropout": lambda: nn.dropout(0.4),
    "layer_norm": lambda: nn.layer_norm(dtype=F64),
    "residual": lambda: nn.residual(nn.serial(nn.batch_norm(dtype=F64), nn.dropout(0.2), nn.dense(5, dtype=F64))),
}


@settings(max_examples=5)  # each draw compiles three paths
@given(names=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_random_networks_with_batch_norm_and_dropout_agree_on_every_path(names, seed):
    """Float64: the loss, the new state and the gradient of every path within 1e-10 of autodiff's (the same
    sums in another order); a key gives one mask on every path."""
    model = nn.serial(nn.dense(5, dtype=F64), *(LAYERS[n]() for n in names), nn.dense(3, dtype=F64))
    _, params = model.init(jax.random.key(seed), (4,))
    x, y = normal(seed, 8, 4), jnp.arange(8) % 3
    state, key = model.init_state((4,)), jax.random.key(seed)
    fns = {p: fnn.value_and_grad(model, CE, path=p, train=True) for p in fnn.PATHS}
    results = jax.jit(lambda *args: {p: f(*args, state=state, key=key) for p, f in fns.items()})(params, x, y)
    want = results["autodiff"]
    for path in ("custom", "backprop"):
        for got, expected in zip(jax.tree.leaves(results[path]), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=path)


@pytest.mark.parametrize("path, calls", [("custom", 7), ("autodiff", 0)])
def test_the_custom_path_keeps_every_rule_inside_contextual_wiring(path, calls):
    """Six leaves (two inside a residual) and the loss: each one custom rule call on the custom path, none on
    autodiff; applying children through their ``forward`` would leave JAX to differentiate them."""
    block = nn.residual(nn.serial(nn.batch_norm(), nn.dense(4)))
    model = nn.serial(nn.dense(4), block, nn.relu, nn.dropout(0.5), nn.dense(3))
    _, params = model.init(jax.random.key(0), (5,))
    run_model, run_loss = (model.by_rules, CE.by_rules) if path == "custom" else (model, CE)
    x, y, state = jnp.ones((8, 5), jnp.float32), jnp.arange(8) % 3, model.init_state((5,))

    def objective(p):
        outputs, _ = run_model.apply(p, x, state=state, key=jax.random.key(0), train=True)
        return run_loss.apply(outputs, y)

    jaxpr = jax.make_jaxpr(objective)(params)
    assert str(jaxpr).count("custom_jvp_call") == calls


def test_training_steps_return_the_new_state_last():
    model = nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dropout(0.5), nn.dense(3))
    _, params = model.init(jax.random.key(0), (5,))
    state, batch = model.init_state((5,)), (normal(0, 8, 5).astype(jnp.float32), jnp.arange(8) % 3)
    grad_fn = fnn.value_and_grad(model, CE, train=True)
    value, grads, new_state = grad_fn(params, *batch, state=state, key=jax.random.key(1))
    assert value.shape == () and jax.tree.structure(grads) == jax.tree.structure(params)
    assert not np.array_equal(new_state[1]["mean"], state[1]["mean"])
    params2, metrics, state2 = fnn.train.sgd_update(model, CE, 0.1)(params, batch, state=state, key=jax.random.key(1))
    np.testing.assert_array_equal(state2[1]["mean"], new_state[1]["mean"])
    opt = optax.adam(1e-2)
    out = fnn.train.optimizer_update(model, CE, opt)(
        params, opt.init(params), batch, state=state, key=jax.random.key(1)
    )
    assert len(out) == 4 and set(out[2]) == {"loss", "error"}
    dropout_only = nn.serial(nn.dense(4), nn.dropout(0.5), nn.dense(3))
    dropout_params = dropout_only.init(jax.random.key(0), (5,))[1]
    assert len(fnn.value_and_grad(dropout_only, CE, train=True)(dropout_params, *batch, key=jax.random.key(1))) == 2
    with pytest.raises(TypeError, match="serial behaves differently in training and in evaluation"):
        fnn.value_and_grad(dropout_only, CE)
    with pytest.raises(TypeError, match="serial keeps state .*: pass state=model.init_state"):
        fnn.train.sgd_update(model, CE, 0.1)(params, batch, key=jax.random.key(1))


# ------------------------------------------------------------------ fit
def toy_data():
    """:func:`test_loop.toy_data`'s linear teacher, in float32: 160 training and 40 test rows of 6 features."""
    return loop_toy_data(160, 40, dtype=np.float32)


STATEFUL = nn.serial(nn.dense(16), nn.batch_norm(), nn.relu, nn.dropout(0.2), nn.dense(3))
FIT = {"epochs": 4, "batch_size": 32, "optimizer": optax.adam(0.05), "progress": False}


def test_fit_carries_state_and_keys_and_evaluates_in_evaluation_mode():
    data = toy_data()
    params = STATEFUL.init(jax.random.key(0), (6,))[1]
    state = STATEFUL.init_state((6,))
    got_params, got_state, history = fnn.fit(STATEFUL, params, data, **FIT, state=state)
    again_params, again_state, again = fnn.fit(STATEFUL, params, data, **FIT, state=state)
    same = lambda a, b: all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(got_params, again_params) and same(got_state, again_state)
    assert history.test_err[-1] < 0.2 and not same(got_state, STATEFUL.init_state((6,)))
    outputs, _ = STATEFUL.apply(got_params, data.x_test, state=got_state, train=False)  # evaluation: no key
    assert float(CE.error(outputs, data.y_test)) == pytest.approx(history.test_err[-1], abs=1e-6)
    # Another shuffle key (the run key) draws other masks.
    other = fnn.fit(STATEFUL, params, data, **FIT, state=state, shuffle_key=jax.random.key(9))[0]
    assert not same(other, got_params)
    with pytest.raises(TypeError, match=r"serial keeps state \(in batch_norm\): pass state=model.init_state"):
        fnn.fit(STATEFUL, params, data, **FIT)


@pytest.mark.slow  # about 15 s: many compiled paths
def test_what_comes_back_depends_only_on_what_was_passed():
    """A stateless and a stateful model, the same calls: the new state comes back exactly when state= went in."""
    data = toy_data()
    for model in (nn.serial(nn.dense(8), nn.relu, nn.dense(3)), nn.serial(nn.dense(8), nn.batch_norm(), nn.dense(3))):
        params, state = model.init(jax.random.key(0), (6,))[1], model.init_state((6,))
        x, y = data.x_train[:16], data.y_train[:16]
        assert model.apply(params, x, state=state, train=True)[0].shape == (16, 3)
        assert len(model.forward(params, x, state=state, train=True)) == 3
        for path in fnn.PATHS:
            value, (dparams, dx), new_state = fnn.value_and_grad(model, CE, path=path, train=True, inputs=True)(
                params, x, y, state=state
            )
            assert dx.shape == x.shape and jax.tree.structure(new_state) == jax.tree.structure(state), path
        assert len(fnn.train.sgd_update(model, CE, 0.1)(params, (x, y), state=state)) == 3
        trained = fnn.fit(model, params, data, **{**FIT, "epochs": 1}, state=state)
        assert len(trained) == 3 and jax.tree.structure(trained[1]) == jax.tree.structure(state)
    plain = nn.mlp([6, 3])
    params = plain.init(jax.random.key(0), (6,))[1]
    assert plain.apply(params, data.x_train[:4]).shape == (4, 3)  # no state in, none out
    assert len(fnn.value_and_grad(plain, CE)(params, data.x_train[:4], data.y_train[:4])) == 2


def test_every_path_returns_a_state_free_models_state_as_given():
    model = nn.mlp([4, 3])
    params = model.init(jax.random.key(0), (4,))[1]
    for path in fnn.PATHS:
        new_state = fnn.value_and_grad(model, CE, path=path)(
            params, jnp.ones((2, 4), jnp.float32), jnp.arange(2), state=()
        )[2]
        assert new_state == (), path


def test_fit_refuses_a_state_that_does_not_fit_the_model():
    params = STATEFUL.init(jax.random.key(0), (6,))[1]
    state = STATEFUL.init_state((6,))
    state[1] = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
    with pytest.raises(DataError, match=r"state\[1\]\['mean'\] has shape \(4,\), but the model .* expects \(16,\)"):
        fnn.fit(STATEFUL, params, toy_data(), **FIT, state=state)
    plain = nn.mlp([6, 3])
    with pytest.raises(DataError, match=r"mlp keeps no state: pass state=\(\) \(what model.init_state gives\)"):
        fnn.fit(plain, plain.init(jax.random.key(0), (6,))[1], toy_data(), **FIT, state={})


# ------------------------------------------------------------------ the checks
def test_check_module_skips_per_example_gradients_where_one_example_cannot_train():
    report = fnn.testing.check_module(
        nn.batch_norm(), (3,), batch_size=6, checks=("backward", "custom_vmap", "context")
    )
    assert report.ok and report["custom_vmap"].status == "skipped", str(report)
    assert "at least 2 values" in report["custom_vmap"].detail


def test_check_module_takes_a_context_only_for_a_contextual_module():
    with pytest.raises(ValueError, match="check_module: dense keeps no state and draws no key; pass neither"):
        fnn.testing.check_module(nn.dense(3), (5,), key=jax.random.key(0))
    with pytest.raises(TypeError, match="check_module: train must be True or False, got 1"):
        fnn.testing.check_module(nn.dropout(0.5), (5,), train=1)


def _scale_forgotten(rate):
    """Dropout whose backward forgets the ``1 / (1 - rate)`` scale."""
    right = nn.dropout(rate)

    def forward(params, x, *, state, key, train):
        return right.forward(params, x, state=state, key=key, train=train)

    def backward(params, mask, g):
        return (), g if mask is None else jnp.where(mask, g, 0.0)

    return leaf("dropout", init=right.init, forward=forward, backward=backward, stochastic=True)


@pytest.mark.slow  # about 15 s: many compiled paths
def test_the_checks_find_a_wrong_rule_in_a_network_with_state_and_randomness():
    model = nn.serial(
        nn.dense(6, dtype=F64), nn.batch_norm(dtype=F64), nn.relu, _scale_forgotten(0.5), nn.dense(3, dtype=F64)
    )
    _, params = model.init(jax.random.key(0), (4,))
    x, y = normal(0, 8, 4), jnp.arange(8) % 3
    report = fnn.inspect.wrong_rules(model, CE, params, x, y)
    assert [r.position for r in report.failed if r.own] == ["serial[3] dropout[train]"], str(report)
    assert fnn.inspect.wrong_rules(model, CE, params, x, y, train=False).ok  # in evaluation the mask is not used
    assert not fnn.testing.check_module(_scale_forgotten(0.5), (5,), checks=("backward", "custom")).ok
    compared = fnn.inspect.compare_paths(model, CE, params, x, y, paths=("autodiff", "custom"), timing=False)
    assert compared["custom"].max_rel_err > 0.1 and compared["autodiff"].max_rel_err < 1e-6
