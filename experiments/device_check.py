"""One bounded command that checks fnn on an accelerator: the default tests, then the recipe, the pooled CNN and
attention timed; one JSON file.

    python -m experiments.device_check --out DIR            # one GPU: about 6 minutes, at most 9.75
    python -m experiments.device_check --out DIR --quick    # tiny sizes, a few tests: a smoke test on a CPU

The steps, in this order (``--steps`` picks some):

- ``tests``: the default test suite (``python -m pytest``: the tests not marked
  slow) in ``--workers`` processes sharing the device
  (``XLA_PYTHON_CLIENT_PREALLOCATE=false``); pytest's output goes to
  ``DIR/pytest.txt``, its counts, the failing tests' ids and its seconds to
  the JSON. ``--tests`` selects tests as pytest's arguments do.
- ``limits``: the device's matrix-product rate (``fnn.bench.machine_rate``,
  measured afresh) for float32 at full precision, float32 at JAX's default
  (TF32 on a recent GPU) and bfloat16: the limits achieved rates are set
  against, with the spread of the timed calls.
- ``recipe``: the notes' recipe (784-500-10, no biases, He init, batches of
  100, SGD 0.5, 10 epochs) through ``fnn.fit`` on every path of
  ``fnn.PATHS`` (``_common.fit_recipe``): wall, compile and epoch seconds
  and the test error of each; then the notes' own PyTorch code
  (``_peer_torch.run``) on CUDA, where torch has it.
- ``pooled``: ``experiments.peer_pooled``: the Flax NNX tutorial's CNN, one
  epoch of batch 32 with AdamW, by fnn, Flax NNX and PyTorch (those
  installed), in interleaved rounds.
- ``attention``: the gradient of ``jax.nn.dot_product_attention`` in bfloat16
  by XLA and by cuDNN (``implementation="cudnn"``, where it runs), timed side
  by side with fnn's Pallas kernels (``fnn_pallas``); then
  ``experiments.attention_cost``: fnn's hand-written rule (the scan rule)
  against autodiff and
  ``jax.nn.dot_product_attention`` (XLA, float32), plain and causal; last,
  fnn's two rules in float32, the Pallas kernels and the scan rule, against
  autodiff (``fnn_rules``). A rule of fnn's that fails to compile or run is
  recorded as its error, and the others are timed.
- ``mixed``: the recipe and a wide MLP (784-8192-8192-8192-10, batches of
  2048) in float32 and in bfloat16 mixed precision (``fnn.nn.mixed_precision``),
  each compiled cold (an empty compilation cache) and warm (from it): compile,
  epoch and whole seconds, test error, and the fraction of the device's
  matrix-product limit for the dtype.
- ``compile``: ``experiments.compile_time``: where the pooled CNN's short run
  spends its time, one round of fresh processes over its whole epoch: each
  program ``fnn.fit`` compiles, traced, lowered and compiled by XLA, cold and
  from a warm cache; XLA's HLO passes, code generation and autotuning from
  the profiler's trace; and a cold run without autotuning
  (``--xla_gpu_autotune_level=0``), autotuning's share by difference.

Every benchmark records the device, the JAX version, and compile and run
seconds apart. Each step runs in a process of its own under a time budget
(:data:`BUDGETS_S`, ``--budget STEP=SECONDS``): when it runs out the step is
interrupted (killed :data:`GRACE_S` seconds later if still running),
recorded as ``"timed_out"`` with what it finished, and the check goes on;
a step that fails is recorded as ``"error"`` with its message. The JSON,
``DIR/device_check.json``, is rewritten after every step, so a run stopped
from outside keeps the steps that finished.

On a machine without network, to which only the checkout travels, ``.device/``
(ignored by git) carries what the machine lacks: MNIST's IDX files in
``.device/datasets/mnist/``, used as ``$FNN_DATASETS_DIR`` when that is not
set, and wheels in ``.device/wheels/``, of which those of distributions this
Python lacks are installed into ``.device/site/`` (put on the steps' path)
when Grain cannot be imported. Where tensorflow-datasets is missing, MNIST is
read straight from its IDX files (``fnn.data.read_idx``). ``--quick`` without
MNIST trains on ``fnn.data.synthetic`` data of MNIST's shapes.
"""

