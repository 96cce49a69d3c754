"""Where a short run's time goes: each program ``fnn.fit`` compiles, phase by phase, cold and from a warm cache.

Two runs of one epoch, each in a fresh process as a user's script would be:
the notes' recipe (``mlp([784, 500, 10])``, no biases, He init, SGD 0.5,
batches of 100 in data order) and the Flax tutorial's pooled CNN
(``_images.pooled_cnn``, AdamW 0.005, batches of 32 in data order). Each
process is one of these variants, and a round runs them in this order:

- ``cold``: a fresh, empty compilation cache (a temporary folder of its
  own, ``fnn.use_compilation_cache``; the user's cache is never read nor
  written), so every program is compiled, and written to the cache;
- ``warm``: a fresh process pointed at the folder the cold run filled, so
  every program is found there (a cache hit still traces and lowers it:
  the cache's key is the lowered program);
- ``profiled``: a cold run again (its own empty cache) under
  ``jax.profiler.trace``, read back with ``jax.profiler.ProfileData`` for
  XLA's own phases; its timings carry the profiler's cost and are kept
  apart (``profiler_overhead``);
- ``no_autotune`` (on a GPU; ``--variants`` asks for it elsewhere): a cold
  run with ``XLA_FLAGS=--xla_gpu_autotune_level=0`` (set before JAX starts,
  so in its own process): autotuning's share by difference from the cold
  run of the same round.

What each number means:

- per program of fit's (``History.compile_seconds``' names: ``"end"``, the
  epoch's end, its last smaller batch and the evaluation; ``"steps[600]"``,
  a call of 600 steps as a ``lax.scan``), from JAX's duration events
  (``jax.monitoring``, named by the function): ``trace_s``, Python to jaxpr
  (``/jax/core/compile/jaxpr_trace_duration``); ``lower_s``, jaxpr to
  StableHLO (``.../jaxpr_to_mlir_module_duration``); ``backend_s``, XLA's
  compile, or on a cache hit the cache's read and the executable's load
  (``.../backend_compile_duration``); ``fit_s``, fit's own timer, which spans
  the three (fit traces and lowers in its thread, then compiles each
  program in a thread of its own); ``cache``, whether the program was found
  in the persistent cache.
- ``other programs``: everything else compiled in the process, by when:
  ``before_fit`` (the parameters' initialisation, the process's first
  compiles), ``in_fit_compile`` (fit's small programs before training:
  placing the state, the optimizer's state, the checks), ``after_compile``
  (until fit returns: the small programs of the epoch loop and of the
  callbacks, such as the first epoch's stall check, which computes the
  loss at the chance level in one program) and ``after_fit``.
  Nested traces (a jitted function called while another is traced) are
  counted once, in the outer one.
- per run: ``startup_s`` (interpreter and imports), ``data_s``, ``init_s``
  (the model and its parameters), fit's ``fit_s`` (its ``wall_s``),
  ``fit_compile_s`` (its ``compile_s``: everything before the first step),
  ``train_s`` (its epochs' seconds: training and evaluation),
  ``fit_rest_s`` (the rest of fit's time: the callbacks at the epochs' ends,
  the history), the ``compile_share`` of fit's time, and ``process_s`` (the
  whole process, as its parent saw it).
- from the profile (the profiled runs), per program: ``xla_s``, XLA's
  compile as its trace records it (the event that holds the program's pass
  pipelines, e.g. ``PjRtCpuClient::Compile``); ``hlo_passes_s``, the HLO
  pass pipelines (events named ``"<pipeline> (<module>)"``, the outermost
  ones summed); ``codegen_s``, the rest (``xla_s - hlo_passes_s``: on a CPU
  the thunks and LLVM's code generation; on a GPU also PTX and the
  binary); ``autotune_s``, the passes whose names say autotuning (on a
  GPU); and the slowest passes by name. Per-pass times are XLA's own trace
  events (``TraceMe``); XLA's dump flags (``--xla_dump_to``) write each
  pass's HLO but no times.

Each figure is the median over ``--repeats`` rounds, with a distribution-free
interval of the median (order statistics: ``[x(k), x(n+1-k)]`` for the
largest ``k`` whose coverage reaches 95%; with fewer than 6 rounds no ``k``
does: the interval is then the range, and ``confidence`` gives its coverage,
75% for the default 3 rounds, 94% for 5).
Warm against cold, and cold without autotuning against cold, are taken round
by round (the same round's processes, one after the other).

    python -m experiments.compile_time                   # both models, 3 rounds: about 4 minutes on 2 CPU cores
    python -m experiments.compile_time --models recipe --repeats 1 --variants cold warm   # a quick check
    python -m experiments.compile_time --train-size 60000 # the pooled CNN's whole epoch too

The pooled CNN trains on the first 3,200 images by default (100 steps; its
whole epoch takes 25-40 s on a 2-core CPU), the recipe on all 60,000;
``--train-size`` sets both. The programs differ only in the training set's
shape and the scan's length. Results go to ``runs/compile_time.json``
unless ``--json`` names another file (the committed run is in
``experiments/results/``).
"""

