"""The op sets: ``fnn.ops.custom`` and ``fnn.ops.autodiff`` are interchangeable, one traced to the hand-written rules.

The rules themselves are checked module by module in ``test_modules.py``;
here every op is checked for the same signature, values and gradients in
both sets, a custom JVP in every custom op's program and the hand-written
backward in its reverse mode, forward mode equal to autodiff's, bfloat16
kept through the op and its gradient, and its errors.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.ops import autodiff, custom
from fnn.ops._define import NAMES

OPS = {"custom": custom, "autodiff": autodiff}
op_sets = pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())


def normal(seed, *shape):
    """Float64 standard normals from NumPy (nothing to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def zeros(*shape, dtype=jnp.float32):
    """Zeros of ``shape`` (float32 unless told)."""
    return jnp.zeros(shape, dtype)


# One example call per op: (positional args, keyword args).
EXAMPLES = {
    "matmul": ((normal(0, 4, 5), normal(1, 5, 3)), {}),
    "add_bias": ((normal(0, 4, 5), normal(1, 5)), {}),
    "relu": ((normal(0, 4, 5),), {}),
    "sigmoid": ((normal(0, 4, 5),), {}),
    "tanh": ((normal(0, 4, 5),), {}),
    "leaky_relu": ((normal(0, 4, 5),), {"negative_slope": 0.2}),
    "gelu": ((normal(0, 4, 5),), {}),
    "softplus": ((normal(0, 4, 5),), {"beta": 2.0}),
    "layer_norm": ((normal(0, 4, 5), normal(1, 5), normal(2, 5)), {"eps": 1e-3}),
    "conv2d": ((normal(0, 2, 5, 6, 2), normal(1, 3, 2, 2, 3)), {"stride": (2, 1), "padding": "VALID"}),
    "cross_entropy": ((normal(0, 4, 5), jnp.array([0, 4, 2, 2])), {}),
    "mse": ((normal(0, 4, 5), normal(1, 4, 5)), {}),
    "logistic_loss": ((normal(0, 4), jnp.array([0, 1, 1, 0])), {}),
    "multiclass_hinge": ((normal(0, 4, 5), jnp.array([0, 4, 2, 2])), {"margin": 0.5}),
    "conv1d": ((normal(0, 2, 7, 2), normal(1, 3, 2, 3)), {"stride": 2, "padding": "VALID"}),
    "avg_pool": ((normal(0, 2, 5, 6, 2), (2, 3)), {"stride": (1, 2), "padding": "SAME"}),
    "max_pool": ((normal(0, 2, 7, 3), (3,)), {"stride": 2}),
    "group_norm": ((normal(0, 2, 3, 4), normal(1, 4), normal(2, 4)), {"groups": 2, "eps": 1e-3}),
    "softmax": ((normal(0, 4, 5),), {}),
    "embedding": ((normal(0, 6, 3), jnp.array([[0, 5, 2], [2, 2, 1]])), {}),
    "attention": ((normal(0, 2, 4, 2, 3), normal(1, 2, 5, 2, 3), normal(2, 2, 5, 2, 3)), {"causal": True}),
    "batch_norm": ((normal(0, 4, 3, 5), normal(1, 5), normal(2, 5)), {"eps": 1e-3}),
    "dropout": ((normal(0, 4, 5), jax.random.key(0)), {"rate": 0.4}),
}
LOSSES = ("cross_entropy", "mse", "logistic_loss", "multiclass_hinge")
every_op = pytest.mark.parametrize("name", NAMES)


def cast(args, dtype):
    """``args`` with the floating arrays cast to ``dtype`` (labels, ids and windows untouched)."""
    return tuple(
        a.astype(dtype) if isinstance(a, jnp.ndarray) and jnp.issubdtype(a.dtype, jnp.floating) else a for a in args
    )


def call(ops, name, dtype=jnp.float64):
    """``(f, args)``: the op ``name`` of ``ops`` as a function of its differentiated args, and
    those example args in ``dtype``.

    Keyword args are bound, and so are a loss's targets, an embedding's ids
    and a pooling window: they are data or settings, which the custom rules
    do not differentiate.
    """
    args, kwargs = EXAMPLES[name]
    args, op = cast(args, dtype), getattr(ops, name)
    if name in LOSSES:
        outputs, targets = args
        return (lambda o: op(o, targets, **kwargs)), (outputs,)
    fixed = [i for i, a in enumerate(args) if not jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)]

    def f(*floats):
        full, rest = [], iter(floats)
        for i, a in enumerate(args):
            full.append(a if i in fixed else next(rest))
        return op(*full, **kwargs)

    return f, tuple(a for i, a in enumerate(args) if i not in fixed)


