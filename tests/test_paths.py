"""The three gradient paths on whole networks: random ``serial`` networks, the notes' closed form,
per-example gradients, Hessian-vector products, and the path's own errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import fnn
from fnn import losses, nn

F64 = jnp.float64

# Whole networks in float64 (eps 2.2e-16): every path computes the same sums in
# another order and association, through up to a dozen layers, so a gradient
# entry may differ by some ulps of the largest entry of its leaf. The bound is
# compare_vjp's, max |a - e| <= 1e-14 + 1e-12 max |e| per leaf (observed: at
# most 1% of it over 200 random networks). Loss values: 1e-12 relative.
RTOL, ATOL = 1e-12, 1e-14

ACTIVATIONS = [nn.relu, nn.sigmoid, nn.tanh, nn.gelu, nn.leaky_relu(0.1), nn.softplus(2.0)]
LOSSES = {
    "cross_entropy": losses.cross_entropy,
    "mse": losses.mse,
    "logistic": losses.logistic,
    "multiclass_hinge": losses.multiclass_hinge(0.5),
}


def random_params(model, input_shape, rng):
    """Float64 parameters for ``model`` in the structure its ``init`` gives, drawn with NumPy.

    Weights are normal with variance 1 / fan-in; vectors (biases, gamma, beta)
    normal with standard deviation 0.5, so that none sits at its initial value.
    ``jax.eval_shape`` gives the structure without running (or compiling) ``init``.
    """
    shapes = jax.eval_shape(lambda key: model.init(key, input_shape)[1], jax.random.key(0))

    def draw(s):
        scale = 0.5 if len(s.shape) < 2 else 1 / np.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(scale * rng.standard_normal(s.shape))

    return jax.tree.map(draw, shapes)


def targets_for(loss_name, rng, m, k):
    """Targets for ``m`` rows of ``k`` outputs: class ids, 0/1 labels, or real values."""
    if loss_name in ("cross_entropy", "multiclass_hinge"):
        return jnp.asarray(rng.integers(0, k, m))
    if loss_name == "logistic":
        return jnp.asarray(rng.integers(0, 2, (m, k)))
    return jnp.asarray(rng.standard_normal((m, k)))


def problem(model, input_shape, loss_name, m, seed, vocab=None):
    """Float64 ``(params, x, targets)`` for ``model`` on a batch of ``m`` (NumPy draws: nothing to compile).

    With ``vocab``, ``x`` holds integer token ids in ``[0, vocab)`` instead of float64 values.
    """
    rng = np.random.default_rng(seed)
    params = random_params(model, input_shape, rng)
    if vocab is None:
        x = jnp.asarray(rng.standard_normal((m, *input_shape)))
    else:
        x = jnp.asarray(rng.integers(0, vocab, (m, *input_shape)))
    (k,) = jax.eval_shape(model.apply, params, x).shape[1:]
    return params, x, targets_for(loss_name, rng, m, k)


def all_paths(model, loss):
    """One jitted ``f(params, x, targets) -> {path: (value, grads)}`` over :data:`fnn.PATHS`."""
    fns = {path: fnn.value_and_grad(model, loss, path=path) for path in fnn.PATHS}
    return jax.jit(lambda *args: {path: f(*args) for path, f in fns.items()})


def assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL):
    """Same structure, and per leaf ``max |a - e| <= atol + rtol max |e|``."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == e.shape and a.dtype == e.dtype
        a, e = np.asarray(a), np.asarray(e)
        err, scale = np.max(np.abs(a - e), initial=0), np.max(np.abs(e), initial=0)
        assert err <= atol + rtol * scale, f"max |difference| {err:.2e}, max |reference| {scale:.2e}"


def assert_paths_agree(results):
    """Every path's value and gradient match autodiff's."""
    want_value, want_grads = results["autodiff"]
    for path, (value, grads) in results.items():
        np.testing.assert_allclose(value, want_value, rtol=1e-12, err_msg=path)
        assert_trees_close(grads, want_grads)


