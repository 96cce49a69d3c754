"""Modules and losses: a forward function and the notes' backward function, side by side.

A network is a composition of modules. Each module has

- ``init(key, input_shape) -> (output_shape, params)``: ``input_shape``
  excludes the batch axis (``(784,)``, ``(28, 28, 1)``); ``params`` is a plain
  pytree (``()`` for a module without parameters);
- ``apply(params, x) -> y``: the forward pass, batch axis first (the context
  keywords below are accepted by every module);
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

Before training, ``fnn.fit`` checks a split's inputs on the host through the
module: by default finite floating-point inputs; a leaf can bring its own
check (:func:`leaf`'s ``check_inputs``: an embedding refuses token ids out
of range), and a structural module asks its first child.

**One call contract.** A module may keep *state*, updated by the forward
pass and never differentiated (batch norm's running statistics), may draw
from a *random key* (dropout's mask), and may behave differently in training
and in evaluation; such a module is *contextual*. Every module, contextual or
not, is called the same way:

- ``init_state(input_shape) -> state`` (``()`` for a module without state);
- ``apply(params, x, *, state=None, key=None, train=None) -> y``, or
  ``(y, new_state)`` exactly when ``state=`` was passed;
- ``forward(params, x, *, state=None, key=None, train=None) -> (y, saved)``,
  or ``(y, saved, new_state)`` exactly when ``state=`` was passed;
- ``backward(params, saved, g) -> (dparams, dx)``: the state gets no
  gradient and the key none; what differs between training and evaluation,
  ``forward`` says through what it saves.

What comes back is the caller's choice, never the model's: code that passes
``state=`` (``model.init_state(...)``, which is ``()`` for a model without
state) always gets the new state back, so adding a batch norm deep inside a
block changes no call site. A module without state or randomness ignores the
context keywords. A module with state refuses a call without ``state=``, and
a contextual one a call without ``train=`` (``True`` or ``False``, fixed when
tracing): where ``train`` changes the result it is never a default. A
stochastic module needs ``key=`` in training. Composite modules (``serial``,
``residual``) pass each child its own state and the key ``fold_in(key, i)``
for child ``i`` (:func:`fnn.context.child_key`); :func:`fnn.context.bind`
fixes a context once, making a plain module of a contextual one.

Underneath, every module has one positional form, what the public methods
check their arguments for and then call: ``_run(params, x, state, key, train)
-> (y, state)`` and ``_run_forward(params, x, state, key, train) -> (y, saved,
state)``, ``state`` being ``()`` for a module without any. fnn's wiring,
paths and loop call these. Leaf authors never write them: :func:`leaf` makes
them from a plain ``forward``/``backward`` pair; wiring that hands its
children a context writes them for :func:`structural`.

Why this design, against the anchors: like Haiku's ``transform_with_state``
and Equinox's ``State``, state is a pytree passed in and returned, never
hidden in the module; as with Equinox's ``Sequential``, the new state comes
back exactly when a state was passed in, and as Haiku's ``BatchNorm`` requires
``is_training``, a contextual module requires ``train``.
The hand-written ``backward`` needs no context: the forward pass keeps what
the backward needs for the mode it ran in.

A loss has ``forward(outputs, targets) -> (value, saved)`` and
``backward(saved, g) -> doutputs``, ``value`` a scalar.

:attr:`Module.by_rules` and :attr:`Loss.by_rules` give the same module with every
leaf's ``apply`` differentiated by its own ``forward``/``backward`` in both
modes. The backward ``g -> J^T g`` is linear in ``g``, so its transpose is
the leaf's Jacobian-vector product ``u -> J u``: each leaf is a
``jax.custom_jvp`` whose JVP is that transpose (``jax.linear_transpose``),
kept as one linear map whose own transpose is the hand-written backward
(``fnn/_linear_map.py``). Reverse mode then runs ``backward`` on the
residuals ``forward`` saved, as a ``jax.custom_vjp`` would, and forward mode
(``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``, ``jax.hessian``) runs too;
both compose with ``jit``, ``vmap`` and each other. :meth:`Module.pushforward`
is the same transpose for any module, the forward sweep of the ``backprop``
path.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from fnn import validate
from fnn._errors import InputError, StructureError, UsageError
from fnn._linear_map import linear_map, zero_tangent

__all__ = [
    "Loss",
    "Module",
    "Setting",
    "as_custom_vjp",
    "returned",
    "leaf",
    "loss",
    "structural",
    "with_settings",
]


def returned(parts, state, new_state, after=()):
    """The call contract's one rule: what a call gives back, ``(*parts, new_state, *after)`` exactly when a
    ``state`` was passed (not ``None``), else ``(*parts, *after)``; a single value is given back as itself.

    Every function of fnn that takes ``state=`` gives back through this:
    :meth:`Module.apply` (``y``, or ``(y, state)``), :meth:`Module.forward`,
    :func:`fnn.value_and_grad`'s and :func:`fnn.jvp`'s functions, the steps of
    :mod:`fnn.train` and :func:`fnn.fit` (``(params, history)``, or
    ``(params, state, history)``).
    """
    found = (*parts, new_state, *after) if state is not None else (*parts, *after)
    return found[0] if len(found) == 1 else found


class Setting(NamedTuple):
    """One argument of the call that built a module: its ``name``, ``value`` and the constructor's ``default``
    (``inspect.Parameter.empty`` for a required argument)."""

    name: str
    value: object
    default: object


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """What only a leaf holds besides its functions (see :func:`leaf` for each)."""

    #: The inputs at which the rule is delicate; :func:`fnn.testing.check_module` checks them.
    edge_values: tuple = ()
    #: The leaf's own host-side check of its inputs (see :meth:`Module._check_inputs`), or ``None``.
    input_check: Callable | None = None
    #: ``state_init(input_shape) -> state``, or ``None``: the leaf keeps no state.
    state_init: Callable | None = None
    #: Whether the leaf draws from the key in training (dropout).
    stochastic: bool = False
    #: Whether the leaf has no parameters and its ``forward`` is linear in ``x`` (average pooling): its JVP is then
    #: its own forward pass, ``J u = forward(u)``, computed directly rather than as the transpose of ``backward``.
    linear: bool = False
    #: ``param_axes(params) -> the name of each axis of each parameter`` (see :func:`leaf`), or ``None``.
    param_axes: Callable | None = None
    #: ``state_axes(state) -> the name of each axis of each array of the state`` (see :func:`leaf`), or ``None``.
    state_axes: Callable | None = None


@dataclasses.dataclass(frozen=True)
class _Wiring:
    """What only a structural module holds besides its functions (see :func:`structural` for each)."""

    #: The modules it wires together.
    children: tuple
    #: ``rebuild(*children)`` makes the same structure from other children (how the ``custom`` path swaps in the
    #: hand-differentiated leaves).
    rebuild: Callable
    #: Its own host-side check of its inputs, or ``None``: its first child's.
    input_check: Callable | None = None
    #: ``state_init(input_shape) -> state`` from its children's, or ``None`` when no child keeps state.
    state_init: Callable | None = None
    #: ``child_contexts(state, key) -> [(state, key), ...]``, one per child, or ``None`` for wiring of plain children.
    child_contexts: Callable | None = None
    #: Whether its output holds its input's values, only rearranged (``flatten``): the host-side input check is
    #: then the next module's.
    only_rearranges: bool = False
    #: ``param_axes(tree, axes_of) -> the name of each axis of each array`` of its parameters, or of its state,
    #: from its children's (``axes_of(child, child_tree)``), or ``None`` (see :func:`structural`).
    param_axes: Callable | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Module:
    """A module: pure ``init``, ``apply``, ``forward`` and ``backward`` functions (see the module doc).

    Leaves are made by :func:`leaf`, structural modules by the wiring in
    :mod:`fnn.nn` through :func:`structural`; what a user calls is
    :attr:`init`, :meth:`init_state`, :meth:`apply`, :meth:`forward`,
    :attr:`backward`, :meth:`pushforward`, :meth:`describe` and
    :meth:`leaves`, and what a module holds is :attr:`name`,
    :attr:`children` and :attr:`settings`. The rest is the library's.
    """

    #: The module's name, as errors and reports show it (``"dense"``).
    name: str
    #: ``init(key, input_shape) -> (output_shape, params)``, the batch axis excluded from both shapes.
    init: Callable
    #: ``backward(params, saved, g) -> (dparams, dx)``: the notes' backward function ``B[M, z](g)``.
    backward: Callable
    #: ``_run(params, x, state, key, train) -> (y, state)``: the positional form behind :meth:`apply`.
    _run: Callable
    #: ``_run_forward(params, x, state, key, train) -> (y, saved, state)``: the positional form behind
    #: :meth:`forward`.
    _run_forward: Callable
    #: What only a leaf (:class:`_Leaf`) or only wiring (:class:`_Wiring`) holds: one or the other, never a mix.
    _kind: _Leaf | _Wiring
    #: The :class:`Setting` of the constructor call that built the module (see :func:`with_settings`), modules
    #: among them left out (they are its children); :meth:`describe` and ``repr`` show them.
    settings: tuple = ()

    @property
    def children(self):
        """The modules a structural module wires together; ``()`` for a leaf."""
        return () if self._is_leaf else self._kind.children

    @property
    def _only_rearranges(self):
        """Whether this is wiring whose output holds its input's values, only rearranged (``flatten``)."""
        return not self._is_leaf and self._kind.only_rearranges

    def _param_axes(self, params):
        """The names of the axes of each array of ``params`` (arrays or ``jax.ShapeDtypeStruct``), as this module's
        leaves declare them: a ``jax.sharding.PartitionSpec`` of names per array, ``None`` for an axis no leaf
        names, in the structure of ``params``."""
        declared = self._kind.param_axes
        if declared is None:
            return _unnamed(params)
        if self._is_leaf:
            return declared(params)
        return declared(params, lambda child, child_params: child._param_axes(child_params))

    def _state_axes(self, state):
        """The names of the axes of each array of ``state`` (from :meth:`init_state`), as this module's leaves
        declare them (:func:`leaf`'s ``state_axes``), in the structure of ``state``; wiring names its children's
        state as it names their parameters."""
        if not self._has_state:
            return _unnamed(state)
        if self._is_leaf:
            declared = self._kind.state_axes
            return _unnamed(state) if declared is None else declared(state)
        declared = self._kind.param_axes
        if declared is None:
            return _unnamed(state)
        return declared(state, lambda child, child_state: child._state_axes(child_state))

    @property
    def _edge_values(self):
        """A leaf's delicate inputs (see :func:`leaf`); ``()`` for wiring."""
        return self._kind.edge_values if self._is_leaf else ()

    def apply(self, params, x, *, state=None, key=None, train=None):
        """The forward pass: ``y``, or ``(y, new_state)`` exactly when ``state=`` was passed (see the module doc).

        Args:
          params: the module's parameters (from :attr:`init`).
          x: the inputs, batch axis first.
          state: the state (from :meth:`init_state`); required for a module
            with state, ignored by one without (which returns it as given).
          key: a ``jax.random`` key; required in training by a module that
            draws from one (dropout), ignored by the others.
          train: ``True`` or ``False``; required by a contextual module,
            ignored by the others.
        """
        context = self._context(state, train)
        y, new_state = self._run(params, x, context[0], key, context[1])
        return returned((y,), state, new_state)

    def forward(self, params, x, *, state=None, key=None, train=None):
        """The forward pass keeping what :attr:`backward` needs: ``(y, saved)``, or ``(y, saved, new_state)``
        exactly when ``state=`` was passed; the keywords are :meth:`apply`'s."""
        context = self._context(state, train)
        y, saved, new_state = self._run_forward(params, x, context[0], key, context[1])
        return returned((y, saved), state, new_state)

    def pushforward(self, params, saved, y, dparams, dx):
        """The forward-mode counterpart of :attr:`backward`: ``dy = J (dparams, dx)``, from what ``forward`` saved.

        :attr:`backward` is ``g -> J^T g``, linear in ``g``; its transpose
        (``jax.linear_transpose``) is ``u -> J u``. For a structural module
        the transpose of its backward (its children's, in reverse order) runs
        its children's transposed backward functions in the order of the
        forward pass: the notes' forward sweep. (A ``linear`` leaf's own
        shortcut applies when it is transposed alone, not inside wiring.) ``y`` is the output (its shape and dtype are
        the map's); ``dx`` is ignored where ``backward`` gives ``x`` no
        gradient (integer ids).
        """
        if self._is_leaf and self._kind.linear:  # its own forward pass is its JVP
            return self._run(params, _linear_tangent(self, params, [dx]), (), None, False)[0]
        return _pushforward(
            lambda residuals, g: self.backward(*residuals, g), (params, saved), y, (dparams, dx), names=_MODULE_GRADS
        )

    def _context(self, state, train):
        """``(state, train)`` to pass to :attr:`_run`: the state (``()`` if none was passed) and the mode, after the
        checks :meth:`apply` makes (a module with state needs ``state=``, a contextual one ``train=``)."""
        if train is None:
            if self._contextual:
                through = "" if self._is_leaf else f" (through {', '.join(_contextual_names(self))})"
                raise UsageError(
                    f"{self.name} behaves differently in training and in evaluation{through}: pass train=True "
                    "or train=False"
                )
            train = False
        if not isinstance(train, bool):
            traced = isinstance(train, jax.core.Tracer)
            fix = " (under jax.jit, mark it static: static_argnames='train', or close over it)" if traced else ""
            raise UsageError(
                f"{self.name}: train must be True or False (a Python bool, fixed when tracing), got {train!r}{fix}"
            )
        if state is None and self._has_state:
            through = "" if self._is_leaf else f" (in {', '.join(_contextual_names(self, state=True))})"
            raise UsageError(
                f"{self.name} keeps state{through}: pass "
                "state=model.init_state(input_shape) (input_shape without the batch axis) and take the new state "
                "back: y, state = model.apply(params, x, state=state, train=...)"
            )
        return (() if state is None else state), train

    @property
    def _is_leaf(self):
        """Whether this module is a hand-written forward/backward pair (not wiring)."""
        return isinstance(self._kind, _Leaf)

    def leaves(self):
        """The leaf modules of this module's tree, depth first, in the order the forward pass runs them."""
        if self._is_leaf:
            return (self,)
        return tuple(leaf for child in self.children for leaf in child.leaves())

    @functools.cached_property
    def _has_state(self):
        """Whether a module of this tree keeps state (it takes ``state=`` and returns the new state)."""
        return any(leaf._kind.state_init is not None for leaf in self.leaves())

    @functools.cached_property
    def _has_randomness(self):
        """Whether a module of this tree draws from the key in training (it takes ``key=``)."""
        return any(leaf._kind.stochastic for leaf in self.leaves())

    @property
    def _contextual(self):
        """Whether this module has state or randomness, and so takes ``state=``/``key=``/``train=``."""
        return self._has_state or self._has_randomness

    def init_state(self, input_shape):
        """The state of every module of the tree before training, for inputs ``[N, *input_shape]``; ``()`` if none."""
        state_init = self._kind.state_init
        return () if state_init is None else state_init(tuple(input_shape))

    def _output_shape(self, input_shape):
        """The output shape (batch axis excluded) :attr:`init` gives for ``input_shape``, computing nothing."""
        shapes = []

        def init(key):
            shape, params = self.init(key, tuple(input_shape))
            shapes.append(tuple(shape))
            return params

        jax.eval_shape(init, jax.random.key(0))
        return shapes[0]

    @functools.cached_property
    def by_rules(self):
        """This module with each leaf's ``apply`` differentiated, in both modes, by its own ``forward``/``backward``."""
        return _registered(self, _hand_differentiated)

    def _check_inputs(self, x, split):
        """Checks a split's inputs ``x`` (a NumPy array, batch axis first) on the host before training.

        Values no trace-time check can see: this module's own check if
        it has one (``serial`` asks its first child that does more than
        rearrange values, so ``serial(flatten(), embedding(...))`` checks token
        ids), else its first child's check (a structural module's inputs are
        its first child's), else :func:`fnn.validate.check_inputs` (finite
        floating-point values). Raises :class:`fnn.DataError` naming ``split``.
        """
        if self._kind.input_check is not None:
            return self._kind.input_check(x, split)
        if self.children:
            return self.children[0]._check_inputs(x, split)
        return validate.check_inputs(x, split)

    def __call__(self, *args, **kwargs):
        """Refuses a call: a module is not a function of its input (``nn.relu``, not ``nn.relu()``)."""
        raise UsageError(
            f"{self.name} is already a module, not a function to call: put it in nn.serial(...) as it is "
            f"(nn.relu, not nn.relu()), and run a module with module.apply(params, x, ...)"
        )

    def describe(self):
        """The module as JSON-ready data: ``{"module": name, "settings": {...}, "children": [...]}``.

        Every setting of every module of the tree, defaults included (a
        checkpoint compares this to refuse resuming into another model); the
        keys with nothing to show are left out.
        """
        described = {"module": self.name}
        if self.settings:
            described["settings"] = _settings_data(self.settings)
        if self.children:
            described["children"] = [child.describe() for child in self.children]
        return described

    def __repr__(self):
        """``name(children..., setting=value...)``, showing the settings that differ from their defaults."""
        return _call_repr(self.name, [*map(repr, self.children)], self.settings)


