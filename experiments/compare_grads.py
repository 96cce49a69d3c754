"""Three gradient paths for one MLP, compared for accuracy, speed, memory and compiled code.

The paths are ``fnn.PATHS``, each ``fnn.value_and_grad(model, loss, path=...)``
for ``model = fnn.nn.mlp(sizes)`` (ReLU, He init, no biases unless ``--bias``)
and ``loss = fnn.losses.cross_entropy``:

- ``autodiff``: ``jax.value_and_grad`` over the modules' plain forward code;
- ``custom``: the same over their ``custom_vjp`` rules (the hand-written backward functions);
- ``backprop``: the notes' explicit reverse sweep over the same backward functions.

A configuration is ``WIDTHxBATCHxDEPTH[:DTYPE]``: 784 inputs, ``DEPTH`` hidden
layers of ``WIDTH`` units, 10 classes, batches of ``BATCH`` random examples
(pixels uniform in [0, 1], labels uniform). Per configuration and path it
records the gradient's error against a float64 autodiff reference (the same
model and data cast to float64), the time of
a jitted SGD step (the three paths timed round-robin in one process), compile
time, XLA's memory analysis, the residuals the forward pass saves, and op
counts of the optimised HLO.

    python -m experiments.compare_grads                  # full grid (~30 min on 2 cores)
    python -m experiments.compare_grads --quick          # a few small points (~2 min)
    python -m experiments.compare_grads --configs 500x100x1 1024x100x2:bfloat16
"""

import argparse
import contextlib
import datetime
import io
import re
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import print_saved_residuals

import fnn
from experiments import _cli
from experiments._report import (
    device_description,
    markdown_table,
    pyplot,
    save_figure,
    write_json,
)

# The float64 reference needs 64-bit types; every array under test asks for its dtype explicitly.
jax.config.update("jax_enable_x64", True)

N_IN, N_OUT = 784, 10
PATHS = fnn.PATHS  # autodiff first: the other paths' ratios are to it
LOSS = fnn.losses.cross_entropy
DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}
LEARNING_RATE = 0.01  # small, so that re-fed parameters stay near their initialisation
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
ASSUMED_GFLOPS = 100.0  # for the up-front time estimate only
ASSUMED_OVERHEAD_S = 4.0  # compiles and tracing per configuration, for the estimate
UNTIMED_STEPS = 20  # per configuration: warm-up, probe and gradient checks, in step-equivalents
#: Repetitions per mode: rounds of round-robin timing, seconds of steps per path per round.
TIMING = {"full": (9, 2.0), "quick": (3, 0.1)}


class Config(NamedTuple):
    """One point of the grid: hidden width, batch size, number of hidden layers, dtype name."""

    width: int
    batch: int
    depth: int
    dtype: str = "float32"

    @property
    def label(self):
        """The ``--configs`` spelling, e.g. ``"500x100x1:float32"``."""
        return f"{self.width}x{self.batch}x{self.depth}:{self.dtype}"

    @property
    def sizes(self):
        """Layer widths ``[784, width, ..., width, 10]``."""
        return [N_IN, *[self.width] * self.depth, N_OUT]


BASE = Config(500, 100, 1)  # the notes' 784-500-10 at batch 100


def full_grid():
    """float32 around the base point one axis at a time, a few corners, and float64/bfloat16 at the base."""
    grid = [BASE]
    grid += [BASE._replace(width=w) for w in (128, 256, 1024, 2048, 4096)]
    grid += [BASE._replace(batch=b) for b in (32, 256, 1024, 4096)]
    grid += [BASE._replace(depth=d) for d in (2, 3, 4, 6, 8)]
    grid += [Config(128, 32, 8), Config(128, 4096, 1), Config(1024, 256, 8), Config(1024, 1024, 4),
             Config(2048, 1024, 2), Config(4096, 4096, 1)]
    grid += [BASE._replace(dtype="float64"), BASE._replace(dtype="bfloat16")]
    return grid


QUICK_GRID = [
    BASE,
    Config(128, 32, 1),
    Config(128, 32, 3),
    Config(256, 256, 2),
    BASE._replace(dtype="float64"),
    BASE._replace(dtype="bfloat16"),
]