# ------------------------------------------------------------------ random networks
@st.composite
def networks(draw):
    """A random ``serial`` network and its input shape (batch excluded).

    An optional convolutional front end (conv2d, an activation, flatten), a
    dense layer, then one to four blocks drawn from dense, an activation,
    LayerNorm and a residual block, then a dense output layer.
    """
    layers = []
    if draw(st.booleans()):
        input_shape = (draw(st.integers(3, 5)), draw(st.integers(3, 5)), draw(st.integers(1, 2)))
        layers += [
            nn.conv2d(
                draw(st.integers(1, 3)),
                draw(st.sampled_from([1, 2, (2, 3)])),
                stride=draw(st.sampled_from([1, 2, (1, 2)])),
                padding=draw(st.sampled_from(["SAME", "VALID"])),
                bias=draw(st.booleans()),
            ),
            draw(st.sampled_from(ACTIVATIONS)),
            nn.flatten(),
        ]
    else:
        input_shape = (draw(st.integers(1, 5)),)
    width = draw(st.integers(1, 5))
    layers.append(nn.dense(width, bias=draw(st.booleans())))
    kinds = st.sampled_from(["dense", "activation", "layer_norm", "residual"])
    for kind in draw(st.lists(kinds, min_size=1, max_size=4)):
        if kind == "dense":
            width = draw(st.integers(1, 5))
            layers.append(nn.dense(width, bias=draw(st.booleans())))
        elif kind == "activation":
            layers.append(draw(st.sampled_from(ACTIVATIONS)))
        elif kind == "layer_norm":
            layers.append(nn.layer_norm())
        else:
            block = [nn.dense(width, bias=True), draw(st.sampled_from(ACTIVATIONS))]
            layers.append(nn.residual(nn.serial(*block, *([nn.layer_norm()] if draw(st.booleans()) else []))))
    layers.append(nn.dense(draw(st.integers(2, 4)), bias=draw(st.booleans())))
    return nn.serial(*layers), input_shape