import argparse
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli, _common, _peer_torch

ROOT = Path(__file__).resolve().parents[1]
#: What travels to a machine without network: ``datasets/`` and ``wheels/``; ``site/`` is made there.
DEVICE = ROOT / ".device"
STEPS = ("tests", "limits", "recipe", "pooled", "attention", "mixed", "compile")
#: Each step's time budget in seconds, sized for one GPU: with each step's grace, 9.75 minutes at most.
BUDGETS_S = {"tests": 150, "limits": 25, "recipe": 40, "pooled": 105, "attention": 95, "mixed": 60, "compile": 40}
#: The matrix-product limits measured: ``(dtype, precision)`` (on a GPU, float32 at JAX's default runs in TF32).
LIMITS = (("float32", "highest"), ("float32", "default"), ("bfloat16", "default"))
#: The MNIST steps' shared options (``_common.add_common_args``): the notes' recipe, of which only the data options
#: are read here.
RECIPE_CONFIG = _common.Config("device_check", epochs=1, batch_size=_common.RECIPE_BATCH, lr=_common.RECIPE_LR)
#: Seconds an interrupted step has to stop (pytest prints what it ran) before it is killed.
GRACE_S = 10
#: The work of each step on an accelerator and, with ``--quick``, on a CPU: pytest's selection of tests (none: the
#: default suite), the data options of the MNIST experiments, the recipe's epochs, the attention problems.
SIZES = {
    "full": {
        "tests": [],
        "data": [],
        "epochs": 10,
        "attention": {"batch": 4, "heads": 8, "head_dim": 64, "seq_lens": [512, 2048], "causal_seq_lens": [1024, 4096]},
        "block_s": 0.05,
        "mixed": {"recipe": ((784, 500, 10), 100, 0.5, 10), "wide": ((784, 8192, 8192, 8192, 10), 2048, 0.02, 2)},
        "compile": ["--models", "pooled", "--repeats", "1", "--train-size", "60000"],
    },
    "quick": {
        "tests": ["tests/test_surface.py"],
        "data": ["--train-size", "512", "--test-size", "500"],
        "epochs": 1,
        "attention": {"batch": 1, "heads": 2, "head_dim": 16, "seq_lens": [64], "causal_seq_lens": [128]},
        "block_s": 0.01,
        "mixed": {"recipe": ((784, 500, 10), 100, 0.5, 1), "wide": ((784, 256, 256, 10), 128, 0.02, 1)},
        "compile": ["--models", "recipe", "--repeats", "1", "--variants", "cold", "warm", "profiled"],
    },
}


class StepError(Exception):
    """An experiment a step runs failed: its command and the end of its output."""


# ---------------------------------------------------------------- the machine
def use_device_folder():
    """Prepares this process and the steps' for the device; returns what it did, for the JSON.

    Sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (the test processes share
    the device), ``$FNN_DATASETS_DIR`` to ``.device/datasets`` when unset and
    that folder exists, and puts ``.device/site`` on the path, first
    installing into it the wheels of ``.device/wheels`` whose distributions
    this Python lacks, when Grain cannot be imported.
    """
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if not os.environ.get(fnn.data.ENV_VAR) and (DEVICE / "datasets").is_dir():
        os.environ[fnn.data.ENV_VAR] = str(DEVICE / "datasets")
    site, wheels = DEVICE / "site", DEVICE / "wheels"
    if site.is_dir():
        add_to_path(site)
    facts = {"installed_wheels": []}
    if importlib.util.find_spec("grain") is None and wheels.is_dir():
        missing = [wheel for wheel in sorted(wheels.glob("*.whl")) if not installed(wheel)]
        try:
            install(missing, site)
        except (subprocess.CalledProcessError, OSError, zipfile.BadZipFile) as e:  # the tests will say what it costs
            facts["install_error"] = " ".join(str(getattr(e, "stderr", None) or e).split())[-2000:]
        else:
            facts["installed_wheels"] = [wheel.name for wheel in missing]
            add_to_path(site)
    names = ("XLA_PYTHON_CLIENT_PREALLOCATE", fnn.data.ENV_VAR, "PYTHONPATH")
    return facts | {name: os.environ.get(name) for name in names}


