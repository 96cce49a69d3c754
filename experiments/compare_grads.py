"""Three gradient paths for one MLP, compared for accuracy, speed, memory and compiled code.

The paths are ``fnn.PATHS``, each ``fnn.value_and_grad(model, loss, path=...)``
for ``model = fnn.nn.mlp(sizes)`` (ReLU, He init, no biases unless ``--bias``)
and ``loss = fnn.losses.cross_entropy``:

- ``autodiff``: ``jax.value_and_grad`` over the modules' plain forward code;
- ``custom``: the same over their custom rules (the hand-written backward functions);
- ``backprop``: the notes' explicit reverse sweep over the same backward functions.

A configuration is ``WIDTHxBATCHxDEPTH[:DTYPE]``: 784 inputs, ``DEPTH`` hidden
layers of ``WIDTH`` units, 10 classes, batches of ``BATCH`` random examples
(pixels uniform in [0, 1], labels uniform). Per configuration and path it
records, by :func:`fnn.inspect.compare_paths`, the gradient's error against a
float64 autodiff reference (the same model and data cast to float64), the
time of a jitted SGD step (``fnn.bench.compare``: the three paths in rounds of
alternating order in one process, the median per-round ratio to autodiff with
a bootstrap confidence interval, the CPU-time ratio and a verdict that
calls differences within ``--margin`` (default 2%) a tie, as well as the
strict verdict of the interval against 1), compile
time, XLA's memory analysis, the residuals the forward pass saves, and op
counts of the optimised HLO with their difference from autodiff's.

    python -m experiments.compare_grads                  # full grid (~45 min on 2 cores)
    python -m experiments.compare_grads --quick          # a few small points (~2 min)
    python -m experiments.compare_grads --configs 500x100x1 1024x100x2:bfloat16
"""

import argparse
import datetime
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import fnn
import fnn.inspect
from experiments import _cli
from experiments._common import (
    device_description,
    markdown_table,
    pyplot,
    save_figure,
    write_json,
)

# The float64 configurations need 64-bit types; every array under test asks for its dtype explicitly.
jax.config.update("jax_enable_x64", True)

N_IN, N_OUT = 784, 10
PATHS = fnn.PATHS  # autodiff first: the other paths' ratios are to it
LOSS = fnn.losses.cross_entropy
DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}
LEARNING_RATE = fnn.inspect.LEARNING_RATE  # SGD step size of the compiled and timed steps
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
ASSUMED_GFLOPS = 100.0  # for the up-front time estimate only
ASSUMED_OVERHEAD_S = 8.0  # compiles, tracing and the float64 reference per configuration, for the estimate
BLOCK_OVERSHOOT = 1.45  # mean block length in units of block_s (log-uniform between 1 and 2)
UNTIMED_STEPS = 20  # per configuration: warm-up and gradient checks, in step-equivalents
#: Repetitions per mode: timing rounds, seconds of steps per path per round (``fnn.bench.compare``).
TIMING = {"full": (9, 2.0), "quick": (6, 0.05)}
#: Differences within 2% are a tie: two compilations of the same code differ by
#: up to about that much on the 2-core machines (``experiments.bench_check``'s resolution).
MARGIN = 0.02


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
    grid += [
        Config(128, 32, 8),
        Config(128, 4096, 1),
        Config(1024, 256, 8),
        Config(1024, 1024, 4),
        Config(2048, 1024, 2),
        Config(4096, 4096, 1),
    ]
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
        # fnn.bench.compare, per path: calibration (about two blocks), then one block per round; doubling the
        # calls per block until it lasts block_s gives blocks of 1 to 2 block_s, about BLOCK_OVERSHOOT on average
        block = BLOCK_OVERSHOOT * max(block_s, step_s)
        total += ASSUMED_OVERHEAD_S + UNTIMED_STEPS * step_s + len(PATHS) * (rounds + 2) * block
    return total


# ---------------------------------------------------------------- problem and measurements
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


def timing_fields(result):
    """The step-time fields of a row from the path's :class:`fnn.bench.Result` (seconds per jitted step)."""
    return {
        "step_s_median": result.median_s,
        "step_s_q1": result.q1_s,
        "step_s_q3": result.q3_s,
        "step_s_min": min(result.wall_s),
        "step_s_max": max(result.wall_s),
        "step_s_rounds": list(result.wall_s),
        "cpu_s_median": result.cpu_median_s,
        "steps_per_block": result.calls,
        "ratio_to_autodiff": result.ratio,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "cpu_ratio": result.cpu_ratio,
        "verdict": result.verdict,
        "margin": result.margin,
        "verdict_strict": fnn.bench.verdict(result.ci_low, result.ci_high),
    }


