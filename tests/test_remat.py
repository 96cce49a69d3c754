"""nn.remat and nn.repeat: the same function and gradients as the plain blocks, on every path and in both modes.

Tolerances: float64 sums of the same products in another order, so 1e-12 of
the largest entry.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn

F64 = jnp.float64
WIDTH, BLOCKS = 6, 3


def block():
    return nn.residual(nn.serial(nn.dense(WIDTH, bias=True, dtype=F64), nn.tanh))


def close(a, b, rtol=1e-12):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.max(np.abs(np.asarray(u) - np.asarray(v))) <= rtol * max(np.max(np.abs(np.asarray(v))), 1e-300)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        _, stacked = nn.repeat(block(), BLOCKS).init(jax.random.key(0), (WIDTH,))
        listed = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(BLOCKS)]
        x = jax.random.normal(jax.random.key(1), (5, WIDTH), F64)
        return stacked, listed, x, jnp.arange(5) % WIDTH


ARRANGEMENTS = {
    "repeat": lambda: nn.repeat(block(), BLOCKS),
    "repeat_remat": lambda: nn.repeat(nn.remat(block()), BLOCKS),
    "serial_remat": lambda: nn.serial(*(nn.remat(block()) for _ in range(BLOCKS))),
    "nested_remat": lambda: nn.serial(nn.remat(nn.serial(block(), nn.remat(block()))), block()),
}


@pytest.mark.parametrize(
    "arrangement",
    [pytest.param(a, marks=[pytest.mark.slow] if a in ("serial_remat", "nested_remat") else []) for a in ARRANGEMENTS],
)
def test_remat_and_repeat_give_the_plain_networks_gradients_and_jvps_on_every_path(problem, arrangement):
    stacked, listed, x, labels = problem
    model = ARRANGEMENTS[arrangement]()
    params = (
        stacked
        if arrangement.startswith("repeat")
        else (listed if arrangement == "serial_remat" else [[listed[0], listed[1]], listed[2]])
    )
    plain = nn.serial(*(block() for _ in range(BLOCKS)))
    unstack = (
        (lambda g: [jax.tree.map(lambda a, i=i: a[i], g) for i in range(BLOCKS)])
        if arrangement.startswith("repeat")
        else (lambda g: g if arrangement == "serial_remat" else [*g[0], g[1]])
    )
    with jax.enable_x64(True):
        want = fnn.value_and_grad(plain, fnn.losses.cross_entropy, path="autodiff")(listed, x, labels)
        want_jvp = fnn.jvp(plain, path="autodiff")(listed, x, listed, x)
        for path in fnn.PATHS:
            value, grads = jax.jit(fnn.value_and_grad(model, fnn.losses.cross_entropy, path=path))(params, x, labels)
            close(value, want[0])
            close(unstack(grads), want[1])
            y, dy = jax.jit(fnn.jvp(model, path=path))(params, x, params, x)
            close((y, dy), want_jvp)


def test_batch_norm_inside_remat_updates_its_statistics_once_per_step():
    model = nn.remat(nn.serial(nn.dense(4, dtype=F64), nn.batch_norm(dtype=F64), nn.relu, nn.dropout(0.5)))
    plain = nn.serial(nn.dense(4, dtype=F64), nn.batch_norm(dtype=F64), nn.relu, nn.dropout(0.5))
    with jax.enable_x64(True):
        _, params = plain.init(jax.random.key(0), (3,))
        state, key = plain.init_state((3,)), jax.random.key(2)
        x, labels = jax.random.normal(jax.random.key(1), (8, 3), F64), jnp.arange(8) % 4
        _, want, want_state = fnn.value_and_grad(plain, fnn.losses.cross_entropy, path="autodiff", train=True)(
            params, x, labels, state=state, key=key
        )
        for path in fnn.PATHS:
            grad_fn = jax.jit(fnn.value_and_grad(model, fnn.losses.cross_entropy, path=path, train=True))
            _, grads, new_state = grad_fn(params, x, labels, state=state, key=key)
            close(grads, want)
            close(new_state, want_state)  # momentum 0.9 applied once: twice would move the statistics further


def test_the_checker_passes_remat_and_repeat():
    fnn.testing.check_module(nn.remat(nn.serial(nn.dense(3), nn.tanh)), (3,), dtypes=()).assert_ok()
    fnn.testing.check_module(nn.repeat(nn.residual(nn.serial(nn.dense(3), nn.tanh)), 2), (3,), dtypes=()).assert_ok()


def test_remat_and_repeat_refuse_what_they_cannot_take():
    with pytest.raises(fnn.UsageError, match="remat: block must be an fnn module"):
        nn.remat(lambda x: x)
    with pytest.raises(fnn.InputError, match=r"repeat: the block maps input shape \(3,\) to \(4,\); it must keep"):
        nn.repeat(nn.dense(4), 2).init(jax.random.key(0), (3,))
    with pytest.raises(fnn.InputError, match="repeat: n must be a positive int"):
        nn.repeat(nn.relu, 0)
    with pytest.raises(fnn.UsageError, match="repeat: a repeated block with state or randomness"):
        fnn.context.bind(nn.repeat(nn.dropout(0.5), 2), key=jax.random.key(0), train=True)
    assert repr(nn.repeat(nn.remat(nn.relu), 4)) == "repeat(remat(relu), n=4)"


def test_repeat_of_a_block_with_state_and_randomness_equals_the_unrolled_blocks():
    """Block i gets fold_in(key, i) and its slice of the stacked state, as serial's child i gets its key and state."""

    def block():
        return nn.residual(nn.serial(nn.dense(4, dtype=F64), nn.batch_norm(dtype=F64), nn.relu, nn.dropout(0.3)))

    repeated, unrolled = nn.repeat(block(), 3), nn.serial(*(block() for _ in range(3)))
    with jax.enable_x64(True):
        _, stacked = repeated.init(jax.random.key(0), (4,))
        listed = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(3)]
        x, labels, key = jax.random.normal(jax.random.key(1), (6, 4), F64), jnp.arange(6) % 4, jax.random.key(2)
        want = jax.jit(fnn.value_and_grad(unrolled, fnn.losses.cross_entropy, path="autodiff", train=True))(
            listed, x, labels, state=unrolled.init_state((4,)), key=key
        )
        for path in fnn.PATHS:
            grad_fn = jax.jit(fnn.value_and_grad(repeated, fnn.losses.cross_entropy, path=path, train=True))
            value, grads, state = grad_fn(stacked, x, labels, state=repeated.init_state((4,)), key=key)
            close(value, want[0])
            close([jax.tree.map(lambda a, i=i: a[i], grads) for i in range(3)], want[1])
            close([jax.tree.map(lambda a, i=i: a[i], state) for i in range(3)], want[2])
