"""Which module's rule is wrong inside a network: every module checked at its actual input from one forward pass.

:func:`wrong_rules` runs the model's forward pass once, in float64,
recording what every module in the tree (leaves and wiring) receives; then
it checks each module's ``backward`` at that input, for a random output
cotangent, against autodiff of that module's own ``apply`` (the
``backward`` check of :func:`fnn.testing.check_module`), and
the loss's ``backward`` at the model's actual outputs. A module whose check
fails while every module inside it passes has a wrong rule of its own
(``own``); a failure explained by a failing module inside it is inherited.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _precision, context
from fnn._gradcheck.compare import against_autodiff
from fnn._gradcheck.dtypes import cast, rtol, x64
from fnn._gradcheck.problem import loss_problem, module_problem
from fnn._gradcheck.report import FAILED, Check, Column, Report, number, ratio
from fnn._paths import check_pair
from fnn.module import Module

__all__ = ["Rule", "recorded_calls", "wrong_rules"]


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a module during a forward pass: where it sits, and what it got."""

    position: str
    module: Module
    params: object
    x: object
    ancestors: tuple


def _recording(module, prefix, ancestors, calls):
    """``module`` with its ``run`` (and every descendant's) appending a ``Call`` to ``calls``."""
    position = prefix + module.name
    wired = module
    if module.children:
        many = len(module.children) > 1
        wired = module._kind.rebuild(
            *(
                _recording(child, f"{position}{f'[{i}]' if many else ''} ", (*ancestors, position), calls)
                for i, child in enumerate(module.children)
            )
        )

    def run(params, x, state, key, train):
        y, new_state = wired._run(params, x, state, key, train)
        calls.append(Call(position, module, params, x, ancestors))
        return y, new_state

    return dataclasses.replace(wired, _run=run)


def recorded_calls(model, params, x):
    """``(outputs, calls)``: one eager forward pass of ``model``, and every module's call in the order they end.

    Each call records ``position`` (where the module sits), ``module``,
    ``params``, ``x`` (what it got) and ``ancestors`` (the positions of the
    modules around it).

    Positions name the path from the root: ``serial[3] dense`` is the fourth
    module of the top ``serial``; ``serial[2] residual serial[0] dense`` the
    first module of the block inside the residual that is the top serial's
    third. A parent with one child gives no index. A module called twice
    (shared) gets ``(call 2)``.
    """
    calls = []
    outputs = _recording(model, "", (), calls).apply(params, x)
    seen = {}
    for i, call in enumerate(calls):
        seen[call.position] = seen.get(call.position, 0) + 1
        if seen[call.position] > 1:
            calls[i] = dataclasses.replace(call, position=f"{call.position} (call {seen[call.position]})")
    return outputs, calls


@dataclasses.dataclass(frozen=True)
class Rule:
    """One module's (or the loss's) rule, checked at its actual input: a row of :func:`wrong_rules`' report.

    ``kind`` is ``"leaf"``, ``"wiring"`` (a structural module: its rule
    includes its children's) or ``"loss"``; ``error`` and ``tolerance`` are
    relative to the largest reference entry, as in :class:`fnn.testing.Check`
    (``error`` is ``None`` when the check raised); ``passed`` is whether the
    rule holds; ``own`` is true when this rule fails while every rule inside
    it passes: the wrong one.
    """

    position: str
    kind: str
    error: float | None
    tolerance: float
    where: str
    detail: str
    passed: bool
    own: bool

    @property
    def status(self):
        """``"WRONG"`` (wrong on its own), ``"fails inside"`` (a rule inside it is wrong) or ``"ok"``."""
        return "WRONG" if self.own else ("fails inside" if not self.passed else "ok")

    @property
    def ratio(self):
        """``error / tolerance`` (``inf`` when the check raised)."""
        return ratio(self.error, self.tolerance)