import argparse
import collections
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from experiments import _cli, _common

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("cold", "warm", "profiled", "no_autotune")
#: JAX's duration events of a program's compilation (``jax._src.dispatch``), by phase.
PHASE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_s",
}
PHASES = tuple(PHASE_EVENTS.values())
#: The persistent cache's events (``jax._src.compiler``), recorded in the thread that compiles, within the
#: program's backend compile.
CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hit", "/jax/compilation_cache/cache_misses": "miss"}
RETRIEVAL_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"
#: An XLA pass pipeline's trace event: ``"<pipeline> (<module>)"``, e.g. ``"simplification (jit_steps)"``.
PIPELINE = re.compile(r"^(?P<pipeline>.+) \((?P<module>[^()\s]+)\)$")
#: Passes that autotune (on a GPU: ``gemm-fusion-autotuner``, ``conv-algorithm-picker``, ...).
AUTOTUNE = re.compile(r"autotun|algorithm.?picker", re.IGNORECASE)
AUTOTUNE_FLAG = "--xla_gpu_autotune_level=0"
#: The slowest passes (and code generation's parts) a profiled run keeps per program.
TOP = 8
#: The interval's aim: order statistics of the median with at least this coverage, where the rounds allow.
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Model:
    """One model the study trains: what it is, its batch size and its default training images (``None``: all)."""

    description: str
    batch_size: int
    train_size: int | None
    image: bool


MODELS = {
    "recipe": Model("mlp([784, 500, 10]), no biases, He init; SGD 0.5; batches of 100 in data order", 100, None, False),
    "pooled": Model(
        "the Flax tutorial's CNN (experiments._images.pooled_cnn); AdamW 0.005 (b1 0.9, b2 0.999, eps 1e-8, weight "
        "decay 1e-4); batches of 32 in data order",
        32,
        3200,
        True,
    ),
}