def vjp(f, args):
    """``(output, cotangents of args)`` of ``f`` at ``args`` for a random output cotangent."""
    out, pullback = jax.vjp(f, *args)
    return out, pullback(normal(0, *out.shape).astype(out.dtype))


def test_both_sets_export_every_op():
    assert custom.__all__ == autodiff.__all__ == NAMES
    assert all(callable(getattr(ops, name)) for ops in OPS.values() for name in NAMES)


@every_op
def test_signatures_are_identical(name):
    assert inspect.signature(getattr(custom, name)) == inspect.signature(getattr(autodiff, name))


@every_op
def test_values_and_gradients_are_the_same_in_both_sets(name):
    """Float64; the custom rules run compiled, as in training. compare_vjp's float64 tolerance:
    ``max |a - e| <= 1e-14 + 1e-12 max |e|`` (the same sums in another order)."""
    (f_custom, args), (f_autodiff, _) = call(custom, name), call(autodiff, name)
    got, want = jax.jit(lambda a: (vjp(f_custom, a), vjp(f_autodiff, a)))(args)
    np.testing.assert_array_equal(got[0], want[0])  # the same forward code
    for g, w in zip(got[1], want[1]):
        assert np.max(np.abs(g - w)) <= 1e-14 + 1e-12 * np.max(np.abs(w))


@every_op
def test_custom_ops_trace_to_the_hand_written_rules(name):
    """A custom op is a custom JVP whose reverse mode is one linear map (the hand-written backward)."""
    (f_custom, args), (f_autodiff, _) = call(custom, name), call(autodiff, name)
    assert "custom_jvp_call" in str(jax.make_jaxpr(f_custom)(*args))
    assert "fnn_linear_map" in str(jax.make_jaxpr(lambda a: vjp(f_custom, a))(args))
    assert "fnn_linear_map" not in str(jax.make_jaxpr(lambda a: vjp(f_autodiff, a))(args))


@op_sets
@every_op
def test_bfloat16_keeps_its_dtype(ops, name):
    """The output and every gradient stay bfloat16, and the output is the float64 one to bfloat16
    precision (eps 7.8e-3; within 3e-2 of the largest entry, compare_vjp's bfloat16 default)."""
    (f, args), (reference, _) = call(ops, name, jnp.bfloat16), call(autodiff, name)
    (out, grads), want = jax.jit(lambda a: (vjp(f, a), reference(*cast(a, jnp.float64))))(args)
    assert out.dtype == jnp.bfloat16
    assert grads and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=3e-2 * float(np.max(np.abs(want))))


@every_op
def test_forward_mode_through_custom_ops_equals_autodiff(name):
    """jax.jvp through the hand-written rules (float64, jitted) equals the plain ops' to 1e-12 of the largest
    entry: the same sums in another order."""
    (f_custom, args), (f_autodiff, _) = call(custom, name), call(autodiff, name)
    got, want = jax.jit(lambda a: (jax.jvp(f_custom, a, a), jax.jvp(f_autodiff, a, a)))(args)
    np.testing.assert_array_equal(got[0], want[0])
    assert np.max(np.abs(got[1] - want[1])) <= 1e-14 + 1e-12 * np.max(np.abs(want[1]))


@op_sets
def test_ops_take_hyperparameters_as_lists_too(ops):
    x, w = EXAMPLES["conv2d"][0]
    np.testing.assert_array_equal(ops.conv2d(x, w, stride=[2, 1]), ops.conv2d(x, w, stride=(2, 1)))
    np.testing.assert_array_equal(ops.conv2d(x, w, stride=[2, 2]), ops.conv2d(x, w, stride=2))
    image = EXAMPLES["avg_pool"][0][0]
    np.testing.assert_array_equal(
        ops.max_pool(image, [2, 2], stride=[1, 2]), ops.max_pool(image, (2, 2), stride=(1, 2))
    )


@op_sets
def test_hyperparameters_are_checked_on_every_call(ops):
    ops.softplus(zeros(2), 1)  # a valid beta, now cached
    with pytest.raises(TypeError, match=r"softplus: beta must be a real number in \(0, inf\), got bool True"):
        ops.softplus(zeros(2), True)


def test_matmul_over_leading_axes():
    x, w = normal(0, 2, 3, 4), normal(1, 4, 5)
    np.testing.assert_allclose(custom.matmul(x, w), np.einsum("abn,nk->abk", x, w), rtol=1e-13)
    np.testing.assert_allclose(custom.matmul(x[0, 0], w), x[0, 0] @ w, rtol=1e-13)  # one row, as under vmap


