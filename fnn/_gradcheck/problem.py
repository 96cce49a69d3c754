"""One draw of a checker problem: the pair under check, its float64 data on the host, and its gradients by path.

:func:`module_problem` and :func:`loss_problem` draw, from one NumPy
generator seeded by ``seed``, what the checks need: parameters and input
(or outputs and targets), the output cotangent, the upstream cotangent ``g``
and the second-order projections ``w``. :meth:`Problem.gradients` runs a path
on those (or on other inputs, cast to another dtype, or nudged by an ulp)
and caches the result, so the checks share the work.

Parameters given as ``jax.Array`` objects split over several devices (a
``NamedSharding``) are checked as they lie: the data stays on the host, and
the paths' compiled programs get the parameters laid out as given
(:meth:`Problem.placed`), so that XLA's partitioner runs the rules on the
mesh.
"""

import contextlib
import dataclasses
import functools

import jax
import numpy as np

from fnn import _precision
from fnn._errors import InputError, StructureError, UsageError
from fnn._gradcheck import gradients as _gradients
from fnn._gradcheck.compare import NUDGES
from fnn._gradcheck.dtypes import cast, floating, nudged, x64
from fnn.module import Loss, Module

__all__ = ["Problem", "StructureError", "check_input_shape", "loss_problem", "module_problem"]