# ---------------------------------------------------------------- the command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each of fresh processes (default 3)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help="the processes of a round (default: cold warm profiled, and no_autotune on a GPU)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        help="training images of both models (default: all 60,000 for the recipe, 3,200 for the pooled CNN)",
    )
    parser.add_argument("--test-size", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data (for smoke tests)")
    parser.add_argument("--source-dir", help="folder with MNIST's IDX files (default: $FNN_DATASETS_DIR/mnist)")
    parser.add_argument("--json", metavar="PATH", default="runs/compile_time.json", help="write results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measured process: its settings, as JSON
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    for name in ("train_size", "test_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.variants is not None:
        if len(set(args.variants)) != len(args.variants):
            raise ValueError(f"--variants names a variant twice: {' '.join(args.variants)}")
        if "warm" in args.variants and "cold" not in args.variants:
            raise ValueError("--variants warm reads the cache the cold run fills: name cold too")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        return child(json.loads(args.child))
    return study(args)


# ---------------------------------------------------------------- the study: rounds of fresh processes
def study(args):
    """Runs ``--repeats`` rounds of the variants' processes for each model, then sums them up; writes the JSON
    after every process (``complete`` false until the last)."""
    tic = time.perf_counter()
    runs = {name: [] for name in args.models}
    result = {}
    for r in range(args.repeats):
        for name in args.models:  # the models alternate, so that a slow spell of the machine falls on both
            with tempfile.TemporaryDirectory(prefix="fnn-compile-time-") as folder:
                done = []
                while variant := next_variant(args, runs, done):
                    done.append(variant)
                    cache = Path(folder) / ("shared" if variant in ("cold", "warm") else variant)
                    run = measured_process(args, name, variant, r, cache)
                    runs[name].append(run)
                    print(one_line(run, args.repeats), flush=True)
                    result = record(args, runs, complete=False, wall_s=time.perf_counter() - tic)
                    _common.write_json(args.json, result)
    result = record(args, runs, complete=True, wall_s=time.perf_counter() - tic)
    _common.write_json(args.json, result)
    print_summary(result)
    return result


def next_variant(args, runs, done):
    """The round's next variant after those ``done`` (``None`` when none is left): of ``--variants``, or cold, warm,
    profiled, and no_autotune once a run has found a GPU (read from the runs so far, the first round's cold run
    included: the parent starts no device of its own, which would hold the children's)."""
    if args.variants is not None:
        chosen = [v for v in VARIANTS if v in args.variants]
    else:
        platforms = {run["platform"] for model_runs in runs.values() for run in model_runs}
        gpu = bool(platforms & {"gpu", "cuda", "rocm"})
        chosen = ["cold", "warm", "profiled", *(["no_autotune"] if gpu else [])]
    return next((v for v in chosen if v not in done), None)


def measured_process(args, name, variant, repeat, cache):
    """Runs one measured process (:func:`child`) and returns its record, with ``process_s`` (its whole life, as seen
    from here) and the 1-minute load average before and after; raises ``ValueError`` with its error line when it
    fails."""
    with tempfile.TemporaryDirectory(prefix="fnn-compile-time-run-") as folder:
        out = Path(folder) / "run.json"
        spec = {
            "model": name,
            "variant": variant,
            "repeat": repeat,
            "cache": str(cache),
            "out": str(out),
            "train_size": args.train_size if args.train_size is not None else MODELS[name].train_size,
            "test_size": args.test_size,
            "synthetic": args.synthetic,
            "source_dir": args.source_dir,
            "launched": time.time(),
        }
        env = dict(os.environ)
        if variant == "no_autotune":
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {AUTOTUNE_FLAG}".strip()
        command = [sys.executable, "-m", "experiments.compile_time", "--child", json.dumps(spec)]
        command += ["--no-compilation-cache", *(["--debug"] if args.debug else [])]  # the child sets its own cache
        load = os.getloadavg()[0]
        tic = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        process_s = time.perf_counter() - tic
        if done.returncode != 0 or not out.exists():
            if args.debug:
                print(done.stdout + done.stderr, file=sys.stderr)
            lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
            last = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1])
            why = last.removeprefix("error: ")
            raise ValueError(f"the {variant} run of {name} ended with exit status {done.returncode}: {why}")
        run = json.loads(out.read_text())
    run["timeline"]["process_s"] = process_s
    return run | {"load_average_1min_before": load, "load_average_1min_after": os.getloadavg()[0]}


def one_line(run, repeats):
    """A process's figures in one line, as they come: fit's seconds, each program's phases, XLA's split."""
    t = run["timeline"]
    programs = "; ".join(
        f"{name} {p['fit_s']:.2f} = trace {p['trace_s']:.2f} + lower {p['lower_s']:.2f} + "
        f"{'cache' if p['cache'] == 'hit' else 'XLA'} {p['backend_s']:.2f}"
        for name, p in run["programs"].items()
    )
    line = (
        f"{run['model']} {run['variant']} {run['repeat'] + 1}/{repeats}: fit {t['fit_s']:.2f} s, compiling "
        f"{t['fit_compile_s']:.2f} s ({programs}), training {t['train_s']:.2f} s; init {t['init_s']:.2f} s; "
        f"process {t['process_s']:.1f} s"
    )
    xla = run.get("xla", {})
    if "error" in xla:
        line += f" | profile unread: {xla['error']}"
    for name, x in xla.get("programs", {}).items():
        line += (
            f" | XLA {name}: HLO passes {x['hlo_passes_s']:.2f}, code generation {x['codegen_s']:.2f}, "
            f"autotuning {x['autotune_s']:.2f}"
        )
    return line


# ---------------------------------------------------------------- one measured process
def child(spec):
    """One measured process: JAX's compile events recorded, the data, the model, one epoch of ``fnn.fit`` (under the
    profiler in a profiled run); writes its record to ``spec["out"]``."""
    started = time.time()
    import jax

    import fnn

    events = Events()
    events.listen()
    fnn.use_compilation_cache(spec["cache"], min_compile_s=0.0)
    data = _common.load_data(data_args(spec), image=MODELS[spec["model"]].image)
    loaded = time.time()
    model, params, settings = build(spec["model"])
    jax.block_until_ready(params)
    built = time.time()
    trace_dir = tempfile.mkdtemp(prefix="fnn-compile-time-trace-") if spec["variant"] == "profiled" else None
    if trace_dir:
        jax.profiler.start_trace(trace_dir, profiler_options=profiler_options())
    try:
        fit_start = time.time()
        _, history = fnn.fit(model, params, data, epochs=1, progress=False, **settings)
        fit_end = time.time()
    finally:
        if trace_dir:
            jax.profiler.stop_trace()
    fit_compiled = fit_start + history.compile_s
    train_s = float(np.sum(history.epoch_s))
    run = {
        "model": spec["model"],
        "variant": spec["variant"],
        "repeat": spec["repeat"],
        **_common.device_fields(),
        "host_cpu": _common.cpu_description(),
        "platform": jax.default_backend(),
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "steps_per_epoch": math.ceil(len(data.x_train) / settings["batch_size"]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timeline": {
            "startup_s": started - spec["launched"],
            "data_s": loaded - started,
            "init_s": built - loaded,
            "fit_s": history.wall_s,
            "fit_compile_s": history.compile_s,
            "train_s": train_s,
            "fit_rest_s": history.wall_s - history.compile_s - train_s,
            "compile_share": history.compile_s / history.wall_s,
        },
        "fit_compile_seconds": dict(history.compile_seconds),
        **events.summary(history.compile_seconds, fit_start, fit_compiled, fit_end),
    }
    if trace_dir:
        run["xla"] = xla_phases(trace_dir, history.compile_seconds)
        shutil.rmtree(trace_dir, ignore_errors=True)
    _common.write_json(spec["out"], run)
    return run


def data_args(spec):
    """The options ``_common.load_data`` reads, from a process's settings."""
    return argparse.Namespace(
        synthetic=spec["synthetic"],
        train_size=spec["train_size"],
        test_size=spec["test_size"],
        validation=False,
        seed=0,
        source_dir=spec["source_dir"],
        data_dir=None,
        debug=False,
    )


def build(name):
    """``(model, params, fit's settings)`` of a model of :data:`MODELS`, initialised from key 0."""
    import jax

    import fnn
    from experiments._images import TUTORIAL_LR, recipe_or_pooled

    model, shape, optimizer = recipe_or_pooled(name, _common.RECIPE_LR if name == "recipe" else TUTORIAL_LR)
    _, params = model.init(jax.random.key(0), shape)
    settings = {
        "optimizer": optimizer,
        "loss": fnn.losses.cross_entropy,
        "path": "custom",
        "batch_size": MODELS[name].batch_size,
    }
    return model, params, settings


def profiler_options():
    """The profiler's options: host events at every level (XLA's passes), no Python tracing (its cost), no HLO."""
    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    options.host_tracer_level = 2
    if hasattr(options, "enable_hlo_proto"):
        options.enable_hlo_proto = False
    return options


def program_name(name):
    """A function's name as JAX's events give it (``"jit(steps)"``, ``"steps"``) or XLA's module (``"jit_steps"``):
    ``"steps"``."""
    name = str(name or "")
    match = re.fullmatch(r"\w*jit\((.*)\)", name)
    if match:
        return match[1]
    return name[4:] if name.startswith("jit_") else name


class Events:
    """JAX's compile events as they come (``jax.monitoring``), from every thread: each phase's spans, and the cache's
    hits and misses, given to the backend compile that follows them in their thread."""

    Span = collections.namedtuple("Span", "phase name seconds thread start end cache retrieval_s")

    def __init__(self):
        self.spans, self._pending, self._lock = [], collections.defaultdict(list), threading.Lock()

    def listen(self):
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)

    def _duration(self, event, seconds, **kwargs):
        end, thread = time.time(), threading.get_ident()
        with self._lock:
            if event == RETRIEVAL_EVENT:
                self._pending[thread].append(("retrieval_s", seconds))
            elif event in PHASE_EVENTS:
                phase = PHASE_EVENTS[event]
                pending = self._pending.pop(thread, []) if phase == "backend_s" else []
                cache = next((value for key, value in pending if key == "cache"), None)
                retrieval = sum(value for key, value in pending if key == "retrieval_s") if cache == "hit" else None
                name = program_name(kwargs.get("fun_name"))
                self.spans.append(self.Span(phase, name, seconds, thread, end - seconds, end, cache, retrieval))

    def _event(self, event, **kwargs):
        if event in CACHE_EVENTS:
            with self._lock:
                self._pending[threading.get_ident()].append(("cache", CACHE_EVENTS[event]))

    def outermost(self):
        """The spans not inside another of the same phase in the same thread (a jitted function traced while
        another is: counted once, in the outer one)."""
        kept = []
        for span in self.spans:
            inside = any(
                o is not span
                and o.phase == span.phase
                and o.thread == span.thread
                and o.start <= span.start
                and span.end <= o.end
                and o.seconds > span.seconds
                for o in self.spans
            )
            if not inside:
                kept.append(span)
        return kept

    def summary(self, compile_seconds, fit_start, fit_compiled, fit_end):
        """fit's programs phase by phase (``programs``), the other programs by when (``others``), the process's first
        backend compile and the totals."""
        spans = self.outermost()
        slack = 0.05  # seconds: the events' clock against fit's own
        in_window = [s for s in spans if fit_start <= s.end <= fit_compiled + slack]
        by_program = collections.defaultdict(list)
        for fit_name in compile_seconds:
            by_program[program_name(fit_name.split("[")[0])].append(fit_name)
        programs, used = {}, set()
        for jax_name, fit_names in by_program.items():
            mine = [s for s in in_window if s.name == jax_name]
            used.update(id(s) for s in mine)
            backend = [s for s in mine if s.phase == "backend_s"]
            caches = sorted({s.cache for s in backend if s.cache})
            retrieval = [s.retrieval_s for s in backend if s.retrieval_s is not None]
            programs["+".join(fit_names)] = {
                "jax_name": jax_name,
                "fit_s": float(sum(compile_seconds[n] for n in fit_names)),
                **{phase: float(sum(s.seconds for s in mine if s.phase == phase)) for phase in PHASES},
                "cache": "/".join(caches) if caches else None,
                "retrieval_s": float(sum(retrieval)) if retrieval else None,
            }
        when = {
            "before_fit": lambda s: s.end < fit_start,
            "in_fit_compile": lambda s: fit_start <= s.end <= fit_compiled + slack,
            "after_compile": lambda s: fit_compiled + slack < s.end <= fit_end,
            "after_fit": lambda s: s.end > fit_end,
        }
        others = {}
        for label, test in when.items():
            rest = [s for s in spans if id(s) not in used and test(s)]
            per_name = collections.Counter()
            for s in rest:
                per_name[s.name] += s.seconds
            others[label] = {
                "programs": sum(s.phase == "backend_s" for s in rest),
                **{phase: float(sum(s.seconds for s in rest if s.phase == phase)) for phase in PHASES},
                "slowest": [[n, float(v)] for n, v in per_name.most_common(5)],
            }
        backends = [s for s in spans if s.phase == "backend_s"]
        first = min(backends, key=lambda s: s.start, default=None)
        caches = collections.Counter(s.cache for s in backends if s.cache)
        return {
            "programs": programs,
            "others": others,
            "first_backend": None if first is None else {"name": first.name, "backend_s": first.seconds},
            "totals": {phase: float(sum(s.seconds for s in spans if s.phase == phase)) for phase in PHASES},
            "cache": {"hits": caches["hit"], "misses": caches["miss"]},
        }