# ------------------------------------------------------------------ errors
# (id, op name, args, kwargs, error, message)
ERRORS = [
    ("matmul_features", "matmul", (zeros(2, 784), zeros(785, 10)), {}, ValueError,
     r"matmul: input has 784 features but w expects 785 \(w shape \(785, 10\)\) \(input shape \(2, 784\)\)"),
    ("matmul_w_vector", "matmul", (zeros(2, 3), zeros(3)), {}, ValueError, r"matmul: w must have 2 axes, got shape "
        r"\(3,\)"),
    ("matmul_scalar_input", "matmul", (zeros(), zeros(1, 2)), {}, ValueError, "matmul: input must have at least one "
        "axis"),
    ("matmul_integer_input", "matmul", (zeros(2, 3, dtype=jnp.int32), zeros(3, 2)), {}, TypeError,
     "matmul: input must be a floating-point array, got dtype int32"),
    ("matmul_dtype_mismatch", "matmul", (zeros(2, 3), zeros(3, 2, dtype=jnp.float64)), {}, TypeError,
     "matmul: input and w must share a dtype, got input float32 and w float64"),
    ("add_bias_size", "add_bias", (zeros(2, 3), zeros(4)), {}, ValueError,
     r"add_bias: input has 3 features but b has size 4 \(b shape \(4,\)\) \(input shape \(2, 3\)\)"),
    ("relu_integer_input", "relu", (jnp.arange(3),), {}, TypeError, "relu: input must be a floating-point array"),
    ("leaky_relu_slope", "leaky_relu", (zeros(3),), {"negative_slope": 1.5}, ValueError,
     r"leaky_relu: negative_slope must be in \[0, 1\), got 1.5"),
    ("leaky_relu_slope_array", "leaky_relu", (zeros(3),), {"negative_slope": jnp.array([0.1])}, TypeError,
     r"leaky_relu: negative_slope must be a real number in \[0, 1\), got ArrayImpl of shape \(1,\)"),
    ("softplus_beta", "softplus", (zeros(3),), {"beta": -1.0}, ValueError,
     r"softplus: beta must be in \(0, inf\), got -1.0"),
    ("layer_norm_eps", "layer_norm", (zeros(2, 3), zeros(3), zeros(3)), {"eps": 0.0}, ValueError,
     r"layer_norm: eps must be in \(0, inf\), got 0.0"),
    ("layer_norm_size", "layer_norm", (zeros(2, 3), zeros(4), zeros(4)), {}, ValueError,
     "layer_norm: input has 3 features but gamma has size 4"),
    ("conv2d_stride", "conv2d", (zeros(1, 5, 5, 2), zeros(2, 2, 2, 3)), {"stride": 0}, ValueError,
     "conv2d: stride must be a positive int or a pair of them, got 0"),
    ("conv2d_padding", "conv2d", (zeros(1, 5, 5, 2), zeros(2, 2, 2, 3)), {"padding": "FULL"}, ValueError,
     "conv2d: padding must be 'SAME' or 'VALID', got 'FULL'"),
    ("conv2d_channels", "conv2d", (zeros(1, 5, 5, 3), zeros(2, 2, 2, 3)), {}, ValueError,
     "conv2d: input has 3 channels but the kernel expects 2"),
    ("conv2d_valid_too_small", "conv2d", (zeros(1, 2, 5, 2), zeros(3, 3, 2, 3)), {"padding": "VALID"}, ValueError,
     r"conv2d: with VALID padding the input's H x W \(2, 5\) must be at least the kernel's \(3, 3\)"),
    ("cross_entropy_float_labels", "cross_entropy", (zeros(2, 3), zeros(2)), {}, TypeError,
     "cross_entropy: labels must be integer class ids, got dtype float32"),
    ("cross_entropy_empty", "cross_entropy", (zeros(0, 3), zeros(0, dtype=jnp.int32)), {}, ValueError,
     "cross_entropy: the batch is empty"),
    ("mse_shape", "mse", (zeros(2, 3), zeros(2)), {}, ValueError, r"mse: pred and target must have the same shape"),
    ("logistic_label_shape", "logistic_loss", (zeros(2), zeros(2, 1)), {}, ValueError,
     r"logistic: labels must have the shape of logits, got logits \(2,\) and labels \(2, 1\)"),
    ("hinge_margin", "multiclass_hinge", (zeros(2, 3), zeros(2, dtype=jnp.int32)), {"margin": -1.0}, ValueError,
     r"multiclass_hinge: margin must be in \[0, inf\), got -1.0"),
    ("conv1d_stride_pair", "conv1d", (zeros(1, 5, 2), zeros(2, 2, 3)), {"stride": (1, 1)}, ValueError,
     r"conv1d: stride must be a positive int or a 1-tuple of them, got \(1, 1\)"),
    ("conv1d_channels", "conv1d", (zeros(1, 5, 3), zeros(2, 2, 3)), {}, ValueError,
     "conv1d: input has 3 channels but the kernel expects 2"),
    ("avg_pool_window", "avg_pool", (zeros(1, 4, 2), (2, 2, 2)), {}, ValueError,
     "avg_pool: window must be a positive int k"),
    ("max_pool_padding", "max_pool", (zeros(1, 4, 2), (2,)), {"padding": "same"}, ValueError,
     "max_pool: padding must be 'SAME' or 'VALID', got 'same'"),
    ("max_pool_too_small", "max_pool", (zeros(1, 1, 4, 2), (2, 2)), {}, ValueError,
     r"max_pool: with VALID padding the input's spatial sizes \(1, 4\) must be at least the window \(2, 2\)"),
    ("group_norm_groups", "group_norm", (zeros(2, 3, 4), zeros(4), zeros(4)), {"groups": 3}, ValueError,
     "group_norm: 4 channels do not split into 3 groups of equal size"),
    ("group_norm_groups_type", "group_norm", (zeros(2, 3, 4), zeros(4), zeros(4)), {"groups": 2.0}, ValueError,
     "group_norm: groups must be a positive int, got 2.0"),
    ("softmax_scalar", "softmax", (zeros(),), {}, ValueError, "softmax: input must have at least one axis"),
    ("embedding_float_ids", "embedding", (zeros(5, 2), zeros(3)), {}, TypeError,
     "embedding: ids must be integer token ids, got dtype float32"),
    ("embedding_integer_table", "embedding", (zeros(5, 2, dtype=jnp.int32), jnp.arange(3)), {}, TypeError,
     "embedding: table must be a floating-point array, got dtype int32"),
    ("attention_q_axes", "attention", (zeros(2, 4, 6), zeros(2, 5, 2, 3), zeros(2, 5, 2, 3)), {}, ValueError,
     r"attention: q must be \[B, T, H, D\]"),
    ("attention_head_size", "attention", (zeros(2, 4, 2, 3), zeros(2, 5, 2, 4), zeros(2, 5, 2, 4)), {}, ValueError,
     "attention: k and v .* must match q .* in batch, heads and head size"),
    ("attention_causal", "attention", (zeros(2, 4, 2, 3), zeros(2, 5, 2, 3), zeros(2, 5, 2, 3)), {"causal": "yes"},
     TypeError, "attention: causal must be True or False, got 'yes'"),
    ("batch_norm_no_batch_axis", "batch_norm", (zeros(4), zeros(4), zeros(4)), {}, ValueError,
     r"batch_norm: input must be \[N, ..., C\] \(a batch axis first\), got shape \(4,\)"),
    ("batch_norm_eps", "batch_norm", (zeros(2, 4), zeros(4), zeros(4)), {"eps": 0.0}, ValueError,
     "batch_norm: eps must be"),
    ("dropout_rate", "dropout", (zeros(2, 4), jax.random.key(0)), {"rate": 1.0}, ValueError,
     r"dropout: rate must be in \[0, 1\), got 1.0"),
    ("dropout_no_key", "dropout", (zeros(2, 4), None), {"rate": 0.5}, ValueError,
     "dropout: training draws from a random key; pass key="),
]  # fmt: skip


@op_sets
@pytest.mark.parametrize("label, name, args, kwargs, error, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(ops, label, name, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(ops, name)(*args, **kwargs)


@op_sets
def test_errors_are_raised_at_trace_time_under_jit(ops):
    with pytest.raises(ValueError, match="matmul: input has 3 features but w expects 4"):
        jax.jit(ops.matmul)(zeros(2, 3), zeros(4, 5))


def test_get_op_set():
    assert fnn.ops.get("custom") is custom and fnn.ops.get(autodiff) is autodiff
    with pytest.raises(ValueError, match=r"unknown op set 'jvp'; expected one of \['autodiff', 'custom'\]"):
        fnn.ops.get("jvp")
    with pytest.raises(TypeError, match="ops must be fnn.ops.custom"):
        fnn.ops.get(jnp)