#: How a report says the precision its products ran at (:func:`fnn._precision.full`).
PRECISION = f"products at precision {_precision.FULL}"


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One draw for :func:`fnn.testing.check_module` or :func:`fnn.testing.check_loss`.

    ``model`` and ``loss`` are the pair given to :mod:`fnn._paths` (see
    :mod:`fnn._gradcheck.gradients`): ``(module, COTANGENT)`` or ``(IDENTITY, loss)``.
    ``params``, ``x``, ``targets`` (the output cotangent, for a module), ``g``
    and ``w`` are NumPy arrays, floating ones float64. ``names`` names each
    leaf of ``(params, x)``'s gradient; ``output_shape`` is the output shape
    ``init`` promises (batch axis included), ``None`` if it has no ``init``.
    ``context`` is the :class:`fnn.testing._checks.Context` a contextual
    module is checked in (``model`` is then the module bound to it), else ``None``.
    """

    kind: str
    model: Module
    loss: Loss
    params: object
    x: np.ndarray
    targets: np.ndarray
    g: np.ndarray
    w: tuple
    names: tuple
    output_shape: tuple | None
    edge_values: tuple
    dtypes: tuple
    seed: int
    description: str
    context: object = None
    #: The sharding of each leaf of ``params`` as given (``None`` for a leaf on one device), or ``None`` for none.
    placement: tuple | None = None

    @property
    def primals(self):
        """``(params, x)``: what the gradient is taken with respect to."""
        return self.params, self.x

    @property
    def compiled(self):
        """``(model, context)`` as :func:`fnn._gradcheck.gradients.on_paths` takes them: ``model`` itself and
        ``()``, or, for a contextual module, its :class:`fnn._gradcheck.gradients.Contextual` and ``(state, key)``,
        so that every draw of one module object reuses the compiled code."""
        if self.context is None:
            return self.model, ()
        found = self.context
        return _gradients.Contextual(found.module, found.train), (found.state, found.key)

    @functools.cached_property
    def floating(self):
        """Per leaf of ``(params, x)``, whether it is floating (differentiated)."""
        return tuple(floating(a) for a in jax.tree.leaves(self.primals))

    def split(self, grads):
        """The leaves of a gradient ``(dparams, dx)``, ``None`` counted as a leaf; :class:`StructureError` if its
        structure is not ``(params, x)``'s (:func:`structure_message`)."""
        leaves, got = jax.tree.flatten(grads, is_leaf=lambda v: v is None)
        if got != jax.tree.structure(self.primals):
            raise StructureError(structure_message(self.primals, grads, self.names[-1]))
        return leaves

    def floating_leaves(self, grads):
        """The leaves of a gradient ``(dparams, dx)`` at the floating leaves of ``(params, x)`` (:meth:`split`)."""
        return [leaf for leaf, is_float in zip(self.split(grads), self.floating) if is_float]

    def placed(self, params, *, stacked=False):
        """``params`` laid out as they were given (:attr:`placement`; ``stacked``: with a leading axis of draws,
        not split), or as they are when they were given on one device."""
        if self.placement is None:
            return params
        leaves, tree = jax.tree.flatten(params)

        def put(a, sharding):
            if sharding is None:
                return a
            spec = jax.sharding.PartitionSpec(None, *sharding.spec) if stacked else sharding.spec
            return jax.device_put(a, jax.sharding.NamedSharding(sharding.mesh, spec))

        return tree.unflatten([put(a, s) for a, s in zip(leaves, self.placement)])

    def data(self, dtype=np.float64, x=None, rounded_to=None, nudge=0):
        """``(params, x, targets, g, w)``, floating leaves cast to ``dtype`` (first to ``rounded_to`` if given;
        ``x`` replaced if given), then, for ``nudge`` ``k > 0``, the ``k``-th one-ulp nudge of every floating leaf
        (:func:`fnn._gradcheck.dtypes.nudged`, its signs drawn from ``[seed, 0, k]``) but a loss's targets (labels,
        floating or not, may have to be exact: 0 or 1 for the logistic loss)."""
        tree = (self.params, self.x if x is None else x, self.targets, self.g, self.w)
        params, x, targets, g, w = cast(tree if rounded_to is None else cast(tree, rounded_to), dtype)
        if nudge:
            rng = np.random.default_rng([self.seed, 0, nudge])
            params, x, g, w = nudged((params, x, g, w), rng)
            targets = targets if self.kind == "loss" else nudged(targets, rng)
        return params, x, targets, g, w

    def computed(self, kind, path, *, dtype=np.float64, x=None, rounded_to=None, nudge=0, eager=False, fresh=False):
        """One of :mod:`fnn._gradcheck.gradients`' functions (``kind``: ``"gradients"``, ``"per_example"``,
        ``"grad_of_grad"`` or ``"jvp"``) on ``path`` for this draw, on the host.

        ``dtype`` casts every floating leaf first (``rounded_to`` rounds it to
        a lower precision before, for a float64 reference at a float32
        draw's values); ``x`` replaces the input; ``nudge`` ``k > 0`` moves
        every floating leaf by an ulp (:meth:`data`). float64 runs inside
        ``jax.enable_x64``, other dtypes in the caller's mode, so that a
        float64 constant leaking into a float32 rule shows where it would for
        the caller. ``eager`` runs op by op; ``fresh`` runs again.

        Jitted, a module compiles two programs, whatever the checks ask
        (:meth:`_batched`): in float64 every kind on every path for the
        draw and its :data:`NUDGES` nudges at once (``jax.vmap`` over the
        draws; :func:`fnn._gradcheck.gradients.draws`), and the gradients at every
        lower precision checked (:func:`fnn._gradcheck.gradients.dtypes`); an
        input or rounding of the draw's values reuses them. A kind or dtype
        that fails to trace (a module that refuses one example alone, or a
        dtype) is left out of them and runs on its own, each path alone if
        needed, so that only the failing path's checks fail.
        """
        inputs = None if x is None else (np.asarray(x).dtype.str, np.asarray(x).tobytes())
        key = (kind, eager and path, np.dtype(dtype).name, rounded_to and np.dtype(rounded_to).name, inputs, nudge)
        mode = x64() if np.dtype(dtype) == np.float64 else contextlib.nullcontext()
        result = None if fresh else self._cache.get(key)
        if result is None:
            with mode:
                if eager:
                    params, *rest = self.data(dtype, x, rounded_to, nudge)
                    args = _gradients._kind_args(kind, (self.placed(params), *rest))
                    result = {path: jax.device_get(_gradients.FUNCTIONS[kind](self.model, self.loss, path, *args))}
                else:
                    found = self._batched(kind, dtype, x, rounded_to)
                    result = found[key] if key in found else self._all_paths(kind, dtype, x, rounded_to, nudge)
                    if not fresh:
                        self._cache.update(found)
            if not fresh:
                self._cache[key] = result
        if path in result:
            return result[path]
        with mode:
            return self._compiled_run(kind, (path,), dtype, x, rounded_to, nudge)[path]

    def _key(self, kind, dtype, x, rounded_to, nudge):
        inputs = None if x is None else (np.asarray(x).dtype.str, np.asarray(x).tobytes())
        return (kind, False, np.dtype(dtype).name, rounded_to and np.dtype(rounded_to).name, inputs, nudge)

    def _batched(self, kind, dtype, x, rounded_to):
        """``{cache key: {path: result}}`` of the shared program that computes ``kind`` at ``dtype`` (``{}`` where
        none does): every bundled kind for the draw and its nudges in float64, or the gradients at every lower
        precision checked."""
        if np.dtype(dtype) == np.float64:
            return self._shared("float64", kind, self._draws(x, rounded_to))
        if kind != "gradients":
            return {}
        return self._shared("lower", np.dtype(dtype).name, self._dtypes(x, rounded_to))

    def _shared(self, program, part, run):
        """The results of the shared ``program`` (``"float64"``: the kinds; ``"lower"``: the dtypes), if it holds
        ``part``; ``run = (call, unpack)``, ``call(parts)`` the program's outputs, ``unpack(parts, outputs)`` them
        by cache key. It first holds every part; where it fails to trace (a module that refuses one example
        alone, or a dtype), it keeps the parts that trace alone (each tried with ``jax.eval_shape``), and the
        others run on their own."""
        call, unpack = run
        parts = self._parts.setdefault(program, self._all_parts(program))
        if part not in parts:
            return {}
        try:
            return unpack(parts, jax.device_get(call(parts)))
        except Exception:  # a part does not trace: keep those that do
            kept = () if len(parts) == 1 else tuple(p for p in parts if _traces(lambda p=p: call((p,))))
            self._parts[program] = kept
            return self._shared(program, part, run) if kept != parts else {}

    def _all_parts(self, program):
        return tuple(_gradients.KINDS) if program == "float64" else tuple(np.dtype(d).name for d in self.dtypes)

    def _draws(self, x, rounded_to):
        """``(call, unpack)`` of the float64 program: kinds on every path for the draw and its nudges."""
        model, context = self.compiled
        nudges = range(NUDGES + 1)
        params, *rest = jax.tree.map(lambda *a: np.stack(a), *(self.data(np.float64, x, rounded_to, k) for k in nudges))
        batch = (self.placed(params, stacked=True), *rest)

        def unpack(kinds, found):
            return {
                self._key(k, np.float64, x, rounded_to, n): jax.tree.map(lambda a, n=n: a[n], found[k])
                for k in kinds
                for n in nudges
            }

        return lambda kinds: _gradients.jit_draws(kinds, model, self.loss, context, *batch), unpack

    def _dtypes(self, x, rounded_to):
        """``(call, unpack)`` of the program of the gradients on every path at the lower precisions."""
        model, context = self.compiled

        def call(names):
            casts = [(self.placed(p), *rest) for p, *rest in (self.data(n, x, rounded_to)[:4] for n in names)]
            return _gradients.jit_dtypes(_gradients.gradients, _gradients.PATHS, model, self.loss, context, *casts)

        def unpack(names, found):
            return {self._key("gradients", n, x, rounded_to, 0): result for n, result in zip(names, found)}

        return call, unpack

    @functools.cached_property
    def _parts(self):
        """What each shared program holds, once known: ``{"float64": kinds, "lower": dtype names}``."""
        return {}

    def _compiled_run(self, kind, paths, dtype, x, rounded_to, nudge):
        model, context = self.compiled
        params, *rest = self.data(dtype, x, rounded_to, nudge)
        args = _gradients._kind_args(kind, (self.placed(params), *rest))
        fn = _gradients.FUNCTIONS[kind]
        return jax.device_get(_gradients.jit_on_paths(fn, paths, model, self.loss, context, *args))

    def _all_paths(self, kind, dtype, x, rounded_to, nudge):
        try:
            return self._compiled_run(kind, _gradients.KINDS[kind], dtype, x, rounded_to, nudge)
        except Exception:  # one path fails: each runs alone (see computed), so that only its own checks fail
            return {}

    def gradients(self, path, **kwargs):
        """``(L, outputs, (dparams, dx))`` on ``path`` (:meth:`computed` of ``"gradients"``)."""
        return self.computed("gradients", path, **kwargs)

    def per_example(self, path, **kwargs):
        """Per-example gradients on ``path``, float64 (:meth:`computed` of ``"per_example"``)."""
        return self.computed("per_example", path, **kwargs)

    def jvp(self, path, **kwargs):
        """``g dL`` along ``w`` on ``path``, float64 (:meth:`computed` of ``"jvp"``)."""
        return self.computed("jvp", path, **kwargs)

    def grad_of_grad(self, path, **kwargs):
        """Reverse over reverse on ``path``, float64 (:meth:`computed` of ``"grad_of_grad"``)."""
        return self.computed("grad_of_grad", path, **kwargs)

    @functools.cached_property
    def _cache(self):
        return {}