# ---------------------------------------------------------------- XLA's phases, from the profiler's trace
class Node:
    """A trace event and the events inside it on its thread."""

    __slots__ = ("name", "start", "end", "children", "_holds")

    def __init__(self, name, start, end):
        self.name, self.start, self.end, self.children, self._holds = name, start, end, [], None

    @property
    def seconds(self):
        return (self.end - self.start) / 1e9

    def holds_pipeline(self):
        """Whether a pass pipeline's event lies inside this one."""
        if self._holds is None:
            self._holds = any(PIPELINE.match(c.name) or c.holds_pipeline() for c in self.children)
        return self._holds


def event_trees(trace_dir):
    """The host threads' events of the trace in ``trace_dir`` as trees (each thread's outermost events)."""
    from jax.profiler import ProfileData

    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise FileNotFoundError(f"the profiler wrote no trace in {trace_dir}")
    roots = []
    for plane in ProfileData.from_file(files[0]).planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            events = sorted(((e.start_ns, e.duration_ns, e.name) for e in line.events), key=lambda e: (e[0], -e[1]))
            stack = []
            for start, duration, name in events:
                node = Node(name, start, start + duration)
                while stack and start >= stack[-1].end:
                    stack.pop()
                (stack[-1].children if stack else roots).append(node)
                stack.append(node)
    return roots


