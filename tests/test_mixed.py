"""Mixed precision (``nn.mixed_precision``): bfloat16 or float16 compute, float32 parameters, gradients, state and
outputs; float16's dynamic loss scaling (``fnn.train.DynamicLossScale``)."""

import functools
import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_train import spiral

import fnn
from fnn import nn

KEY = jax.random.key(0)
CE = fnn.losses.cross_entropy


def _dot_operand_dtypes(fn, *args):
    """The dtypes of every matrix product's operands in ``fn``'s program."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.update(str(v.aval.dtype) for v in eqn.invars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("path", fnn.PATHS)
def test_the_products_run_in_bfloat16_and_the_gradients_come_back_in_float32_on_every_path(path):
    """The optimizer sees float32 gradients of float32 weights; the loss, float32 outputs. The paths agree to
    bfloat16 rounding (a relative 2^-8 per rounding, a few roundings deep), not to float32's."""
    model = nn.mixed_precision(nn.mlp([6, 16, 3]))
    _, params = model.init(KEY, (6,))
    x, y = jax.random.normal(KEY, (32, 6), jnp.float32), jnp.arange(32) % 3
    grad_fn = fnn.value_and_grad(model, CE, path=path)
    value, grads = grad_fn(params, x, y)
    assert value.dtype == jnp.float32 and model.apply(params, x).dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert _dot_operand_dtypes(lambda p: grad_fn(p, x, y), params) == {"bfloat16"}
    _, want = fnn.value_and_grad(model, CE, path="autodiff")(params, x, y)
    _, full = fnn.value_and_grad(nn.mlp([6, 16, 3]), CE, path="autodiff")(params, x, y)
    for got, same, exact in zip(jax.tree.leaves(grads), jax.tree.leaves(want), jax.tree.leaves(full)):
        scale = float(jnp.max(jnp.abs(exact)))
        np.testing.assert_allclose(got, same, atol=2e-2 * scale)
        np.testing.assert_allclose(got, exact, atol=5e-2 * scale)  # bfloat16 against float32: a few 2^-8
        assert not np.array_equal(got, exact)  # it did compute in bfloat16


def test_batch_norms_statistics_stay_float32_and_token_ids_pass_uncast():
    model = nn.mixed_precision(nn.serial(nn.embedding(10, 8), nn.flatten(), nn.batch_norm(), nn.dense(3)))
    _, params = model.init(KEY, (4,))
    state = model.init_state((4,))
    ids = jnp.arange(32).reshape(8, 4) % 10
    grad_fn = fnn.value_and_grad(model, CE, path="custom", train=True)
    _, grads, new_state = grad_fn(params, ids, jnp.arange(8) % 3, state=state, key=KEY)
    assert {a.dtype for a in jax.tree.leaves(new_state)} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert not np.array_equal(new_state[2]["mean"], state[2]["mean"])


def test_a_mixed_precision_model_trains_through_fit_as_the_float32_one_does():
    x, y = spiral()  # two spirals: a net that trains, with a float32 error of 0 to beat
    data = types.SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)
    errors = {}
    net = nn.mlp([2, 32, 32, 2], bias=True)
    _, start = net.init(jax.random.key(1), (2,))
    for name, model in (("float32", net), ("bfloat16", nn.mixed_precision(net))):
        trained, history = fnn.fit(
            model, start, data, epochs=150, batch_size=200, optimizer=optax.adam(3e-2), progress=False
        )
        assert {p.dtype for p in jax.tree.leaves(trained)} == {jnp.dtype(jnp.float32)}
        errors[name] = float(history.test_err[-1])
    assert errors["float32"] < 0.05 and errors["bfloat16"] < errors["float32"] + 0.03, errors


def test_inputs_as_lists_are_arrays_as_for_any_module():
    model = nn.mixed_precision(nn.dense(2))
    _, params = model.init(KEY, (3,))
    assert model.apply(params, [[1.0, 2.0, 3.0]]).dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8, "foo"])
def test_a_compute_dtype_other_than_bfloat16_or_float16_is_refused_naming_the_choices(dtype):
    with pytest.raises(fnn.InputError, match="compute_dtype must be one of bfloat16, float16, got .*; for float32"):
        nn.mixed_precision(nn.dense(3), dtype)


def test_mixed_precision_wraps_only_modules():
    with pytest.raises(fnn.InputError, match="mixed_precision: block must be an fnn module, got function"):
        nn.mixed_precision(lambda x: x)


# ---------------------------------------------------------------- float16 and dynamic loss scaling
Scale = fnn.train.DynamicLossScale
X, Y = jax.random.normal(KEY, (32, 6), jnp.float32), jnp.arange(32) % 3