def installed(wheel):
    """Whether this Python has the distribution of ``wheel`` (a ``.whl`` path), at any version."""
    try:
        importlib.metadata.distribution(wheel.name.split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install(wheels, site):
    """Installs ``wheels`` (paths) into the folder ``site``, without their dependencies and without network.

    By pip where this Python has it, else by unpacking them: a wheel is a
    zip archive of what goes into site-packages (an environment made without
    pip, such as uv's, has none).
    """
    if not wheels:
        return
    site.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("pip") is not None:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
        subprocess.run([*command, *map(str, wheels)], check=True, capture_output=True, text=True)
    else:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    importlib.invalidate_caches()


def add_to_path(folder):
    """Puts ``folder`` first on this process's ``sys.path`` and on ``$PYTHONPATH`` (the steps'), once."""
    folder = str(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *paths])


def default_workers():
    """Test processes for this machine: its usable cores, less two for the host's share of the device's work
    where there are more than four."""
    cores = len(os.sched_getaffinity(0))
    return cores - 2 if cores > 4 else cores


def mnist_at_hand():
    """Whether MNIST can be read: its IDX files are in ``$FNN_DATASETS_DIR/mnist/``, or TFDS is installed (which
    reads what it prepared before, or downloads)."""
    root = os.environ.get(fnn.data.ENV_VAR)
    return _common.tfds_installed() or (bool(root) and (Path(root) / "mnist").is_dir())


def data_flags(args):
    """The data options (``_common.add_common_args``) of the MNIST steps: MNIST, or with ``--synthetic`` or
    ``--quick`` and no MNIST at hand, ``fnn.data.synthetic`` data of its shapes."""
    synthetic = args.synthetic or not mnist_at_hand()
    return [*(["--synthetic"] if synthetic else []), *SIZES[args.size]["data"], "--no-progress"]


# ---------------------------------------------------------------- running a step under its budget
class Record:
    """A step's results as they come: each call merges its fields in and rewrites the file ``path`` whole."""

    def __init__(self, path):
        self.path, self.fields = path, {}

    def __call__(self, **fields):
        self.fields.update(fields)
        _common.write_json(self.path, self.fields)


def run_step(name, args, budget_s):
    """Runs step ``name`` in a process of its own for at most ``budget_s`` seconds.

    Returns its record: ``status`` (``"ok"``, ``"error"`` with ``error``, or
    ``"timed_out"``), ``budget_s``, ``wall_s``, and the fields the step
    recorded, those of the parts it finished when it was stopped.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.json"
        process = multiprocessing.get_context("spawn").Process(target=step_process, args=(name, args, path))
        tic = time.perf_counter()
        process.start()
        try:
            process.join(budget_s)
        except KeyboardInterrupt:  # Ctrl-C reaches this process only: the step's has a process group of its own
            stop(process)
            raise
        timed_out = process.is_alive()
        if timed_out:
            stop(process)
        wall_s = time.perf_counter() - tic
        fields = json.loads(path.read_text()) if path.exists() else {}
    recorded = fields.pop("status", "error")
    status = "timed_out" if timed_out else recorded
    if status == "error" and "error" not in fields:
        fields["error"] = f"the step's process ended with exit code {process.exitcode}"
    return {"status": status, "budget_s": budget_s, "wall_s": wall_s, **fields}


def step_process(name, args, path):
    """The process of one step: a process group of its own (stopping it stops what it started), the step, and its
    status recorded: ``"ok"``, or ``"error"`` and the message (then raised again, for the traceback)."""
    os.setsid()
    record = Record(path)
    try:
        STEP_FUNCTIONS[name](args, record)
    except KeyboardInterrupt:  # its budget ran out: the parent records it
        return
    except Exception as e:
        record(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())}")
        raise
    record(status="ok")


def stop(process):
    """Stops a step's process: interrupts its group (SIGINT: Python code stops where it is, pytest says what it
    ran) and kills what is left of it :data:`GRACE_S` seconds later; kills it at once while it is still starting
    (its group not yet made), when it has done nothing to keep."""
    try:
        if own_group(process):
            os.killpg(process.pid, signal.SIGINT)
            process.join(GRACE_S)
        (os.killpg if own_group(process) else os.kill)(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it has ended
        pass
    process.join()


def own_group(process):
    """Whether a step's process has made its process group, in which are the processes the step starts."""
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def experiment(module, argv, record):
    """Runs ``python -m experiments.<module> <argv> --json <file>``, its output shown as it comes; returns the JSON
    it wrote, or raises :class:`StepError` with the end of its output. Interrupted (the step's budget ran out), it
    records the end of the output as ``<module>_output``: what the experiment finished."""
    with tempfile.TemporaryDirectory() as folder:
        json_path = Path(folder) / f"{module}.json"
        command = [sys.executable, "-m", f"experiments.{module}", *argv, "--json", str(json_path)]
        tail = collections.deque(maxlen=20)
        try:
            with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
                for line in p.stdout:
                    print(line, end="", flush=True)
                    tail.append(line.rstrip())
        except KeyboardInterrupt:
            record(**{f"{module}_output": list(tail)})
            raise
        if p.returncode != 0:
            raise StepError(f"{shlex.join(command[1:])} ended with exit status {p.returncode}: " + " | ".join(tail))
        return json.loads(json_path.read_text())


