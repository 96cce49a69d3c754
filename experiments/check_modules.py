"""The public checker on every fnn module and loss: its time, compile included, and its false alarms over many draws.

For every row of fnn's conformance table (``CASES`` in ``tests/test_modules.py``:
every module and loss at its table shape), and for small networks of fnn's
modules with batch norm and dropout in training mode (:data:`NETWORKS`:
gradients that batch norm makes ill-conditioned), with float64 on as in the
tests:

- **time**: ``check_module`` (``check_loss`` for a loss) at seed 0, right
  after ``jax.clear_caches()``, so every compilation is included (the
  process has started JAX once before, on another function); wall and
  process CPU seconds, and the programs XLA compiled and their seconds
  (every program: the checker's own, and the operations a check runs op by
  op, each compiled once per shape);
- **false alarms**: the same call for seeds 1 to ``--draws`` (other
  parameters, inputs, cotangents and directions each time; the compiled code
  is reused): how many draws fail any check, which checks, the worst
  ``error / tolerance`` over every draw and check, and the finite-difference
  directions left out (not smooth within the step);
- **broken rules**: every deliberately broken rule of
  ``tests/test_checker.py`` (``BROKEN_MODULES``), and the checks that fail on it.

    python -m experiments.check_modules --json experiments/results/check_modules.json
    python -m experiments.check_modules --items dense mlp_bn_dropout --draws 20
"""

import argparse
import os
import re
import time

import jax
import jax.monitoring

import fnn
from experiments import _cli
from experiments._common import device_description, markdown_table, write_json
from fnn import nn
from fnn._gradcheck.compare import RTOL

jax.config.update("jax_enable_x64", True)  # as the test suite runs the table

from tests.test_checker import BROKEN_MODULES  # noqa: E402 (after float64 is on, as in the tests)
from tests.test_modules import CASES, Case  # noqa: E402

#: The rows of the conformance table.
ITEMS = tuple(c.name for c in CASES)
#: The float64 agreement checks, whose tolerance follows the conditioning of each gradient leaf.
AGREEMENT = ("backward", "custom", "custom_jit", "custom_vmap", "custom_grad_of_grad", "forward_mode")


def _residual_block():
    """``dense``, then ``z + f(z)`` with batch norm, dropout and LayerNorm inside ``f``, then ``dense``."""
    block = nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dropout(0.3), nn.dense(4), nn.layer_norm())
    return nn.serial(nn.dense(4), nn.residual(block), nn.dense(3))


#: Small networks of fnn's modules, checked in training mode (batch norm's batch statistics, a fixed dropout mask).
NETWORKS = (
    Case("mlp_bn_dropout", lambda: nn.serial(nn.dense(3), nn.batch_norm(), nn.relu, nn.dropout(0.5), nn.dense(3),
                                             nn.batch_norm()), input_shape=(6, 4)),
    Case("conv_bn_dropout_pool", lambda: nn.serial(nn.conv2d(4, 3), nn.batch_norm(), nn.relu, nn.dropout(0.3),
                                                   nn.avg_pool((2, 2)), nn.flatten(), nn.dense(3)),
         input_shape=(4, 6, 6, 2)),
    Case("residual_bn_dropout_ln", _residual_block, input_shape=(6, 3)),
)  # fmt: skip


def _left_out(report):
    """Finite-difference directions left out in a report (both orders)."""
    total = 0
    for name in ("finite_differences", "finite_differences_2"):
        found = re.search(r"(\d+) left out", report[name].detail) if name in report.keys else None
        total += int(found.group(1)) if found else 0
    return total


#: Every compilation's seconds, in order (JAX reports each one it runs).
COMPILATIONS = []
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: COMPILATIONS.append(seconds) if event == COMPILE_EVENT else None
)


def timed(case, built):
    """The first check of a row, every compilation included: ``(report, wall s, CPU s, programs, compile s)``."""
    jax.clear_caches()
    wall, cpu, first = time.perf_counter(), time.process_time(), len(COMPILATIONS)
    report = case.check(built, seed=0)
    compiled = COMPILATIONS[first:]
    return report, time.perf_counter() - wall, time.process_time() - cpu, len(compiled), sum(compiled)


def _agreement_tolerance(report):
    """The largest tolerance of the float64 agreement checks in a report (raised above RTOL where ill-conditioned)."""
    return max((c.tolerance for c in report.rows if c.name in AGREEMENT and c.tolerance is not None), default=RTOL)


#: JAX's caches are cleared within a row once the process maps this many memory regions (Linux allows 65,530 by
#: default): run op by op, the attention op compiles its ``lax.scan`` anew on every call (a fresh closure), about 320
#: regions a draw, which 200 draws would exhaust.
MAPS_BEFORE_CLEARING = 40_000


