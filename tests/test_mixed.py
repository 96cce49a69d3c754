"""Mixed precision (``nn.mixed_precision``): bfloat16 compute, float32 parameters, gradients, state and outputs."""

import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32, jnp.int8, "foo"])
def test_a_compute_dtype_other_than_bfloat16_is_refused_naming_why(dtype):
    with pytest.raises(fnn.InputError, match="compute_dtype must be one of bfloat16, got .*float16 would need"):
        nn.mixed_precision(nn.dense(3), dtype)


def test_mixed_precision_wraps_only_modules():
    with pytest.raises(fnn.InputError, match="mixed_precision: block must be an fnn module, got function"):
        nn.mixed_precision(lambda x: x)
