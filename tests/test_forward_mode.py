"""Forward mode through the hand-written rules: every JAX transformation on the custom path, and fnn.jvp on all three.

Tolerances: float64, the same sums in another order, so 1e-12 of the largest
entry.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn

F64 = jnp.float64


def close(got, want, rtol=1e-12):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1e-300)


@pytest.fixture(scope="module")
def problem():
    """A conv net with batch norm and dropout, bound to one context (a plain model), in float64."""
    model = nn.serial(
        nn.conv2d(3, 3, dtype=F64),
        nn.batch_norm(dtype=F64),
        nn.gelu,
        nn.avg_pool((2, 2)),
        nn.flatten(),
        nn.dropout(0.25),
        nn.dense(4, bias=True, dtype=F64),
    )
    with jax.enable_x64(True):
        _, params = model.init(jax.random.key(0), (6, 6, 2))
        bound = fnn.context.bind(model, state=model.init_state((6, 6, 2)), key=jax.random.key(1), train=True)
        x = jax.random.normal(jax.random.key(2), (3, 6, 6, 2), F64)
        yield model, bound, params, x


def test_every_forward_mode_transformation_runs_through_the_rules_and_equals_autodiffs(problem):
    _, bound, params, x = problem
    with jax.enable_x64(True):
        direction, dx = jax.tree.map(jnp.cos, params), jnp.sin(3 * x)  # not along x: batch norm ignores its scale
        labels = jnp.arange(3) % 4

        def transforms(m, loss):
            apply = lambda p, z: m.apply(p, z)  # noqa: E731
            scalar = lambda p: loss.apply(m.apply(p, x), labels)  # noqa: E731
            return {
                "jvp": jax.jvp(apply, (params, x), (direction, dx))[1],
                "jacfwd": jax.jacfwd(apply, argnums=1)(params, x[:1]),
                "linearize": jax.linearize(lambda p: apply(p, x), params)[1](direction),
                "vmap(jvp)": jax.vmap(lambda u: jax.jvp(lambda z: apply(params, z), (x,), (u,))[1])(
                    jnp.stack([dx, -dx])
                ),
                "hessian": jax.hessian(lambda z: loss.apply(m.apply(params, z), labels[:1]))(x[:1]),
                "jvp(grad)": jax.jvp(jax.grad(scalar), (params,), (direction,))[1],
            }

        got = jax.jit(lambda: transforms(bound.by_rules, fnn.losses.cross_entropy.by_rules))()
        want = jax.jit(lambda: transforms(bound, fnn.losses.cross_entropy))()
    for name in want:
        close(got[name], want[name])


def test_fnn_jvp_gives_autodiffs_tangent_on_every_path_and_returns_the_state_it_was_given(problem):
    model, _, params, x = problem
    with jax.enable_x64(True):
        state, key, direction = model.init_state((6, 6, 2)), jax.random.key(3), jax.tree.map(jnp.sin, params)
        out = {
            path: jax.jit(fnn.jvp(model, path=path, train=True))(params, x, direction, jnp.cos(x), state=state, key=key)
            for path in fnn.PATHS
        }
        held = fnn.jvp(model, path="backprop", train=False)(params, x, direction, state=state)  # dx=None: x fixed
        moved = fnn.jvp(model, path="autodiff", train=False)(params, x, direction, jnp.zeros_like(x), state=state)
    for path in fnn.PATHS:
        close(out[path], out["autodiff"])
    close(held, moved)
    assert len(out["custom"]) == 3 and jax.tree.structure(out["custom"][2]) == jax.tree.structure(state)


def test_fnn_jvp_refuses_what_it_cannot_take():
    with pytest.raises(fnn.UsageError, match="model must be an fnn module"):
        fnn.jvp(lambda p, x: x)
    with pytest.raises(fnn.InputError, match="unknown gradient path 'forward'"):
        fnn.jvp(nn.relu, path="forward")
    with pytest.raises(fnn.UsageError, match="pass train=True or train=False"):
        fnn.jvp(nn.dropout(0.5))
    with pytest.raises(fnn.UsageError, match=r"jvp: pass the tangent of the parameters \(dparams\), of the input"):
        fnn.jvp(nn.relu)((), jnp.ones((2, 3)))
    dense = nn.dense(2)
    _, params = dense.init(jax.random.key(0), (3,))
    with pytest.raises(fnn.UsageError, match="jvp: dparams must have the structure of params"):
        fnn.jvp(dense, path="backprop")(params, jnp.ones((2, 3)), [params["w"]])
    with pytest.raises(fnn.InputError, match="jvp: every leaf of dx must have its x leaf's shape"):
        fnn.jvp(dense, path="backprop")(params, jnp.ones((2, 3)), dx=jnp.ones((2, 4)))