def _placement(params):
    """The sharding of each leaf of ``params`` that lies split over several devices (``None`` for the others), or
    ``None`` when none does (see :attr:`Problem.placement`)."""
    found = tuple(
        a.sharding
        if isinstance(a, jax.Array) and isinstance(a.sharding, jax.sharding.NamedSharding) and a.sharding.mesh.size > 1
        else None
        for a in jax.tree.leaves(params)
    )
    return None if all(s is None for s in found) else found


def _traces(fn):
    """Whether ``fn()`` traces (``jax.eval_shape``: nothing compiled or run)."""
    try:
        jax.eval_shape(fn)
    except Exception:  # the module's own checks refuse it: the kind (or dtype) runs on its own, and says why
        return False
    return True


def _draw_g(rng):
    """The upstream cotangent: a random sign times a magnitude in [0.5, 2] (never 1, never tiny)."""
    return np.float64(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))


def _standard_normal_like(tree, rng):
    """``tree`` with every floating leaf replaced by standard normal float64 draws of its shape."""
    return jax.tree.map(lambda a: rng.standard_normal(a.shape) if floating(a) else np.asarray(a), tree)


def _check_shape(fn, arg, shape, what):
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if shape is None or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise InputError(f"{fn}: {arg} must be a tuple of positive ints, batch axis first ({what}), got {shape!r}")
    return shape