# ---------------------------------------------------------------- the steps
def tests(args, record):
    """The default test suite (``--tests`` selects others): pytest's counts, failing ids and seconds."""
    selection = shlex.split(args.tests) if args.tests is not None else SIZES[args.size]["tests"]
    command = [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers), "-p", "no:cacheprovider", *selection]
    log = Path(args.out) / "pytest.txt"
    record(command=shlex.join(command), log=log.name, workers=args.workers)
    tic = time.perf_counter()
    with open(log, "w") as out, subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT) as proc:
        try:
            proc.wait()
        finally:  # also when the budget ran out: pytest, interrupted with this process, says what it ran
            proc.wait()
            record(exit_code=proc.returncode, wall_s=time.perf_counter() - tic, **pytest_summary(log.read_text()))


def pytest_summary(text):
    """pytest's counts (``passed``, ``failed``, ``skipped``, ``errors``, and any others its last summary line
    names; ``None`` without one) and the ids of the failed and erroring tests, from its output."""
    counts = None
    summaries = [line for line in text.splitlines() if re.search(r"\d+ \w+.* in [\d.]+s", line)]
    if summaries:
        counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
        for n, word in re.findall(r"(\d+) (\w+)", summaries[-1]):
            counts[{"error": "errors", "warning": "warnings"}.get(word, word)] = int(n)
    failing = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", text, flags=re.M)
    return {"counts": counts, "failing": failing}


def limits(args, record):
    """The device's matrix-product rate per dtype and precision of :data:`LIMITS`, measured afresh."""
    record(**machine())
    rates = {}
    for dtype, precision in LIMITS:
        rate = fnn.bench.machine_rate(jnp.dtype(dtype), precision=precision, refresh=True)
        rates[f"{dtype}/{precision}"] = rate.to_dict() | {"spread": list(rate.spread)}
        print(f"limit {dtype}/{precision}: {rate.flops_per_s / 1e12:.3g} TFLOP/s", flush=True)
        record(rates=rates)


def recipe(args, record):
    """The notes' recipe through ``fnn.fit`` on every path, then the notes' PyTorch code on CUDA."""
    parser = argparse.ArgumentParser()
    _common.add_common_args(parser, RECIPE_CONFIG)
    data = _common.load_data(parser.parse_args(data_flags(args)))
    epochs = SIZES[args.size]["epochs"]
    record(**machine(), data=describe(data), epochs=epochs)
    runs = {}
    for path in fnn.PATHS:
        history = _common.fit_recipe(data, path=path, epochs=epochs)
        runs[path] = {
            **_common.run_fields(history, "wall_s", "compile_s"),
            "run_s": history.wall_s - history.compile_s,
            **_common.run_fields(history, "epoch_s", "test_error"),
        }
        print(f"recipe, {path}: {history.wall_s:.2f} s ({history.compile_s:.2f} s compiling)", flush=True)
        record(fnn=runs)
    record(torch=torch_recipe(data, epochs))


