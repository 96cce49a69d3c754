"""Model FLOPs: the work of a program's matrix products and convolutions, counted from its jaxpr.

The convention of model-FLOPs utilisation (PaLM, appendix B; MaxText):
``2 m n k`` per matrix product (a multiply and an add per term summed), and
for a convolution ``2`` per multiply-add of each output entry, ``2 * |y| *
|kernel window| * C_in / groups``; elementwise work, reductions and data
movement are not counted. The count is the program's, the same on every
backend, where a backend's cost model (``compiled.cost_analysis()``) counts
what its own compiler kept, counts a loop's body once whatever its trip
count, and on some backends reports nothing.

:func:`count` walks the jaxpr of ``fn(*args)`` (``jax.make_jaxpr``, nothing
compiled): a ``scan`` counts its body ``length`` times; calls (``jit``,
``custom_jvp``, ``checkpoint``, fnn's linear maps) count their bodies once;
a ``cond`` counts its costliest branch (said in the note when branches
differ); a ``while`` loop, whose trip count is not in the program, makes the
count unknown: NaN, with the reason, never a number read as 0 by accident.
"""

import contextlib
import dataclasses
import math

import jax
import numpy as np

__all__ = ["FlopCount", "count", "count_jaxpr"]


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Model FLOPs of one call of a function.

    Attributes:
      flops: the FLOPs of its matrix products and convolutions, ``nan`` when
        they cannot be known from the program (``note`` says why).
      dtypes: ``{dtype name: FLOPs}``: the operands' dtype of the counted work
        (whose machine rate is the limit to set it against).
      precisions: ``{precision: FLOPs}``: ``"default"``, ``"high"`` or
        ``"highest"`` as the products ask for (the operands' precision).
      note: why ``flops`` is ``nan``, or what was assumed; ``""`` when exact.
    """

    flops: float
    dtypes: dict
    precisions: dict
    note: str = ""

    @property
    def dtype(self):
        """The dtype that carries most of the work (``None`` for none): the limit the work is held to."""
        return max(self.dtypes, key=self.dtypes.get) if self.dtypes else None

    @property
    def precision(self):
        """The precision that carries most of the work (``"default"`` for none)."""
        return max(self.precisions, key=self.precisions.get) if self.precisions else "default"


def count(fn, *args, **kwargs):
    """The :class:`FlopCount` of ``fn(*args, **kwargs)``, from its jaxpr (arrays or ``jax.ShapeDtypeStruct`` args)."""
    return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))


def count_jaxpr(closed):
    """The :class:`FlopCount` of a (closed) jaxpr; work whose results nothing uses is not counted (as XLA drops it)."""
    tally = _Tally()
    jaxpr = getattr(closed, "jaxpr", closed)
    tally.walk(jaxpr, 1.0, [True] * len(jaxpr.outvars))
    flops = math.nan if tally.unknown else sum(tally.dtypes.values())
    return FlopCount(flops, dict(tally.dtypes), dict(tally.precisions), "; ".join(sorted(tally.unknown | tally.notes)))


def _live(jaxpr, used_outputs):
    """``[(eqn, [whether each output is used])]`` of the equations whose results reach a used output."""
    live = {v for v, used in zip(jaxpr.outvars, used_outputs) if used and isinstance(v, jax.extend.core.Var)}
    found = []
    for eqn in reversed(jaxpr.eqns):
        outputs = [isinstance(v, jax.extend.core.Var) and v in live for v in eqn.outvars]
        if any(outputs) or eqn.effects:
            found.append((eqn, outputs))
            live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    return found[::-1]


class _Tally:
    def __init__(self):
        self.dtypes, self.precisions = {}, {}
        self.unknown, self.notes = set(), set()

    def add(self, flops, dtype, precision):
        self.dtypes[dtype] = self.dtypes.get(dtype, 0.0) + flops
        self.precisions[precision] = self.precisions.get(precision, 0.0) + flops

    def walk(self, jaxpr, times, used_outputs):
        for eqn, outputs in _live(jaxpr, used_outputs):
            name, params = eqn.primitive.name, eqn.params
            if name == "dot_general":
                self._dot(eqn, times)
            elif name == "conv_general_dilated":
                self._conv(eqn, times)
            elif name == "scan":  # a carry feeds every step: the whole body counts
                body = params["jaxpr"].jaxpr
                self.walk(body, times * params["length"], [True] * len(body.outvars))
            elif name == "while":
                if not _free(params["body_jaxpr"].jaxpr):
                    self.unknown.add("a while loop runs products a number of times the program does not fix")
            elif name == "cond":
                self._cond(params["branches"], times)
            elif name == "fnn_linear_map":  # its function, traced; the outputs nothing uses left out
                avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
                precision = params.get("precision")
                with contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision):
                    traced = jax.make_jaxpr(params["forward"])(*avals)
                self.walk(traced.jaxpr, times, outputs)
            elif name == "pallas_call":
                self.unknown.add("a Pallas kernel (its work is not in the jaxpr)")
            else:
                for inner in jax.extend.core.jaxprs_in_params(params):
                    same = len(inner.outvars) == len(eqn.outvars)  # a call: its outputs are the equation's
                    self.walk(inner, times, outputs if same else [True] * len(inner.outvars))

    def _dot(self, eqn, times):
        (lhs, rhs), (out,) = [v.aval for v in eqn.invars], [v.aval for v in eqn.outvars]
        (contract, _), _ = eqn.params["dimension_numbers"]
        k = math.prod(lhs.shape[d] for d in contract)
        self.add(2.0 * math.prod(out.shape) * k * times, _dtype(lhs, rhs), _precision(eqn.params.get("precision")))

    def _conv(self, eqn, times):
        (lhs, rhs), (out,) = [v.aval for v in eqn.invars], [v.aval for v in eqn.outvars]
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
        taps = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
        self.add(2.0 * math.prod(out.shape) * taps * times, _dtype(lhs, rhs), _precision(eqn.params.get("precision")))

    def _cond(self, branches, times):
        counts = [count_jaxpr(branch) for branch in branches]
        if any(math.isnan(c.flops) for c in counts):
            self.unknown.update(c.note for c in counts if c.note)
            return
        costliest = max(counts, key=lambda c: c.flops)
        if len({c.flops for c in counts}) > 1:
            self.notes.add("a cond's branches differ in work: the costliest counted")
        for dtype, flops in costliest.dtypes.items():
            self.add(flops * times, dtype, costliest.precision)


def _free(jaxpr):
    """Whether ``jaxpr`` runs no product or convolution at all (a while loop around it costs nothing counted)."""
    found = count_jaxpr(jaxpr)
    return not found.dtypes and not math.isnan(found.flops)


def _dtype(lhs, rhs):
    """The operands' dtype (the wider when they differ)."""
    return np.promote_types(lhs.dtype, rhs.dtype).name if lhs.dtype != rhs.dtype else np.dtype(lhs.dtype).name


def _precision(precision):
    """A product's precision parameter in words: ``"default"``, ``"high"`` or ``"highest"`` (the higher of a pair)."""
    if precision is None:
        return "default"
    levels = precision if isinstance(precision, tuple) else (precision,)
    names = [getattr(level, "name", str(level)).lower() for level in levels if level is not None]
    order = ["default", "high", "highest"]
    return max((n for n in names if n in order), key=order.index, default="default")
