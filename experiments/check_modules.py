"""The public checker on every fnn module and loss: its time, compile included, and its false alarms over many draws.

For every row of fnn's conformance table (``CASES`` in ``tests/test_modules.py``:
every module and loss at its table shape), with float64 on as in the tests:

- **time**: ``check_module`` (``check_loss`` for a loss) at seed 0, right
  after ``jax.clear_caches()``, so every compilation is included (the
  process has started JAX once before, on another function); wall and
  process CPU seconds;
- **false alarms**: the same call for seeds 1 to ``--draws`` (other
  parameters, inputs, cotangents and directions each time; the compiled code
  is reused): how many draws fail any check, which checks, the worst
  ``error / tolerance`` over every draw and check, and the finite-difference
  directions left out (not smooth within the step);
- **broken rules**: every deliberately broken rule of
  ``tests/test_checker.py`` (``BROKEN_MODULES``), and the checks that fail on it.

    python -m experiments.check_modules --json experiments/results/check_modules.json
    python -m experiments.check_modules --items dense relu --draws 20
"""

import argparse
import os
import re
import time

import jax

import fnn
from experiments import _cli
from experiments._common import device_description, markdown_table, write_json

jax.config.update("jax_enable_x64", True)  # as the test suite runs the table

from tests.test_checker import BROKEN_MODULES  # noqa: E402 (after float64 is on, as in the tests)
from tests.test_modules import CASES  # noqa: E402

ITEMS = tuple(c.name for c in CASES)


def _left_out(report):
    """Finite-difference directions left out in a report (both orders)."""
    total = 0
    for name in ("finite_differences", "finite_differences_2"):
        found = re.search(r"(\d+) left out", report[name].detail) if name in report.names else None
        total += int(found.group(1)) if found else 0
    return total


def timed(case, built):
    """The first check of a row, every compilation included: ``(report, wall s, CPU s)``."""
    jax.clear_caches()
    wall, cpu = time.perf_counter(), time.process_time()
    report = case.check(built, seed=0)
    return report, time.perf_counter() - wall, time.process_time() - cpu


def draws(case, built, n):
    """Seeds 1..n of a row on one module object (its compiled code reused): failures per check, the worst ratio and
    where, left-out directions, seconds per draw."""
    failures, failed_checks, skipped = 0, {}, {}
    worst = {"ratio": 0.0, "check": None, "seed": None, "where": None}
    left_out, start = 0, time.perf_counter()
    for seed in range(1, n + 1):
        report = case.check(built, seed=seed)
        failures += not report.ok
        for check in report.checks:
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
        "skipped_checks": skipped,
        "worst_ratio": worst["ratio"],
        "worst": worst,
        "fd_directions_left_out": left_out,
        "seconds_per_draw": seconds,
    }


def broken_rules():
    """Every deliberately broken rule of the tests, and what the checker says about it."""
    rows = []
    for name, module, check, _ in BROKEN_MODULES:
        edges = (0.0,) if name == "wrong_only_at_zero" else ()
        report = fnn.testing.check_module(module, (4, 5), edge_values=edges)
        failed = {c.name: c.where for c in report.failed}
        rows.append({"rule": name, "expected_check": check, "failed_checks": failed, "caught": check in failed})
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS), help="rows of the table")
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
    load_before = os.getloadavg()
    cases = {c.name: c for c in CASES}
    jax.jit(lambda a: a + 1)(1.0)  # start JAX once, outside every timed call
    rows = []
    for name in args.items:
        case = cases[name]
        built = case.build()
        report, wall, cpu = timed(case, built)
        row = {
            "item": name,
            "shape": list(case.input_shape),
            "seconds": wall,
            "cpu_seconds": cpu,
            "first_report_ok": report.ok,
            **draws(case, built, args.draws),
        }
        rows.append(row)
        print(
            f"{name:>22}: {wall:5.2f} s first call ({cpu:.2f} s CPU), {row['seconds_per_draw']:.3f} s/draw; "
            f"{row['failures']}/{row['draws']} draws fail; worst ratio {row['worst_ratio']:.2f} "
            f"({row['worst']['check']})",
            flush=True,
        )
    broken = [] if args.no_broken else broken_rules()
    for row in broken:
        print(f"broken rule {row['rule']:>32}: caught by {', '.join(row['failed_checks']) or 'nothing'}")
    header = ["item", "first call s (CPU s)", "s/draw", "draws failing", "worst error/tolerance (check)", "FD left out"]
    print()
    print(
        markdown_table(
            header,
            [
                [
                    r["item"],
                    f"{r['seconds']:.2f} ({r['cpu_seconds']:.2f})",
                    f"{r['seconds_per_draw']:.3f}",
                    f"{r['failures']} / {r['draws']}",
                    f"{r['worst_ratio']:.2f} ({r['worst']['check']})",
                    r["fd_directions_left_out"],
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
        "rows": rows,
        "total_failures": sum(r["failures"] for r in rows),
        "max_seconds": max((r["seconds"] for r in rows), default=0.0),
        "broken_rules": broken,
        "all_broken_caught": all(r["caught"] for r in broken),
    }
    print(
        f"\n{result['total_failures']} failing draws in {len(rows)} rows x {args.draws}; slowest first call "
        f"{result['max_seconds']:.2f} s; broken rules all caught: {result['all_broken_caught']}"
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
