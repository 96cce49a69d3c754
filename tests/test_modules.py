"""Every module and loss: its hand-written backward function checked by fnn's public checker, then the edges.

The conformance table ``CASES`` has one row per module or loss, checked by
:func:`fnn.testing.check_module` or :func:`fnn.testing.check_loss` (the same
checker a user runs on a module of their own): in float64, ``backward``
against autodiff's VJP, central finite differences of first and second
order, the custom path eagerly, under ``jit``, ``vmap`` and grad-of-grad, the
backprop path, dtypes and structure at float32 and bfloat16, the module's
edge values and determinism; every tolerance by the checker's one rule.

Then exact edge values (the rules' delicate inputs) on every path, initialisers, and
every error message.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import losses, nn
from fnn.module import Loss, Module, leaf
from fnn.nn import _attention as attend


def class_labels(rng, shape):
    """Integer class ids for scores of ``shape`` (the last axis the classes)."""
    return jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))


def binary_labels(rng, shape):
    """0/1 labels of ``shape``, as floats (logistic accepts integer, boolean or floating labels)."""
    return jnp.asarray(rng.integers(0, 2, shape), jnp.float64)


def real_targets(rng, shape):
    """Regression targets of ``shape``."""
    return jnp.asarray(rng.standard_normal(shape))


def token_ids(vocab):
    """Integer inputs in ``[0, vocab)``, ids repeating (the embedding's scatter must add them up)."""
    return lambda rng, shape: jnp.asarray(rng.integers(0, vocab, shape))


def attention_op(keys, causal, tile, kernel="scan"):
    """The attention leaf as a row: input ``q[B, T, H, D]``, params ``k, v[S, H, D]`` shared by every example.

    ``k`` and ``v`` are broadcast over the batch and their gradients summed
    over it, so that the per-example checks (``vmap``) apply to the op.
    """
    op = attend.attention_leaf(causal, tile, kernel)

    def init(key, input_shape):
        _, heads, dim = input_shape
        return input_shape, {p: jnp.zeros((keys, heads, dim)) for p in ("k", "v")}

    def batched(params, q):
        return {p: jnp.broadcast_to(a, (q.shape[0], *a.shape)) for p, a in params.items()}

    def backward(params, saved, g):
        grads, dq = op.backward(batched(params, saved[0]), saved, g)
        return {p: a.sum(axis=0) for p, a in grads.items()}, dq

    return leaf(
        "attention",
        init=init,
        forward=lambda params, q: op.forward(batched(params, q), q),
        backward=backward,
        apply=lambda params, q: op.apply(batched(params, q), q),
    )


#: Running statistics away from the initial zeros and ones, for batch norm in evaluation.
BN_STATE = {"mean": np.array([0.3, -0.2, 0.1]), "var": np.array([0.5, 2.0, 1.3])}


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the conformance table.

    ``build()`` returns the module or loss under test; ``input_shape`` is the
    shape of its example input, batch axis first (a loss's input is the
    model's output). ``targets(rng, input_shape)`` makes a loss's targets
    from a NumPy generator; ``inputs(rng, input_shape)``, if given, the
    input (integer ids, say) instead of standard normal draws. ``context``
    is the mode, state and key a module with state or randomness is checked
    in (``check_module``'s ``train=``, ``state=``, ``key=``).
    """

    name: str
    build: Callable
    input_shape: tuple
    targets: Callable = class_labels
    inputs: Callable | None = None
    context: dict = dataclasses.field(default_factory=dict)
    #: A variant of a row above it (another stride, padding, mask or mode), or a heavy composite whose parts have
    #: rows of their own and whose paths other tests cover (attention, batch norm with dropout): the slow tier.
    slow: bool = False

    def check(self, built=None, **kwargs):
        """The checker's report on this row, on ``built`` if given (one module object checked again reuses its
        compiled code), else on a fresh ``build()``; ``kwargs`` go to ``check_module``/``check_loss``."""
        built = self.build() if built is None else built
        if isinstance(built, Loss):
            shape, batch = self.input_shape[1:], self.input_shape[0]
            return fnn.testing.check_loss(
                built, shape, batch_size=batch, targets=self.targets, outputs=self.inputs, **kwargs
            )
        shape, batch = self.input_shape[1:], self.input_shape[0]
        return fnn.testing.check_module(built, shape, batch_size=batch, x=self.inputs, **self.context, **kwargs)


# fmt: off
CASES = [
    Case("dense", lambda: nn.dense(3), input_shape=(4, 5)),
    Case("dense_bias", lambda: nn.dense(3, bias=True), input_shape=(2, 3, 5)),
    Case("relu", lambda: nn.relu, input_shape=(4, 5)),
    Case("sigmoid", lambda: nn.sigmoid, input_shape=(4, 5)),
    Case("tanh", lambda: nn.tanh, input_shape=(4, 5)),
    Case("leaky_relu", lambda: nn.leaky_relu(0.2), input_shape=(4, 5)),
    Case("gelu", lambda: nn.gelu, input_shape=(4, 5)),
    Case("softplus", lambda: nn.softplus(2.0), input_shape=(4, 5)),
    Case("silu", lambda: nn.silu, input_shape=(4, 5)),
    Case("layer_norm", lambda: nn.layer_norm(), input_shape=(4, 5)),
    Case("conv2d", lambda: nn.conv2d(3, 3), input_shape=(2, 5, 4, 2)),
    Case("conv2d_valid", lambda: nn.conv2d(3, 3, padding="VALID"), input_shape=(2, 5, 4, 2), slow=True),
    Case("conv2d_stride2_bias", lambda: nn.conv2d(3, 3, stride=2, bias=True), input_shape=(2, 5, 6, 2)),
    Case("conv2d_stride23_same", lambda: nn.conv2d(2, (2, 3), stride=(2, 3), bias=True), input_shape=(2, 5, 7, 2),
         slow=True),
    Case("conv2d_stride23_valid", lambda: nn.conv2d(2, (2, 3), stride=(2, 3), padding="VALID", bias=True),
         input_shape=(2, 7, 8, 2), slow=True),
    Case("flatten", lambda: nn.flatten(), input_shape=(2, 3, 4)),
    Case("residual", lambda: nn.residual(nn.serial(nn.dense(5, bias=True), nn.tanh)), input_shape=(4, 5)),
    Case("serial", lambda: nn.serial(nn.dense(4, bias=True), nn.gelu, nn.layer_norm(), nn.dense(3)),
         input_shape=(4, 5)),
    Case("conv1d", lambda: nn.conv1d(3, 3), input_shape=(2, 7, 2)),
    Case("conv1d_stride2_valid_bias", lambda: nn.conv1d(2, 3, stride=2, padding="VALID", bias=True),
         input_shape=(2, 8, 3), slow=True),
    Case("conv1d_stride3_same", lambda: nn.conv1d(2, (2,), stride=3, bias=True), input_shape=(3, 7, 2), slow=True),
    Case("avg_pool_2d", lambda: nn.avg_pool((2, 2)), input_shape=(2, 4, 6, 2)),
    Case("avg_pool_2d_overlap_same", lambda: nn.avg_pool((3, 2), stride=(2, 1), padding="SAME"),
         input_shape=(2, 5, 4, 2), slow=True),
    Case("avg_pool_1d", lambda: nn.avg_pool((3,), stride=2), input_shape=(2, 7, 3)),
    Case("max_pool_2d", lambda: nn.max_pool((2, 2)), input_shape=(2, 4, 6, 2)),
    Case("max_pool_2d_overlap_same", lambda: nn.max_pool((3, 3), stride=2, padding="SAME"), input_shape=(2, 5, 5, 2),
         slow=True),
    Case("max_pool_1d_same", lambda: nn.max_pool((2,), stride=1, padding="SAME"), input_shape=(2, 5, 3), slow=True),
    Case("group_norm", lambda: nn.group_norm(2), input_shape=(2, 3, 4, 4)),
    Case("group_norm_1d_instance", lambda: nn.group_norm(3), input_shape=(2, 5, 3), slow=True),
    Case("group_norm_flat_one_group", lambda: nn.group_norm(1), input_shape=(3, 4), slow=True),
    Case("softmax", lambda: nn.softmax, input_shape=(2, 3, 5)),
    Case("embedding", lambda: nn.embedding(6, 3), input_shape=(2, 5), inputs=token_ids(6)),
    Case("positional_embedding", lambda: nn.positional_embedding(), input_shape=(2, 4, 3)),
    Case("attention_op_causal_t_gt_s", lambda: attention_op(3, True, (2, 2)), input_shape=(2, 5, 2, 3), slow=True),
    Case("attention_op_causal_t_lt_s", lambda: attention_op(7, True, (3, 4)), input_shape=(1, 4, 2, 3), slow=True),
    Case("attention_bias", lambda: nn.attention(2, 3, bias=True), input_shape=(2, 5, 4), slow=True),
    Case("batch_norm_train", lambda: nn.batch_norm(), input_shape=(4, 2, 3)),
    Case("batch_norm_train_images", lambda: nn.batch_norm(0.5), input_shape=(2, 3, 2, 4), slow=True),
    Case("batch_norm_eval", lambda: nn.batch_norm(), input_shape=(6, 3), context={"train": False, "state": BN_STATE}),
    Case("dropout_train", lambda: nn.dropout(0.3), input_shape=(4, 5)),
    Case("dropout_eval", lambda: nn.dropout(0.3), input_shape=(4, 5), context={"train": False}),
    Case("serial_bn_dropout_train", lambda: nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dropout(0.5),
                                                      nn.dense(3)), input_shape=(5, 2, 3), slow=True),
    Case("serial_bn_dropout_eval", lambda: nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dropout(0.5),
                                                     nn.dense(3)), input_shape=(5, 2, 3), context={"train": False},
         slow=True),
    Case("cross_entropy", lambda: losses.cross_entropy, input_shape=(4, 5)),
    Case("mse", lambda: losses.mse, input_shape=(4, 3), targets=real_targets),
    Case("logistic", lambda: losses.logistic, input_shape=(4, 3), targets=binary_labels),
    Case("multiclass_hinge", lambda: losses.multiclass_hinge(0.5), input_shape=(4, 5)),
]
# fmt: on


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_the_checker_passes_every_module_and_loss(case):
    built = case.build()
    report = case.check(built).assert_ok()
    # Every check ran, but, where none are declared, edge values, and, for a module without state or randomness, the
    # context check.
    skipped = {c.name for c in report.rows if c.status == "skipped"}
    declared = built._edge_values if isinstance(built, Module) else built.edge_values
    expected = {"edge_values"} if not declared else set()
    expected |= set() if isinstance(built, Module) and built._contextual else {"context"}
    assert skipped == expected, str(report)


@pytest.mark.slow  # one lower-precision check per row; bfloat16 is in every row's default checks above
@pytest.mark.parametrize("case", [c for c in CASES if not isinstance(c.build(), Loss)], ids=lambda c: c.name)
def test_every_modules_rules_hold_in_float16_as_mixed_precision_computes_them(case):
    """``nn.mixed_precision(block, jnp.float16)`` runs each rule of ``block`` in float16: each is held to the
    float64 reference within float16's tolerance."""
    report = case.check(checks="dtypes", dtypes=(jnp.float16,)).assert_ok()
    assert [c.status for c in report.rows] == ["passed"], str(report)


# ------------------------------------------------------------------ edge values
def module_vjp(path, module, params, x):
    """``(y, dparams, dx)`` of ``module`` at ``(params, x)`` for the output cotangent ones, by ``path``."""
    if path == "backprop":
        y, saved = module.forward(params, x)
        return (y, *module.backward(params, saved, jnp.ones_like(y)))
    y, pullback = jax.vjp(module.by_rules.apply if path == "custom" else module.apply, params, x)
    return (y, *pullback(jnp.ones_like(y)))


def loss_grad(path, loss, outputs, targets):
    """``(value, d value / d outputs)`` of ``loss`` by ``path``."""
    outputs = jnp.asarray(outputs)
    if path == "backprop":
        value, saved = loss.forward(outputs, targets)
        return value, loss.backward(saved, jnp.ones_like(value))
    return jax.value_and_grad(loss.by_rules.apply if path == "custom" else loss.apply)(outputs, targets)


paths = pytest.mark.parametrize("path", fnn.PATHS)


def activation_grad(path, module, x):
    """``(y, dy/dx)`` of an elementwise module at the float64 points ``x``."""
    y, _, dx = module_vjp(path, module, (), jnp.asarray(x, jnp.float64))
    return y, dx


@paths
def test_relu_derivative_at_zero_is_zero(path):
    y, dx = activation_grad(path, nn.relu, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(y, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0])


@paths
def test_leaky_relu_takes_the_negative_slope_at_zero(path):
    y, dx = activation_grad(path, nn.leaky_relu(0.1), [-2.0, 0.0, 3.0])
    np.testing.assert_allclose(y, [-0.2, 0.0, 3.0], rtol=1e-15)
    np.testing.assert_array_equal(dx, [0.1, 0.1, 1.0])


@paths
def test_gelu_derivative_at_zero_is_one_half(path):
    y, dx = activation_grad(path, nn.gelu, [0.0])
    np.testing.assert_array_equal(y, [0.0])
    np.testing.assert_array_equal(dx, [0.5])


@paths
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_softplus_is_finite_for_huge_inputs(path, beta):
    y, dx = activation_grad(path, nn.softplus(beta), [800.0, -800.0])
    np.testing.assert_array_equal(y, [800.0, 0.0])
    np.testing.assert_array_equal(dx, [1.0, 0.0])


@paths
def test_layer_norm_of_a_constant_row_is_beta_with_finite_gradients(path):
    params = {"gamma": jnp.array([1.0, 2.0, 3.0]), "beta": jnp.array([0.5, -0.5, 1.5])}
    x = jnp.array([[4.0, 4.0, 4.0], [1.0, 2.0, 4.0]])
    y, dparams, dx = module_vjp(path, nn.layer_norm(), params, x)
    np.testing.assert_array_equal(y[0], params["beta"])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((dparams, dx)))
    # Row 0: zhat = 0 and sigma = sqrt(eps), so dx = (gamma - mean(gamma)) / sqrt(eps) and
    # the row adds nothing to dgamma, which is row 1's zhat.
    np.testing.assert_allclose(dx[0], (params["gamma"] - 2.0) / np.sqrt(1e-5), rtol=1e-14)
    centred = x[1] - x[1].mean()
    np.testing.assert_allclose(dparams["gamma"], centred / np.sqrt(np.mean(centred**2) + 1e-5), rtol=1e-14)
    np.testing.assert_array_equal(dparams["beta"], [2.0, 2.0, 2.0])


@paths
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cross_entropy_is_finite_for_huge_logits(path, dtype):
    logits = jnp.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype)
    value, grad = loss_grad(path, losses.cross_entropy, logits, jnp.array([1, 2]))
    # Row 0: logsumexp 1e4, picked 0, loss 1e4; row 1 picks the max, loss 0. Exact in both dtypes.
    assert value.dtype == grad.dtype == dtype
    np.testing.assert_allclose(value, 5e3, rtol=1e-15)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-15)


