"""fnn.testing.compare_vjp: it passes correct rules and catches wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn._gradcheck.compare import difference
from fnn.ops import autodiff, custom
from fnn.testing import VJP_CHECKS, compare_vjp


def custom_op(fwd, bwd):
    op = jax.custom_vjp(lambda *args: fwd(*args)[0])
    op.defvjp(fwd, bwd)
    return op


def x(shape=(3, 4), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


# A matmul whose dW forgets a transpose-free sum and a relu whose mask is off:
wrong_matmul = custom_op(lambda a, w: (a @ w, (a, w)), lambda r, g: (g @ r[1].T, 2 * r[0].T @ g))
leaky_relu_rule = custom_op(lambda a: (jnp.maximum(a, 0), a), lambda a, g: (jnp.where(a > 0, g, 0.01 * g),))
# Right first derivative, but a bwd that is not differentiable in its residual: cuts the
# second-order path (stop_gradient on the saved input).
cut_second_order = custom_op(lambda a: (jnp.sin(a), a), lambda a, g: (g * jnp.cos(jax.lax.stop_gradient(a)),))


def test_report_for_a_correct_rule():
    report = compare_vjp(custom.matmul, autodiff.matmul, x(), x((4, 2), 1))
    assert report.ok
    assert {(r.check, r.argnum) for r in report.rows} == {("value", None)} | {
        (c, i) for c in VJP_CHECKS if c != "value" for i in (0, 1)
    }
    assert max(r.max_rel for r in report) <= 1e-15
    assert isinstance(report, fnn.testing.Report) and report["vjp[0]"].passed and "max rel: " in str(report)
    assert "second_order" in str(report)


@pytest.mark.parametrize(
    "bad, good, args, failing",
    [
        (wrong_matmul, autodiff.matmul, (x(), x((4, 2), 1)), ("vjp", 1)),
        (leaky_relu_rule, autodiff.relu, (x(),), ("vjp", 0)),
        (cut_second_order, jnp.sin, (x(),), ("second_order", 0)),
    ],
)
def test_wrong_rules_are_caught(bad, good, args, failing):
    report = compare_vjp(bad, good, *args, raise_on_failure=False)
    assert not report.ok
    assert failing in {(r.check, r.argnum) for r in report.failed}
    with pytest.raises(AssertionError, match="custom VJP differs from the reference"):
        compare_vjp(bad, good, *args)


def test_wrong_forward_value_is_caught():
    report = compare_vjp(custom.relu, lambda a: jnp.maximum(a, 0) + 1e-9, x(), raise_on_failure=False)
    assert [r.check for r in report.failed] == ["value"]


def test_integer_inputs_are_held_fixed():
    report = compare_vjp(custom.cross_entropy, autodiff.cross_entropy, x(), jnp.array([0, 3, 1]))
    assert {r.argnum for r in report.rows} == {None, 0}


def test_tolerance_follows_the_lowest_precision_input():
    report = compare_vjp(custom.relu, autodiff.relu, x().astype(jnp.float32))
    assert {(r.rtol, r.atol) for r in report.rows} == {(1e-5, 1e-6)}


def test_difference_treats_nans_as_equal_only_in_the_same_places():
    assert difference("value", None, [np.nan, 1.0], [np.nan, 1.0], 1e-12, 0).passed
    assert not difference("value", None, [np.nan, 1.0], [0.0, 1.0], 1e-12, 0).passed
    with pytest.raises(AssertionError, match=r"shape \(2,\) differs from reference shape \(3,\)"):
        difference("vjp", 0, [1.0, 2.0], [1.0, 2.0, 3.0], 1e-12, 0)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown checks"):
        compare_vjp(custom.relu, autodiff.relu, x(), checks=("jvp",))
    with pytest.raises(ValueError, match="at least one floating-point input"):
        compare_vjp(lambda i: i * 2, lambda i: i * 2, jnp.arange(3))