def measure(config, *, rounds, block_s, margin, seed, bias, learning_rate):
    """All measurements of the three paths at one configuration (:func:`fnn.inspect.compare_paths`), a row a path."""
    model, params, (x, labels) = make_problem(config, seed, bias)
    report = fnn.inspect.compare_paths(
        model,
        LOSS,
        params,
        x,
        labels,
        paths=PATHS,
        reference="autodiff",
        rounds=rounds,
        block_s=block_s,
        margin=margin,
        learning_rate=learning_rate,
        seed=seed,
    )
    flop = step_flop(config)
    rows = []
    for result in report.rows:
        timing = timing_fields(result.timing)
        rows.append(
            {
                "path": result.path,
                **config._asdict(),
                "config": config.label,
                "sizes": config.sizes,
                "bias": bias,
                "step_flop": flop,
                **timing,
                "rounds": rounds,
                "gflops": flop / timing["step_s_median"] / 1e9,
                "xla_flops": result.flops,
                "achieved_flops_per_s": result.timing.flops_per_s,
                "machine_fraction": result.timing.machine_fraction,
                "compile_s": result.compile_s,
                "temp_bytes": result.temp_bytes,
                "arg_bytes": result.arg_bytes,
                "out_bytes": result.out_bytes,
                "max_rel_err": result.max_rel_err,
                "max_abs_err": result.max_abs_err,
                "per_leaf": [dict(leaf) for leaf in result.per_leaf],
                "residuals": result.residuals,
                "hlo": result.hlo,
                "hlo_diff_vs_autodiff": result.hlo_diff,
                "device": device_description(),
            }
        )
    return rows


def run(
    configs,
    *,
    rounds=TIMING["full"][0],
    block_s=TIMING["full"][1],
    margin=MARGIN,
    seed=0,
    bias=False,
    learning_rate=LEARNING_RATE,
    log=print,
):
    """Measures every configuration in turn; returns the rows (three per configuration, autodiff first).

    Args:
      configs: :class:`Config` points.
      rounds: timing rounds per configuration (at least ``fnn.bench.MIN_ROUNDS``).
      block_s: about how many seconds of steps each path runs per round.
      margin: step-time differences within this fraction are a tie (``fnn.bench.verdict``).
      seed: seed of the parameters and the random batch.
      bias: whether the MLP has biases.
      learning_rate: SGD step size of the timed steps.
      log: called with a progress line after each configuration.
    """
    rows = []
    for i, config in enumerate(configs):
        start = time.perf_counter()
        rows += measure(
            config, rounds=rounds, block_s=block_s, margin=margin, seed=seed, bias=bias, learning_rate=learning_rate
        )
        ratios = ", ".join(
            f"{r['path']} {r['ratio_to_autodiff']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] {r['verdict']}"
            for r in rows[-len(PATHS) :]
            if r["path"] != "autodiff"
        )
        log(
            f"[{i + 1}/{len(configs)}] {config.label}: {time.perf_counter() - start:.1f} s (step time / autodiff: "
            f"{ratios})"
        )
    return rows


# ---------------------------------------------------------------- output
def table(rows):
    """Markdown table: one line per configuration and path."""
    header = [
        "config",
        "path",
        "step ms (median)",
        "IQR ms",
        "ratio [95% CI]",
        "CPU ratio",
        "verdict (strict)",
        "compile s",
        "temp bytes",
        "residual bytes",
        "max rel err",
    ]
    return markdown_table(
        header,
        [
            [
                r["config"],
                r["path"],
                f"{1e3 * r['step_s_median']:.3f}",
                f"{1e3 * r['step_s_q1']:.3f}-{1e3 * r['step_s_q3']:.3f}",
                f"{r['ratio_to_autodiff']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                f"{r['cpu_ratio']:.3f}",
                f"{r['verdict']} ({r['verdict_strict']})",
                f"{r['compile_s']:.2f}",
                f"{r['temp_bytes']:,}",
                f"{r['residuals']['computed_bytes']:,}",
                f"{r['max_rel_err']:.1e}",
            ]
            for r in rows
        ],
    )


