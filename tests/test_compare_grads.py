"""experiments.compare_grads: the three-path comparison on tiny configurations, its outputs and its CLI."""

import json

import pytest

import fnn
from experiments import compare_grads
from experiments.compare_grads import Config

REQUIRED = {
    "path",
    "width",
    "batch",
    "depth",
    "dtype",
    "step_s_median",
    "ratio_to_autodiff",
    "temp_bytes",
    "max_rel_err",
    "device",
    "step_s_q1",
    "step_s_q3",
    "compile_s",
    "arg_bytes",
    "out_bytes",
    "per_leaf",
    "residuals",
    "hlo",
    "hlo_diff_vs_autodiff",
    "ci_low",
    "ci_high",
    "cpu_ratio",
    "verdict",
}
TINY = ["16x8x1", "16x8x2", "16x8x1:float64"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One end-to-end run of the script on tiny configurations: (JSON payload, JSON path, PNG path)."""
    out = tmp_path_factory.mktemp("compare_grads")
    json_path, png_path = out / "results.json", out / "plot.png"
    payload = compare_grads.main(
        ["--configs", *TINY, "--rounds", "6", "--block-s", "0.002", "--json", str(json_path), "--plot", str(png_path)]
    )
    return payload, json_path, png_path


def test_rows_have_the_schema_and_three_paths_per_config(result):
    rows = result[0]["rows"]
    assert len(rows) == 3 * len(TINY)
    for row in rows:
        assert REQUIRED <= set(row), REQUIRED - set(row)
    for label in (compare_grads.parse_config(t).label for t in TINY):
        paths = [r["path"] for r in rows if r["config"] == label]
        assert paths == list(fnn.PATHS) == list(compare_grads.PATHS)
    for row in rows:
        assert row["step_s_q1"] <= row["step_s_median"] <= row["step_s_q3"]
        assert row["ci_low"] <= row["ratio_to_autodiff"] <= row["ci_high"]
        assert row["cpu_ratio"] > 0 and row["verdict"] in ("faster", "slower", "tie")
        assert row["margin"] == compare_grads.MARGIN
        assert row["verdict"] == fnn.bench.verdict(row["ci_low"], row["ci_high"], compare_grads.MARGIN)
        assert row["verdict_strict"] == fnn.bench.verdict(row["ci_low"], row["ci_high"])
        if row["path"] == "autodiff":
            assert row["ratio_to_autodiff"] == row["ci_low"] == row["ci_high"] == 1.0
            assert row["verdict"] == "tie"


def test_every_path_matches_the_float64_reference(result):
    for row in result[0]["rows"]:
        bound = 1e-5 if row["dtype"] == "float32" else 1e-12
        assert row["max_rel_err"] < bound, (row["config"], row["path"], row["per_leaf"])
        assert len(row["per_leaf"]) == row["depth"] + 1


def test_hlo_counts_are_positive_ints_and_count_every_matmul(result):
    for row in result[0]["rows"]:
        hlo = row["hlo"]
        for key in ("dots", "kernels", "fusions_custom", "fusions_loop"):
            assert isinstance(hlo[key], int) and hlo[key] > 0, (key, hlo)
        layers = row["depth"] + 1
        assert hlo["dots"] == 3 * layers - 1  # forward and dW per layer, dX for all but the first
        assert all(isinstance(v, int) for v in hlo["ops_top"].values())


def test_custom_and_backprop_residuals_are_the_relu_outputs_and_softmax(result):
    """Both paths run the modules' backward functions, which keep one ReLU output per layer and the softmax."""
    for row in result[0]["rows"]:
        if row["path"] in ("custom", "backprop"):
            itemsize = 8 if row["dtype"] == "float64" else 4
            expected = itemsize * row["batch"] * (row["width"] * row["depth"] + compare_grads.N_OUT)
            assert row["residuals"]["computed_bytes"] == expected, row["residuals"]["saved"]


def test_json_and_png_are_written(result):
    payload, json_path, png_path = result
    written = json.loads(json_path.read_text())
    assert {"jax_version", "device", "grid", "date", "rows"} <= set(written)
    assert written["grid"]["configs"] == [compare_grads.parse_config(t).label for t in TINY]
    assert (written["grid"]["rounds"], written["grid"]["block_s"], written["grid"]["margin"]) == (6, 0.002, 0.02)
    assert len(written["rows"]) == len(payload["rows"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_config():
    assert compare_grads.parse_config("64x8x2") == Config(64, 8, 2, "float32")
    assert compare_grads.parse_config("500x100x1:bfloat16").label == "500x100x1:bfloat16"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--configs", "500x100x1:float16"], "unknown dtype 'float16'"),
        (["--configs", "500x100"], "must be WIDTHxBATCHxDEPTH"),
        (["--configs", "500x0x1"], "positive integers"),
        (["--rounds", "0"], "--rounds must be positive"),
        (["--rounds", "5"], "--rounds must be at least 6"),
        (["--margin", "-0.1"], "--margin must be in [0, 1), e.g. 0.02 for 2%, got -0.1"),
        (["--margin", "1"], "--margin must be in [0, 1)"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare_grads.parse_args(argv)
    assert message in capsys.readouterr().err


def test_quick_and_selected_runs_never_overwrite_the_full_results():
    names = {grid: compare_grads.default_json(grid).name for grid in ("full", "quick", "selected")}
    assert names["full"] == "compare_grads.json"
    assert len(set(names.values())) == 3