def torch_recipe(data, epochs):
    """The notes' PyTorch code on CUDA: its device, wall and epoch seconds and test error, or why it was skipped."""
    try:
        torch = _peer_torch.import_torch()
    except ImportError as e:
        return {"skipped": str(e)}
    if not torch.cuda.is_available():
        return {"skipped": f"torch {torch.__version__} finds no CUDA device"}
    result = _peer_torch.run(data.x_train, data.y_train, data.x_test, data.y_test, epochs=epochs, device="cuda")
    elapsed = [row["elapsed_s"] for row in result["history"]]
    return {
        "device": f"cuda: {torch.cuda.get_device_name()}",
        "torch_version": torch.__version__,
        "wall_s": result["wall_s"],
        "epoch_s": np.diff([0.0, *elapsed]).tolist(),  # no compilation: the first epoch starts CUDA's libraries
        "test_error": result["test_error"],
    }


def pooled(args, record):
    """``experiments.peer_pooled`` with every library installed: per library its compile (fnn) or warm-up
    seconds, epoch seconds per round and test error, and fnn's time against each peer."""
    libraries = ["fnn"] + [name for name in ("flax", "torch") if importlib.util.find_spec(name)]
    skipped = {name: f"{name} is not installed" for name in ("flax", "torch") if name not in libraries}
    record(libraries=libraries, skipped=skipped)
    argv = ["--libraries", *libraries, "--rounds", str(fnn.bench.MIN_ROUNDS), *data_flags(args)]
    result = experiment("peer_pooled", argv, record)
    per_library = {
        name: {
            "compile_s": [r["compile_s"] for r in rows] if name == "fnn" else None,
            "warm_up_s": result["warm_up_s"].get(name),
            "epoch_s": [r["epoch_s"] for r in rows],
            "test_error": result["test_error"][name],
        }
        for name, rows in result["rounds"].items()
    }
    record(
        device=result["device"],
        jax_version=result["jax_version"],
        data=result["dataset"],
        torch_device=result["config"].get("torch_device"),
        libraries_timed=per_library,
        comparisons=[
            {k: c[k] for k in ("peer", "time_ratio", "time_ratio_ci95", "fnn_median_test_error")}
            for c in result["comparisons"]
        ],
        peer_pooled=result,
    )


def attention(args, record):
    """``jax.nn.dot_product_attention``'s gradient in bfloat16 by XLA and cuDNN (and fnn's Pallas kernels), then
    ``experiments.attention_cost`` (fnn's rule against autodiff and XLA's attention in float32), plain and causal,
    then fnn's Pallas kernels and scan rule against autodiff in float32."""
    size, block_s = SIZES[args.size]["attention"], SIZES[args.size]["block_s"]
    shape = {k: size[k] for k in ("batch", "heads", "head_dim")}
    problems = [(n, False) for n in size["seq_lens"]] + [(n, True) for n in size["causal_seq_lens"]]
    record(**machine(), shape=shape)
    rows, rules = [], []
    for seq_len, causal in problems:
        rows.append(jax_nn_bfloat16(seq_len, causal, **shape, block_s=block_s))
        record(jax_nn_bfloat16=rows)
    common = [f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]
    common += ["--rounds", str(fnn.bench.MIN_ROUNDS), "--block-s", str(block_s)]
    for name, extra in (("plain", []), ("causal", ["--causal"])):
        lengths = [str(n) for n, c in problems if c == (name == "causal")]
        result = experiment("attention_cost", [*common, *extra, "--seq-lens", *lengths], record)
        record(**{f"fnn_{name}": attention_rows(result)})
    for seq_len, causal in problems:
        rules.append(fnn_rules_float32(seq_len, causal, **shape, block_s=block_s))
        record(fnn_rules=rules)