def parse_config(text):
    """Parses ``WIDTHxBATCHxDEPTH[:DTYPE]`` (dtype float32 by default) into a :class:`Config`."""
    shape, _, dtype = text.partition(":")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {dtype!r} in config {text!r}; expected one of {', '.join(sorted(DTYPES))}"
        )
    parts = shape.split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"config {text!r} must be WIDTHxBATCHxDEPTH[:DTYPE] with positive integers, e.g. 500x100x1:float32"
        )
    return Config(*map(int, parts), dtype)


def step_flop(config):
    """FLOP of one SGD step: forward ``Z W``, backward ``Z^T G`` for every layer and ``G W^T`` for all but the first."""
    macs = [a * b for a, b in zip(config.sizes[:-1], config.sizes[1:])]
    return 2 * config.batch * (2 * sum(macs) + sum(macs[1:]))


def estimate_seconds(configs, rounds, block_s):
    """Rough wall time of :func:`run`, assuming ``ASSUMED_GFLOPS`` (float64 and bfloat16 at half that)."""
    total = 0.0
    for config in configs:
        step_s = step_flop(config) / (ASSUMED_GFLOPS * 1e9 * (1.0 if config.dtype == "float32" else 0.5))
        total += ASSUMED_OVERHEAD_S + UNTIMED_STEPS * step_s + len(PATHS) * rounds * max(block_s, step_s)
    return total


# ---------------------------------------------------------------- problem and paths
def make_problem(config, seed, bias):
    """The model ``fnn.nn.mlp(sizes)``, its He-initialised parameters and one random batch ``(x, labels)``.

    Parameters and inputs are in the configuration's dtype.
    """
    dtype = DTYPES[config.dtype]
    model = fnn.nn.mlp(config.sizes, bias=bias, dtype=dtype)
    _, params = model.init(jax.random.key(seed), (N_IN,))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((config.batch, N_IN), dtype=np.float32), dtype)
    labels = jnp.asarray(rng.integers(0, N_OUT, config.batch), jnp.int32)
    return model, params, (x, labels)


def value_and_grad_fn(model, path):
    """``(params, batch) -> (loss, grads)`` by ``fnn.value_and_grad`` on ``path``."""
    value_and_grad = fnn.value_and_grad(model, LOSS, path=path)
    return lambda params, batch: value_and_grad(params, *batch)


def update_fn(model, path, learning_rate):
    """Pure SGD update ``(params, batch) -> (params, {"loss": L})``: ``fnn.train.sgd_update`` on ``path``."""
    return fnn.train.sgd_update(model, LOSS, learning_rate, path=path)


def compile_step(model, path, params, batch, learning_rate):
    """Lowers and compiles the jitted step (no donation); returns ``(compiled, seconds)``."""
    start = time.perf_counter()
    compiled = jax.jit(update_fn(model, path, learning_rate)).lower(params, batch).compile()
    return compiled, time.perf_counter() - start


# ---------------------------------------------------------------- accuracy
def gradient_errors(grads, reference):
    """Per-leaf max abs and relative error ``max|g - g64| / max|g64|`` against the float64 reference."""
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    per_leaf = []
    for (key, g), g64 in zip(leaves, jax.tree.leaves(reference)):
        g, g64 = np.asarray(g, np.float64), np.asarray(g64)
        abs_err = float(np.max(np.abs(g - g64)))
        per_leaf.append({"leaf": jax.tree_util.keystr(key), "max_abs_err": abs_err, "max_rel_err": abs_err / float(np.max(np.abs(g64)))})
    return per_leaf


def reference_grads(model, params, batch):
    """The float64 autodiff gradient of the same model at the same parameters and data, cast up."""
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    batch64 = (batch[0].astype(jnp.float64), batch[1])
    return jax.jit(value_and_grad_fn(model, "autodiff"))(params64, batch64)[1]


