"""Gradient paths side by side: accuracy, compiled code, memory, residuals and step time.

:func:`compare_paths` takes any model, loss and batch and, for each of a
subset of :data:`fnn.PATHS`, measures

- the gradient's agreement with a float64 reference (the ``autodiff`` path on
  float64 copies of the parameters and inputs), leaf by leaf;
- the jitted SGD step (:func:`fnn.train.sgd_update`): its compile time, XLA's
  memory analysis and the op counts of its optimised HLO, with the difference
  from a reference path's counts;
- the residuals, the values the forward pass keeps for the backward pass
  (``jax.ad_checkpoint.print_saved_residuals``);
- optionally the step time, timed against the reference path's by
  :func:`fnn.bench.compare` (interleaved rounds, bootstrap interval, verdict).

The pieces work on their own too, one job to a file:

- accuracy: :func:`reference_grads`, :func:`gradient_errors`;
- compiled code: :func:`compile_step`, :func:`memory`, :func:`compiled_cost`;
- HLO text: :func:`hlo_counts`, :func:`op_diff`;
- residuals: :func:`residuals`, :func:`backprop_as_one_vjp`;
- the report: :func:`compare_paths` (a :class:`fnn.testing.Report` of
  :class:`PathRow`, one per path);
- the wrong rule inside a network: :func:`wrong_rules` (a
  :class:`fnn.testing.Report` of :class:`Rule`, one per module call), over
  :func:`recorded_calls`, every module's actual input.

Example::

    model, loss = fnn.nn.mlp([784, 500, 10]), fnn.losses.cross_entropy
    _, params = model.init(jax.random.key(0), (784,))
    report = fnn.inspect.compare_paths(model, loss, params, x, labels, timing=False)
    print(report)                  # one line per path
    report["custom"].max_rel_err   # worst leaf's relative error against float64

    rules = fnn.inspect.wrong_rules(model, loss, params, x, labels)
    print(rules)                   # every module's rule at its actual input, the wrong ones first
    rules.failed[0].position       # e.g. "serial[2] residual serial[1] sigmoid"
"""

from fnn._gradcheck.residuals import backprop_as_one_vjp, residuals
from fnn.inspect._accuracy import gradient_errors, reference_grads
from fnn.inspect._compiled import LEARNING_RATE, compile_step, compiled_cost, memory
from fnn.inspect._hlo import hlo_counts, op_diff
from fnn.inspect._report import PathRow, compare_paths
from fnn.inspect._rules import Rule, recorded_calls, wrong_rules

__all__ = [
    "LEARNING_RATE",
    "PathRow",
    "Rule",
    "backprop_as_one_vjp",
    "compare_paths",
    "compile_step",
    "compiled_cost",
    "gradient_errors",
    "hlo_counts",
    "memory",
    "op_diff",
    "recorded_calls",
    "reference_grads",
    "residuals",
    "wrong_rules",
]
