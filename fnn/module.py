"""Modules and losses: a forward function and the notes' backward function, side by side.

A network is a composition of modules. Each module has

- ``init(key, input_shape) -> (output_shape, params)``: ``input_shape``
  excludes the batch axis (``(784,)``, ``(28, 28, 1)``); ``params`` is a plain
  pytree (``()`` for a module without parameters);
- ``apply(params, x) -> y``: the forward pass, batch axis first;
- ``forward(params, x) -> (y, saved)``: the forward pass, keeping what the
  backward function needs;
- ``backward(params, saved, g) -> (dparams, dx)``: the notes' backward
  function ``B[M, z](g)``, mapping ``g = dJ/dy`` to ``dJ/dparams`` (in the
  structure of ``params``) and ``dJ/dx``.

A *leaf* module (dense, an activation, LayerNorm, a convolution) is written
once, as a hand-derived ``forward``/``backward`` pair; :func:`leaf` turns the
pair into a module whose ``apply`` is the forward pass in plain ``jax.numpy``.
A *structural* module (``serial``, ``residual``, ``flatten``) only wires other
modules together; its ``backward`` calls its children's.

``check_inputs(x, split)`` checks a split's inputs on the host before
training (``fnn.fit``): by default finite floating-point inputs; a leaf can
bring its own (an embedding refuses token ids out of range), and a
structural module asks its first child.

A loss has ``forward(outputs, targets) -> (value, saved)`` and
``backward(saved, g) -> doutputs``, ``value`` a scalar.

:attr:`Module.custom` and :attr:`Loss.custom` give the same module with every
leaf's ``apply`` replaced by a ``jax.custom_vjp`` built from its
``forward``/``backward``: the hand-written rules then compose with any JAX
code (``jit``, ``vmap``, ``grad`` of ``grad``). Forward mode (``jax.jvp``)
cannot run through them; use the ``autodiff`` path (plain ``apply``) for that.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn import validate

__all__ = ["Loss", "Module", "leaf", "loss", "structural"]


@dataclasses.dataclass(frozen=True, eq=False)
class Module:
    """A module: pure ``init``, ``apply``, ``forward`` and ``backward`` functions (see the module doc).

    ``children`` are the modules a structural module wires together, and
    ``rebuild(*children)`` makes the same structure from other children (how
    :attr:`custom` swaps in the custom-VJP leaves). Leaves have neither.
    ``edge_values`` are the inputs at which a leaf's rule is delicate (see
    :func:`leaf`); :func:`fnn.testing.check_module` checks them.
    ``input_check`` is a leaf's own host-side check of its inputs (see
    :meth:`check_inputs`).
    """

    name: str
    init: Callable
    apply: Callable
    forward: Callable
    backward: Callable
    children: tuple = ()
    rebuild: Callable | None = None
    edge_values: tuple = ()
    input_check: Callable | None = None

    @property
    def is_leaf(self):
        """Whether this module is a hand-written forward/backward pair (not wiring)."""
        return self.rebuild is None

    def leaves(self):
        """The leaf modules of this module's tree, depth first, in the order the forward pass runs them."""
        if self.is_leaf:
            return (self,)
        return tuple(leaf for child in self.children for leaf in child.leaves())

    @functools.cached_property
    def custom(self):
        """This module with each leaf's ``apply`` a ``jax.custom_vjp`` of its own ``forward``/``backward``."""
        if self.is_leaf:
            return dataclasses.replace(self, apply=_custom_vjp_apply(self))
        return self.rebuild(*(child.custom for child in self.children))

    def check_inputs(self, x, split):
        """Checks a split's inputs ``x`` (a NumPy array, batch axis first) on the host before training.

        Values no trace-time check can see: this module's ``input_check`` if
        it has one, else its first child's check (a structural module's
        inputs are its first child's), else
        :func:`fnn.validate.check_inputs` (finite floating-point values).
        Raises :class:`fnn.validate.DataError` naming ``split``.
        """
        if self.input_check is not None:
            return self.input_check(x, split)
        if self.children:
            return self.children[0].check_inputs(x, split)
        return validate.check_inputs(x, split)

    def __call__(self, *args, **kwargs):
        """Refuses a call: a module is not a function of its input (``nn.relu``, not ``nn.relu()``)."""
        raise TypeError(
            f"{self.name} is already a module, not a function to call: put it in nn.serial(...) as it is "
            f"(nn.relu, not nn.relu()), and run a module with module.apply(params, x)"
        )

    def __repr__(self):
        inner = ", ".join(map(repr, self.children))
        return f"{self.name}({inner})" if self.children else self.name


def _custom_vjp_apply(module):
    """``apply`` as a ``jax.custom_vjp``: residuals ``(params, saved)``, backward ``module.backward``."""

    def fwd(params, x):
        y, saved = module.forward(params, x)
        return y, (params, saved)

    def bwd(residuals, g):
        params, saved = residuals
        return module.backward(params, saved, g)

    return functools.wraps(module.apply)(_custom_vjp(module.name, fwd, bwd))


def _custom_vjp(name, forward, backward):
    """``f(a, b)``, the first output of ``forward(a, b) -> (y, residuals)``, as a ``jax.custom_vjp``.

    ``backward(residuals, g) -> (da, db)`` is its rule; ``b`` is made an
    array; forward mode raises an error that names the way out.
    """

    @jax.custom_vjp
    def fn(a, b):
        return forward(a, b)[0]

    fn.defvjp(forward, backward)

    def checked(a, b):
        with _reverse_mode_only(name):
            return fn(a, jnp.asarray(b))

    return checked