def compiles(roots):
    """Each XLA compile in the trace: the outermost event of a thread that holds a module's pass pipelines (e.g.
    ``PjRtCpuClient::Compile``), split into the HLO passes and the rest (code generation)."""
    found = []
    for root in roots:
        if PIPELINE.match(root.name):  # pipelines with no event around them: the compile is theirs alone
            wrapper = Node("(pass pipelines)", root.start, root.end)
            wrapper.children.append(root)
            found.append(split(wrapper))
        elif root.holds_pipeline():
            found.append(split(root))
    return found


def split(root):
    """One compile's ``module``, ``xla_s``, ``hlo_passes_s``, ``codegen_s``, ``autotune_s``, its passes and its
    code generation's parts by name."""
    modules, passes, parts = collections.Counter(), collections.Counter(), collections.Counter()
    hlo = 0.0

    def in_pipeline(node):
        for c in node.children:
            if PIPELINE.match(c.name):
                in_pipeline(c)
            elif c.holds_pipeline() and not AUTOTUNE.search(
                c.name
            ):  # a pass that runs pipelines of its own: its passes are counted there
                in_pipeline(c)
            else:
                passes[c.name] += c.seconds

    def outside(node, depth, path):
        nonlocal hlo
        for c in node.children:
            match = PIPELINE.match(c.name)
            if match:
                hlo += c.seconds
                modules[match["module"]] += c.seconds
                in_pipeline(c)
            elif c.holds_pipeline():
                outside(c, depth + 1, path)
            else:
                label = f"{path} > {c.name}" if path else c.name
                parts[label] += c.seconds
                if depth < 2:
                    outside(c, depth + 1, label)

    outside(root, 0, "")
    return {
        "module": modules.most_common(1)[0][0] if modules else None,
        "event": root.name,
        "xla_s": root.seconds,
        "hlo_passes_s": hlo,
        "codegen_s": max(root.seconds - hlo, 0.0),
        "autotune_s": autotuning(root),
        "passes": dict(passes),
        "codegen_parts": dict(parts),
    }