# ---------------------------------------------------------------- timing
def compile_scan(model, path, params, batch, learning_rate, length):
    """Compiles ``length`` chained steps as one ``lax.scan``, the way ``fnn.fit`` runs them.

    Timing whole scans leaves out per-call dispatch, which is the same for
    every path and would only add noise to a comparison of the steps.
    """
    update = update_fn(model, path, learning_rate)

    def steps(params, batch):
        return jax.lax.scan(lambda p, _: (update(p, batch)[0], None), params, None, length=length)[0]

    return jax.jit(steps).lower(params, batch).compile()


def _seconds(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def time_interleaved(model, single_steps, params, batch, rounds, block_s, learning_rate):
    """Times each path's step round-robin: per round one block per path, in rotating order.

    A block is one call of a compiled scan of ``per_block`` chained steps from
    the same ``params``; ``per_block`` is chosen from the slowest path's single
    step so that a block takes about ``block_s``.

    Returns:
      ``(seconds per step for each round, by path name; steps per block)``.
    """
    names = list(single_steps)
    probe = max(min(_seconds(single_steps[n], params, batch) for _ in range(3)) for n in names)
    per_block = max(1, round(block_s / probe))
    blocks = {n: compile_scan(model, n, params, batch, learning_rate, per_block) for n in names}
    for name in names:
        _seconds(blocks[name], params, batch)  # warm-up
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(_seconds(blocks[name], params, batch) / per_block)
    return times, per_block


def timing_summary(seconds):
    """Median, quartiles and extremes of per-step seconds."""
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return {
        "step_s_median": float(median),
        "step_s_q1": float(q1),
        "step_s_q3": float(q3),
        "step_s_min": min(seconds),
        "step_s_max": max(seconds),
        "step_s_rounds": seconds,
    }


# ---------------------------------------------------------------- memory
def memory(compiled):
    """Temporary, argument and output bytes from XLA's memory analysis of a compiled step."""
    stats = compiled.memory_analysis()
    return {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "arg_bytes": int(stats.argument_size_in_bytes),
        "out_bytes": int(stats.output_size_in_bytes),
    }


def _aval_bytes(aval):
    """Bytes of a short aval string such as ``f32[8,16]``, ``bf16[]`` or ``bool[8]``."""
    match = re.match(r"([a-z]+)(\d*)\[([\d,]*)\]", aval)
    kind, bits, dims = match.groups()
    itemsize = 1 if kind == "bool" else int(bits) // 8
    return itemsize * int(np.prod([int(d) for d in dims.split(",") if d]))


def objective(model, path):
    """The scalar loss ``(params, batch) -> L`` that JAX differentiates on the ``autodiff`` and ``custom`` paths."""
    if path == "custom":
        model, loss = model.custom, LOSS.custom
    else:
        loss = LOSS
    return lambda params, batch: loss.apply(model.apply(params, batch[0]), batch[1])


def backprop_as_one_vjp(model):
    """The ``backprop`` path's loss as one ``custom_vjp``, whose residuals are what the reverse sweep keeps.

    ``fwd`` is the sweep's forward half (``model.forward``, then the loss's
    ``forward``) and keeps the parameters and what those save; ``bwd`` is its
    backward half (the loss's ``backward``, then ``model.backward``). So
    ``print_saved_residuals`` lists the backprop path's saved values like the
    other paths' residuals, and ``jax.grad`` of it equals
    ``fnn.value_and_grad(model, loss, path="backprop")``.
    """

    @jax.custom_vjp
    def loss(params, batch):
        return LOSS.apply(model.apply(params, batch[0]), batch[1])

    def fwd(params, batch):
        outputs, saved = model.forward(params, batch[0])
        value, loss_saved = LOSS.forward(outputs, batch[1])
        return value, (params, saved, loss_saved)

    def bwd(residuals, g):
        params, saved, loss_saved = residuals
        grads, _ = model.backward(params, saved, LOSS.backward(loss_saved, g))
        return grads, None

    loss.defvjp(fwd, bwd)
    return loss


def residuals(model, path, params, batch):
    """What the forward pass of the path keeps for the backward pass.

    Reads ``jax.ad_checkpoint.print_saved_residuals`` (one ``aval source``
    line per residual). ``computed_bytes`` leaves out the parameters and
    inputs, which are alive anyway. For ``backprop`` these are the values
    ``model.forward`` and the loss's ``forward`` save for the reverse sweep.
    """
    fn = backprop_as_one_vjp(model) if path == "backprop" else objective(model, path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(fn, params, batch)
    saved = []
    for line in printed.getvalue().splitlines():
        aval, _, source = line.partition(" ")
        saved.append({"aval": aval, "bytes": _aval_bytes(aval), "source": source.replace(f"{ROOT}/", "")})
    of = {
        "autodiff": "fnn.value_and_grad(mlp, cross_entropy, path='autodiff')",
        "custom": "fnn.value_and_grad(mlp, cross_entropy, path='custom')",
        "backprop": "fnn.value_and_grad(mlp, cross_entropy, path='backprop'): mlp.forward and cross_entropy.forward",
    }
    return {
        "of": of[path],
        "saved": saved,
        "total_bytes": sum(r["bytes"] for r in saved),
        "computed_bytes": sum(r["bytes"] for r in saved if not r["source"].startswith("from the argument")),
    }


# ---------------------------------------------------------------- compiled code
BOOKKEEPING = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(.+)$")


def _op_kind(rest):
    """Opcode of an HLO instruction's right-hand side; fusions as ``fusion:kLoop``, ``fusion:kCustom``, ..."""
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1]
    opcode = re.match(r"\s*([\w\-]+)\(", rest).group(1)
    if opcode == "fusion":
        return "fusion:" + re.search(r"kind=(k\w+)", rest).group(1)
    return opcode


def _computations(hlo_text):
    """``{name: (is_entry, [instruction right-hand sides])}`` of an HLO module's text."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            current = computations[header.group(2)] = (bool(header.group(1)), [])
        elif current is not None and (instruction := _INSTRUCTION.match(line)):
            current[1].append(instruction.group(1))
    return computations


def hlo_counts(hlo_text):
    """Op counts of optimised HLO: over the entry and loop bodies (``ops_top``) and over every computation (``ops_all``).

    ``dots`` counts every ``dot``, also those XLA CPU wraps in ``kind=kCustom``
    fusions (YNNPACK matmul kernels); ``kernels`` counts the top-level ops that
    do work (fusions, unfused dots and other ops, not parameters or tuples).
    """
    computations = _computations(hlo_text)
    top = [name for name, (is_entry, _) in computations.items() if is_entry]
    for name in top:  # loop bodies and conditions reachable from the entry
        for rest in computations[name][1]:
            top += [n for n in re.findall(r"(?:body|condition)=%([\w.\-]+)", rest) if n not in top]

    def count(names):
        kinds = (_op_kind(rest) for name in names for rest in computations[name][1])
        return Counter(kind for kind in kinds if kind not in BOOKKEEPING)

    ops_top, ops_all = count(top), count(computations)
    fusions = {kind: n for kind, n in ops_top.items() if kind.startswith("fusion:")}
    return {
        "dots": ops_all["dot"],
        "dots_unfused": ops_top["dot"],
        "fusions_custom": fusions.get("fusion:kCustom", 0),
        "fusions_loop": fusions.get("fusion:kLoop", 0),
        "fusions_other": sum(fusions.values()) - fusions.get("fusion:kCustom", 0) - fusions.get("fusion:kLoop", 0),
        "other_ops": sum(ops_top.values()) - sum(fusions.values()) - ops_top["dot"],
        "kernels": sum(ops_top.values()),
        "ops_top": dict(sorted(ops_top.items())),
        "ops_all": dict(sorted(ops_all.items())),
    }


def op_diff(counts, reference):
    """Non-zero differences ``counts - reference`` of two op-count dicts."""
    return {k: counts.get(k, 0) - reference.get(k, 0) for k in sorted({*counts, *reference}) if counts.get(k, 0) != reference.get(k, 0)}


# ---------------------------------------------------------------- one configuration, all of them
def measure(config, *, rounds, block_s, seed, bias, learning_rate):
    """All measurements of the three paths at one configuration; returns one row per path."""
    model, params, batch = make_problem(config, seed, bias)
    reference = reference_grads(model, params, batch)
    compiled = {path: compile_step(model, path, params, batch, learning_rate) for path in PATHS}
    times, per_block = time_interleaved(
        model, {p: c for p, (c, _) in compiled.items()}, params, batch, rounds, block_s, learning_rate
    )
    flop = step_flop(config)
    rows = []
    for path in PATHS:
        step, compile_s = compiled[path]
        per_leaf = gradient_errors(jax.jit(value_and_grad_fn(model, path))(params, batch)[1], reference)
        timing = timing_summary(times[path])
        rows.append({
            "path": path,
            **config._asdict(),
            "config": config.label,
            "sizes": config.sizes,
            "bias": bias,
            "step_flop": flop,
            **timing,
            "steps_per_block": per_block,
            "rounds": rounds,
            "gflops": flop / timing["step_s_median"] / 1e9,
            "compile_s": compile_s,
            **memory(step),
            "max_rel_err": max(leaf["max_rel_err"] for leaf in per_leaf),
            "max_abs_err": max(leaf["max_abs_err"] for leaf in per_leaf),
            "per_leaf": per_leaf,
            "residuals": residuals(model, path, params, batch),
            "hlo": hlo_counts(step.as_text()),
            "device": device_description(),
        })
    auto = next(row for row in rows if row["path"] == "autodiff")
    for row in rows:
        row["ratio_to_autodiff"] = row["step_s_median"] / auto["step_s_median"]
        row["hlo_diff_vs_autodiff"] = {
            scope: op_diff(row["hlo"][scope], auto["hlo"][scope]) for scope in ("ops_top", "ops_all")
        }
    return rows


def run(configs, *, rounds=TIMING["full"][0], block_s=TIMING["full"][1], seed=0, bias=False,
        learning_rate=LEARNING_RATE, log=print):
    """Measures every configuration in turn; returns the rows (three per configuration, autodiff first).

    Args:
      configs: :class:`Config` points.
      rounds: round-robin timing rounds per configuration.
      block_s: about how many seconds of steps each path runs per round.
      seed: seed of the parameters and the random batch.
      bias: whether the MLP has biases.
      learning_rate: SGD step size of the timed steps.
      log: called with a progress line after each configuration.
    """
    rows = []
    for i, config in enumerate(configs):
        start = time.perf_counter()
        rows += measure(config, rounds=rounds, block_s=block_s, seed=seed, bias=bias, learning_rate=learning_rate)
        ratios = ", ".join(f"{r['path']} {r['ratio_to_autodiff']:.2f}" for r in rows[-len(PATHS):])
        log(f"[{i + 1}/{len(configs)}] {config.label}: {time.perf_counter() - start:.1f} s (step time / autodiff: {ratios})")
    return rows


# ---------------------------------------------------------------- output
def table(rows):
    """Markdown table: one line per configuration and path."""
    header = ["config", "path", "step ms (median)", "IQR ms", "ratio", "compile s", "temp bytes", "residual bytes", "max rel err"]
    return markdown_table(header, [
        [
            r["config"], r["path"], f"{1e3 * r['step_s_median']:.3f}",
            f"{1e3 * r['step_s_q1']:.3f}-{1e3 * r['step_s_q3']:.3f}", f"{r['ratio_to_autodiff']:.3f}",
            f"{r['compile_s']:.2f}", f"{r['temp_bytes']:,}", f"{r['residuals']['computed_bytes']:,}", f"{r['max_rel_err']:.1e}",
        ]
        for r in rows
    ])


def hlo_summary(rows):
    """One line per configuration and non-autodiff path: how its top-level HLO differs from autodiff's."""
    return "\n".join(
        f"{r['config']} {r['path']} vs autodiff: {r['hlo_diff_vs_autodiff']['ops_top'] or 'same top-level ops'}"
        f" (kernels {r['hlo']['kernels']}, dots {r['hlo']['dots']})"
        for r in rows if r["path"] != "autodiff"
    )


def payload(rows, grid, rounds, block_s, seed, bias):
    """The JSON document: metadata of the run and every row."""
    return {
        "experiment": "compare_grads",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "device": device_description(),
        "grid": {
            "name": grid,
            "configs": list(dict.fromkeys(r["config"] for r in rows)),
            "rounds": rounds,
            "block_s": block_s,
            "seed": seed,
            "bias": bias,
            "learning_rate": LEARNING_RATE,
            "n_in": N_IN,
            "n_out": N_OUT,
        },
        "rows": rows,
    }


def plot(path, rows, title):
    """Two panels: step-time ratio to autodiff of the other paths, and XLA temp bytes of every path."""
    plt = pyplot()

    configs = list(dict.fromkeys(r["config"] for r in rows))
    by = {(r["config"], r["path"]): r for r in rows}
    x = np.arange(len(configs))
    fig, (ax_ratio, ax_mem) = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(configs) + 3), 8), sharex=True)
    for i, name in enumerate(p for p in PATHS if p != "autodiff"):
        ax_ratio.bar(x + (i - 0.5) * 0.4, [by[c, name]["ratio_to_autodiff"] for c in configs], 0.4, label=f"{name} / autodiff")
    ax_ratio.axhline(1.0, color="black", linewidth=0.8)
    ax_ratio.set(ylabel="median step time / autodiff's", title="training-step time relative to autodiff")
    for i, name in enumerate(PATHS):
        ax_mem.bar(x + (i - 1) * 0.27, [max(by[c, name]["temp_bytes"], 1) for c in configs], 0.27, label=name)
    ax_mem.set(yscale="log", ylabel="XLA temp bytes", title="temporary memory of the compiled step")
    ax_mem.set_xticks(x, configs, rotation=60, ha="right")
    for ax in (ax_ratio, ax_mem):
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    save_figure(fig, path, title)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small points, few repetitions")
    parser.add_argument("--configs", nargs="+", type=parse_config, metavar="WxBxD[:DTYPE]",
                        help=f"points to run instead of the grid; dtypes: {', '.join(sorted(DTYPES))}")
    parser.add_argument("--rounds", type=int, help="round-robin timing rounds (default: 9, quick 3)")
    parser.add_argument("--block-s", type=float, help="seconds of steps per path per round (default: 2, quick 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bias", action="store_true", help="give every layer a bias")
    parser.add_argument("--json", metavar="PATH",
                        help="results file (default: experiments/results/compare_grads.json; "
                             "compare_grads_quick.json with --quick, compare_grads_selected.json with --configs)")
    parser.add_argument("--plot", metavar="PATH", help="PNG plot (default: the JSON path with .png)")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    for name in ("rounds", "block_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def default_json(grid):
    """Results file of a grid (``"full"``, ``"quick"`` or ``"selected"``); only the full grid writes ``compare_grads.json``."""
    return RESULTS / ("compare_grads.json" if grid == "full" else f"compare_grads_{grid}.json")


def main(argv=None):
    args = parse_args(argv)
    grid = "selected" if args.configs else "quick" if args.quick else "full"
    configs = args.configs or (QUICK_GRID if args.quick else full_grid())
    default_rounds, default_block_s = TIMING["quick" if args.quick else "full"]
    rounds, block_s = args.rounds or default_rounds, args.block_s or default_block_s
    json_path = Path(args.json or default_json(grid))
    plot_path = Path(args.plot or json_path.with_suffix(".png"))
    print(f"{len(configs)} configurations, {rounds} rounds of ~{block_s} s per path; "
          f"estimated {estimate_seconds(configs, rounds, block_s) / 60:.1f} min on {device_description()}", flush=True)
    start = time.perf_counter()
    rows = run(configs, rounds=rounds, block_s=block_s, seed=args.seed, bias=args.bias,
               log=lambda line: print(line, flush=True))
    print(f"\n{table(rows)}\n\n{hlo_summary(rows)}\n\ntotal {time.perf_counter() - start:.1f} s")
    result = payload(rows, grid, rounds, block_s, args.seed, args.bias)
    write_json(json_path, result)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(plot_path, rows, f"gradient paths on {device_description()} (jax {jax.__version__})")
    print(f"wrote {json_path} and {plot_path}")
    return result


if __name__ == "__main__":
    _cli.run(main)