def recorder():
    """An optimizer that moves nothing and keeps the gradient it is given as its state: what the optimizer sees."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def seen_gradient(model, params, loss_scale, path, accumulate=1):
    """The gradient the optimizer gets from one :func:`fnn.train.train_step` of ``model`` with ``loss_scale``."""
    state = fnn.train.TrainState.create(params, recorder(), loss_scale=loss_scale)
    after, metrics = fnn.train.train_step(model, CE, recorder(), path=path, accumulate=accumulate)(state, (X, Y))
    assert "skipped" not in metrics or not metrics["skipped"]
    return after.opt_state


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


SPIRAL_X, SPIRAL_Y = spiral(50)
SPIRAL = types.SimpleNamespace(x_train=SPIRAL_X, y_train=SPIRAL_Y, x_test=SPIRAL_X, y_test=SPIRAL_Y)
SPIRAL_NET = nn.mlp([2, 16, 2], bias=True)
SPIRAL_START = SPIRAL_NET.init(jax.random.key(1), (2,))[1]
SPIRAL_FIT = {"epochs": 8, "batch_size": 25, "optimizer": optax.adam(3e-2), "progress": False}


@functools.cache
def float32_spiral_losses():
    """The float32 net's training losses on the spiral (any path: they agree to float32 rounding)."""
    return fnn.fit(SPIRAL_NET, SPIRAL_START, SPIRAL, **SPIRAL_FIT)[1].train_loss


@pytest.mark.parametrize("path", fnn.PATHS)
def test_a_float16_model_trains_through_fit_with_dynamic_loss_scaling_by_default_on_every_path(path):
    """The float16 run's losses follow the float32 run's to 1e-2 (float16 rounds to 2^-11 per operation, over 32
    steps of Adam: about 5e-5 apart here)."""
    model = nn.mixed_precision(SPIRAL_NET, jnp.float16)
    trained, history = fnn.fit(model, SPIRAL_START, SPIRAL, **SPIRAL_FIT, path=path)
    assert history.config["loss_scale"] == {"scale": 2.0**15, "good_steps": 0, "period": 2000, "factor": 2.0,
                                            "minimum": 1.0}  # fmt: skip
    assert {p.dtype for p in jax.tree.leaves(trained)} == {jnp.dtype(jnp.float32)}
    want = float32_spiral_losses()
    np.testing.assert_allclose(history.train_loss, want, rtol=1e-2)
    assert want[-1] < 0.8 * want[0]  # it trains: from 0.86 to 0.67
    assert fnn.train.loss_scale_for(nn.mixed_precision(SPIRAL_NET)) is None  # bfloat16: none by default
    inside = nn.serial(nn.dense(2), nn.remat(nn.mixed_precision(nn.dense(2), jnp.float16)))
    assert float(fnn.train.loss_scale_for(inside).scale) == 2**15  # a float16 block anywhere


@pytest.mark.parametrize("path", fnn.PATHS)
@pytest.mark.parametrize("compute, accumulate", [("float32", 1), ("bfloat16", 1), ("float32", 2)])
def test_with_a_power_of_two_scale_the_optimizer_sees_the_unscaled_gradient_bit_for_bit(compute, accumulate, path):
    """Multiplying by 2**15 and dividing by it commutes with every rounding while nothing leaves the dtype's range:
    float32's and bfloat16's reach far beyond these gradients. Accumulated microbatches are each scaled."""
    net = nn.mlp([6, 16, 3])
    model = net if compute == "float32" else nn.mixed_precision(net)
    _, params = net.init(KEY, (6,))
    scaled, unscaled = (seen_gradient(model, params, scale, path, accumulate) for scale in (Scale(2.0**15), None))
    assert same(scaled, unscaled) and all(np.any(g != 0) for g in jax.tree.leaves(scaled))


@pytest.mark.parametrize("path", fnn.PATHS)
def test_the_scale_reaches_the_float16_backward_on_every_path(path):
    """The last layer's weights at 1e-5 make the first layer's gradient about 1e-6, below float16's normal range
    (6e-5), where it keeps a few bits; scaled by 2**15 it keeps float16's 11. Against float32's gradient: the scaled
    one within 2e-2 (the weights, 1e-5, are themselves float16 subnormals, about 0.6% apart), the unscaled one
    (a scale of 1) off by a third, some of it flushed to 0."""
    net = nn.mlp([6, 16, 3])
    _, params = net.init(KEY, (6,))
    params[2]["w"] = params[2]["w"] * 1e-5
    half = nn.mixed_precision(net, jnp.float16)
    want = seen_gradient(net, params, None, path)[0]["w"]
    scale = float(jnp.max(jnp.abs(want)))
    assert scale < 6e-5  # the gradient is below float16's normal range
    scaled, unscaled = (seen_gradient(half, params, Scale(s), path)[0]["w"] for s in (2.0**15, 1.0))
    assert float(jnp.max(jnp.abs(scaled - want))) < 2e-2 * scale
    assert float(jnp.max(jnp.abs(unscaled - want))) > 0.1 * scale


