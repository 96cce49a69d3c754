"""``check_module`` and ``check_loss``: every check of a hand-written rule in one call, and their assert forms.

The checks run in the order of :data:`MODULE_CHECKS`, each a function of one draw
(:class:`fnn._gradcheck.problem.Problem`) returning one :class:`Check` (or one
per dtype). A check whose code raises is reported as failed with the
exception, and the others still run. Adding a check is adding a function to
:data:`_CHECK_FUNCTIONS`.
"""

import functools

import jax.numpy as jnp
import numpy as np

from fnn import _precision
from fnn._errors import InputError
from fnn._gradcheck.problem import loss_problem, module_problem
from fnn._gradcheck.report import CHECK_COLUMNS, FAILED, Check, Report
from fnn._numbers import positive_int
from fnn.module import Module
from fnn.testing._checks import (
    backward,
    context,
    custom,
    custom_grad_of_grad,
    custom_jit,
    custom_vmap,
    determinism,
    forward_mode,
    forward_sweep,
    output,
    resolve,
    saved,
    structure,
)
from fnn.testing._finite import finite_differences
from fnn.testing._precision import dtype_check
from fnn.testing._precision import edge_values as _edge_values

__all__ = ["DTYPES", "MODULE_CHECKS", "assert_loss", "assert_module", "check_loss", "check_module"]


def _dtypes(problem):
    return [dtype_check(problem, dtype) for dtype in problem.dtypes]


#: Every module check, in the order it runs: ``name -> function(problem)``. ``"dtypes"`` gives one
#: ``dtype[<name>]`` entry per lower precision checked.
_CHECK_FUNCTIONS = {
    "output": output,
    "structure": structure,
    "backward": backward,
    "custom": custom,
    "custom_jit": custom_jit,
    "custom_vmap": custom_vmap,
    "custom_grad_of_grad": custom_grad_of_grad,
    "forward_mode": forward_mode,
    "forward_sweep": forward_sweep,
    "finite_differences": functools.partial(finite_differences, order=1),
    "finite_differences_2": functools.partial(finite_differences, order=2),
    "dtypes": _dtypes,
    "edge_values": _edge_values,
    "determinism": determinism,
    "context": context,
    "saved": saved,
}
#: The names of the checks, in order (what ``checks=`` selects from).
MODULE_CHECKS = tuple(_CHECK_FUNCTIONS)
#: The lower precisions checked by default, besides float64.
DTYPES = (jnp.float32, jnp.bfloat16)

#: The examples in a checked batch when neither ``batch_size`` nor an input array says.
BATCH_SIZE = 4


def _selected(fn, checks):
    if checks is None:
        return tuple(_CHECK_FUNCTIONS)
    checks = (checks,) if isinstance(checks, str) else tuple(checks)
    unknown = [c for c in checks if c not in _CHECK_FUNCTIONS]
    if unknown:
        raise InputError(f"{fn}: unknown checks {unknown}; expected names from {', '.join(_CHECK_FUNCTIONS)}")
    return tuple(c for c in _CHECK_FUNCTIONS if c in checks)  # in the order they always run


def _check_dtypes(fn, dtypes):
    for dtype in dtypes:
        if not jnp.issubdtype(dtype, jnp.floating) or np.dtype(dtype) == np.float64:
            raise InputError(
                f"{fn}: dtypes are the lower floating precisions to check besides float64, e.g. (jnp.float32, "
                f"jnp.bfloat16); got {np.dtype(dtype).name}"
            )
    return tuple(dtypes)


def _check_seed(fn, seed):
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"{fn}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _run(problem, names):
    checks = []
    for name in names:
        try:
            found = _CHECK_FUNCTIONS[name](problem)
        except Exception as exc:  # the rule's code failed: that is the finding, and the other checks still run
            message = " ".join(str(exc).split())
            found = Check(name, FAILED, detail=f"raised {type(exc).__name__}: {message}")
        checks += found if isinstance(found, list) else [found]
    return Report(problem.description, tuple(checks), CHECK_COLUMNS, "name")


def _batched(fn, arg, shape, batch_size, given):
    """``(batch_size, *shape)``: the shape checked, ``shape`` given without the batch axis; ``batch_size`` by default
    ``given``'s first axis when it is an array, else :data:`BATCH_SIZE`."""
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if shape is None or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise InputError(
            f"{fn}: {arg} must be a tuple of positive ints without the batch axis (e.g. (5,) for a batch [N, 5]; "
            f"batch_size= sets N), got {shape!r}"
        )
    if batch_size is None:
        batch_size = np.shape(given)[0] if given is not None and not callable(given) and np.ndim(given) else BATCH_SIZE
    return (positive_int(fn, "batch_size", batch_size), *shape)


