"""The attention op's Pallas kernels (``fnn/nn/_flash.py``) against the scan rule and autodiff, and the rule choice.

On a CPU the kernels run in Pallas's interpreter (``fnn.nn._flash.interpreted``), which evaluates the kernels'
code with XLA's operations, one grid program at a time: slow, so the shapes are tiny, with blocks of 16 rows so
that several blocks, the causal loop bounds and the padding of rows (to whole blocks) and of the head size (to 16)
all take part.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_modules import attention_op

import fnn
from fnn import nn
from fnn.nn import _attention as attend
from fnn.nn import _flash

BLOCKS = (16, 16)


def qkv(b, t, s, h, d, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    q, k, v, g = (jnp.asarray(rng.standard_normal((b, n, h, d)), dtype) for n in (t, s, s, t))
    return q, k, v, g


def gradients(apply, q, k, v, g):
    """``(o, dq, dk, dv)``: the output and ``jax.vjp``'s gradients of ``apply(params, q)`` for cotangent ``g``."""
    o, vjp = jax.vjp(apply, {"k": k, "v": v}, q)
    dkv, dq = vjp(g)
    return o, dq, dkv["k"], dkv["v"]


def relative(a, b, scale=None):
    """The largest difference of ``a`` and ``b`` relative to ``scale``, by default ``b``'s largest entry."""
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) if scale is None else scale))


# float64: each path sums the same terms in another order (tiles of 16 keys against one sum over all of them, the
# online softmax's rescaling against one maximum), so they agree to a few roundings of the largest entries: 1e-12
# relative to the largest entry (of dq, dk and dv together: dq is 0 for one key) is about 5000 ulps (eps 2.2e-16),
# and errors of the kernels (a dropped rescale, a wrong mask, a block left out) are of order 1.
@settings(max_examples=2, deadline=None)
@given(
    b=st.integers(1, 2),
    t=st.integers(1, 40),
    s=st.integers(1, 40),
    h=st.integers(1, 2),
    d=st.integers(1, 8),
    causal=st.booleans(),
)
@example(b=1, t=40, s=40, h=1, d=8, causal=False)  # three blocks, the last one padded
@example(b=2, t=37, s=21, h=2, d=5, causal=True)  # T > S: the last queries see every key
@example(b=1, t=21, s=37, h=1, d=3, causal=True)  # T < S: the last key blocks seen by no query
def test_pallas_kernels_equal_the_scan_rule_and_autodiff(b, t, s, h, d, causal):
    q, k, v, g = qkv(b, t, s, h, d)
    o, m = _flash.forward(q, k, v, causal, BLOCKS)
    o_scan, m_scan = attend._attend(q, k, v, causal, attend.tile_shape(t, s))
    assert relative(o, o_scan) < 1e-12 and relative(m, m_scan) < 1e-12
    grads = _flash.backward(q, k, v, o, m, g, causal, BLOCKS)
    scan = attend._attend_backward(q, k, v, o_scan, m_scan, g, causal, attend.tile_shape(t, s))
    leaf_grads = gradients(attend.attention_leaf(causal, tile=BLOCKS, kernel="pallas").by_rules.apply, q, k, v, g)
    autodiff = gradients(attend.attention_leaf(causal).apply, q, k, v, g)
    scale = max(float(jnp.max(jnp.abs(a))) for a in autodiff[1:])
    for name, a, want, got, auto in zip(("dq", "dk", "dv"), grads, scan, leaf_grads[1:], autodiff[1:]):
        assert max(relative(a, want, scale), relative(got, want, scale), relative(got, auto, scale)) < 1e-12, name


def test_pallas_gradients_in_bfloat16_are_about_as_accurate_as_autodiffs():
    """The kernels round ``P`` and ``dL`` to bfloat16 for their products (as FlashAttention does), which autodiff's
    plain forward, summing in float32, does not: against float64 at the same values, each gradient is within 2x
    autodiff's own bfloat16 error, and within one rounding to bfloat16 of the largest entry (2^-8)."""
    q, k, v, g = qkv(1, 40, 40, 2, 16, seed=1, dtype=jnp.bfloat16)
    pallas = attend.attention_leaf(causal=True, tile=BLOCKS, kernel="pallas")
    truth = gradients(pallas.apply, *(a.astype(jnp.float64) for a in (q, k, v, g)))
    autodiff, rule = gradients(pallas.apply, q, k, v, g), gradients(pallas.by_rules.apply, q, k, v, g)
    for name, want, auto, got in zip(("o", "dq", "dk", "dv"), truth, autodiff, rule):
        error, reference = relative(got.astype(jnp.float64), want), relative(auto.astype(jnp.float64), want)
        assert error <= 2 * reference and error <= 2**-8, (name, error, reference)


def test_the_checker_passes_the_pallas_rule():
    """Every check but ``finite_differences_2``: it evaluates the custom path's reverse over reverse along some
    2000 directions under ``vmap``, which the interpreter runs one grid program at a time (minutes). The second
    order is checked by ``custom_grad_of_grad`` against autodiff's."""
    checks = [c for c in fnn.testing.MODULE_CHECKS if c != "finite_differences_2"]
    module = attention_op(30, True, BLOCKS, kernel="pallas")  # 37 queries, 30 keys: 3 and 2 blocks, padded
    fnn.testing.check_module(module, (37, 2, 3), batch_size=2, checks=checks).assert_ok()


def test_the_scan_rule_is_the_default_and_the_kernels_are_asked_for(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # on a GPU too, until measured there
    q = jnp.ones((1, 4, 1, 2))

    def program(module):
        return str(jax.make_jaxpr(module.by_rules.apply)({"k": q, "v": q}, q))

    for kernel, layer in ((None, nn.attention(1, 2)), ("pallas", nn.attention(1, 2, kernel="pallas"))):
        op = attend.attention_leaf() if kernel is None else attend.attention_leaf(kernel=kernel)
        for module in (op, layer.children[1]):  # the op, and the op inside the layer
            assert ("pallas_call" in program(module)) == (kernel == "pallas")


@pytest.mark.parametrize("kernel", ["triton", "Pallas", 1, ("pallas",), None])
def test_an_unknown_kernel_is_refused_naming_the_rules(kernel):
    with pytest.raises(fnn.UsageError, match=r"kernel must be one of 'pallas', 'scan', got"):
        attend.attention_leaf(kernel=kernel)


@pytest.mark.parametrize("tile", [(8, 16), (16, 24)])
def test_pallas_blocks_must_be_powers_of_two_of_at_least_16(tile):
    with pytest.raises(fnn.InputError, match=r"kernel='pallas', tile must be two powers of two of at least 16"):
        attend.attention_leaf(tile=tile, kernel="pallas")