def hlo_summary(rows):
    """One line per configuration and non-autodiff path: how its top-level HLO differs from autodiff's."""
    return "\n".join(
        f"{r['config']} {r['path']} vs autodiff: {r['hlo_diff_vs_autodiff']['ops_top'] or 'same top-level ops'}"
        f" (kernels {r['hlo']['kernels']}, dots {r['hlo']['dots']})"
        for r in rows
        if r["path"] != "autodiff"
    )


def payload(rows, grid, rounds, block_s, margin, seed, bias):
    """The JSON document: metadata of the run and every row."""
    return {
        "experiment": "compare_grads",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "device": device_description(),
        "grid": {
            "name": grid,
            "configs": list(dict.fromkeys(r["config"] for r in rows)),
            "rounds": rounds,
            "block_s": block_s,
            "margin": margin,
            "timing": "fnn.bench.compare of jitted SGD steps called from Python, alternating order, "
            "95% bootstrap interval of the median per-round ratio to autodiff",
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
        ratio = np.array([by[c, name]["ratio_to_autodiff"] for c in configs])
        low, high = (np.array([by[c, name][k] for c in configs]) for k in ("ci_low", "ci_high"))
        ax_ratio.bar(
            x + (i - 0.5) * 0.4, ratio, 0.4, yerr=[ratio - low, high - ratio], capsize=2, label=f"{name} / autodiff"
        )
    ax_ratio.axhline(1.0, color="black", linewidth=0.8)
    ax_ratio.set(ylabel="median per-round step-time ratio", title="training-step time relative to autodiff (95% CI)")
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
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        metavar="WxBxD[:DTYPE]",
        help=f"points to run instead of the grid; dtypes: {', '.join(sorted(DTYPES))}",
    )
    parser.add_argument("--rounds", type=int, help="timing rounds, at least 6 (default: 9, quick 6)")
    parser.add_argument("--block-s", type=float, help="seconds of steps per path per round (default: 2, quick 0.1)")
    parser.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help=f"step-time differences within this fraction are a tie (default {MARGIN}; 0: strict)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bias", action="store_true", help="give every layer a bias")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="results file (default: experiments/results/compare_grads.json; "
        "compare_grads_quick.json with --quick, compare_grads_selected.json with --configs)",
    )
    parser.add_argument("--plot", metavar="PATH", help="PNG plot (default: the JSON path with .png)")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    for name in ("rounds", "block_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.margin < 1:
        parser.error(f"--margin must be in [0, 1), e.g. 0.02 for 2%, got {args.margin}")
    if args.rounds is not None and 0 < args.rounds < fnn.bench.MIN_ROUNDS:
        parser.error(
            f"--rounds must be at least {fnn.bench.MIN_ROUNDS} (for an interval worth a verdict), got {args.rounds}"
        )
    return args


def default_json(grid):
    """Results file of a grid (``"full"``, ``"quick"``, ``"selected"``); only the full grid writes the main file."""
    return RESULTS / ("compare_grads.json" if grid == "full" else f"compare_grads_{grid}.json")


def main(argv=None):
    args = parse_args(argv)
    grid = "selected" if args.configs else "quick" if args.quick else "full"
    configs = args.configs or (QUICK_GRID if args.quick else full_grid())
    default_rounds, default_block_s = TIMING["quick" if args.quick else "full"]
    rounds, block_s = args.rounds or default_rounds, args.block_s or default_block_s
    json_path = Path(args.json or default_json(grid))
    plot_path = Path(args.plot or json_path.with_suffix(".png"))
    print(
        f"{len(configs)} configurations, {rounds} rounds of ~{block_s} s per path; "
        f"estimated {estimate_seconds(configs, rounds, block_s) / 60:.1f} min on {device_description()}",
        flush=True,
    )
    start = time.perf_counter()
    rows = run(
        configs,
        rounds=rounds,
        block_s=block_s,
        margin=args.margin,
        seed=args.seed,
        bias=args.bias,
        log=lambda line: print(line, flush=True),
    )
    print(f"\n{table(rows)}\n\n{hlo_summary(rows)}\n\ntotal {time.perf_counter() - start:.1f} s")
    result = payload(rows, grid, rounds, block_s, args.margin, args.seed, args.bias)
    write_json(json_path, result)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(plot_path, rows, f"gradient paths on {device_description()} (jax {jax.__version__})")
    print(f"wrote {json_path} and {plot_path}")
    return result


if __name__ == "__main__":
    _cli.run(main)
