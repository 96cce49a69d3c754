"""Smoke test of experiments.check_modules: two rows, two draws, its JSON fields; the wiring, not the figures."""

import json

import pytest

from experiments import check_modules


@pytest.mark.slow
def test_check_modules_times_rows_counts_failures_and_tries_the_broken_rules(tmp_path):
    json_path = tmp_path / "check_modules.json"
    result = check_modules.main(["--items", "relu", "mse", "--draws", "2", "--json", str(json_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert result["device"] and result["jax_version"] and result["draws"] == 2
    assert [r["item"] for r in result["rows"]] == ["relu", "mse"]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["cpu_seconds"] > 0 and row["seconds_per_draw"] > 0
        assert row["draws"] == 2 and row["failures"] == 0 and row["first_report_ok"]
        assert 0 < row["worst_ratio"] <= 1 and row["worst"]["check"] and row["worst"]["seed"] in (1, 2)
    assert result["total_failures"] == 0 and result["all_broken_caught"]
    assert {r["rule"] for r in result["broken_rules"]} >= {"wrong_sign", "missing_term", "wrong_only_at_zero"}


def test_check_modules_items_are_the_conformance_table():
    from test_modules import CASES

    assert check_modules.ITEMS == tuple(c.name for c in CASES)
    with pytest.raises(SystemExit):
        check_modules.parse_args(["--draws", "-1"])