def _call_repr(name, parts, settings):
    """``name(parts..., setting=value...)`` with the settings that differ from their defaults; ``name`` alone if
    there is nothing inside."""
    shown = [
        f"{s.name}={_shown(s.value)}"
        for s in settings
        if s.default is inspect.Parameter.empty or jsonable(s.value) != jsonable(s.default)
    ]
    inner = ", ".join([*parts, *shown])
    return f"{name}({inner})" if inner else name


def _settings_data(settings):
    return {s.name: jsonable(s.value) for s in settings}


def jsonable(value):
    """A setting as JSON-ready data: numbers, strings, ``None`` and lists as they are, a dtype by its name
    (``"bfloat16"``), a function by its qualified name, a module by :meth:`Module.describe`, else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Module):
        return value.describe()
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, (type, np.dtype)):
        try:
            return jnp.dtype(value).name
        except TypeError:
            pass
    if _is_scalar(value):
        return np.asarray(value).item()
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}".lstrip(".")
    return repr(value)


def _shown(value):
    """A setting's value as ``repr`` shows it: a dtype or a function by its name, a NumPy or JAX scalar as the
    Python number it stands for, anything else by its ``repr``."""
    if isinstance(value, (type, np.dtype)) or callable(value):
        return jsonable(value)
    if _is_scalar(value):
        return repr(jsonable(value))
    return repr(value)


def _is_scalar(value):
    """Whether ``value`` is a NumPy scalar or a 0-d array (JAX's too)."""
    return isinstance(value, np.generic) or (hasattr(value, "shape") and np.shape(value) == ())


def _is_module_argument(value):
    return isinstance(value, Module) or (
        isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, Module) for v in value)
    )