@_precision.at_full
def check_module(
    module,
    input_shape,
    *,
    batch_size=None,
    params=None,
    x=None,
    train=True,
    state=None,
    key=None,
    seed=0,
    dtypes=DTYPES,
    edge_values=(),
    checks=None,
):
    """Checks a module's hand-written backward function; returns a :class:`Report`, one entry per check.

    Args:
      module: any :class:`fnn.module.Module`: a leaf (``fnn.nn.dense(3)``, your
        own ``fnn.module.leaf``) or a structural module (``fnn.nn.serial(...)``).
      input_shape: the shape of one example, without the batch axis (as
        ``init`` takes it), e.g. ``(5,)``.
      batch_size: the examples in the batch checked; by default the first
        axis of ``x`` when it is an array, else 4.
      params: parameters to check at; by default ``init``'s structure and
        shapes with standard normal values (so that zero biases and unit
        scales, at which some wrong rules agree with the right one, are not
        what is checked). Their values are used, cast to each dtype checked.
      x: the input to check at (a floating or integer array of shape
        ``(batch_size, *input_shape)``), or a function ``(rng, shape) -> array`` of a
        NumPy generator, drawn anew for every seed (integer ids for an
        embedding: ``lambda rng, shape: rng.integers(0, 10, shape)``); by
        default standard normal draws.
      train, state, key: the context a module with state or randomness
        (batch norm, dropout) is checked in: the mode, its state (by default
        ``module.init_state``'s) and its key (by default
        ``jax.random.key(seed)``, so one mask for every path and check).
        Check both modes with two calls. A module without state or
        randomness takes neither ``state`` nor ``key``.
      seed: seeds every random draw (parameters, input, cotangents,
        directions); the same seed gives the same report.
      dtypes: the lower precisions to check besides float64 (the checker
        casts parameters and inputs to each).
      edge_values: inputs to check besides the module's own
        its leaves' own (:func:`fnn.module.leaf`'s ``edge_values``): numbers or arrays broadcast to
        ``input_shape``, or functions of ``input_shape``.
      checks: names from :data:`MODULE_CHECKS` to run (default all).

    Every check is described in its module: shapes and structure
    (``fnn.testing._checks``), the paths and transformations
    (``_transforms``), finite differences (``_finite``), lower precisions
    (``_precision``), edge values (``_edges``), determinism and what
    ``saved`` holds, and, for a contextual module, that every path gives the
    forward's outputs and new state (``_context``). Every product runs at
    full precision (``jax.lax.Precision.HIGHEST``) on every backend, as the
    report's first line says, so a GPU's TF32 never shows as a rule's error.
    Tolerances follow one rule for every module:
    ``eps ** (3/4)`` of the dtype, relative to the largest reference entry
    (``fnn/_gradcheck/dtypes.py``), raised for the float64 agreement
    checks to ``256`` times the change in autodiff's own gradient under
    one-ulp nudges of the draw, where that is larger, at most ``sqrt(eps)``
    (``fnn/_gradcheck/compare.py``). Every draw of one module object
    (seeds, nudges) reuses its compiled code.

    Example::

        report = fnn.testing.check_module(fnn.nn.dense(3, bias=True), (), batch_size=5)
        print(report)        # one row per check
        report.assert_ok()   # AssertionError with the table if a check failed
    """
    names = _selected("check_module", checks)
    seed = _check_seed("check_module", seed)
    input_shape = _batched("check_module", "input_shape", input_shape, batch_size, x)
    in_context = None
    if isinstance(module, Module):  # else module_problem's TypeError
        module, in_context = resolve(module, input_shape, state=state, key=key, train=train, seed=seed)
    problem = module_problem(
        module,
        input_shape,
        params=params,
        x=x,
        seed=seed,
        edge_values=tuple(edge_values),
        dtypes=_check_dtypes("check_module", dtypes),
        context=in_context,
    )
    return _run(problem, names)


@_precision.at_full
def check_loss(
    loss, output_shape, *, targets, batch_size=None, outputs=None, seed=0, dtypes=DTYPES, edge_values=(), checks=None
):
    """Checks a loss's hand-written backward function; returns a :class:`Report`, one entry per check.

    The same checks as :func:`check_module`, for the gradient with respect
    to the outputs (targets are data: they get none), under a random upstream
    cotangent ``g`` (a rule that ignores ``g`` fails).

    Args:
      loss: any :class:`fnn.module.Loss` (``fnn.losses.mse``, your own ``fnn.module.loss``).
      output_shape: the shape of one example's model outputs, without the
        batch axis, e.g. ``(10,)``.
      targets: the targets, an array with the batch axis first, or a function
        ``(rng, shape) -> array`` of a NumPy generator and the outputs' shape
        (batch axis first; drawn anew for every seed), e.g.
        ``lambda rng, shape: rng.integers(0, shape[-1], shape[:-1])``.
      batch_size: as for :func:`check_module`, from ``outputs`` when it is an array.
      outputs: the outputs to check at, an array of shape
        ``(batch_size, *output_shape)`` or a function ``(rng, shape) -> array``;
        by default standard normal draws.
      seed, dtypes, edge_values, checks: as for :func:`check_module`.

    Example::

        labels = lambda rng, shape: rng.integers(0, shape[-1], shape[:-1])
        fnn.testing.check_loss(fnn.losses.cross_entropy, (), batch_size=10, targets=labels).assert_ok()
    """
    names = _selected("check_loss", checks)
    problem = loss_problem(
        loss,
        _batched("check_loss", "output_shape", output_shape, batch_size, outputs),
        targets=targets,
        outputs=outputs,
        seed=_check_seed("check_loss", seed),
        edge_values=tuple(edge_values),
        dtypes=_check_dtypes("check_loss", dtypes),
    )
    return _run(problem, names)


def assert_module(module, input_shape, **kwargs):
    """:func:`check_module`, raising ``AssertionError`` with the report if a check failed; returns the report."""
    return check_module(module, input_shape, **kwargs).assert_ok()


def assert_loss(loss, output_shape, **kwargs):
    """:func:`check_loss`, raising ``AssertionError`` with the report if a check failed; returns the report."""
    return check_loss(loss, output_shape, **kwargs).assert_ok()