def autotuning(node):
    """Seconds of the outermost events inside ``node`` whose names say autotuning (:data:`AUTOTUNE`), wherever they
    lie: a pass, or a part of code generation."""
    return sum(c.seconds if AUTOTUNE.search(c.name) else autotuning(c) for c in node.children)


def xla_phases(trace_dir, compile_seconds):
    """fit's programs' XLA phases from a profiled run's trace (by module name), and all compiles summed; or the
    reason the trace could not be read."""
    try:
        found = compiles(event_trees(trace_dir))
    except Exception as e:  # a profiler that cannot run or be read here: the run's other figures stand
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]}
    by_module = collections.defaultdict(list)
    for c in found:
        by_module[program_name(c["module"])].append(c)
    programs = {}
    for fit_name in compile_seconds:
        mine = by_module.get(program_name(fit_name.split("[")[0]), [])
        if len(mine) != 1:  # absent, or two programs of one name (two step lengths): not told apart
            continue
        c = mine[0]
        programs[fit_name] = {
            **{k: c[k] for k in ("event", "xla_s", "hlo_passes_s", "codegen_s", "autotune_s")},
            "slowest_passes": top(c["passes"]),
            "slowest_codegen_parts": top(c["codegen_parts"]),
        }
    passes = collections.Counter()
    for c in found:
        passes.update(c["passes"])
    totals = {k: float(sum(c[k] for c in found)) for k in ("xla_s", "hlo_passes_s", "codegen_s", "autotune_s")}
    return {"programs": programs, "all_compiles": {"count": len(found), **totals, "slowest_passes": top(passes)}}


def top(seconds):
    """The :data:`TOP` largest entries of ``{name: seconds}``, largest first."""
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1])[:TOP])


# ---------------------------------------------------------------- medians, intervals and the record
def median_interval(values):
    """``{"median", "interval", "confidence", "n"}``: the median of ``values`` and the order-statistic interval
    ``[x(k), x(n+1-k)]`` with the largest ``k`` whose coverage reaches :data:`CONFIDENCE` (``k = 1`` when none
    does); ``confidence`` is its exact coverage under any continuous distribution, ``1 - 2 P(B < k)`` with ``B``
    binomial(n, 1/2). ``None`` for no values."""
    x = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    n = len(x)
    if not n:
        return None

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= CONFIDENCE:
        k += 1
    return {"median": float(np.median(x)), "interval": [x[k - 1], x[n - k]], "confidence": coverage(k), "n": n}