def with_settings(constructor):
    """Makes a module (or loss) constructor record its call's arguments in :attr:`Module.settings`.

    ``@with_settings`` on ``def dropout(rate): ...`` makes ``dropout(0.1)``
    a module whose ``settings`` hold ``rate=0.1`` (defaults included, module
    arguments left out: they are its children), so that ``repr`` and
    :meth:`Module.describe` show them.
    """
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def build(*args, **kwargs):
        module = constructor(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        settings = tuple(
            Setting(name, value, signature.parameters[name].default)
            for name, value in bound.arguments.items()
            if not _is_module_argument(value) and signature.parameters[name].kind != inspect.Parameter.VAR_POSITIONAL
        )
        return dataclasses.replace(module, settings=settings)

    return build


def _contextual_names(module, state=False):
    """The names of the leaves that make ``module`` contextual (with ``state``: those that keep state), in order,
    each once."""
    leaves = [
        leaf.name
        for leaf in module.leaves()
        if leaf._kind.state_init is not None or (not state and leaf._kind.stochastic)
    ]
    return list(dict.fromkeys(leaves))


def _registered(module, register):
    """``module`` with each leaf's ``run`` differentiated by its own rule, registered with JAX by ``register``
    (:func:`_hand_differentiated` or :func:`_vjp_registered`); wiring rebuilt around the registered leaves."""
    if module._is_leaf:
        make = _contextual_custom_run if module._contextual else _custom_run
        return dataclasses.replace(module, _run=make(module, register))
    rebuilt = module._kind.rebuild(*(_registered(child, register) for child in module.children))
    return dataclasses.replace(rebuilt, name=module.name, settings=module.settings)


def as_custom_vjp(model):
    """``model`` (a :class:`Module` or :class:`Loss`) with each leaf's rule registered as a ``jax.custom_vjp``.

    The same hand-written ``forward`` and ``backward``, registered the way
    most JAX code registers a rule: ``fwd`` is the leaf's forward (its
    residuals ``(params, saved)``), ``bwd`` its backward. ``jax.grad`` of the
    result's ``apply`` (the ``autodiff`` path over it) runs the backward
    functions, bit for bit as the ``custom`` path does. Reverse mode only: JAX
    cannot run a ``custom_vjp`` forward (``jax.jvp``, ``jax.jacfwd``), which is
    why the ``custom`` path registers each rule instead as a ``jax.custom_jvp``
    whose JVP is the transposed backward, and reverse mode the backward itself
    (:attr:`Module.by_rules`): both modes from one rule.

    Example::

        registered = fnn.module.as_custom_vjp(model)
        loss, grads = fnn.value_and_grad(registered, loss_fn, path="autodiff")(params, x, labels)
    """
    if isinstance(model, Loss):
        return dataclasses.replace(model, apply=_loss_apply(model, _vjp_registered))
    if not isinstance(model, Module):
        raise UsageError(f"as_custom_vjp: model must be an fnn module or loss, got {type(model).__name__}")
    return _registered(model, _vjp_registered)


def _loss_apply(loss, register):
    """A loss's ``apply`` differentiated by its ``forward``/``backward``, registered by ``register``."""
    apply = register(loss.forward, lambda saved, g: (loss.backward(saved, g), None))

    def checked(outputs, targets):
        return apply(jnp.asarray(outputs), targets)

    return checked


def _custom_run(module, register):
    """A plain leaf's ``run`` with its output a ``register``-ed function of ``(params, x)``: residuals ``(params,
    saved)``, backward ``module.backward``."""

    def forward(params, x):
        y, saved, _ = module._run_forward(params, x, (), None, False)
        return y, saved

    push = (
        (lambda residuals, u: module._run(residuals[0], _linear_tangent(module, residuals[0], u), (), None, False)[0])
        if module._kind.linear
        else None
    )
    backward = lambda residuals, g: module.backward(*residuals, g)  # noqa: E731
    fn = register(forward, backward, keeps_params=True, push=push)

    def run(params, x, state, key, train):
        return fn(params, x), state

    return run


def _contextual_custom_run(module, register):
    """A contextual leaf's ``run`` as a ``register``-ed function per mode over ``(params, x, state, key) -> (y,
    state)``.

    The new state is an output whose tangent is zero (it carries no
    derivative, and no cotangent back); the incoming state and the key are
    not differentiated.
    """

    @functools.cache
    def for_mode(train):
        def forward(params, x, state, key):
            y, saved, new_state = module._run_forward(params, x, state, key, train)
            return (y, new_state), saved

        backward = lambda residuals, g: module.backward(*residuals, g)  # noqa: E731
        return register(forward, backward, keeps_params=True, extra=2)

    def run(params, x, state, key, train):
        return for_mode(train)(params, jnp.asarray(x), state, key)

    return run


def _linear_tangent(module, params, moving):
    """The input's tangent of a ``linear=True`` leaf, the only one that can move; refuses a leaf with parameters."""
    if jax.tree.leaves(params):
        raise UsageError(f"{module.name}: declared linear=True, but it has parameters; a linear leaf takes none")
    return moving[0]


def _hand_differentiated(forward, backward, *, keeps_params=False, extra=0, push=None):
    """``f(a, b, ...)``, the first output of ``forward(a, b, ...) -> (y, saved)``, differentiated by
    ``backward(residuals, g) -> (da, db)`` in both modes.

    ``residuals`` is ``saved``, or with ``keeps_params`` the pair ``(a, saved)``
    (a module's parameters: arguments, kept without a copy).

    ``backward`` is ``g -> J^T g``, linear in ``g``, so its transpose is
    ``u -> J u``, the Jacobian-vector product: ``f`` is a ``jax.custom_jvp``
    whose JVP is that transpose (:func:`_pushforward`), and JAX's reverse
    mode transposes it back into ``backward`` itself. ``db`` may be ``None``
    (integer ids, a loss's targets: ``b``'s tangent then counts for nothing).
    With ``extra``, ``f`` takes that many more inputs that are not
    differentiated (a state, a key) and returns ``(y, new_state)``, the new
    state with a zero tangent. ``b`` is made an array. ``push(residuals, u)``,
    if given, computes the JVP directly (a linear leaf's own forward).
    """

    def primal(*args):
        return forward(*args)[0]

    fn = jax.custom_jvp(primal)
    forward_call = _kept_whole(forward)

    @functools.partial(fn.defjvp, symbolic_zeros=True)
    def jvp(primals, tangents):
        out, saved = forward_call(*primals)
        residuals = (primals[0], saved) if keeps_params else saved
        y, rest = (out[0], out[1:]) if extra else (out, ())
        dy = _pushforward(backward, residuals, y, tangents[:2], push, _MODULE_GRADS if keeps_params else _LOSS_GRADS)
        if not extra:
            return out, dy
        return out, (dy, *jax.tree.map(zero_tangent, rest))

    def checked(a, b, *args):
        return fn(a, jnp.asarray(b), *args)

    return checked


def _vjp_registered(forward, backward, *, keeps_params=False, extra=0, push=None):
    """``f(a, b, ...)``, the first output of ``forward(a, b, ...) -> (y, saved)``, as a ``jax.custom_vjp``: ``fwd``
    runs ``forward`` and keeps ``(a, saved)`` (with ``keeps_params``) or ``saved``; ``bwd`` is ``backward``, each
    gradient cast to its primal's dtype (``None``: no gradient, integer ids or a loss's targets). With ``extra``,
    ``f`` takes that many more inputs, not differentiated, and returns ``(y, new_state)`` as
    :func:`_hand_differentiated` does. ``push`` is unused: a ``custom_vjp`` has no forward mode."""

    def primal(*args):
        return forward(*args)[0]

    fn = jax.custom_vjp(primal)

    def fwd(*args):
        out, saved = forward(*args)
        dtypes = [jax.tree.map(lambda v: jnp.zeros((0,), jnp.result_type(v)), a) for a in args[:2]]  # no bytes
        return out, ((args[0], saved) if keeps_params else saved, dtypes)

    def bwd(kept, ct):
        residuals, dtypes = kept
        grads = backward(residuals, ct[0] if extra else ct)
        cast = [
            None if d is None else jax.tree.map(lambda a, t: a.astype(t.dtype), d, t) for d, t in zip(grads, dtypes)
        ]
        return (*cast, *([None] * extra))

    fn.defvjp(fwd, bwd)

    def checked(a, b, *args):
        return fn(a, jnp.asarray(b), *args)

    return checked


def _kept_whole(fn):
    """``fn``, the same values and derivatives (JAX's own JVP of its code), as one ``jax.custom_jvp`` call.

    Reverse mode linearises a custom JVP rule by partial evaluation, which
    would take the forward pass inside the rule apart op by op and hoist
    loop-invariant values out of its loops (the attention's key tiles,
    kept for every query tile); a call whose inputs are all known runs as
    it is, as ``jax.custom_vjp``'s forward pass does. Outputs that are
    ``fn``'s inputs themselves (a dense layer saves its input) are passed
    around the call, so that they stay the inputs and are not counted as
    values the forward pass computed, and a value returned twice (a leaf's output, saved) is one output.
    """
    layouts = {}  # per signature of the inputs: the output's tree, and where each of its leaves comes from

    def signature(args):
        leaves, tree = jax.tree.flatten(args)
        return tree, tuple(jax.typeof(leaf) for leaf in leaves)

    def computed(*args):
        """``fn``'s output leaves, each once, leaving out its inputs; records where every leaf is found."""
        seen = {id(arg): ("input", i) for i, arg in enumerate(jax.tree.leaves(args))}
        leaves, tree = jax.tree.flatten(fn(*args))
        distinct = []
        for leaf in leaves:
            if id(leaf) not in seen:
                seen[id(leaf)] = ("output", len(distinct))
                distinct.append(leaf)
        layouts[signature(args)] = tree, [seen[id(leaf)] for leaf in leaves]
        return distinct

    call = jax.custom_jvp(computed)
    call.defjvp(lambda primals, tangents: jax.jvp(computed, primals, tangents))

    def run(*args):
        found = {"output": call(*args), "input": jax.tree.leaves(args)}
        tree, sources = layouts[signature(args)]
        return jax.tree.unflatten(tree, [found[kind][i] for kind, i in sources])

    return run


#: How messages name the gradients a module's and a loss's backward function returns.
_MODULE_GRADS, _LOSS_GRADS = ("dparams", "dx"), ("doutputs", "dtargets")


def _pushforward(backward, residuals, y, tangents, push=None, names=_MODULE_GRADS):
    """``J u``, for the tangents ``u = (da, db)``, as a :func:`fnn._linear_map.linear_map`.

    Forward mode evaluates the transpose of ``g -> backward(residuals, g) =
    J^T g``; reverse mode transposes that map back into ``backward`` itself,
    with ``residuals`` and nothing more. Only the tangents' leaves that move
    take part: a symbolic zero (``jax.jacfwd`` with respect to the input
    leaves the parameters still), a ``float0`` tangent (integer ids) and a
    leaf whose part of ``backward``'s result is ``None`` (a loss's targets)
    are left out, so that nothing is computed for them. ``push(residuals,
    moving)``, if given, is the map itself over the moving leaves, in place
    of that transpose. ``names`` name the gradients in messages.
    """
    spec = jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y))
    grads = jax.eval_shape(lambda g: backward(residuals, g), spec)
    _check_gradient_shapes(grads, tangents, names)
    moving = []  # per top-level argument: which of its tangent's leaves move
    for grad, tangent in zip(grads, tangents):
        leaves = [] if grad is None else jax.tree.leaves(tangent, is_leaf=_is_symbolic_zero)
        moving.append([not _is_symbolic_zero(t) and t.dtype != jax.dtypes.float0 for t in leaves])
    u = [
        t
        for ts, tangent in zip(moving, tangents)
        for t, m in zip(jax.tree.leaves(tangent, is_leaf=_is_symbolic_zero), ts)
        if m
    ]
    if not u:
        return jnp.zeros(spec.shape, spec.dtype)

    dtypes = [t.dtype for t in u]

    def pullback(residuals, g):  # the moving leaves' gradients, each in its tangent's dtype (its primal's)
        grads = [d for ms, grad in zip(moving, backward(residuals, g)) for d, m in zip(jax.tree.leaves(grad), ms) if m]
        return [d.astype(dtype) for d, dtype in zip(grads, dtypes)]

    def transposed(residuals, u):
        return jax.linear_transpose(lambda g: pullback(residuals, g), spec)(u)[0]

    return linear_map(transposed if push is None else push, pullback, residuals, u)