@contextlib.contextmanager
def _reverse_mode_only(name):
    """Turns JAX's refusal to run a custom VJP in forward mode into an error that names the way out."""
    try:
        yield
    except TypeError as exc:
        if "forward-mode" not in str(exc):
            raise
        raise TypeError(
            f"{name}: the custom path's hand-written rules are reverse mode only (jax.custom_vjp), so jax.jvp, "
            "jax.jacfwd and jax.hessian (forward over reverse) cannot run through them; use the autodiff path "
            "instead: the module's plain apply, fnn.ops.autodiff, or fnn.value_and_grad(..., path='autodiff')"
        ) from exc


def leaf(name, *, forward, backward, init=None, check=None, check_inputs=None, apply=None, edge_values=()):
    """Makes a leaf module from a hand-written forward/backward pair.

    Args:
      name: names the module in errors and reprs, e.g. ``"dense"``.
      init: ``(key, input_shape) -> (output_shape, params)``; ``None`` for a
        leaf used only as an op over given parameters.
      forward: ``(params, x) -> (y, saved)`` in plain ``jax.numpy``; ``saved``
        holds arrays only (it becomes the custom VJP's residuals).
      backward: ``(params, saved, g) -> (dparams, dx)``, written from the
        derivative, never by calling JAX's autodiff.
      check: ``(params, x) -> None``, raising ``TypeError``/``ValueError``
        that names the module and the shapes; it runs at trace time on every
        path, before ``forward``.
      edge_values: inputs at which the rule is delicate (a kink, an overflow,
        a degenerate row), which :func:`fnn.testing.check_module` checks
        besides its random draws: each a number or array broadcast to the
        input's shape (batch axis included), or a function of that shape
        returning the input, e.g. ``(0.0,)`` for ReLU.
      check_inputs: ``(x, split) -> None``, the host-side check of a split's
        inputs before training (:meth:`Module.check_inputs`); ``None`` for
        the default, finite floating-point inputs.
      apply: ``(params, x) -> y``, the same values as ``forward``'s first
        output computed the plain way, for a leaf whose ``forward`` is
        arranged for its backward (attention computes its rows in tiles
        there); ``None`` for ``forward``'s first output.

    ``apply`` is what the ``autodiff`` path lets ``jax.grad`` differentiate
    (what ``forward`` saves but ``apply`` does not return is dead code that
    ``jit`` removes). It runs ``check`` first, as ``forward`` does.
    """

    def checked_forward(params, x):
        x = jnp.asarray(x)
        if check is not None:
            check(params, x)
        return forward(params, x)

    def checked_apply(params, x):
        if apply is None:
            return checked_forward(params, x)[0]
        x = jnp.asarray(x)
        if check is not None:
            check(params, x)
        return apply(params, x)

    def no_init(key, input_shape):
        raise TypeError(f"{name}: this leaf is an op over given parameters and has no init")

    return Module(
        name,
        init or no_init,
        checked_apply,
        checked_forward,
        backward,
        input_check=check_inputs,
        edge_values=tuple(edge_values),
    )


def structural(name, *, init, apply, forward, backward, children=(), rebuild):
    """Makes a structural module: wiring whose ``backward`` calls its children's.

    ``rebuild(*children)`` must return the same structure over new children;
    for a module without children it returns the module itself.
    """
    return Module(name, init, apply, forward, backward, tuple(children), rebuild)


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss: ``apply(outputs, targets) -> scalar`` and its forward/backward pair.

    ``forward(outputs, targets) -> (scalar, saved)``,
    ``backward(saved, g) -> doutputs``. ``error(outputs, targets)``, when the
    loss has one, is the fraction of rows the outputs get wrong
    (classification losses); ``None`` otherwise.
    ``check_targets(targets, output_shape, split)`` checks a split's targets
    on the host before training (values no trace-time check can see, such as
    a label out of range); see :mod:`fnn.validate`. Targets are data: the
    ``custom`` and ``backprop`` paths give them no gradient (the ``autodiff``
    path differentiates them like any input). ``edge_values`` are outputs at
    which the rule is delicate, as for :func:`leaf`.
    """

    name: str
    apply: Callable
    forward: Callable
    backward: Callable
    error: Callable | None = None
    check_targets: Callable | None = None
    edge_values: tuple = ()

    @functools.cached_property
    def custom(self):
        """This loss with ``apply`` a ``jax.custom_vjp`` of its ``forward``/``backward``."""
        apply = _custom_vjp(self.name, self.forward, lambda saved, g: (self.backward(saved, g), None))

        def checked(outputs, targets):
            return apply(jnp.asarray(outputs), targets)

        return dataclasses.replace(self, apply=checked)

    def __repr__(self):
        return self.name


def loss(name, *, forward, backward, check=None, error=None, check_targets=None, edge_values=()):
    """Makes a :class:`Loss` from a hand-written forward/backward pair.

    ``check(outputs, targets)`` runs at trace time on every path before
    ``forward``; it raises errors that name the loss and the shapes.
    ``error``, ``check_targets`` and ``edge_values`` are as in :class:`Loss`.
    """

    def checked_forward(outputs, targets):
        outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
        if check is not None:
            check(outputs, targets)
        return forward(outputs, targets)

    def apply(outputs, targets):
        return checked_forward(outputs, targets)[0]

    return Loss(name, apply, checked_forward, backward, error, check_targets, tuple(edge_values))
