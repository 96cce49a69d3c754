"""Timing compiled JAX functions against each other, with confidence intervals that hold on a noisy machine.

:func:`compare` compiles every function (timing the compilation apart),
warms it up, calibrates how many calls make a block of about ``block_s``
seconds, then runs ``rounds`` rounds in which each function runs one block, the order
alternating from round to round (A B, B A, B A, A B, ...) so that a slow
spell of the machine falls on all of them alike. Each block records wall time
and the process's CPU time per call.

:func:`summarize` turns those timings into a :class:`Result` per function:
median and quartiles of its time per call, and against the baseline the
median of the per-round ratios with a bootstrap confidence interval
(``scipy.stats.bootstrap``, BCa) and a verdict: ``"slower"`` when the whole
interval lies above ``1 + margin``, ``"faster"`` when it lies below
``1 / (1 + margin)``, ``"tie"`` otherwise. With the default ``margin=0`` a tie
is an interval that contains 1; a positive margin is a practical-equivalence
threshold (criterion.rs's "noise threshold"): differences the harness cannot
tell from two compilations of the same code are not called a change. Ratios
are taken round by round, so that load shared by a round cancels. Equal CPU
time with unequal wall time means the same work with less parallel overlap.

Every time is also set against the machine's limit: :func:`machine_rate` is
the best rate of a jitted matrix product of a dtype, at a precision, on this
device (measured once, then read from a cache file with the processor it ran
on), and :func:`compare` gives each function's work in model FLOPs
(:func:`model_flops`: its matrix products and convolutions counted from its
jaxpr, the same on every backend; XLA's own count beside it), its achieved
rate (those FLOPs over its median time) and that rate's fraction of the
limit for the dtype and precision that carry the work.
"""

import dataclasses
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _flops
from fnn._errors import InputError
from fnn._flops import FlopCount
from fnn._numbers import as_int, real

__all__ = [
    "FlopCount",
    "MachineRate",
    "Result",
    "compare",
    "device_description",
    "flops",
    "limit",
    "machine_rate",
    "matmul_rate",
    "model_flops",
    "round_order",
    "summarize",
    "verdict",
]

VERDICTS = ("faster", "slower", "tie")

#: The fewest rounds that give an interval worth a verdict: with fewer, a bootstrap
#: interval of the median is little more than the range of a handful of ratios.
MIN_ROUNDS = 6


@dataclasses.dataclass(frozen=True)
class Result:
    """One function's timings, and how it compares with the baseline.

    Attributes:
      name: the function's name in :func:`compare`.
      median_s, q1_s, q3_s: median and quartiles over the rounds of the wall
        seconds per call.
      cpu_median_s: median process CPU seconds per call (all threads).
      ratio: median over the rounds of ``wall / baseline's wall`` (1.0 for the baseline).
      ci_low, ci_high: the bootstrap confidence interval of ``ratio``.
      cpu_ratio: median over the rounds of ``cpu / baseline's cpu``.
      verdict: ``"faster"`` (the interval lies below ``1 / (1 + margin)``),
        ``"slower"`` (above ``1 + margin``) or ``"tie"`` (always for the baseline).
      margin: the practical-equivalence threshold the verdict was taken with.
      compile_s: seconds to compile (``nan`` when given timings only).
      calls: calls per block.
      wall_s, cpu_s: the per-call seconds of every round.
      flops: the model FLOPs of one call (:func:`model_flops`; ``nan`` when
        given timings only, or when the program does not fix them).
      xla_flops: XLA's FLOP count of the compiled call (:func:`flops`; ``nan``
        where the backend gives none).
      flops_per_s: the achieved rate, ``flops / median_s``.
      machine_fraction: ``flops_per_s`` over the limit (``limit``); ``nan`` without one.
      limit: the limit it is set against, in words (``"float32/default: 154 GFLOP/s"``).
    """

    name: str
    median_s: float
    q1_s: float
    q3_s: float
    cpu_median_s: float
    ratio: float
    ci_low: float
    ci_high: float
    cpu_ratio: float
    verdict: str
    margin: float = 0.0
    compile_s: float = float("nan")
    calls: int = 0
    wall_s: tuple = ()
    cpu_s: tuple = ()
    flops: float = float("nan")
    xla_flops: float = float("nan")
    flops_per_s: float = float("nan")
    machine_fraction: float = float("nan")
    limit: str = ""

    def to_dict(self):
        """The result as a JSON-ready dict."""
        return dataclasses.asdict(self) | {"wall_s": list(self.wall_s), "cpu_s": list(self.cpu_s)}