def _check_gradient_shapes(grads, tangents, names):
    """Refuses a backward whose gradients do not have their inputs' structure and shapes, naming the first that
    differs (``names[i]`` for argument ``i``), before JAX's transposition meets it and says so in its own terms."""
    for name, grad, tangent in zip(names, grads, tangents):
        if grad is None or tangent is None:  # no gradient (integer ids, targets), or the input held fixed
            continue
        want, want_tree = jax.tree_util.tree_flatten_with_path(tangent, is_leaf=_is_symbolic_zero)
        got, got_tree = jax.tree.flatten(grad)
        if got_tree != want_tree:
            raise StructureError(
                f"the backward function returns {name} as {got_tree}, expected its input's structure {want_tree}"
            )
        for (path, t), d in zip(want, got):
            shape = t.aval.shape if _is_symbolic_zero(t) else jnp.shape(t)
            if tuple(d.shape) != tuple(shape):
                raise StructureError(
                    f"the backward function returns {name}{jax.tree_util.keystr(path)} with shape {tuple(d.shape)}, "
                    f"expected {tuple(shape)}, its input's shape"
                )


def _is_symbolic_zero(tangent):
    return isinstance(tangent, SymbolicZero)


def leaf(
    name,
    *,
    forward,
    backward,
    init=None,
    check=None,
    check_inputs=None,
    apply=None,
    edge_values=(),
    state_init=None,
    stochastic=False,
    linear=False,
    param_axes=None,
    state_axes=None,
):
    """Makes a leaf module from a hand-written forward/backward pair.

    Args:
      name: names the module in errors and reprs, e.g. ``"dense"``.
      init: ``(key, input_shape) -> (output_shape, params)``; ``None`` for a
        leaf used only as an op over given parameters.
      forward: ``(params, x) -> (y, saved)`` in plain ``jax.numpy``; ``saved``
        holds arrays only (the custom path's residuals). A
        contextual leaf (``state_init`` or ``stochastic``) writes
        ``(params, x, *, state, key, train) -> (y, saved, state)`` instead,
        ``state`` being ``()`` when it has none.
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
        inputs before training (``fnn.fit`` calls it); ``None`` for
        the default, finite floating-point inputs.
      apply: ``(params, x) -> y``, the same values as ``forward``'s first
        output computed the plain way, for a leaf whose ``forward`` is
        arranged for its backward (attention computes its rows in tiles
        there); ``None`` for ``forward``'s first output.
      state_init: ``(input_shape) -> state``, the leaf's state before
        training (batch norm's running statistics); ``None`` for no state.
      stochastic: whether ``forward`` draws from ``key`` in training (it
        gets ``key=None`` in evaluation).
      linear: whether the leaf has no parameters and ``forward`` is linear in
        ``x`` (average pooling): forward mode then runs ``forward`` on the
        tangent instead of transposing ``backward``; the checker's forward
        checks hold it to autodiff's JVP all the same.
      param_axes: the name of each axis of each parameter, which sharding
        rules map to mesh axes (:func:`fnn.parallel.by_names`): a dict from a
        parameter's key to a tuple of names (``{"w": ("in", "out"), "b":
        ("out",)}``; a key the parameters lack is skipped), or a function of
        the parameters returning them in their structure. ``None``: the axes
        have no names.
      state_axes: the same for the arrays of the leaf's state (batch norm's
        running statistics ``{"mean": ("features",), "var":
        ("features",)}``), which ``fnn.fit`` lays out by the same rules.

    ``apply`` is what the ``autodiff`` path lets ``jax.grad`` differentiate
    (what ``forward`` saves but ``apply`` does not return is dead code that
    ``jit`` removes). It runs ``check`` first, as ``forward`` does.

    Example: a learned scale per feature, ``y = x * s``, with ``ds = sum of
    G * x over the batch`` and ``dx = G * s``.

    >>> import jax, jax.numpy as jnp, fnn
    >>> scale = fnn.module.leaf(
    ...     "scale",
    ...     init=lambda key, shape: (shape, {"s": jnp.ones(shape[-1:])}),
    ...     forward=lambda params, x: (x * params["s"], x),
    ...     backward=lambda params, x, g: ({"s": (g * x).sum(0)}, g * params["s"]),
    ... )
    >>> _, params = scale.init(jax.random.key(0), (3,))
    >>> y, saved = scale.forward(params, jnp.ones((2, 3)))
    >>> scale.backward(params, saved, jnp.ones((2, 3)))[0]["s"].tolist()
    [2.0, 2.0, 2.0]
    """
    if (state_init is not None or stochastic) and apply is not None:
        raise UsageError(f"{name}: a leaf with state or randomness computes apply from its forward; pass no apply")
    if state_axes is not None and state_init is None:
        raise UsageError(f"{name}: state_axes names the axes of a state, which a leaf keeps with state_init; pass both")

    def checked(x, params):
        x = jnp.asarray(x)
        if check is not None:
            check(params, x)
        return x

    def no_init(key, input_shape):
        raise UsageError(f"{name}: this leaf is an op over given parameters and has no init")

    if state_init is not None or stochastic:

        def run_forward(params, x, state, key, train):
            if stochastic and train and key is None:
                raise InputError(f"{name}: training draws from a random key; pass key= (a jax.random key)")
            return forward(params, checked(x, params), state=state, key=key if train else None, train=train)

        def run(params, x, state, key, train):
            y, _, new_state = run_forward(params, x, state, key, train)
            return y, new_state

    else:

        def run_forward(params, x, state, key, train):
            return (*forward(params, checked(x, params)), state)

        def run(params, x, state, key, train):
            x = checked(x, params)
            return (forward(params, x)[0] if apply is None else apply(params, x)), state

    axes = _axes_of(name, param_axes, "param_axes")
    kind = _Leaf(
        tuple(edge_values),
        check_inputs,
        state_init,
        bool(stochastic),
        bool(linear),
        axes,
        _axes_of(name, state_axes, "state_axes"),
    )
    return Module(name, init or no_init, backward, run, run_forward, kind)