def summarize(runs):
    """Per variant: the medians and intervals of the timeline, of each program's phases, of the other programs, and
    (profiled runs) of XLA's phases; then warm over cold, the profiler's overhead and autotuning's share, round by
    round."""
    by_variant = collections.defaultdict(list)
    for run in runs:
        by_variant[run["variant"]].append(run)
    out = {}
    for variant, mine in by_variant.items():
        names = list(dict.fromkeys(name for run in mine for name in run["programs"]))
        fields = ("fit_s", *PHASES, "retrieval_s")
        out[variant] = {
            "rounds": len(mine),
            "timeline": {k: median_interval(r["timeline"][k] for r in mine) for k in mine[0]["timeline"]},
            "programs": {
                name: {
                    **{
                        k: median_interval(r["programs"][name][k] for r in mine if name in r["programs"])
                        for k in fields
                    },
                    "cache": sorted({str(r["programs"][name]["cache"]) for r in mine if name in r["programs"]}),
                }
                for name in names
            },
            "others": {
                when: {k: median_interval(r["others"][when][k] for r in mine) for k in ("programs", *PHASES)}
                for when in mine[0]["others"]
            },
            "first_backend_s": median_interval(r["first_backend"]["backend_s"] for r in mine if r["first_backend"]),
            "cache_hits": median_interval(r["cache"]["hits"] for r in mine),
            "cache_misses": median_interval(r["cache"]["misses"] for r in mine),
        }
        profiles = [r["xla"] for r in mine if "xla" in r and "error" not in r["xla"]]
        if profiles:
            out[variant]["xla"] = xla_summary(profiles, names)
        errors = sorted({r["xla"]["error"] for r in mine if "error" in r.get("xla", {})})
        if errors:
            out[variant]["xla_errors"] = errors
    return out | paired(runs)


def xla_summary(profiles, names):
    """Medians and intervals of the profiled runs' XLA phases per program, and of every pass among the slowest."""
    keys = ("xla_s", "hlo_passes_s", "codegen_s", "autotune_s")
    programs = {}
    for name in names:
        mine = [p["programs"][name] for p in profiles if name in p["programs"]]
        if not mine:
            continue
        passes = list(dict.fromkeys(n for p in mine for n in p["slowest_passes"]))
        parts = list(dict.fromkeys(n for p in mine for n in p["slowest_codegen_parts"]))
        programs[name] = {
            "event": mine[0]["event"],
            **{k: median_interval(p[k] for p in mine) for k in keys},
            "hlo_share": median_interval(p["hlo_passes_s"] / p["xla_s"] for p in mine if p["xla_s"] > 0),
            "slowest_passes": ranked(passes, [p["slowest_passes"] for p in mine]),
            "slowest_codegen_parts": ranked(parts, [p["slowest_codegen_parts"] for p in mine]),
        }
    every = [p["all_compiles"] for p in profiles]
    all_passes = list(dict.fromkeys(n for p in every for n in p["slowest_passes"]))
    return {
        "programs": programs,
        "all_compiles": {
            "count": median_interval(p["count"] for p in every),
            **{k: median_interval(p[k] for p in every) for k in keys},
            "slowest_passes": ranked(all_passes, [p["slowest_passes"] for p in every]),
        },
    }


def ranked(names, tables):
    """``{name: median seconds}`` over ``tables`` (a name missing from a run's slowest counts as 0 there), the
    :data:`TOP` largest first, those of median 0 left out."""
    medians = {n: float(np.median([t.get(n, 0.0) for t in tables])) for n in names}
    return top({n: m for n, m in medians.items() if m > 0})


def paired(runs):
    """Round by round: warm over cold (each program's phases, fit's compile time), the profiled run's compile time
    over the cold run's (the profiler's overhead), and cold less cold without autotuning (autotuning's seconds and
    share)."""
    rounds = collections.defaultdict(dict)
    for run in runs:
        rounds[run["repeat"]][run["variant"]] = run
    out = {}

    def pairs(variant):
        return [(r["cold"], r[variant]) for r in rounds.values() if "cold" in r and variant in r]

    def per_program(both, value):
        names = list(dict.fromkeys(n for cold, _ in both for n in cold["programs"]))
        return {
            name: {
                phase: median_interval(
                    value(cold["programs"][name][phase], other["programs"][name][phase])
                    for cold, other in both
                    if name in other["programs"] and name in cold["programs"]
                )
                for phase in ("fit_s", *PHASES)
            }
            for name in names
        }

    def ratio(a, b):
        return b / a if a else None

    if pairs("warm"):
        both = pairs("warm")
        out["warm_over_cold"] = {
            "fit_compile_s": median_interval(
                w["timeline"]["fit_compile_s"] / c["timeline"]["fit_compile_s"] for c, w in both
            ),
            "programs": per_program(both, ratio),
        }
    if pairs("profiled"):
        out["profiler_overhead"] = {
            "fit_compile_s": median_interval(
                p["timeline"]["fit_compile_s"] / c["timeline"]["fit_compile_s"] for c, p in pairs("profiled")
            )
        }
    if pairs("no_autotune"):
        both = pairs("no_autotune")
        compile_s = [(c["timeline"]["fit_compile_s"], n["timeline"]["fit_compile_s"]) for c, n in both]
        out["autotune"] = {
            "flag": AUTOTUNE_FLAG,
            "fit_compile_s_saved": median_interval(c - n for c, n in compile_s),
            "fit_compile_share": median_interval((c - n) / c for c, n in compile_s),
            "programs_seconds_saved": per_program(both, lambda c, n: c - n),
            "train_s_ratio": median_interval(n["timeline"]["train_s"] / c["timeline"]["train_s"] for c, n in both),
        }
    return out