def _median_ci(values, confidence, seed):
    """The median of ``values`` and its bootstrap (BCa) confidence interval."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    if np.ptp(values) == 0:  # no spread: the bootstrap distribution is a point
        return median, median, median
    for method in ("BCa", "percentile"):  # BCa degenerates on heavily tied samples
        interval = stats.bootstrap(
            (values,),
            np.median,
            confidence_level=confidence,
            method=method,
            n_resamples=9999,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
        if np.isfinite(low) and np.isfinite(high):
            break
    return median, min(low, median), max(high, median)


def verdict(ci_low, ci_high, margin=0.0):
    """``"slower"`` if ``ci_low > 1 + margin``, ``"faster"`` if ``ci_high < 1 / (1 + margin)``, else ``"tie"``.

    The margin is symmetric in log-ratio, so swapping baseline and function
    swaps ``"faster"`` and ``"slower"``.
    """
    margin = _margin("verdict", margin)
    if ci_low > 1 + margin:
        return "slower"
    if ci_high < 1 / (1 + margin):
        return "faster"
    return "tie"


def _margin(owner, margin):
    """``margin`` as a Python float in ``[0, 1)`` (see :func:`verdict`)."""
    within = "in [0, 1) (0.02 means differences within 2% are a tie)"
    return real(owner, "margin", margin, within=within, ok=lambda m: 0 <= m < 1)


def summarize(
    wall_s,
    cpu_s,
    *,
    baseline,
    margin=0.0,
    confidence=0.95,
    seed=0,
    compile_s=None,
    calls=None,
    flops=None,
    xla_flops=None,
    rate=None,
):
    """Compares per-round timings with the baseline's.

    Args:
      wall_s: ``{name: [seconds per call in round 0, round 1, ...]}``, every
        function timed in the same rounds.
      cpu_s: the same for process CPU time.
      baseline: the name every ratio is taken against.
      margin: differences within this fraction are a tie (see :func:`verdict`).
      confidence: the level of the bootstrap interval.
      seed: seeds the bootstrap resampling (the same timings give the same interval).
      compile_s, calls: per name, recorded in the results.
      flops: per name, model FLOPs per call; with ``rate`` (a :class:`MachineRate`
        or FLOP/s), the achieved rates and their fractions of it.
      xla_flops: per name, XLA's count per call, recorded beside.

    Returns:
      ``{name: Result}`` in the order of ``wall_s``.
    """
    if baseline not in wall_s:
        raise InputError(f"baseline {baseline!r} is not one of the timed functions {list(wall_s)}")
    margin = _margin("summarize", margin)
    rounds = {len(v) for v in wall_s.values()} | {len(v) for v in cpu_s.values()}
    if len(rounds) != 1 or min(rounds) < MIN_ROUNDS:
        raise InputError(f"every function needs the same number of rounds, at least {MIN_ROUNDS}; got {sorted(rounds)}")
    base_wall, base_cpu = np.asarray(wall_s[baseline], float), np.asarray(cpu_s[baseline], float)
    results = {}
    for name, wall in wall_s.items():
        wall, cpu = np.asarray(wall, float), np.asarray(cpu_s[name], float)
        if name == baseline:
            ratio = low = high = cpu_ratio = 1.0
        else:
            ratio, low, high = _median_ci(wall / base_wall, confidence, seed)
            cpu_ratio = float(np.median(cpu / base_cpu))
        q1, median, q3 = np.percentile(wall, [25, 50, 75])
        work = (flops or {}).get(name, float("nan"))
        results[name] = Result(
            name,
            float(median),
            float(q1),
            float(q3),
            float(np.median(cpu)),
            ratio,
            low,
            high,
            cpu_ratio,
            verdict(low, high, margin),
            margin,
            compile_s=(compile_s or {}).get(name, float("nan")),
            calls=(calls or {}).get(name, 0),
            wall_s=tuple(wall.tolist()),
            cpu_s=tuple(cpu.tolist()),
            flops=work,
            xla_flops=(xla_flops or {}).get(name, float("nan")),
            flops_per_s=work / median,
            machine_fraction=work / median / _limit(rate),
            limit=_described(rate),
        )
    return results


def _limit(rate):
    """The FLOP/s of a :class:`MachineRate`, a number, or ``nan`` for ``None``."""
    if rate is None:
        return float("nan")
    return float(rate.flops_per_s if isinstance(rate, MachineRate) else rate)


def _described(rate):
    """A limit in words: ``"float32/default: 154 GFLOP/s"`` for a :class:`MachineRate`, ``""`` for none."""
    if rate is None:
        return ""
    if isinstance(rate, MachineRate):
        return f"{rate.dtype}/{rate.precision}: {rate.flops_per_s / 1e9:.4g} GFLOP/s"
    return f"{float(rate) / 1e9:.4g} GFLOP/s"


def _block(fn, args, calls):
    """Runs ``fn(*args)`` ``calls`` times; returns (wall, CPU) seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def round_order(names, r):
    """The order of round ``r`` of interleaved timings: ``names`` rotated by ``r // 2``, reversed on odd rounds.

    Two functions run A B, B A, B A, A B, ... (ABBA); three run through all
    six orders, so that no function always sits in the same place.
    """
    k = (r // 2) % len(names)
    rotated = names[k:] + names[:k]
    return rotated[::-1] if r % 2 else rotated


def compare(
    fns: dict[str, Callable],
    *args,
    baseline: str,
    margin: float = 0.0,
    rounds: int = 16,
    block_s: float = 0.2,
    warmup: int = 2,
    confidence: float = 0.95,
    seed: int = 0,
    rate=None,
):
    """Times every function of ``fns`` on ``args`` and compares each with ``fns[baseline]``.

    Args:
      fns: ``{name: function}``; each is compiled with ``jax.jit`` (a jitted
        function is compiled as it is), once even if entered under several
        names (then they time one executable: the harness against itself).
        Functions must not donate ``args``: every call gets the same arrays.
      *args: the arguments of every function.
      baseline: the name of the function the others are compared with.
      margin: differences within this fraction are a tie (see :func:`verdict`).
      rounds: timed rounds, at least 6 (``MIN_ROUNDS``); each runs one block
        of every function, in an order that rotates and alternates from one
        round to the next.
      block_s: the target wall seconds of one block (the calls per block are
        calibrated once per function, doubling until a block lasts that long).
      warmup: untimed calls per function before calibrating.
      confidence, seed: of the bootstrap interval (see :func:`summarize`).
      rate: the limit achieved rates are set against: ``None`` for
        :func:`limit` of the dtype and precision that carry most of the
        functions' work (:func:`machine_rate`, measured once per machine,
        then cached, and again if a function here beats it), a
        :class:`MachineRate`, a number of FLOP/s, or ``False`` for none
        (``machine_fraction`` is then ``nan``).

    Returns:
      ``{name: Result}``, each with its model FLOPs (:func:`model_flops`),
      XLA's count of its compiled function, and the achieved rate.

    Examples:
      >>> import jax.numpy as jnp, fnn
      >>> x = jnp.ones((128, 128))
      >>> fns = {"matmul": lambda x: x @ x, "twice": lambda x: (x @ x) @ x}
      >>> results = fnn.bench.compare(fns, x, baseline="matmul", rounds=6, block_s=0.01, rate=False)
      >>> results["matmul"].verdict, results["twice"].ratio > 1, results["twice"].flops
      ('tie', True, 8388608.0)
    """
    if not fns:
        raise InputError("compare needs at least one function")
    if baseline not in fns:
        raise InputError(f"baseline {baseline!r} is not one of {list(fns)}")
    n_rounds = as_int(rounds)
    if n_rounds is None or n_rounds < MIN_ROUNDS:
        raise InputError(
            f"compare: rounds must be an int >= {MIN_ROUNDS}, got {rounds if n_rounds is None else n_rounds!r}"
        )
    block_s = real("compare", "block_s", block_s, within="in (0, inf)", ok=lambda s: 0 < s < math.inf)
    margin = _margin("compare", margin)
    compiled, compile_s, calls = {}, {}, {}
    first_name = {}  # a function entered under several names is compiled and calibrated once
    for name, fn in fns.items():
        if id(fn) in first_name:
            same = first_name[id(fn)]
            compiled[name], compile_s[name], calls[name] = compiled[same], compile_s[same], calls[same]
            continue
        first_name[id(fn)] = name
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        tic = time.perf_counter()
        compiled[name] = jitted.lower(*args).compile()
        compile_s[name] = time.perf_counter() - tic
        for _ in range(warmup):
            jax.block_until_ready(compiled[name](*args))
        n = 1
        while _block(compiled[name], args, n)[0] * n < block_s and n < 2**20:
            n *= 2
        calls[name] = n
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for r in range(n_rounds):
        for name in round_order(list(fns), r):
            w, c = _block(compiled[name], args, calls[name])
            wall[name].append(w)
            cpu[name].append(c)
    counts = {name: model_flops(fn, *args) for name, fn in fns.items()}
    work = {name: c.flops for name, c in counts.items()}
    if rate is None:
        dtype, precision = _carried(counts.values())
        achieved = max((work[name] / np.median(wall[name]) for name in fns if np.isfinite(work[name])), default=0.0)
        rate = limit(achieved, dtype, precision=precision) if dtype else None
    return summarize(
        wall,
        cpu,
        baseline=baseline,
        margin=margin,
        confidence=confidence,
        seed=seed,
        compile_s=compile_s,
        calls=calls,
        flops=work,
        xla_flops={name: flops(c) for name, c in compiled.items()},
        rate=None if rate is False else rate,
    )


def _carried(counts):
    """``(dtype, precision)`` carrying most of several :class:`FlopCount`s' work (``(None, "default")`` for none)."""
    dtypes, precisions = {}, {}
    for c in counts:
        for key, value in c.dtypes.items():
            dtypes[key] = dtypes.get(key, 0.0) + value
        for key, value in c.precisions.items():
            precisions[key] = precisions.get(key, 0.0) + value
    dtype = max(dtypes, key=dtypes.get) if dtypes else None
    return dtype, ("highest" if max(precisions, key=precisions.get, default="default") == "highest" else "default")


def flops(compiled):
    """XLA's FLOP count of a lowered or compiled function: the backend's cost model, ``nan`` where it gives none.

    XLA counts a loop's body once, whatever its trip count, and what each
    backend counts differs (on a GPU a lowered function counts nothing):
    :func:`model_flops` counts the same work on every backend.
    """
    try:
        cost = compiled.cost_analysis() or {}
    except Exception:  # a backend without a cost model for this program
        return float("nan")
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    counted = float(cost.get("flops", 0.0) or 0.0)
    return counted if counted > 0 else float("nan")


def model_flops(fn, *args, **kwargs):
    """The model FLOPs of ``fn(*args, **kwargs)``: its matrix products and convolutions counted from its jaxpr.

    ``2 m n k`` per matrix product and ``2 |y| |window| C_in / groups`` per
    convolution (the model-FLOPs convention of PaLM and MaxText), a
    ``lax.scan``'s body counted ``length`` times, work whose results are
    unused left out; nothing is compiled. Returns a :class:`FlopCount`:
    ``flops`` (``nan``, with ``note`` saying why, where the program does not
    fix them: a ``while`` loop around products), and the FLOPs by operand
    dtype and precision, whose :func:`machine_rate` is the limit to use.

    Examples:
      >>> import jax.numpy as jnp, fnn
      >>> fnn.bench.model_flops(lambda a, b: a @ b, jnp.ones((8, 4)), jnp.ones((4, 2))).flops
      128.0
    """
    return _flops.count(fn, *args, **kwargs)


# ---------------------------------------------------------------- the machine's limit
def device_description(device=None):
    """Names a device (the default one): ``"cpu: <processor model> x <usable cores> cores"`` or ``"gpu: <kind>"``."""
    device = jax.devices()[0] if device is None else device
    if device.platform != "cpu":
        return f"{device.platform}: {device.device_kind}"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {model} x {cores} cores"


@dataclasses.dataclass(frozen=True)
class MachineRate:
    """The machine's matrix-product rate, the limit achieved rates are set against.

    Attributes:
      flops_per_s: the best rate over ``shapes`` (FLOP/s).
      device: :func:`device_description` of the device it was measured on.
      dtype: the operands' dtype.
      precision: the products' precision (``"default"``: JAX's, which lets a
        GPU run float32 in TF32; ``"highest"``: full precision).
      shapes: ``((m, k, n), FLOP/s)`` of each product measured.
      samples: the rate of every timed call at the best shape (FLOP/s): how
        much the measurement spread (:attr:`spread`).
      jax_version: the JAX it was measured with.
      measured_at: when (ISO 8601, UTC).
    """

    flops_per_s: float
    device: str
    dtype: str
    precision: str
    shapes: tuple
    samples: tuple
    jax_version: str
    measured_at: str

    @property
    def spread(self):
        """``(lowest, highest)`` of :attr:`samples`, as fractions of :attr:`flops_per_s`."""
        return min(self.samples) / self.flops_per_s, max(self.samples) / self.flops_per_s

    def to_dict(self):
        """The rate as a JSON-ready dict."""
        return dataclasses.asdict(self) | {
            "shapes": [[list(s), r] for s, r in self.shapes],
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, entry):
        """The :class:`MachineRate` a cache entry describes, or ``None`` for anything else (a damaged or foreign
        entry: a rate that is not a positive finite number, a missing field, a field of the wrong type)."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(entry, dict) or sorted(entry) != sorted(names):
            return None
        try:
            shapes = tuple((tuple(int(d) for d in shape), float(r)) for shape, r in entry["shapes"])
            samples = tuple(float(r) for r in entry["samples"])
        except (TypeError, ValueError):
            return None
        texts = [entry[n] for n in ("device", "dtype", "precision", "jax_version", "measured_at")]
        rates = [entry["flops_per_s"], *(r for _, r in shapes), *samples]
        if not all(isinstance(t, str) for t in texts) or not shapes or not samples:
            return None
        if not all(_positive(r) for r in rates) or entry["flops_per_s"] != max(r for _, r in shapes):
            return None
        return cls(**{**entry, "flops_per_s": float(entry["flops_per_s"]), "shapes": shapes, "samples": samples})


def _positive(value):
    """Whether ``value`` is a real number (not a bool), finite and above 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


#: The square products :func:`machine_rate` measures, per platform.
RATE_SIZES = {"cpu": (512, 1024)}
_GPU_SIZES = (4096, 8192)
#: The precisions :func:`machine_rate` takes: JAX's default, and full precision.
PRECISIONS = ("default", "highest")
_RATES = {}  # this process's rates, by cache key


def _matmul_rates(shape, dtype=jnp.float32, seconds=0.2, repeats=3, precision="default"):
    """FLOP/s of each of ``repeats`` timed calls of a jitted ``[m, k] @ [k, n]`` on the default device.

    Each call runs the product back to back inside one compiled ``lax.scan``
    for about ``seconds``, on operands already on the device.
    """
    m, k, n = (as_int(v) for v in shape)
    a = jax.random.normal(jax.random.key(0), (2, m, k), dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), dtype)
    work = 2 * m * k * n
    level = None if precision == "default" else jax.lax.Precision.HIGHEST

    def run(a, b, reps):
        product = lambda i: jnp.matmul(a[i % 2], b, precision=level)  # noqa: E731
        body = lambda acc, i: (acc + product(i) * jnp.asarray(1e-3, dtype), None)  # noqa: E731
        return jax.lax.scan(body, jnp.zeros((m, n), dtype), jnp.arange(reps))[0]

    def timed(reps):
        fn = jax.jit(run, static_argnums=2).lower(a, b, reps).compile()
        jax.block_until_ready(fn(a, b))
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            jax.block_until_ready(fn(a, b))
            times.append(time.perf_counter() - tic)
        return times

    probe = min(timed(2)) / 2
    reps = max(2, int(seconds / max(probe, 1e-9)))
    return [work * reps / t for t in timed(reps)]