def test_a_step_whose_gradient_overflows_is_skipped_and_the_scale_falls_then_grows_after_period_good_steps():
    """At 2**24 the float16 backward overflows (the outputs' cotangent alone, 2**24 / 32 times softmax minus one-hot,
    goes above 65504), at 2**16 it does not; the factor 2**8 moves between the two in one step."""
    model = nn.mixed_precision(nn.serial(nn.dense(16), nn.batch_norm(), nn.relu, nn.dense(3)), jnp.float16)
    _, params = model.init(KEY, (6,))
    adam = optax.adam(1e-2)
    state = fnn.train.TrainState.create(
        params, adam, model_state=model.init_state((6,)), loss_scale=Scale(2.0**24, period=2, factor=2.0**8)
    )
    step = jax.jit(fnn.train.train_step(model, CE, adam))
    skipped, metrics = step(state, (X, Y))
    assert bool(metrics["skipped"]) and float(metrics["loss_scale"]) == 2**24 and np.isfinite(metrics["loss"])
    assert same(
        (skipped.params, skipped.opt_state, skipped.model_state), (state.params, state.opt_state, state.model_state)
    )
    assert (
        int(skipped.step) == 1 and float(skipped.loss_scale.scale) == 2**16 and int(skipped.loss_scale.good_steps) == 0
    )
    good, metrics = step(skipped, (X, Y))
    assert not metrics["skipped"] and not same(good.params, skipped.params)
    assert not same(good.model_state, skipped.model_state) and not same(good.opt_state, skipped.opt_state)
    assert float(good.loss_scale.scale) == 2**16 and int(good.loss_scale.good_steps) == 1
    grown, _ = step(good, (X, Y))  # the second good step in a row: period
    assert float(grown.loss_scale.scale) == 2**24 and int(grown.loss_scale.good_steps) == 0
    again, metrics = step(grown, (X, Y))
    assert bool(metrics["skipped"]) and float(again.loss_scale.scale) == 2**16 and same(again.params, grown.params)


def test_fit_counts_each_epochs_skipped_steps_and_stops_when_every_step_overflows_at_the_least_scale():
    """From 2**24 the float16 backward of the spiral's batches of 25 overflows (the outputs' cotangent alone, 2**24 /
    25 times softmax minus one-hot, goes above 65504) until the scale has halved about 5 times: the first epoch's 4
    steps are all skipped, and later ones none. With the scale's minimum at 2**24 every step overflows for ever."""
    model, rows = nn.mixed_precision(SPIRAL_NET, jnp.float16), []
    fnn.fit(model, SPIRAL_START, SPIRAL, **SPIRAL_FIT, loss_scale=Scale(2.0**24), callbacks=[rows.append])
    skipped = [row["skipped_steps"] for row in rows]
    assert skipped[0] == 4 and 0 < sum(skipped[:2]) < 8 and skipped[-1] == 0, skipped
    stuck = Scale(2.0**24, minimum=2.0**24)
    with pytest.raises(fnn.TrainingDiverged, match=r"every step of epoch 1 .* skipped, with the loss scale at its mi"):
        fnn.fit(model, SPIRAL_START, SPIRAL, **SPIRAL_FIT, loss_scale=stuck)
    unscaled = []  # a run without a loss scale has nothing to count
    fnn.fit(SPIRAL_NET, SPIRAL_START, SPIRAL, **SPIRAL_FIT, callbacks=[unscaled.append])
    assert "skipped_steps" not in unscaled[0]


@given(
    finite=st.lists(st.booleans(), max_size=12),
    period=st.integers(1, 4),
    factor=st.sampled_from([2.0, 4.0]),
    start=st.integers(0, 6),
)
def test_the_scale_follows_the_rule_over_any_run_of_good_and_bad_steps(finite, period, factor, start):
    """The rule as the step applies it, against the rule written out: grow by ``factor`` after ``period`` good
    steps in a row, fall by it after a bad one (not below the minimum, 2), the count of good steps back to 0
    either way."""
    got, scale, good = Scale(2.0 ** (start + 1), period=period, factor=factor, minimum=2.0), 2.0 ** (start + 1), 0
    for ok in finite:
        got = got.adjust(jnp.bool_(ok))
        good = good + 1 if ok else 0
        scale = scale * factor if good == period else scale if ok else max(scale / factor, 2.0)
        good = 0 if good == period else good
        assert (float(got.scale), int(got.good_steps)) == (scale, good)