def block_axes(block):
    """:func:`structural`'s ``param_axes`` for wiring whose parameters are its one ``block``'s (``residual``,
    ``remat``, ``mixed_precision``)."""
    return lambda params, axes_of: axes_of(block, params)


def _axes_of(name, declared, argument):
    """A leaf's ``param_axes`` or ``state_axes`` (named by ``argument``) as a function of its parameters or state
    (see :func:`leaf`)."""
    if declared is None or callable(declared):
        return declared
    names = {key: jax.sharding.PartitionSpec(*axes) for key, axes in declared.items()}

    def named(tree):
        unnamed = [key for key in tree if key not in names]
        if unnamed:
            raise InputError(
                f"{name}: {argument} names the axes of {sorted(names)}, not of its arrays {unnamed}; name each one"
            )
        return {key: names[key] for key in tree}

    return named


def _unnamed(tree):
    """Axes without names: a ``PartitionSpec`` of ``None`` per axis of each array of ``tree``."""
    return jax.tree.map(lambda a: jax.sharding.PartitionSpec(*[None] * len(a.shape)), tree)


def structural(
    name,
    *,
    init,
    backward,
    rebuild,
    apply=None,
    forward=None,
    run=None,
    run_forward=None,
    children=(),
    state_init=None,
    child_contexts=None,
    check_inputs=None,
    only_rearranges=False,
    param_axes=None,
):
    """Makes a structural module: wiring whose ``backward`` calls its children's.

    ``rebuild(*children)`` must return the same structure over new children;
    for a module without children it returns the module itself. Wiring of
    plain children gives ``apply(params, x) -> y`` and ``forward(params, x)
    -> (y, saved)``; wiring that hands its children a context gives ``run``
    and ``run_forward`` instead (the positional forms, the module's ``_run``
    and ``_run_forward``, see the module doc),
    with ``child_contexts(state, key) -> [(state, key), ...]``, one context
    per child, and, when a child keeps state, ``state_init(input_shape) ->
    state`` (its state from its children's). ``check_inputs`` is the
    host-side check of its inputs, as for :func:`leaf` (``None``: its first
    child's); ``only_rearranges`` says that its output holds its input's
    values, only rearranged (``flatten``), so that the input check is the
    next module's. ``param_axes(params, axes_of)`` gives the names of its
    parameters' axes from its children's, ``axes_of(child, child_params)``
    (see :func:`leaf`); ``None`` when it has no parameters of its own
    arrangement to name (then they have no names). It names its state's
    axes from its children's the same way (``param_axes(state, axes_of)``),
    so wiring that keeps state arranges it as its parameters: per child, or
    stacked as they are.
    """
    if (
        (apply is None) == (run is None)
        or (forward is None) == (run_forward is None)
        or (apply is None) != (forward is None)
    ):
        raise UsageError(f"{name}: give either apply and forward (plain wiring) or run and run_forward")
    if run is None:

        def run(params, x, state, key, train):
            return apply(params, x), state

        def run_forward(params, x, state, key, train):
            return (*forward(params, x), state)

    kind = _Wiring(
        tuple(children), rebuild, check_inputs, state_init, child_contexts, bool(only_rearranges), param_axes
    )
    module = Module(name, init, backward, run, run_forward, kind)
    if module._contextual and (child_contexts is None or apply is not None):
        raise UsageError(f"{name}: a child has state or randomness; the wiring must pass it on (run, child_contexts)")
    return module


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
    which the rule is delicate, as for :func:`leaf`. ``settings`` are those of
    the constructor call that built it, as for :class:`Module`.
    """

    name: str
    apply: Callable
    forward: Callable
    backward: Callable
    error: Callable | None = None
    check_targets: Callable | None = None
    edge_values: tuple = ()
    settings: tuple = ()

    @functools.cached_property
    def by_rules(self):
        """This loss with ``apply`` differentiated, in both modes, by its ``forward``/``backward``."""
        return dataclasses.replace(self, apply=_loss_apply(self, _hand_differentiated))

    def pushforward(self, saved, value, doutputs):
        """The forward-mode counterpart of ``backward``: ``dL = J doutputs``, the transpose of ``g ->
        backward(saved, g)``; ``value`` is the loss (its shape and dtype are the map's). The targets are held fixed."""
        return _pushforward(lambda saved, g: (self.backward(saved, g),), saved, value, (doutputs,), names=_LOSS_GRADS)

    def __call__(self, *args, **kwargs):
        """Refuses a call: a loss is a record of functions; its value is ``loss.apply(outputs, targets)``."""
        raise UsageError(
            f"{self.name} is a loss, not a function to call: its value is loss.apply(outputs, targets) (e.g. "
            "fnn.losses.cross_entropy.apply(logits, labels)); give the loss itself to fnn.fit(..., loss=...) or "
            "fnn.value_and_grad(model, loss)"
        )

    def describe(self):
        """The loss as JSON-ready data: ``{"loss": name, "settings": {...}}`` (``settings`` left out if none)."""
        return {"loss": self.name, **({"settings": _settings_data(self.settings)} if self.settings else {})}

    def __repr__(self):
        return _call_repr(self.name, [], self.settings)


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