@given(
    net=networks(),
    loss_name=st.sampled_from(sorted(LOSSES)),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_networks_agree_on_all_paths(net, loss_name, m, seed):
    model, input_shape = net
    params, x, targets = problem(model, input_shape, loss_name, m, seed)
    assert_paths_agree(all_paths(model, LOSSES[loss_name])(params, x, targets))


@st.composite
def layer_networks(draw):
    """A random ``serial`` network over the layers for images and sequences, its input shape and input kind.

    One of three front ends: a sequence (conv1d, an activation, pooling,
    GroupNorm); an image (conv2d, pooling, GroupNorm, an activation); token
    ids (embedding, learned positions, a residual self-attention block with
    LayerNorm, average pooling over the sequence). Then flatten, optionally a
    softmax between dense layers, and a dense output layer. Every group that
    GroupNorm or LayerNorm standardises holds at least 3 values: over 1 or 2
    the result hardly depends on the input, and the paths' gradients are all
    rounding (1e-14 against exact zeros).
    """
    kind = draw(st.sampled_from(["sequence", "image", "tokens"]))
    pools = [nn.avg_pool, nn.max_pool]
    if kind == "tokens":
        t, width = draw(st.integers(2, 4)), draw(st.integers(3, 4))
        input_shape = (t,)
        block = nn.serial(nn.layer_norm(), nn.attention(draw(st.integers(1, 2)), 2, causal=draw(st.booleans())))
        layers = [nn.embedding(5, width), nn.positional_embedding(), nn.residual(block), nn.avg_pool((t,))]
    elif kind == "sequence":
        input_shape = (draw(st.integers(4, 7)), draw(st.integers(1, 2)))
        groups = draw(st.integers(1, 2))
        layers = [
            nn.conv1d(3 * groups, draw(st.integers(1, 3)), stride=draw(st.integers(1, 2)), bias=draw(st.booleans())),
            draw(st.sampled_from(ACTIVATIONS)),
            draw(st.sampled_from(pools))(
                (2,), stride=draw(st.integers(1, 2)), padding=draw(st.sampled_from(["SAME", "VALID"]))
            ),
            nn.group_norm(groups),
        ]
    else:
        input_shape = (draw(st.integers(4, 5)), draw(st.integers(4, 5)), 1)
        layers = [
            nn.conv2d(6, draw(st.sampled_from([1, 2, (2, 3)])), bias=draw(st.booleans())),
            draw(st.sampled_from(pools))(
                draw(st.sampled_from([(2, 2), (3, 2)])), padding=draw(st.sampled_from(["SAME", "VALID"]))
            ),
            nn.group_norm(draw(st.sampled_from([1, 2]))),
            draw(st.sampled_from(ACTIVATIONS)),
        ]
    layers.append(nn.flatten())
    if draw(st.booleans()):
        layers += [nn.dense(draw(st.integers(2, 4)), bias=True), nn.softmax]
    layers.append(nn.dense(draw(st.integers(2, 4)), bias=draw(st.booleans())))
    return nn.serial(*layers), input_shape, kind


@settings(max_examples=10)  # each draw compiles three paths of a conv or attention network
@given(net=layer_networks(), loss_name=st.sampled_from(sorted(LOSSES)), m=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_networks_of_the_image_and_sequence_layers_agree_on_all_paths(net, loss_name, m, seed):
    model, input_shape, kind = net
    params, x, targets = problem(model, input_shape, loss_name, m, seed, vocab=5 if kind == "tokens" else None)
    assert_paths_agree(all_paths(model, LOSSES[loss_name])(params, x, targets))


# ------------------------------------------------------------------ the notes' two-layer network
@pytest.mark.parametrize("m, n, d, k", [(1, 3, 4, 2), (7, 6, 5, 4)])
def test_two_layer_gradient_matches_the_notes_closed_form(m, n, d, k):
    """grad W2 = relu(X W1)^T (S - I_Y) / m; grad W1 = X^T (1[X W1 > 0] * ((S - I_Y) W2^T)) / m."""
    model = nn.mlp([n, d, k])
    params, x, y = problem(model, (n,), "cross_entropy", m, seed=m)
    w1, w2 = params[0]["w"], params[2]["w"]
    z = x @ w1
    logits = np.maximum(z, 0) @ w2
    s = np.exp(logits - logits.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    residual = s - np.eye(k)[y]
    grad_w2 = np.maximum(z, 0).T @ residual / m
    grad_w1 = x.T @ ((z > 0) * (residual @ w2.T)) / m
    for _, grads in all_paths(model, losses.cross_entropy)(params, x, y).values():
        assert_trees_close(grads, [{"w": grad_w1}, (), {"w": grad_w2}])


def test_zero_init_is_a_saddle_point():
    model = nn.mlp([6, 5, 3], w_init="zeros", dtype=F64)
    _, params = model.init(jax.random.key(0), (6,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)))
    for value, grads in all_paths(model, losses.cross_entropy)(params, x, jnp.arange(8) % 3).values():
        np.testing.assert_allclose(value, np.log(3), rtol=1e-15)
        assert not any(g.any() for g in jax.tree.leaves(grads))


def test_resnet_s_against_finite_differences_and_on_all_paths():
    """The notes' ResNet-S with LayerNorm, from image-shaped inputs; central differences with step
    1e-5 (error ~1e-10 of O(1) values) at a tolerance of 1e-6."""
    model = nn.resnet_s(3, width=4, hidden=5, normalize=True)
    params, x, y = problem(model, (2, 3, 1), "cross_entropy", 3, seed=0)
    assert_paths_agree(all_paths(model, losses.cross_entropy)(params, x, y))
    objective = jax.jit(lambda p: losses.cross_entropy.by_rules.apply(model.by_rules.apply(p, x), y))
    check_grads(objective, (params,), order=2, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ per-example gradients, second order
SMALL = nn.serial(nn.dense(6, bias=True), nn.layer_norm(), nn.tanh, nn.dense(3, bias=True))


@pytest.fixture(scope="module")
def small_problem():
    """A small smooth network with LayerNorm, a batch of 5 and cross-entropy labels."""
    return problem(SMALL, (4,), "cross_entropy", 5, seed=3)


def test_per_example_gradients_under_vmap_on_all_paths(small_problem):
    params, x, y = small_problem
    fns = {path: fnn.value_and_grad(SMALL, losses.cross_entropy, path=path) for path in fnn.PATHS}

    @jax.jit
    def per_example_and_batch(params, x, y):
        # One example at a time: x[4] and a scalar label, mapped over the batch.
        return {path: (jax.vmap(f, in_axes=(None, 0, 0))(params, x, y), f(params, x, y)) for path, f in fns.items()}

    results = per_example_and_batch(params, x, y)
    (want_values, want_grads), _ = results["autodiff"]
    assert jax.tree.leaves(want_grads)[0].shape[0] == 5
    for (values, grads), (batch_value, batch_grads) in results.values():
        np.testing.assert_allclose(values, want_values, rtol=1e-12)
        assert_trees_close(grads, want_grads)
        # The batch loss is the mean of the per-example losses, and so is its gradient.
        np.testing.assert_allclose(values.mean(), batch_value, rtol=1e-12)
        assert_trees_close(jax.tree.map(lambda g: g.mean(axis=0), grads), batch_grads)


def tree_vdot(a, b):
    """``<a, b>`` summed over the leaves of two pytrees of the same structure."""
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_hessian_vector_products_on_all_paths(small_problem):
    """Reverse over each path's gradient, against autodiff's forward-over-reverse and central differences."""
    params, x, y = small_problem
    vector = random_params(SMALL, (4,), np.random.default_rng(4))

    def gradient(path):
        f = fnn.value_and_grad(SMALL, losses.cross_entropy, path=path)
        return lambda p: f(p, x, y)[1]

    grad_fns = {path: gradient(path) for path in fnn.PATHS}

    @jax.jit
    def hvps(params, vector):
        by_path = {path: jax.grad(lambda p, g=g: tree_vdot(g(p), vector))(params) for path, g in grad_fns.items()}
        forward_over_reverse = jax.jvp(grad_fns["autodiff"], (params,), (vector,))[1]
        # Central differences of the backprop gradient: error ~h^2 = 1e-10 relative.
        h = 1e-5
        step = jax.tree.map(lambda v: h * v, vector)
        plus, minus = (grad_fns["backprop"](jax.tree.map(op, params, step)) for op in (jnp.add, jnp.subtract))
        differences = jax.tree.map(lambda a, b: (a - b) / (2 * h), plus, minus)
        return by_path, forward_over_reverse, differences

    by_path, want, differences = hvps(params, vector)
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(want)) > 1e-2  # not trivially zero
    for hvp in by_path.values():
        assert_trees_close(hvp, want)
    assert_trees_close(differences, want, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ errors
def test_unknown_path():
    with pytest.raises(
        ValueError, match="unknown gradient path 'forward'; expected one of 'autodiff', 'custom', 'backprop'"
    ):
        fnn.value_and_grad(SMALL, losses.mse, path="forward")


@pytest.mark.parametrize("model", [jnp.tanh, [nn.dense(3)]], ids=["function", "list"])
def test_model_must_be_a_module(model):
    with pytest.raises(TypeError, match=r"model must be an fnn module \(e.g. fnn.nn.mlp\(\[784, 500, 10\]\)\), got"):
        fnn.value_and_grad(model, losses.mse)


@pytest.mark.parametrize("loss", [jnp.mean, nn.relu, "cross_entropy"], ids=["function", "module", "name"])
def test_loss_must_be_a_loss(loss):
    with pytest.raises(TypeError, match=r"loss must be an fnn loss \(e.g. fnn.losses.cross_entropy\), got"):
        fnn.value_and_grad(SMALL, loss)


@pytest.mark.parametrize("path", fnn.PATHS)
def test_model_errors_reach_every_path(path):
    model, params = nn.mlp([784, 10]), [{"w": jnp.zeros((784, 10))}]
    with pytest.raises(ValueError, match=r"dense: input has 783 features but w expects 784 .*input shape \(2, 783\)"):
        fnn.value_and_grad(model, losses.cross_entropy, path=path)(params, jnp.zeros((2, 783)), jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="cross_entropy: labels must be integer class ids, got dtype float64"):
        fnn.value_and_grad(model, losses.cross_entropy, path=path)(params, jnp.zeros((2, 784)), jnp.zeros(2))


# ------------------------------------------------------------------ the rules registered as jax.custom_vjp
def test_the_rules_registered_as_custom_vjp_give_the_custom_paths_gradients_bit_for_bit():
    """``jax.grad`` over ``as_custom_vjp(model)`` runs the same backward functions as the ``custom`` path (a
    ``custom_jvp`` whose reverse mode is the backward): the same gradients, bit for bit, for a network of
    convolutions, batch norm, dropout, pooling, attention and an embedding; forward mode is refused."""
    f64 = {"dtype": F64}
    model = nn.serial(
        nn.conv2d(4, 3, **f64), nn.batch_norm(**f64), nn.relu, nn.dropout(0.3), nn.max_pool(2), nn.flatten(),
        nn.dense(6, bias=True, **f64), nn.tanh, nn.dense(3, **f64),
    )  # fmt: skip
    _, params = model.init(jax.random.key(0), (6, 6, 2))
    x, labels = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6, 6, 2))), jnp.asarray([0, 1, 2, 0])
    context = {"state": model.init_state((6, 6, 2)), "key": jax.random.key(1)}
    registered = fnn.module.as_custom_vjp(model), fnn.module.as_custom_vjp(losses.cross_entropy)

    @jax.jit
    def both(params, x, labels, state, key):
        custom = fnn.value_and_grad(model, losses.cross_entropy, train=True)(params, x, labels, state=state, key=key)
        vjp = fnn.value_and_grad(*registered, path="autodiff", train=True)(params, x, labels, state=state, key=key)
        return custom, vjp

    custom, vjp = both(params, x, labels, **context)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(custom), jax.tree.leaves(vjp)))
    sequence = nn.serial(nn.embedding(7, 4, dtype=F64), nn.attention(2, 3, dtype=F64), nn.flatten(), nn.dense(2, **f64))
    _, params = sequence.init(jax.random.key(2), (5,))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 7, (3, 5)))
    grads = [
        jax.jit(jax.grad(lambda p, m=m: m.apply(p, ids).sum()))(params)
        for m in (sequence.by_rules, fnn.module.as_custom_vjp(sequence))
    ]
    assert all(np.array_equal(a, b) for a, b in zip(*map(jax.tree.leaves, grads)))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda p: fnn.module.as_custom_vjp(sequence).apply(p, ids), (params,), (params,))