@paths
def test_logistic_is_finite_for_huge_logits(path):
    value, grad = loss_grad(path, losses.logistic, [1e4, -1e4, 1e4, -1e4], jnp.array([1, 1, 0, 0]))
    # Wrong by 1e4 in rows 1 and 2 (loss 1e4 each), right in rows 0 and 3 (loss 0).
    np.testing.assert_allclose(value, 5e3, rtol=1e-15)
    np.testing.assert_allclose(grad, [0.0, -0.25, 0.25, 0.0], atol=1e-15)


@paths
def test_hinge_derivative_is_zero_at_exactly_zero_margin(path):
    # Row 0: s_1 - s_0 + 1 = 0 exactly (no gradient), s_2 - s_0 + 1 = 0.5 (violated).
    scores = jnp.array([[1.0, 0.0, 0.5], [0.0, 3.0, 0.0]])
    value, grad = loss_grad(path, losses.multiclass_hinge(1.0), scores, jnp.array([0, 1]))
    np.testing.assert_allclose(value, 0.5 / 2, rtol=1e-15)
    np.testing.assert_array_equal(grad, [[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])


OUT_OF_RANGE = [
    ("cross_entropy_3", losses.cross_entropy, [0, 3]),
    ("cross_entropy_-1", losses.cross_entropy, [-1, 0]),
    ("hinge_3", losses.multiclass_hinge(), [0, 3]),
    ("logistic_2", losses.logistic, [[0, 1, 2], [1, 1, 0]]),
]


@pytest.mark.parametrize("name, loss, labels", OUT_OF_RANGE, ids=[r[0] for r in OUT_OF_RANGE])
def test_out_of_range_labels_give_nan_and_the_paths_agree(name, loss, labels):
    scores = jnp.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    results = {path: loss_grad(path, loss, scores, jnp.array(labels)) for path in fnn.PATHS}
    assert all(np.isnan(value) for value, _ in results.values())
    for _, grad in results.values():  # NaN in the same places, equal elsewhere
        np.testing.assert_allclose(grad, results["autodiff"][1], rtol=1e-15, atol=1e-17)


# ------------------------------------------------------------------ init, error rate
def test_mlp_init_shapes_for_the_notes_network():
    def init(bias):
        return jax.eval_shape(lambda key: nn.mlp([784, 500, 10], bias=bias).init(key, (784,))[1], jax.random.key(0))

    params = init(bias=False)
    assert [jax.tree.map(lambda s: s.shape, p) for p in params] == [{"w": (784, 500)}, (), {"w": (500, 10)}]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert init(bias=True)[2]["b"].shape == (10,)


def test_he_init_has_std_sqrt_2_over_fan_in_and_zero_biases():
    _, params = jax.jit(lambda key: nn.dense(500, bias=True).init(key, (784,)))(jax.random.key(1))
    # 392,000 draws: the sample std is within 1% of sqrt(2/784) with overwhelming probability.
    np.testing.assert_allclose(np.std(params["w"]), np.sqrt(2 / 784), rtol=0.01)
    np.testing.assert_allclose(np.mean(params["w"]), 0.0, atol=3e-4)
    assert not params["b"].any()
    _, conv = jax.jit(lambda key: nn.conv2d(64, 3).init(key, (8, 8, 32)))(jax.random.key(2))
    np.testing.assert_allclose(np.std(conv["w"]), np.sqrt(2 / 288), rtol=0.02)  # fan-in 3 * 3 * 32


def test_other_initializers():
    _, zero = nn.mlp([3, 4, 2], w_init="zeros").init(jax.random.key(0), (3,))
    assert not any(leaf.any() for leaf in jax.tree.leaves(zero))
    dense = nn.dense(40, w_init=jax.nn.initializers.glorot_normal(), dtype=jnp.float64)
    _, glorot = dense.init(jax.random.key(0), (30,))
    assert glorot["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.std(glorot["w"]), np.sqrt(2 / 70), rtol=0.1)


def output_shapes(module, input_shape):
    """``(the output shape init reports, the one apply gives)``, batch axis excluded, traced abstractly."""
    reported = []

    def init_then_apply(key):
        shape, params = module.init(key, input_shape)
        reported.append(tuple(shape))
        return module.apply(params, jnp.zeros((2, *input_shape), jnp.float32))

    y = jax.eval_shape(init_then_apply, jax.random.key(0))
    return reported[0], y.shape[1:]


@pytest.mark.parametrize(
    "module, input_shape, output_shape",
    [
        (nn.dense(3), (2, 5), (2, 3)),
        (nn.conv2d(4, 3, stride=2), (7, 6, 2), (4, 3, 4)),
        (nn.conv2d(4, (2, 3), stride=(2, 3), padding="VALID"), (7, 8, 2), (3, 2, 4)),
        (nn.serial(nn.conv2d(4, 3), nn.flatten(), nn.dense(5)), (6, 6, 2), (5,)),
        (nn.resnet_s(10, width=8, normalize=True), (4, 4, 1), (10,)),
        (nn.conv1d(4, 3, stride=2), (7, 2), (4, 4)),
        (nn.conv1d(4, 3, stride=2, padding="VALID"), (8, 2), (3, 4)),
        (nn.avg_pool((2, 2)), (7, 6, 3), (3, 3, 3)),
        (nn.max_pool((3, 2), stride=(2, 1), padding="SAME"), (7, 6, 3), (4, 6, 3)),
        (nn.avg_pool((28,)), (28, 5), (1, 5)),
        (nn.group_norm(2), (5, 5, 4), (5, 5, 4)),
        (nn.softmax, (3, 4), (3, 4)),
        (nn.serial(nn.attention(2, 3), nn.positional_embedding()), (6, 5), (6, 5)),
    ],
    ids=[
        "dense",
        "conv2d_same",
        "conv2d_valid",
        "conv_net",
        "resnet_s",
        "conv1d_same",
        "conv1d_valid",
        "avg_pool_2d",
        "max_pool_same",
        "global_avg_pool_1d",
        "group_norm",
        "softmax",
        "attention",
    ],
)
def test_init_reports_the_output_shape(module, input_shape, output_shape):
    assert output_shapes(module, input_shape) == (output_shape, output_shape)


def test_error_rate():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_allclose(losses.cross_entropy.error(logits, jnp.array([1, 1, 1])), 1 / 3)
    np.testing.assert_allclose(losses.logistic.error(jnp.array([2.0, -1.0]), jnp.array([1, 1])), 1 / 2)
    assert losses.mse.error is None
    with pytest.raises(ValueError, match=r"labels shape \(2,\) must equal logits shape without the class axis, \(3,\)"):
        fnn.metrics.error_rate(logits, jnp.array([1, 1]))


# ------------------------------------------------------------------ errors
F32, F64 = jnp.float32, jnp.float64


def zeros(*shape, dtype=F32):
    """Zeros of ``shape`` (float32 unless told)."""
    return jnp.zeros(shape, dtype)


# Errors raised when a module is applied: (id, module, params, input, error, message).
APPLY_ERRORS = [
    ("dense_features", nn.dense(3), {"w": zeros(4, 3)}, zeros(2, 5), ValueError,
     r"dense: input has 5 features but w expects 4 \(w shape \(4, 3\)\) \(input shape \(2, 5\)\)"),
    ("dense_integer_input", nn.dense(3), {"w": zeros(4, 3)}, zeros(2, 4, dtype=jnp.int32), TypeError,
     "dense: input must be a floating-point array, got dtype int32"),
    ("dense_dtype_mismatch", nn.dense(3), {"w": zeros(4, 3)}, zeros(2, 4, dtype=F64), TypeError,
     "dense: input and w must share a dtype, got input float64 and w float32; cast one of them explicitly"),
    ("dense_missing_w", nn.dense(3), {"W": zeros(4, 3)}, zeros(2, 4), TypeError,
     r"dense: params must be a dict with key 'w' and optionally 'b', got keys \['W'\]"),
    ("dense_params_not_dict", nn.dense(3), [zeros(4, 3)], zeros(2, 4), TypeError,
     "dense: params must be a dict with key 'w', got list"),
    ("dense_w_vector", nn.dense(3), {"w": zeros(4)}, zeros(2, 4), ValueError, r"dense: w must have 2 axes, got shape "
        r"\(4,\)"),
    ("dense_b_size", nn.dense(3, bias=True), {"w": zeros(4, 3), "b": zeros(4)}, zeros(2, 4), ValueError,
     r"dense: b must have size 3 \(w shape \(4, 3\)\), got b shape \(4,\)"),
    ("dense_scalar_input", nn.dense(3), {"w": zeros(4, 3)}, zeros(), ValueError,
     r"dense: input must have at least one axis \[..., 4\], got a scalar"),
    ("relu_integer_input", nn.relu, (), jnp.arange(3), TypeError, "relu: input must be a floating-point array, got "
        "dtype int"),
    ("relu_params", nn.relu, {"w": zeros(2)}, zeros(2), TypeError, r"relu: has no parameters and takes params=\(\), "
        r"got dict"),
    ("flatten_params", nn.flatten(), zeros(2), zeros(2, 3), TypeError,
     r"flatten: has no parameters and takes params=\(\), got ArrayImpl"),
    ("flatten_scalar", nn.flatten(), (), zeros(), ValueError, "flatten: input must have a batch axis, got a scalar"),
    ("layer_norm_size", nn.layer_norm(), {"gamma": zeros(3), "beta": zeros(3)}, zeros(2, 4), ValueError,
     r"layer_norm: input has 4 features but gamma has size 3 \(gamma shape \(3,\)\) \(input shape \(2, 4\)\)"),
    ("layer_norm_missing_beta", nn.layer_norm(), {"gamma": zeros(3)}, zeros(2, 3), TypeError,
     r"layer_norm: params must be a dict with key 'beta', got \['gamma'\]"),
    ("serial_wrong_count", nn.serial(nn.dense(3), nn.relu), [{"w": zeros(4, 3)}], zeros(2, 4), TypeError,
     r"serial: params must be a list with one entry per module \(2: dense, relu\), got a list of 1"),
    ("serial_params_dict", nn.serial(nn.dense(3), nn.relu), {"w": zeros(4, 3)}, zeros(2, 4), TypeError,
     r"serial: params must be a list with one entry per module \(2: dense, relu\), got dict"),
    ("residual_changes_shape", nn.residual(nn.dense(3)), {"w": zeros(4, 3)}, zeros(2, 4), ValueError,
     r"residual: the block maps shape \(2, 4\) to \(2, 3\); it must keep the shape"),
    ("conv_channels", nn.conv2d(3, 2), {"w": zeros(2, 2, 3, 3)}, zeros(1, 5, 5, 2), ValueError,
     r"conv2d: input has 2 channels but the kernel expects 3 \(input shape \(1, 5, 5, 2\), kernel shape \(2, 2, 3, "
         r"3\), HWIO\)"),
    ("conv_valid_too_small", nn.conv2d(3, 4, padding="VALID"), {"w": zeros(4, 4, 2, 3)}, zeros(1, 3, 5, 2), ValueError,
     r"conv2d: with VALID padding the input's H x W \(3, 5\) must be at least the kernel's \(4, 4\)"),
    ("conv_not_nhwc", nn.conv2d(3, 2), {"w": zeros(2, 2, 2, 3)}, zeros(5, 2), ValueError,
     r"conv2d: input must be \[N, H, W, C\], 4 axes \(NHWC\), got shape \(5, 2\)"),
    ("conv_integer_input", nn.conv2d(3, 2), {"w": zeros(2, 2, 2, 3)}, zeros(1, 5, 5, 2, dtype=jnp.int32), TypeError,
     "conv2d: input must be a floating-point array, got dtype int32"),
    ("conv_dtype_mismatch", nn.conv2d(3, 2), {"w": zeros(2, 2, 2, 3, dtype=F64)}, zeros(1, 5, 5, 2), TypeError,
     "conv2d: input and w must share a dtype, got input float32 and w float64"),
    ("conv_b_size", nn.conv2d(3, 2, bias=True), {"w": zeros(2, 2, 2, 3), "b": zeros(2)}, zeros(1, 5, 5, 2), ValueError,
     r"conv2d: b must have size 3 \(kernel shape \(2, 2, 2, 3\)\), got \(2,\)"),
    ("mlp_features", nn.mlp([784, 10]), [{"w": zeros(784, 10)}], zeros(2, 783), ValueError,
     "dense: input has 783 features but w expects 784"),
    ("conv1d_channels", nn.conv1d(3, 2), {"w": zeros(2, 3, 3)}, zeros(1, 5, 2), ValueError,
     r"conv1d: input has 2 channels but the kernel expects 3 \(input shape \(1, 5, 2\), kernel shape \(2, 3, 3\), "
         r"WIO\)"),
    ("conv1d_not_nwc", nn.conv1d(3, 2), {"w": zeros(2, 2, 3)}, zeros(5), ValueError,
     r"conv1d: input must be \[N, W, C\], 3 axes \(NWC\), got shape \(5,\)"),
    ("conv1d_kernel_2d", nn.conv1d(3, 2), {"w": zeros(2, 2, 2, 3)}, zeros(1, 5, 2), ValueError,
     r"conv1d: w must have 3 axes, got shape \(2, 2, 2, 3\)"),
    ("conv1d_valid_too_small", nn.conv1d(3, 4, padding="VALID"), {"w": zeros(4, 2, 3)}, zeros(1, 3, 2), ValueError,
     r"conv1d: with VALID padding the input's W \(3,\) must be at least the kernel's \(4,\)"),
    ("avg_pool_params", nn.avg_pool((2,)), {"w": zeros(2)}, zeros(1, 4, 2), TypeError,
     r"avg_pool: has no parameters and takes params=\(\), got dict"),
    ("avg_pool_integer_input", nn.avg_pool((2,)), (), zeros(1, 4, 2, dtype=jnp.int32), TypeError,
     "avg_pool: input must be a floating-point array, got dtype int32"),
    ("max_pool_too_few_axes", nn.max_pool((2, 2)), (), zeros(4, 2), ValueError,
     r"max_pool: input must be \[N, H, W, C\], 4 axes for the window \(2, 2\), got shape \(4, 2\)"),
    ("max_pool_valid_too_small", nn.max_pool((3, 2)), (), zeros(1, 2, 4, 1), ValueError,
     r"max_pool: with VALID padding the input's spatial sizes \(2, 4\) must be at least the window \(3, 2\)"),
    ("group_norm_groups", nn.group_norm(4), {"gamma": zeros(6), "beta": zeros(6)}, zeros(2, 3, 6), ValueError,
     r"group_norm: 6 channels do not split into 4 groups of equal size \(input shape \(2, 3, 6\)\)"),
    ("group_norm_no_batch", nn.group_norm(1), {"gamma": zeros(6), "beta": zeros(6)}, zeros(6), ValueError,
     r"group_norm: input must be \[N, ..., C\] \(a batch axis first\), got shape \(6,\)"),
    ("group_norm_size", nn.group_norm(2), {"gamma": zeros(4), "beta": zeros(4)}, zeros(2, 3, 6), ValueError,
     r"group_norm: input has 6 features but gamma has size 4"),
    ("softmax_scalar", nn.softmax, (), zeros(), ValueError,
     r"softmax: input must have at least one axis \[..., k\], got a scalar"),
    ("softmax_integer_input", nn.softmax, (), jnp.arange(3), TypeError,
     "softmax: input must be a floating-point array, got dtype int"),
    ("embedding_float_ids", nn.embedding(5, 2), {"table": zeros(5, 2)}, zeros(2, 3), TypeError,
     "embedding: ids must be integer token ids, got dtype float32"),
    ("embedding_table_axes", nn.embedding(5, 2), {"table": zeros(5)}, jnp.zeros((2, 3), jnp.int32), ValueError,
     r"embedding: table must have 2 axes \[V, D\], got shape \(5,\)"),
    ("embedding_params", nn.embedding(5, 2), {"w": zeros(5, 2)}, jnp.zeros((2, 3), jnp.int32), TypeError,
     r"embedding: params must be a dict with the key 'table', got \['w'\]"),
    ("positions_shape", nn.positional_embedding(), {"table": zeros(4, 3)}, zeros(2, 5, 3), ValueError,
     r"positional_embedding: input must be \[..., T, D\] with \[T, D\] the table's shape \(4, 3\), got shape "
         r"\(2, 5, 3\)"),
    ("positions_dtype", nn.positional_embedding(), {"table": zeros(4, 3)}, zeros(2, 4, 3, dtype=F64), TypeError,
     "positional_embedding: input and table must share a dtype, got input float64 and table float32"),
    ("attention_input_axes", nn.attention(2, 3), {p: {"w": zeros(4, 6)} for p in "qkvo"}, zeros(4), ValueError,
     r"attention: input must be \[..., T, D_model\], got shape \(4,\)"),
    ("attention_params", nn.attention(2, 3), {"q": {"w": zeros(4, 6)}}, zeros(2, 5, 4), TypeError,
     r"attention: params must be a dict with keys \['q', 'k', 'v', 'o'\], got \['q'\]"),
    ("attention_projection", nn.attention(2, 3), {p: {"w": zeros(4, 6)} for p in "qkvo"}, zeros(2, 5, 4), ValueError,
     r"dense: input has 6 features but w expects 4"),
    ("attention_op_q_axes", attend.attention_leaf(), {"k": zeros(2, 5, 2, 3), "v": zeros(2, 5, 2, 3)}, zeros(2, 5, 6),
     ValueError, r"attention: q must be \[B, T, H, D\] \(batch, queries, heads, head size\), got shape \(2, 5, 6\)"),
    ("attention_op_kv_shapes", attend.attention_leaf(), {"k": zeros(2, 5, 2, 3), "v": zeros(2, 4, 2, 3)},
     zeros(2, 5, 2, 3), ValueError,
     r"attention: k and v must have the same shape \[B, S, H, D\], got k \(2, 5, 2, 3\) and v \(2, 4, 2, 3\)"),
    ("attention_op_heads", attend.attention_leaf(), {"k": zeros(2, 5, 3, 3), "v": zeros(2, 5, 3, 3)},
     zeros(2, 5, 2, 3), ValueError,
     r"attention: k and v \[B, S, H, D\] must match q \[B, T, H, D\] in batch, heads and head size, got q "
         r"\(2, 5, 2, 3\) and k \(2, 5, 3, 3\)"),
    ("attention_op_dtype", attend.attention_leaf(), {"k": zeros(2, 5, 2, 3, dtype=F64), "v": zeros(2, 5, 2, 3)},
     zeros(2, 5, 2, 3), TypeError, "attention: input and k must share a dtype, got input float32 and k float64"),
]  # fmt: skip


def apply_on(path, module, params, x):
    """Runs ``module`` forward as ``path`` does: plain ``apply``, the custom path's ``apply``, or ``forward``."""
    if path == "backprop":
        return module.forward(params, x)
    return (module.by_rules.apply if path == "custom" else module.apply)(params, x)


@paths
@pytest.mark.parametrize("name, module, params, x, error, message", APPLY_ERRORS, ids=[e[0] for e in APPLY_ERRORS])
def test_apply_errors_on_every_path(path, name, module, params, x, error, message):
    with pytest.raises(error, match=message):
        apply_on(path, module, params, x)


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="dense: input has 5 features but w expects 4"):
        jax.jit(nn.dense(3).by_rules.apply)({"w": zeros(4, 3)}, zeros(2, 5))


# Errors raised when building or initialising a module, or applying a loss: (id, thunk, error, message).
BUILD_ERRORS = [
    ("dense_n_out", lambda: nn.dense(0), ValueError, "dense: n_out must be a positive int, got 0"),
    ("dense_n_out_float", lambda: nn.dense(2.0), ValueError, "dense: n_out must be a positive int, got 2.0"),
    ("dense_init_name", lambda: nn.dense(3, w_init="xavier"), ValueError,
     r"unknown initializer 'xavier'; expected one of \['he', 'zeros'\] or a function"),
    ("dense_integer_dtype", lambda: nn.dense(3, dtype=jnp.int32), TypeError,
     "dense: dtype must be a floating-point dtype, got int32"),
    ("dense_input_shape", lambda: nn.dense(3).init(jax.random.key(0), 4), ValueError,
     r"dense: input_shape must be a tuple of positive ints \(batch axis excluded\), got 4"),
    ("mlp_init_783", lambda: nn.mlp([784, 500, 10]).init(jax.random.key(0), (783,)), ValueError,
     r"mlp: built for 784 input features, got input_shape \(783,\)"),
    ("mlp_sizes", lambda: nn.mlp([784]), ValueError, r"mlp: sizes must be at least two positive ints \[n_in, ..., "
        r"n_out\], got \(784,\)"),
    ("mlp_zero_size", lambda: nn.mlp([784, 0]), ValueError, r"got \(784, 0\)"),
    ("serial_empty", lambda: nn.serial(), ValueError, "serial: needs at least one module"),
    ("serial_not_a_module", lambda: nn.serial(nn.relu, jnp.tanh), TypeError,
     "serial: argument 1 must be an fnn module"),
    ("residual_init_changes_shape", lambda: nn.residual(nn.dense(3)).init(jax.random.key(0), (4,)), ValueError,
     r"residual: the block maps input shape \(4,\) to \(3,\); it must keep the shape"),
    ("resnet_blocks", lambda: nn.resnet_s(10, width=8, n_blocks=-1), ValueError,
     "resnet_s: n_blocks must be a non-negative int, got -1"),
    ("conv_n_out", lambda: nn.conv2d(0, 3), ValueError, "conv2d: n_out must be a positive int, got 0"),
    ("conv_kernel", lambda: nn.conv2d(3, 0), ValueError, "conv2d: kernel must be a positive int or a pair of them, "
        "got 0"),
    ("conv_kernel_float", lambda: nn.conv2d(3, 2.0), ValueError, "conv2d: kernel must be a positive int or a pair of "
        "them, got 2.0"),
    ("conv_stride", lambda: nn.conv2d(3, 2, stride=0), ValueError, "conv2d: stride must be a positive int or a pair "
        "of them, got 0"),
    ("conv_stride_triple", lambda: nn.conv2d(3, 2, stride=(1, 1, 1)), ValueError,
     r"conv2d: stride must be a positive int or a pair of them, got \(1, 1, 1\)"),
    ("conv_padding", lambda: nn.conv2d(3, 2, padding="same"), ValueError, "conv2d: padding must be 'SAME' or 'VALID', "
        "got 'same'"),
    ("conv_integer_dtype", lambda: nn.conv2d(3, 2, dtype=jnp.int8), TypeError,
     "conv2d: dtype must be a floating-point dtype, got int8"),
    ("conv_init_ndim", lambda: nn.conv2d(3, 2).init(jax.random.key(0), (5, 5)), ValueError,
     r"conv2d: input_shape must be a tuple of 3 positive ints \(batch axis excluded\), got \(5, 5\)"),
    ("conv_init_valid_too_small", lambda: nn.conv2d(3, 4, padding="VALID").init(jax.random.key(0), (3, 5, 2)),
     ValueError,
     r"conv2d: with VALID padding the input's H x W \(3, 5\) must be at least the kernel's \(4, 4\)"),
    ("layer_norm_eps", lambda: nn.layer_norm(eps=0), ValueError, r"layer_norm: eps must be in \(0, inf\), got 0.0"),
    ("layer_norm_eps_negative", lambda: nn.layer_norm(-1.0), ValueError,
     r"layer_norm: eps must be in \(0, inf\), got -1.0"),
    ("layer_norm_integer_dtype", lambda: nn.layer_norm(dtype=jnp.int32), TypeError,
     "layer_norm: dtype must be a floating-point dtype, got int32"),
    ("leaky_relu_slope", lambda: nn.leaky_relu(1.5), ValueError,
     r"leaky_relu: negative_slope must be in \[0, 1\), got 1.5"),
    ("leaky_relu_slope_negative", lambda: nn.leaky_relu(-0.1), ValueError,
     r"leaky_relu: negative_slope must be in \[0, 1\), got -0.1"),
    ("softplus_beta", lambda: nn.softplus(0), ValueError, r"softplus: beta must be in \(0, inf\), got 0.0"),
    ("softplus_beta_inf", lambda: nn.softplus(float("inf")), ValueError,
     r"softplus: beta must be in \(0, inf\), got inf"),
    ("relu_init_shape", lambda: nn.relu.init(jax.random.key(0), (0,)), ValueError,
     r"relu: input_shape must be a tuple of positive ints \(batch axis excluded\), got \(0,\)"),
    ("hinge_margin", lambda: losses.multiclass_hinge(-1), ValueError,
     r"multiclass_hinge: margin must be in \[0, inf\), got -1.0"),
    ("op_leaf_has_no_init", lambda: fnn.nn._linear.MATMUL.init(jax.random.key(0), (3,)), TypeError,
     "matmul: this leaf is an op over given parameters and has no init"),
    ("conv1d_kernel_pair", lambda: nn.conv1d(3, (2, 2)), ValueError,
     r"conv1d: kernel must be a positive int or a 1-tuple of them, got \(2, 2\)"),
    ("conv1d_stride", lambda: nn.conv1d(3, 2, stride=0), ValueError, "conv1d: stride must be a positive int or a "
        "1-tuple of them, got 0"),
    ("conv1d_n_out", lambda: nn.conv1d(-1, 2), ValueError, "conv1d: n_out must be a positive int, got -1"),
    ("conv1d_init_ndim", lambda: nn.conv1d(3, 2).init(jax.random.key(0), (5, 5, 1)), ValueError,
     r"conv1d: input_shape must be a tuple of 2 positive ints \(batch axis excluded\), got \(5, 5, 1\)"),
    ("conv1d_init_valid_too_small", lambda: nn.conv1d(3, 4, padding="VALID").init(jax.random.key(0), (3, 2)),
     ValueError, r"conv1d: with VALID padding the input's W \(3,\) must be at least the kernel's \(4,\)"),
    ("avg_pool_window_float", lambda: nn.avg_pool(2.0), ValueError,
     r"avg_pool: window must be a positive int k \(the square window \(k, k\) of \[N, H, W, C\] images\) or a "
         r"tuple of 1 or 2 of them, one per spatial axis \(\(k,\) for \[N, W, C\], \(kh, kw\) for \[N, H, W, C\]\), "
         r"got 2.0"),
    ("max_pool_window_3d", lambda: nn.max_pool((2, 2, 2)), ValueError,
     r"max_pool: window must be a positive int k.*got \(2, 2, 2\)"),
    ("max_pool_window_zero", lambda: nn.max_pool((2, 0)), ValueError, r"max_pool: window must be a positive int k"),
    ("max_pool_int_window_on_a_sequence", lambda: nn.max_pool(2).init(jax.random.key(0), (6, 2)), ValueError,
     r"max_pool: input_shape must be a tuple of 3 positive ints"),
    ("max_pool_stride_length", lambda: nn.max_pool((2, 2), stride=(1, 1, 1)), ValueError,
     r"max_pool: stride must be a positive int or a pair of them, got \(1, 1, 1\)"),
    ("avg_pool_padding", lambda: nn.avg_pool((2,), padding="FULL"), ValueError,
     "avg_pool: padding must be 'SAME' or 'VALID', got 'FULL'"),
    ("max_pool_init_ndim", lambda: nn.max_pool((2, 2)).init(jax.random.key(0), (6, 2)), ValueError,
     r"max_pool: input_shape must be a tuple of 3 positive ints \(batch axis excluded\), got \(6, 2\)"),
    ("avg_pool_init_too_small", lambda: nn.avg_pool((4,)).init(jax.random.key(0), (3, 2)), ValueError,
     r"avg_pool: with VALID padding the input's spatial sizes \(3,\) must be at least the window \(4,\)"),
    ("group_norm_groups_zero", lambda: nn.group_norm(0), ValueError, "group_norm: groups must be a positive int, "
        "got 0"),
    ("group_norm_eps", lambda: nn.group_norm(2, eps=0.0), ValueError,
     r"group_norm: eps must be in \(0, inf\), got 0.0"),
    ("group_norm_init_groups", lambda: nn.group_norm(3).init(jax.random.key(0), (5, 4)), ValueError,
     r"group_norm: 4 channels do not split into 3 groups of equal size \(input_shape \(5, 4\)\)"),
    ("softmax_init_scalar", lambda: nn.softmax.init(jax.random.key(0), ()), ValueError,
     r"softmax: input_shape must have an axis to normalise over \[..., k\], got \(\)"),
    ("embedding_vocab", lambda: nn.embedding(0, 3), ValueError, "embedding: vocab must be a positive int, got 0"),
    ("embedding_dim", lambda: nn.embedding(5, 2.5), ValueError, "embedding: dim must be a positive int, got 2.5"),
    ("embedding_dtype", lambda: nn.embedding(5, 2, dtype=jnp.int32), TypeError,
     "embedding: dtype must be a floating-point dtype, got int32"),
    ("positions_init_ndim", lambda: nn.positional_embedding().init(jax.random.key(0), (4,)), ValueError,
     r"positional_embedding: input_shape must be a tuple of 2 positive ints \(batch axis excluded\), got \(4,\)"),
    ("attention_heads", lambda: nn.attention(0, 3), ValueError, "attention: heads must be a positive int, got 0"),
    ("attention_head_dim", lambda: nn.attention(2, True), ValueError, "attention: head_dim must be a positive int, "
        "got True"),
    ("attention_init_ndim", lambda: nn.attention(2, 3).init(jax.random.key(0), (4,)), ValueError,
     r"attention: input_shape must be a tuple of 2 positive ints \(batch axis excluded\), got \(4,\)"),
    ("attention_causal", lambda: nn.attention(2, 3, causal=1), TypeError, "attention: causal must be True or False, "
        "got 1"),
    ("attention_tile", lambda: attend.attention_leaf(tile=(8, 0)), ValueError,
     r"attention: tile must be two positive ints \(query rows, key rows\), got \(8, 0\)"),
]  # fmt: skip


@pytest.mark.parametrize("name, thunk, error, message", BUILD_ERRORS, ids=[e[0] for e in BUILD_ERRORS])
def test_build_and_init_errors(name, thunk, error, message):
    with pytest.raises(error, match=message):
        thunk()


# Errors raised by a loss: (id, loss, outputs, targets, error, message).
LOSS_ERRORS = [
    ("cross_entropy_float_labels", losses.cross_entropy, zeros(2, 3), zeros(2), TypeError,
     "cross_entropy: labels must be integer class ids, got dtype float32"),
    ("cross_entropy_label_shape", losses.cross_entropy, zeros(2, 3), zeros(3, dtype=jnp.int32), ValueError,
     r"cross_entropy: labels must have the shape of logits without its last \(class\) axis; got logits \(2, 3\) and "
         r"labels \(3,\)"),
    ("cross_entropy_label_axis", losses.cross_entropy, zeros(2, 3), zeros(2, 1, dtype=jnp.int32), ValueError,
     r"got logits \(2, 3\) and labels \(2, 1\)"),
    ("cross_entropy_integer_logits", losses.cross_entropy, zeros(2, 3, dtype=jnp.int32), zeros(2, dtype=jnp.int32),
     TypeError,
     "cross_entropy: logits must be a floating-point array, got dtype int32"),
    ("cross_entropy_empty", losses.cross_entropy, zeros(0, 3), zeros(0, dtype=jnp.int32), ValueError,
     r"cross_entropy: the batch is empty \(no labels\)"),
    ("hinge_float_labels", losses.multiclass_hinge(), zeros(2, 3), zeros(2), TypeError,
     "multiclass_hinge: labels must be integer class ids, got dtype float32"),
    ("hinge_label_shape", losses.multiclass_hinge(), zeros(2, 3), zeros(3, dtype=jnp.int32), ValueError,
     r"multiclass_hinge: labels must have the shape of scores without its last \(class\) axis; got scores \(2, 3\) "
         r"and labels \(3,\)"),
    ("hinge_empty", losses.multiclass_hinge(), zeros(0, 3), zeros(0, dtype=jnp.int32), ValueError,
     "multiclass_hinge: the batch is empty"),
    ("mse_shape", losses.mse, zeros(2, 3), zeros(3, 2), ValueError,
     r"mse: pred and target must have the same shape, got pred \(2, 3\) and target \(3, 2\)"),
    ("mse_dtype", losses.mse, zeros(2, 3), zeros(2, 3, dtype=F64), TypeError,
     "mse: pred and target must share a dtype, got pred float32 and target float64"),
    ("mse_integer_target", losses.mse, zeros(2, 3), zeros(2, 3, dtype=jnp.int32), TypeError,
     "mse: target must be a floating-point array, got dtype int32"),
    ("mse_empty", losses.mse, zeros(0, 3), zeros(0, 3), ValueError, "mse: the batch is empty"),
    ("logistic_label_shape", losses.logistic, zeros(2), zeros(3), ValueError,
     r"logistic: labels must have the shape of logits, got logits \(2,\) and labels \(3,\)"),
    ("logistic_label_dtype", losses.logistic, zeros(2), zeros(2, dtype=jnp.complex64), TypeError,
     r"logistic: labels must be 0/1 \(integer, boolean or floating\), got dtype complex64"),
    ("logistic_integer_logits", losses.logistic, zeros(2, dtype=jnp.int32), zeros(2), TypeError,
     "logistic: logits must be a floating-point array, got dtype int32"),
    ("logistic_empty", losses.logistic, zeros(0), zeros(0), ValueError, "logistic: the batch is empty"),
]  # fmt: skip


@paths
@pytest.mark.parametrize("name, loss, outputs, targets, error, message", LOSS_ERRORS, ids=[e[0] for e in LOSS_ERRORS])
def test_loss_errors_on_every_path(path, name, loss, outputs, targets, error, message):
    with pytest.raises(error, match=message):
        if path == "backprop":
            loss.forward(outputs, targets)
        else:
            (loss.by_rules if path == "custom" else loss).apply(outputs, targets)