def _mapped_regions():
    """How many memory regions this process maps (``/proc/self/maps``); 0 where that cannot be read."""
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def draws(case, built, n):
    """Seeds 1..n of a row on one module object (its compiled code reused): failures per check and the failing
    draws, the worst ratio and where, left-out directions, the draws whose agreement tolerance was raised and the
    largest, how often JAX's caches were cleared (:data:`MAPS_BEFORE_CLEARING`), seconds per draw."""
    failures, failed_checks, skipped, failed_draws = 0, {}, {}, []
    worst = {"ratio": 0.0, "check": None, "seed": None, "where": None}
    left_out, raised, largest, clears, start = 0, 0, RTOL, 0, time.perf_counter()
    for seed in range(1, n + 1):
        if _mapped_regions() > MAPS_BEFORE_CLEARING:
            jax.clear_caches()
            clears += 1
        report = case.check(built, seed=seed)
        failures += not report.ok
        if not report.ok:
            found = {c.name: {"where": c.where, "error": c.error, "tolerance": c.tolerance} for c in report.failed}
            failed_draws.append({"seed": seed, "checks": found})
        tolerance = _agreement_tolerance(report)
        raised, largest = raised + (tolerance > RTOL), max(largest, tolerance)
        for check in report.rows:
            if check.status == "failed":
                failed_checks[check.name] = failed_checks.get(check.name, 0) + 1
            if check.status == "skipped":
                skipped[check.name] = skipped.get(check.name, 0) + 1
            if check.ratio is not None and check.ratio > worst["ratio"]:
                worst = {"ratio": check.ratio, "check": check.name, "seed": seed, "where": check.where}
        left_out += _left_out(report)
    seconds = (time.perf_counter() - start) / max(n, 1)
    return {
        "draws": n,
        "failures": failures,
        "failed_checks": failed_checks,
        "failed_draws": failed_draws,
        "skipped_checks": skipped,
        "worst_ratio": worst["ratio"],
        "worst": worst,
        "fd_directions_left_out": left_out,
        "draws_with_raised_tolerance": raised,
        "largest_agreement_tolerance": largest,
        "cache_clears": clears,
        "seconds_per_draw": seconds,
    }


def broken_rules():
    """Every deliberately broken rule of the tests, and what the checker says about it."""
    rows = []
    for name, module, check, _ in BROKEN_MODULES:
        edges = (0.0,) if name == "wrong_only_at_zero" else ()
        report = fnn.testing.check_module(module, (5,), edge_values=edges)
        failed = {c.name: c.where for c in report.failed}
        rows.append({"rule": name, "expected_check": check, "failed_checks": failed, "caught": check in failed})
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [*ITEMS, *(c.name for c in NETWORKS)]
    parser.add_argument("--items", nargs="+", choices=names, default=names, help="rows of the table, networks")
    parser.add_argument("--draws", type=int, default=200, help="random draws per row for the false-alarm study")
    parser.add_argument("--no-broken", action="store_true", help="skip the broken rules")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.draws < 0:
        parser.error(f"--draws must be at least 0, got {args.draws}")
    return args


def main(argv=None):
    args = parse_args(argv)
    load_before, run_start = os.getloadavg(), time.perf_counter()
    cases = {c.name: c for c in (*CASES, *NETWORKS)}
    jax.jit(lambda a: a + 1)(1.0)  # start JAX once, outside every timed call
    rows = []
    for name in args.items:
        case = cases[name]
        built = case.build()
        report, wall, cpu, programs, compile_s = timed(case, built)
        row = {
            "item": name,
            "network": case in NETWORKS,
            "shape": list(case.input_shape),
            "seconds": wall,
            "cpu_seconds": cpu,
            "programs_compiled": programs,
            "compile_seconds": compile_s,
            "first_report_ok": report.ok,
            **draws(case, built, args.draws),
        }
        rows.append(row)
        print(
            f"{name:>22}: {wall:5.2f} s first call ({cpu:.2f} s CPU, {programs} programs compiled in "
            f"{compile_s:.2f} s), {row['seconds_per_draw']:.3f} s/draw; "
            f"{row['failures']}/{row['draws']} draws fail; worst ratio {row['worst_ratio']:.2f} "
            f"({row['worst']['check']})",
            flush=True,
        )
    broken = [] if args.no_broken else broken_rules()
    for row in broken:
        print(f"broken rule {row['rule']:>32}: caught by {', '.join(row['failed_checks']) or 'nothing'}")
    header = ["item", "first call s (CPU s)", "programs (compile s)", "s/draw", "draws failing",
              "worst error/tolerance (check)", "FD left out", "draws with raised tolerance (largest)"]  # fmt: skip
    print()
    print(
        markdown_table(
            header,
            [
                [
                    r["item"],
                    f"{r['seconds']:.2f} ({r['cpu_seconds']:.2f})",
                    f"{r['programs_compiled']} ({r['compile_seconds']:.2f})",
                    f"{r['seconds_per_draw']:.3f}",
                    f"{r['failures']} / {r['draws']}",
                    f"{r['worst_ratio']:.2f} ({r['worst']['check']})",
                    r["fd_directions_left_out"],
                    f"{r['draws_with_raised_tolerance']} ({r['largest_agreement_tolerance']:.1e})",
                ]
                for r in rows
            ],
        )
    )
    result = {
        "experiment": "check_modules",
        "device": device_description(),
        "jax_version": jax.__version__,
        "timing": "first call after jax.clear_caches(): every compilation included; JAX started beforehand",
        "draws": args.draws,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "run_seconds": time.perf_counter() - run_start,
        "rows": rows,
        "total_failures": sum(r["failures"] for r in rows),
        "worst_ratio": max((r["worst_ratio"] for r in rows), default=0.0),
        "max_seconds": max((r["seconds"] for r in rows), default=0.0),
        "broken_rules": broken,
        "all_broken_caught": all(r["caught"] for r in broken),
    }
    print(
        f"\n{result['total_failures']} failing draws in {len(rows)} rows x {args.draws}; worst ratio "
        f"{result['worst_ratio']:.2f}; slowest first call {result['max_seconds']:.2f} s; broken rules all caught: "
        f"{result['all_broken_caught']}; {result['run_seconds'] / 60:.1f} min"
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