def _input(fn, arg, given, shape, rng):
    """The input: standard normal float64 draws of ``shape``, or ``given`` (an array, or a function
    ``(rng, shape) -> array`` of the draw's generator), checked to have that shape."""
    if given is None:
        return rng.standard_normal(shape)
    given = np.asarray(given(rng, shape) if callable(given) else given)
    if given.shape != shape:
        raise InputError(f"{fn}: {arg} has shape {given.shape}, expected the shape checked, {shape}")
    return given.astype(np.float64) if floating(given) else given


def _init(module, input_shape, seed):
    """``(output shape, params)`` from the module's ``init``, or ``(None, None)`` if it has none.

    Traced only (``jax.eval_shape``): the params are shapes and dtypes, the
    draws replace their values; only integer parameters are computed.
    """
    promised = []

    def init(key):
        out_shape, params = module.init(key, input_shape[1:])
        promised.append((input_shape[0], *out_shape))
        return params

    try:
        with x64():
            params = jax.eval_shape(init, jax.random.key(seed))
            if not all(floating(a) for a in jax.tree.leaves(params)):
                params = jax.device_get(init(jax.random.key(seed)))
    except TypeError as exc:
        if "has no init" not in str(exc):
            raise
        return None, None
    return promised[0], params


def _names(params, x_name):
    """The name of every leaf of ``(params, x)``'s gradient: ``dparams['w']``, ..., ``x_name``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return (*(f"dparams{jax.tree_util.keystr(k)}" for k, _ in flat), x_name)


def _level(tree):
    """``(node, children)``: the top container of a pytree (its type and keys, ``None`` for a leaf; ``None`` itself
    is a container of nothing) and what it holds."""
    children, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda v: v is not tree)
    return treedef.node_data(), children


def _describe(node, children):
    """A container in words: ``a dict with keys 'b', 'w'``, ``a list of 2``, ``None``, ``an array``."""
    if node is None:
        return "an array"
    kind, keys = node
    if kind is type(None):
        return "None"
    if kind is dict:
        return f"a dict with keys {', '.join(map(repr, keys))}" if keys else "an empty dict"
    return f"a {kind.__name__} of {len(children)}" if children else f"an empty {kind.__name__}"


def _keys(node, children):
    """How each child of a container is named: ``['w']`` for a dict's, ``[0]`` for any other's."""
    kind, keys = node
    return [f"[{k!r}]" for k in keys] if kind is dict else [f"[{i}]" for i in range(len(children))]


def _first_difference(want, got, name):
    """``(name, what got is there, what it should be, missing)`` at the first container of ``got`` that is not
    ``want``'s, depth first (``missing``: the names of keys a dict lacks); ``None`` where every container matches
    (``None`` matches any leaf: a missing gradient is the leaf checks' finding)."""
    (w_node, w_children), (g_node, g_children) = _level(want), _level(got)
    if w_node is None and (g_node is None or got is None):
        return None
    if w_node != g_node or len(w_children) != len(g_children):
        both_dicts = w_node is not None and g_node is not None and w_node[0] is g_node[0] is dict
        missing = sorted(set(w_node[1]) - set(g_node[1])) if both_dicts else []
        return name, _describe(g_node, g_children), _describe(w_node, w_children), [f"{name}[{k!r}]" for k in missing]
    for key, w, g in zip(_keys(w_node, w_children), w_children, g_children):
        found = _first_difference(w, g, name + key)
        if found:
            return found
    return None


def _layout(tree):
    """A pytree's containers, every leaf (``None`` too) a ``*``: ``({'b': *, 'w': *}, *)``."""
    return str(jax.tree.structure(tree, is_leaf=lambda v: v is None)).removeprefix("PyTreeDef(")[:-1]


def structure_message(primals, grads, x_name):
    """Why ``grads`` is not a gradient of ``primals = (params, x)``: where its containers first differ, what it holds
    there and what it should, both whole layouts, and the fix."""
    node, children = _level(grads)
    if node != (tuple, None) or len(children) != 2:
        where, got, want, missing = "the gradient", _describe(node, children), "a tuple of 2, (dparams, dx)", []
    else:
        found = _first_difference(primals[0], grads[0], "dparams") or _first_difference(primals[1], grads[1], x_name)
        where, got, want, missing = found
    missing = f" (missing {', '.join(missing)})" if missing else ""
    return (
        f"the gradient's pytree is not that of (params, x): {where} is {got}, expected {want}{missing}; expected "
        f"{_layout(primals)}, got {_layout(grads)}. Return (dparams, dx): dparams in params' own containers (the "
        "same dicts with the same keys, lists and tuples), dx the input's"
    )


def _second_order_w(primals, rng):
    return tuple(rng.standard_normal(np.shape(a)) for a in jax.tree.leaves(primals) if floating(a))


def module_problem(module, input_shape, *, params, x, seed, edge_values, dtypes, context=None):
    """The draw for ``check_module``: params (given, or standard normal of ``init``'s shapes), input, cotangents.

    ``module`` is what the gradient checks run (a contextual module bound to
    ``context``, see :mod:`fnn.testing._checks`).
    """
    if not isinstance(module, Module):
        raise UsageError(
            f"check_module: module must be an fnn module (e.g. fnn.nn.dense(3)), got {type(module).__name__}"
        )
    input_shape = check_input_shape(input_shape)
    rng = np.random.default_rng(seed)
    output_shape, init_params = _init(module, input_shape, seed)
    if params is None:
        if init_params is None:
            raise InputError(f"check_module: {module.name} has no init; pass params=")
        params = _standard_normal_like(init_params, rng)
    placement = _placement(params)
    params = cast(params, np.float64)
    x = _input("check_module", "x", x, input_shape, rng)
    with x64():
        y = jax.eval_shape(module.apply, params, x)
    cotangent = rng.standard_normal(y.shape)
    g, w = _draw_g(rng), _second_order_w((params, x), rng)
    mode = "" if context is None else f", {context.describe()}"
    split = "" if placement is None else f", parameters split over {max(s.mesh.size for s in placement if s)} devices"
    description = f"check_module({module!r}, input {input_shape}, seed {seed}{mode}{split}, {PRECISION})"
    return Problem(
        "module",
        module,
        _gradients.COTANGENT,
        params,
        x,
        cotangent,
        g,
        w,
        _names(params, "dx"),
        output_shape,
        (*module._edge_values, *edge_values),
        tuple(dtypes),
        seed,
        description,
        context,
        placement,
    )


def check_input_shape(input_shape):
    """``input_shape`` as a tuple of positive ints, batch axis first, or ``ValueError``."""
    return _check_shape("check_module", "input_shape", input_shape, "e.g. (4, 5)")


def _targets(targets, output_shape, rng):
    if targets is None:
        raise UsageError("check_loss: pass targets=, an array or a function (rng, output_shape) -> array")
    made = targets(rng, output_shape) if callable(targets) else targets
    return np.asarray(made)


def loss_problem(loss, output_shape, *, targets, outputs, seed, edge_values, dtypes):
    """The draw for ``check_loss``: outputs (given, or standard normal), targets, the upstream cotangent."""
    if not isinstance(loss, Loss):
        raise UsageError(f"check_loss: loss must be an fnn loss (e.g. fnn.losses.mse), got {type(loss).__name__}")
    output_shape = _check_shape("check_loss", "output_shape", output_shape, "the model's outputs, e.g. (4, 10)")
    rng = np.random.default_rng(seed)
    outputs = _input("check_loss", "outputs", outputs, output_shape, rng)
    targets = _targets(targets, output_shape, rng)
    if targets.ndim == 0 or targets.shape[0] != output_shape[0]:
        raise InputError(
            f"check_loss: targets must have the batch axis first, {output_shape[0]} rows (batch_size=); got shape "
            f"{targets.shape}"
        )
    g, w = _draw_g(rng), _second_order_w(((), outputs), rng)
    description = f"check_loss({loss!r}, outputs {output_shape}, seed {seed}, {PRECISION})"
    return Problem(
        "loss",
        _gradients.IDENTITY,
        loss,
        (),
        outputs,
        targets,
        g,
        w,
        ("doutputs",),
        (),
        (*loss.edge_values, *edge_values),
        tuple(dtypes),
        seed,
        description,
    )