def jax_nn_bfloat16(seq_len, causal, *, batch, heads, head_dim, block_s):
    """The gradient of ``sum(jax.nn.dot_product_attention(q, k, v) * C)`` in bfloat16 by XLA and by cuDNN, and of
    fnn's attention by its Pallas kernels (``fnn_pallas``), timed side by side (``fnn.bench.compare``, against
    XLA); returns per implementation its ``compile_s``, ``step_s`` and time ratio (fnn's also against cuDNN's,
    ``time_ratio_vs_cudnn``), cuDNN's refusal where it refuses (no GPU; cuDNN takes no float32), and fnn's error
    (``fnn_pallas_error``) where its kernels fail."""
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, c = (jax.random.normal(key, (batch, seq_len, heads, head_dim), jnp.bfloat16) for key in keys)

    def gradient(implementation):
        def loss(q, k, v, c):
            o = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
            return jnp.sum(o.astype(jnp.float32) * c)

        return jax.grad(loss, argnums=(0, 1, 2))

    row = {"seq_len": seq_len, "causal": causal, "dtype": "bfloat16"}
    fns, cudnn = {"xla": gradient("xla")}, gradient("cudnn")
    try:  # cuDNN refuses at tracing: no GPU, an input dtype or shape it does not take
        jax.jit(cudnn).trace(q, k, v, c)
        fns["cudnn"] = cudnn
    except (RuntimeError, ValueError) as e:
        row["cudnn_refused"] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
    pallas, compile_s, failed = runnable({"fnn_pallas": attention_gradient(causal, "pallas")}, q, k, v, c)
    fns |= pallas
    row |= {f"{name}_error": error for name, error in failed.items()}
    results = fnn.bench.compare(
        fns, q, k, v, c, baseline="xla", rounds=fnn.bench.MIN_ROUNDS, block_s=block_s, rate=False
    )
    for name, r in results.items():
        row[name] = {"compile_s": compile_s.get(name, r.compile_s), "step_s": r.median_s, "time_ratio_vs_xla": r.ratio}
    if "fnn_pallas" in results and "cudnn" in results:
        row["fnn_pallas"]["time_ratio_vs_cudnn"] = results["fnn_pallas"].median_s / results["cudnn"].median_s
    times = ", ".join(f"{name} {1e3 * r.median_s:.2f} ms" for name, r in results.items())
    print(f"jax.nn attention, bfloat16, T={seq_len}{' causal' if causal else ''}: {times}", flush=True)
    return row


def attention_gradient(causal, kernel):
    """``(q, k, v, c) -> (dq, dk, dv)`` of ``sum(attention(q, k, v) * C)`` by fnn's attention leaf: its rule
    ``kernel`` (``"pallas"`` or ``"scan"``, see ``fnn.nn._attention``), or ``"autodiff"``: ``jax.grad`` of its
    plain forward."""
    op = fnn.nn._attention.attention_leaf(causal, kernel="scan" if kernel == "autodiff" else kernel)
    apply = op.apply if kernel == "autodiff" else op.by_rules.apply

    def loss(q, k, v, c):
        return jnp.sum(apply({"k": k, "v": v}, q).astype(jnp.float32) * c)

    return jax.grad(loss, argnums=(0, 1, 2))


def runnable(fns, *args):
    """``({name: fn}, {name: compile seconds}, {name: error})``: the functions of ``fns`` that compile and run on
    ``args``, their compile seconds (``fnn.bench.compare`` then finds them compiled), and for the others a failure of
    any kind (Triton's, XLA's, a shape refused) as ``"Type: message"``, at most 300 characters, rather than ending
    the step."""
    ok, compile_s, errors = {}, {}, {}
    for name, fn in fns.items():
        try:
            tic = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            compile_s[name] = time.perf_counter() - tic
            jax.block_until_ready(compiled(*args))
            ok[name] = fn
        except Exception as e:  # whatever a kernel raises is the row's result
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
    return ok, compile_s, errors