def test_the_scale_stops_growing_where_float32_would_overflow():
    top = Scale(2.0**127, period=1).adjust(jnp.bool_(True))
    assert float(top.scale) == 2.0**127 and int(top.good_steps) == 0


def test_the_scale_survives_a_checkpoint_and_the_resumed_run_is_the_uninterrupted_one(tmp_path):
    """Every third step overflows (2**24) and the two after it do not (2**16): a resumed run that started its scale
    afresh would skip a step the uninterrupted run takes. Other settings are another run."""
    pytest.importorskip("orbax.checkpoint")
    scales = []

    class LastScale(fnn.loop.Callback):
        def on_end(self, run):
            scales.append((float(run.state.loss_scale.scale), int(run.state.loss_scale.good_steps)))

    def run(epochs, *callbacks, period=2):
        options = {"batch_size": 20, "progress": False, "callbacks": [*callbacks, LastScale()]}
        loss_scale = Scale(2.0**24, period=period, factor=2.0**8)
        model = nn.mixed_precision(SPIRAL_NET, jnp.float16)
        return fnn.fit(model, SPIRAL_START, SPIRAL, epochs=epochs, loss_scale=loss_scale, **options)[0]

    want = run(2)
    run(1, fnn.loop.Checkpointing(tmp_path))  # 5 steps: skipped, good, good (grown), skipped, good
    assert scales[-1] == (2.0**16, 1)
    got = run(2, fnn.loop.Checkpointing(tmp_path, resume=True))
    assert same(got, want) and scales[-1] == scales[0]
    with pytest.raises(fnn.CheckpointError, match=r"loss_scale: checkpoint \{.*'period': 2.*this run \{.*'period': 3"):
        run(3, fnn.loop.Checkpointing(tmp_path, resume=True), period=3)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Scale(period=0), fnn.InputError, "DynamicLossScale: period must be a positive int, got 0"),
        (lambda: Scale(factor=1), fnn.InputError, "DynamicLossScale: factor must be a finite number above 1, got 1.0"),
        (lambda: Scale(minimum=0.0), fnn.InputError, "DynamicLossScale: minimum must be a finite number above 0"),
        (lambda: Scale(factor="2"), fnn.UsageError, "DynamicLossScale: factor must be a real number"),
        (lambda: fnn.train.TrainState.create({}, loss_scale=Scale(0.5)), fnn.InputError,
         r"DynamicLossScale: scale must be a number from minimum=1 to float32's largest, 3.403e\+38, got 0.5"),
        (lambda: fnn.train.TrainState.create({}, loss_scale=Scale(np.inf)), fnn.InputError, "scale must be a number"),
        (lambda: fnn.train.TrainState.create({}, loss_scale=Scale(good_steps=2000)), fnn.InputError,
         r"good_steps must be an int from 0 to period - 1 = 1999, got 2000"),
        (lambda: fnn.train.TrainState.create({}, loss_scale=2.0**15), fnn.UsageError,
         r"loss_scale must be a fnn.train.DynamicLossScale, e.g. DynamicLossScale\(2.0\*\*15, period=2000\), or None, "
         "got float 32768.0"),
    ],
)  # fmt: skip
def test_bad_loss_scale_settings_are_refused_in_one_line_naming_the_fix(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_float16_model_refuses_a_step_that_cannot_scale_its_loss():
    model = nn.mixed_precision(nn.dense(3), jnp.float16)
    _, params = model.init(KEY, (6,))
    step = fnn.train.train_step(model, CE, 0.1)
    fix = r"make it with TrainState.create\(\.\.\., loss_scale=fnn.train.loss_scale_for\(model\)\)"
    with pytest.raises(fnn.UsageError, match=f"the state carries no loss scale; {fix}"):
        step(fnn.train.TrainState.create(params, 0.1), (X, Y))
    step(fnn.train.TrainState.create(params, 0.1, loss_scale=fnn.train.loss_scale_for(model)), (X, Y))
    with pytest.raises(fnn.UsageError, match="optimizer_update: the model computes in float16.*train with fnn.train"):
        fnn.train.sgd_update(model, CE, 0.1)
    data = types.SimpleNamespace(x_train=X, y_train=Y, x_test=X, y_test=Y)
    with pytest.raises(fnn.UsageError, match="loss_scale must be a fnn.train.DynamicLossScale.*got str 'dynamic'"):
        fnn.fit(model, params, data, batch_size=16, loss_scale="dynamic")