def record(args, runs, *, complete, wall_s):
    """The study's JSON: the machine (as the first run found it), the settings, per model the summary and every
    run."""
    first = next((model_runs[0] for model_runs in runs.values() if model_runs), {})
    return {
        "experiment": "compile_time",
        "complete": complete,
        **{k: first.get(k) for k in ("device", "jax_version", "host_cpu", "platform")},
        "cpu_count": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "wall_s": wall_s,
        "config": {
            "models": {name: MODELS[name].description for name in args.models},
            "epochs": 1,
            "path": "custom",
            "repeats": args.repeats,
            "variants": args.variants or "cold, warm, profiled (and no_autotune on a GPU)",
            "train_size": args.train_size,
            "test_size": args.test_size,
            "synthetic": args.synthetic,
            "interval": f"order statistics of the median, coverage at least {CONFIDENCE} where the rounds allow",
        },
        "models": {
            name: {
                "n_train": model_runs[0]["n_train"] if model_runs else None,
                "steps_per_epoch": model_runs[0]["steps_per_epoch"] if model_runs else None,
                "summary": summarize(model_runs) if model_runs else {},
                "runs": model_runs,
            }
            for name, model_runs in runs.items()
        },
    }


# ---------------------------------------------------------------- the printed summary
def cell(stat, scale=1.0, digits=3):
    """``"0.412 [0.401, 0.430]"`` from :func:`median_interval`'s dict; ``"-"`` for none."""
    if not stat:
        return "-"
    lo, hi = stat["interval"]
    if stat["n"] == 1:
        return f"{scale * stat['median']:.{digits}f}"
    return f"{scale * stat['median']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def print_summary(result):
    """Per model: each program's phases cold and warm, the other programs, fit's time, XLA's split."""
    for name, model in result["models"].items():
        summary = model["summary"]
        cold, warm = summary.get("cold", {}), summary.get("warm", {})
        rounds = cold.get("rounds", 0)
        confidence = next(
            (s["confidence"] for s in cold.get("timeline", {}).values() if s and s["n"] == rounds), float("nan")
        )
        spread = f"medians of {rounds} rounds [interval, {confidence:.0%} coverage]" if rounds > 1 else "one round"
        print(
            f"\n{name}: {model['n_train']} training images, {model['steps_per_epoch']} steps; {result['device']}; "
            f"{spread}; seconds"
        )
        rows = []
        for program in cold.get("programs", {}):
            for phase in ("trace_s", "lower_s", "backend_s", "fit_s"):
                c, w = cold["programs"][program][phase], warm.get("programs", {}).get(program, {}).get(phase)
                rows.append([program, phase, cell(c), cell(w)])
        for when, stats in cold.get("others", {}).items():
            if not (stats["programs"] or {}).get("median"):
                continue
            for phase in PHASES:
                w = warm.get("others", {}).get(when, {}).get(phase)
                count = stats["programs"]["median"]
                rows.append([f"other programs {when} ({count:.0f})", phase, cell(stats[phase]), cell(w)])
        keys = ("startup_s", "data_s", "init_s", "fit_compile_s", "train_s", "fit_rest_s", "fit_s", "compile_share")
        for key in (*keys, "process_s"):
            rows.append(["run", key, cell(cold.get("timeline", {}).get(key)), cell(warm.get("timeline", {}).get(key))])
        print(_common.markdown_table(["program", "phase", "cold", "warm"], rows))
        profiled = summary.get("profiled", {}).get("xla", {}).get("programs", {})
        for program, xla in profiled.items():
            passes = ", ".join(f"{p} {1e3 * s:.0f} ms" for p, s in list(xla["slowest_passes"].items())[:4])
            print(
                f"XLA, {program}: {cell(xla['xla_s'])} s, of which HLO passes {cell(xla['hlo_passes_s'])} (a "
                f"share of {cell(xla['hlo_share'])}), code generation {cell(xla['codegen_s'])}, autotuning "
                f"{cell(xla['autotune_s'])}; slowest passes: {passes}"
            )
        if "autotune" in summary:
            a = summary["autotune"]
            print(
                f"autotuning: {cell(a['fit_compile_s_saved'])} s of fit's compile time ({cell(a['fit_compile_share'])})"
            )


if __name__ == "__main__":
    _cli.run(main)