#: The columns of :func:`wrong_rules`' report.
COLUMNS = (
    Column(
        "position",
        "the module's place: serial[2] residual serial[1] sigmoid is the sigmoid at index 1 of "
        "the serial inside the residual at index 2 of the top serial",
        lambda r: r.position,
    ),
    Column("rule", "WRONG (wrong on its own), fails inside (a rule inside it is wrong) or ok", lambda r: r.status),
    Column(
        "error",
        "the backward's largest error against autodiff at the module's actual input, relative to the "
        "largest entry of the gradient leaf (raised: the rule's code failed)",
        lambda r: "raised" if r.error is None else number(r.error),
    ),
    Column(
        "tolerance",
        "what that error was held to: float64 rounding, raised where the gradient is ill-conditioned (as check_module)",
        lambda r: number(r.tolerance),
    ),
    Column("where", "the entry of the largest error", lambda r: r.where),
    Column("detail", "what was compared, and on failure what was wrong", lambda r: r.detail),
)


def _backward_check(problem):
    """``backward`` against autodiff (both paths one compiled program per module), each leaf to the tolerance of its
    conditioning, as :func:`fnn.testing.check_module` holds it; a raise becomes a failed check."""
    try:
        got = problem.gradients("backprop")[2]
        return against_autodiff("backward", problem, got, "forward then backward against autodiff's VJP")
    except Exception as exc:  # the rule's code failed: that is the finding
        return Check("backward", FAILED, detail=f"raised {type(exc).__name__}: {' '.join(str(exc).split())}")


def _call_problem(call, seed):
    """The checker's problem for one recorded call: the module at its actual parameters and input."""
    return module_problem(
        call.module, np.shape(call.x), params=call.params, x=call.x, seed=seed, edge_values=(), dtypes=()
    )


def _rule(position, kind, found, alone):
    """A :class:`Rule` from a check; ``alone``: no module inside this one fails (so a failure is its own)."""
    tolerance = found.tolerance if found.tolerance is not None else rtol(np.float64)
    return Rule(
        position,
        kind,
        found.error,
        tolerance,
        found.where,
        found.detail,
        bool(found.passed),
        alone and not found.passed,
    )


@_precision.at_full
def wrong_rules(model, loss, params, x, targets, *, seed=0, state=None, key=None, train=True):
    """Checks every module's backward rule inside ``model`` (and ``loss``'s) at its actual input, in float64.

    Args:
      model: any fnn module (``serial``, ``residual``, nested, ``mlp``, ...).
      loss: any fnn loss.
      params, x, targets: a batch as training would see it (any floating
        dtype; float64 copies are checked).
      seed: seeds the random output cotangents.
      state, key, train: the context of a model with state or randomness
        (batch norm, dropout), as :func:`compare_paths` takes it.

    Returns:
      A :class:`fnn.testing.Report` with one :class:`Rule` per module call
      and the loss, named by position, the rules wrong on their own first,
      then those that fail only because a rule inside them does, then the
      rest by ``error / tolerance``; ``report.failed[0].position`` is the
      wrong rule, e.g. ``"serial[2] residual serial[1] sigmoid"``.

    Example::

        report = fnn.inspect.wrong_rules(model, fnn.losses.cross_entropy, params, x, labels)
        print(report)   # one line per module, the wrong rule first
        assert report.ok, report.failed[0].position
    """
    check_pair(model, loss)
    params, x, targets = cast((params, x, targets), np.float64)
    with x64():
        model = context.fix("wrong_rules", model, np.shape(x)[1:], state=state, key=key, train=train, seed=seed)[0]
        outputs, calls = recorded_calls(model, jax.tree.map(jnp.asarray, params), jnp.asarray(x))
        checked = [_backward_check(_call_problem(call, seed)) for call in calls]
        checked_loss = _backward_check(
            loss_problem(loss, outputs.shape, targets=targets, outputs=outputs, seed=seed, edge_values=(), dtypes=())
        )
    failing = {c.position for c, found in zip(calls, checked) if not found.passed}
    inherited = {a for c in calls if c.position in failing for a in c.ancestors}
    rules = [
        _rule(c.position, "leaf" if c.module._is_leaf else "wiring", found, c.position not in inherited)
        for c, found in zip(calls, checked)
    ]
    rules.append(_rule(f"loss {loss.name}", "loss", checked_loss, True))
    order = sorted(range(len(rules)), key=lambda i: (not rules[i].own, rules[i].passed, -rules[i].ratio, i))
    return Report(f"wrong_rules({model!r}, {loss!r})", tuple(rules[i] for i in order), COLUMNS, "position")
