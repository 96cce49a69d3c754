"""Checking hand-written backward rules: your own module's or loss's, in one call, from your own tests.

:func:`check_module` and :func:`check_loss` run every check of a rule and
return a :class:`Report` (one :class:`Check` per check: name, status, the
largest error and the tolerance it was held to, where); :func:`assert_module`
and :func:`assert_loss` raise ``AssertionError`` with the report when a check
fails. In one call, in float64 unless a check is about another dtype:

- ``output``, ``structure``: the output's shape and dtype against ``init``'s;
  the gradient's pytree, shapes and dtypes against the primal's, and no
  gradient for integer inputs;
- ``backward``: the backprop path (jitted) against JAX's VJP of the
  module's own ``apply``;
- ``custom``, ``custom_jit``, ``custom_vmap``, ``custom_grad_of_grad``: the
  custom path eagerly, jitted, per example (``vmap``) and reverse over
  reverse;
- ``forward_mode``, ``forward_sweep``: the directional derivative along a
  random direction by ``jax.jvp`` on the custom path and by the backprop
  path's forward sweep, both the transpose of the rule;
- ``finite_differences``, ``finite_differences_2``: central differences of
  first and second order, step and tolerance from each input's scale;
- ``dtype[float32]``, ``dtype[bfloat16]``: dtypes, structure and accuracy at
  lower precision;
- ``edge_values``: the module's documented edge values and yours;
- ``determinism``: the same draw gives the same gradient bit for bit;
- ``saved``: what ``saved`` holds against autodiff's residuals (reported).

Errors are relative to the largest entry of the reference's gradient leaf
(:func:`relative_error`). The float64 agreement checks (``backward``, the
``custom`` ones, the forward ones) hold each leaf to ``max(1.8e-12, 256 *
movement)``, at most ``1.5e-8``: ``1.8e-12 = eps ** (3/4)`` is rounding, ``movement`` the
relative change of autodiff's own result when the draw's parameters, input
and cotangents move by one ulp in a random direction (the larger of two
such nudges), which is what a correct rule may be off by where the gradient is
ill-conditioned (a weight that batch norm right after it mostly cancels);
a wrong rule misses by ``O(1)``. Each :class:`Check` reports the tolerance
its largest error was held to.

A test file in your own project::

    # tests/test_my_layers.py
    import jax.numpy as jnp
    import fnn


    def _softsign_forward(x):  # y = x / (1 + |x|)
        d = 1 + jnp.abs(x)
        return x / d, d


    def _softsign_backward(d, g):  # dx = G / (1 + |x|)^2
        return g / (d * d)


    softsign = fnn.nn.activation("softsign", _softsign_forward, _softsign_backward, edge_values=(0.0, 1e4, -1e4))


    def test_softsign():
        fnn.testing.assert_module(softsign, (5,))


    def test_a_block_of_mine():
        block = fnn.nn.serial(fnn.nn.dense(8, bias=True), softsign, fnn.nn.layer_norm())
        fnn.testing.assert_module(block, (5,), seed=1)

:func:`fnn.inspect.wrong_rules` finds the wrong rule inside a whole network.
:func:`compare_vjp` checks a custom op (any ``jax.custom_vjp`` function)
against a reference implementation; :func:`relative_error` is fnn's one
definition of a relative error.
"""

from fnn._gradcheck.compare import DEFAULT_TOLERANCES, Difference, relative_error
from fnn._gradcheck.report import Check, Report
from fnn.testing._api import DTYPES, MODULE_CHECKS, assert_loss, assert_module, check_loss, check_module
from fnn.testing._vjp import VJP_CHECKS, compare_vjp

__all__ = [
    "VJP_CHECKS",
    "DEFAULT_TOLERANCES",
    "DTYPES",
    "MODULE_CHECKS",
    "Check",
    "Difference",
    "Report",
    "assert_loss",
    "assert_module",
    "check_loss",
    "check_module",
    "compare_vjp",
    "relative_error",
]