def fnn_rules_float32(seq_len, causal, *, batch, heads, head_dim, block_s):
    """The gradient of ``sum(attention(q, k, v) * C)`` in float32 by fnn's attention leaf: its Pallas kernels
    (``pallas``) and its scan rule (``scan``) timed against autodiff (``fnn.bench.compare``); per rule its
    ``compile_s``, ``step_s`` and ``time_ratio_vs_autodiff``, or its ``error`` where it fails to compile or run."""
    keys = jax.random.split(jax.random.key(0), 4)
    args = [jax.random.normal(key, (batch, seq_len, heads, head_dim), jnp.float32) for key in keys]
    row = {"seq_len": seq_len, "causal": causal, "dtype": "float32"}
    gradients = {kernel: attention_gradient(causal, kernel) for kernel in ("autodiff", "pallas", "scan")}
    fns, compile_s, failed = runnable(gradients, *args)
    row |= {name: {"error": error} for name, error in failed.items()}
    if "autodiff" in fns:
        results = fnn.bench.compare(
            fns, *args, baseline="autodiff", rounds=fnn.bench.MIN_ROUNDS, block_s=block_s, rate=False
        )
        for name, r in results.items():
            row[name] = {"compile_s": compile_s[name], "step_s": r.median_s, "time_ratio_vs_autodiff": r.ratio}
        times = ", ".join(f"{name} {1e3 * r.median_s:.2f} ms" for name, r in results.items())
        print(f"fnn attention, float32, T={seq_len}{' causal' if causal else ''}: {times}", flush=True)
    return row


def attention_rows(result):
    """The parts of an ``attention_cost`` result a device check reports: machine, and per length and path the
    compile and step seconds, time and memory against autodiff, and the error against float64."""
    keys = ("seq_len", "path", "compile_s", "step_s", "temp_bytes", "temp_ratio_vs_autodiff", "max_rel_err_vs_float64")
    rows = [{k: r[k] for k in keys} | {"time_ratio_vs_autodiff": r["time_ratio"]["median"]} for r in result["rows"]]
    return {"device": result["device"], "jax_version": result["jax_version"], "config": result["config"], "rows": rows}


def mixed(args, record):
    """The recipe and a wide MLP that fills the device, each in float32 and in bfloat16 mixed precision
    (``fnn.nn.mixed_precision``), each trained twice on the custom path: first with an empty compilation cache
    (cold), then with the programs the first run left in it (warm). Per run: compile, epoch and whole seconds, the
    test error, and the median epoch's fraction of the device's matrix-product limit for the dtype."""
    with tempfile.TemporaryDirectory() as cache:
        fnn.use_compilation_cache(cache)  # empty: the first run compiles cold, the second finds its programs
        parser = argparse.ArgumentParser()
        _common.add_common_args(parser, RECIPE_CONFIG)
        data = _common.load_data(parser.parse_args(data_flags(args)))
        record(**machine(), data=describe(data))
        limit = {dtype: fnn.bench.machine_rate(jnp.dtype(dtype)) for dtype in ("float32", "bfloat16")}
        record(limits_flops_per_s={dtype: rate.flops_per_s for dtype, rate in limit.items()})
        runs = {}
        for name, (sizes, batch_size, lr, epochs) in SIZES[args.size]["mixed"].items():
            net = fnn.nn.mlp(list(sizes))
            _, params = net.init(jax.random.key(0), sizes[:1])
            for dtype in ("float32", "bfloat16"):
                model = net if dtype == "float32" else fnn.nn.mixed_precision(net)
                for compile_cache in ("cold", "warm"):
                    _, history = fnn.fit(
                        model, params, data, epochs=epochs, batch_size=batch_size, optimizer=lr, progress=False
                    )
                    fraction = float(np.median(history.machine_fraction(limit[dtype])))
                    runs[f"{name}/{dtype}/{compile_cache}"] = {
                        "sizes": list(sizes),
                        "batch_size": batch_size,
                        **_common.run_fields(history, "wall_s", "compile_s", "epoch_s", "test_error"),
                        "machine_fraction": fraction,
                    }
                    print(
                        f"{name}, {dtype}, {compile_cache}: {history.wall_s:.2f} s ({history.compile_s:.2f} s "
                        f"compiling), {fraction:.0%} of the {dtype} limit",
                        flush=True,
                    )
                    record(runs=runs)