def matmul_rate(shape, dtype=jnp.float32, seconds=0.2, repeats=3, precision="default"):
    """FLOP/s of a jitted ``[m, k] @ [k, n]`` on the default device, as the best of ``repeats`` timed calls.

    Each call runs the product back to back inside one compiled ``lax.scan``
    for about ``seconds``, on operands already on the device; ``precision``
    is one of ``fnn.bench.PRECISIONS``.
    """
    return max(_matmul_rates(shape, dtype, seconds, repeats, _precision(precision)))


def _precision(precision):
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _cache_file():
    """``$FNN_CACHE_DIR/machine_rate.json``, else under ``$XDG_CACHE_HOME/fnn`` or ``~/.cache/fnn``."""
    folder = os.environ.get("FNN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fnn"
    return Path(folder) / "machine_rate.json"


def _read_cache(path):
    """The cache file's entries (a dict), or ``{}`` for a missing, unreadable or damaged file."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def machine_rate(dtype=jnp.float32, *, precision="default", refresh=False):
    """The machine's matrix-product rate: the limit every achieved rate in fnn is set against.

    The best FLOP/s of a jitted square matrix product (sizes
    ``fnn.bench.RATE_SIZES``; 4096 and 8192 on an accelerator) of ``dtype`` at
    ``precision`` (one of ``fnn.bench.PRECISIONS``) on the default device, each
    timed as :func:`matmul_rate` does. It is measured once (about three
    seconds on a CPU) and kept in ``machine_rate.json`` in fnn's cache folder
    (``$FNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fnn`` or ``~/.cache/fnn``),
    under the device's description, the dtype, the precision and the JAX
    version, so another processor or JAX measures again.

    A measurement taken while other work ran is low, and would make every
    fraction of it too high: the cache keeps the best rate ever measured
    under its key, ``refresh=True`` measures again (and keeps the better of
    the two), and :func:`limit` measures again when a rate achieved by real
    work exceeds the cached one. A cache entry that is not a valid rate (a
    damaged file, a value of the wrong type) is measured anew and replaced.
    Returns a :class:`MachineRate`; its :attr:`~MachineRate.spread` says how
    much the timed calls varied.
    """
    precision = _precision(precision)
    device = jax.devices()[0]
    name, described = jnp.dtype(dtype).name, device_description(device)
    key = f"{described} | {name} | {precision} | jax {jax.__version__}"
    path = _cache_file()
    cached = MachineRate.from_dict(_read_cache(path).get(key))
    if not refresh:
        if key in _RATES:
            return _RATES[key]
        if cached is not None:
            _RATES[key] = cached
            return cached
    sizes = RATE_SIZES.get(device.platform, _GPU_SIZES)
    measured = {n: _matmul_rates((n, n, n), dtype, precision=precision) for n in sizes}
    best = max(sizes, key=lambda n: max(measured[n]))
    rate = MachineRate(
        flops_per_s=max(measured[best]),
        device=described,
        dtype=name,
        precision=precision,
        shapes=tuple(((n, n, n), max(measured[n])) for n in sizes),
        samples=tuple(measured[best]),
        jax_version=jax.__version__,
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    if cached is not None and cached.flops_per_s >= rate.flops_per_s:
        rate = cached  # the best ever measured here stays
    _RATES[key] = rate
    _write_cache(path, key, rate)
    return rate


def limit(achieved=0.0, dtype=jnp.float32, *, precision="default"):
    """:func:`machine_rate` as the limit of work that achieved ``achieved`` FLOP/s: measured again (once) when
    ``achieved`` exceeds it, since the cached rate must then have been measured while other work ran."""
    rate = machine_rate(dtype, precision=precision)
    if achieved > rate.flops_per_s:
        rate = machine_rate(dtype, precision=precision, refresh=True)
    return rate


def _write_cache(path, key, rate):
    """Adds ``rate`` under ``key`` to the cache file, replacing it atomically; an unwritable folder keeps none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = rate.to_dict()
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(entries, indent=2))
        os.replace(partial, path)
    except OSError:
        pass