def compile_time(args, record):
    """``experiments.compile_time``: per program ``fnn.fit`` compiles, its tracing, lowering and XLA compile, cold
    and from a warm cache, XLA's split from the profiler, and autotuning's share (on a GPU) by difference; each
    run's line as it ends (what an interrupted step keeps), then the whole result."""
    size = SIZES[args.size]
    data = [flag for flag in data_flags(args) if flag != "--no-progress"]  # the study shows no progress bar
    result = experiment("compile_time", [*size["compile"], *data], record)
    summaries = {name: model["summary"] for name, model in result["models"].items()}
    record(**{k: result[k] for k in ("device", "jax_version", "host_cpu", "platform")}, summary=summaries)
    record(compile_time=result)


STEP_FUNCTIONS = {
    "tests": tests,
    "limits": limits,
    "recipe": recipe,
    "pooled": pooled,
    "attention": attention,
    "mixed": mixed,
    "compile": compile_time,
}


def machine():
    """The device and versions a benchmark names."""
    return {"device": fnn.bench.device_description(), "jax_version": jax.__version__}


def describe(data):
    """The data a step trained on: its name, sizes, and how it was read."""
    if data.name == "synthetic":
        source = "fnn.data.synthetic"
    elif _common.tfds_installed():
        source = "fnn.data.load (TFDS)"
    else:
        source = "fnn.data.read_idx (the IDX files' order)"
    return {"name": data.name, "n_train": len(data.x_train), "n_test": len(data.x_test), "read_by": source}


# ---------------------------------------------------------------- the command
def budget(text):
    """``STEP=SECONDS`` as ``(step, seconds)``."""
    step, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = 0.0
    if step not in STEPS or not value > 0:
        raise argparse.ArgumentTypeError(f"want STEP=SECONDS with STEP one of {', '.join(STEPS)}, got {text!r}")
    return step, value


def steps(text):
    """A comma-separated list of steps, in the check's order."""
    chosen = text.split(",")
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step {', '.join(unknown)}; the steps are {','.join(STEPS)}")
    return [s for s in STEPS if s in chosen]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for device_check.json and pytest.txt")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few tests: a smoke test on a CPU")
    parser.add_argument("--synthetic", action="store_true", help="train on random MNIST-shaped data, MNIST or not")
    parser.add_argument("--steps", type=steps, default=list(STEPS), help=f"comma-separated (default {','.join(STEPS)})")
    parser.add_argument(
        "--budget",
        type=budget,
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help=f"a step's time budget (default {', '.join(f'{k}={v}' for k, v in BUDGETS_S.items())}); repeatable",
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="test processes (pytest -n)")
    parser.add_argument(
        "--tests", metavar="ARGS", help="pytest's selection of tests, e.g. 'tests/test_ops.py -k attention'"
    )
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be at least 0, got {args.workers}")
    args.size = "quick" if args.quick else "full"
    args.budgets = BUDGETS_S | dict(args.budget)
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment = use_device_folder()
    if {"recipe", "pooled"} & set(args.steps) and not (args.quick or args.synthetic or mnist_at_hand()):
        raise ValueError(
            f"no MNIST: put its four IDX files in {DEVICE / 'datasets' / 'mnist'} or set {fnn.data.ENV_VAR} to a "
            "folder holding mnist/ (--synthetic trains on random data of its shapes)"
        )
    report = {
        "experiment": "device_check",
        "command": shlex.join(["python", "-m", "experiments.device_check", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        **machine(),
        "python": sys.version.split()[0],
        "cpu_count": len(os.sched_getaffinity(0)),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": environment,
        "steps": {},
    }
    path, tic = out / "device_check.json", time.perf_counter()
    for name in args.steps:
        report["steps"][name] = {"status": "running", "budget_s": args.budgets[name]}
        _common.write_json(path, report)
        print(f"device_check: {name} (at most {args.budgets[name]:g} s) ...", flush=True)
        report["steps"][name] = step = run_step(name, args, args.budgets[name])
        report["wall_s"] = time.perf_counter() - tic
        _common.write_json(path, report)
        print(f"device_check: {name} {step['status']} in {step['wall_s']:.1f} s", flush=True)
    print(f"device_check: {report['wall_s']:.0f} s; results in {path}")
    return report


if __name__ == "__main__":
    _cli.run(main)
