"""Smoke tests of the experiment scripts: each main() on tiny synthetic data, its JSON fields and its PNG.

The configurations are tiny (a few hundred synthetic MNIST-shaped rows, narrow
layers, one or two epochs, a few timing rounds), so each test takes seconds;
they check the scripts' wiring and outputs, not the figures the full runs
report.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

import fnn
from experiments import (
    _common,
    _images,
    _items,
    activations,
    compile_time,
    conv_in_loop,
    fsdp,
    mixed_precision,
    mnist_conv,
    mnist_conv_bn,
    mnist_mlp_best,
    mnist_pooled,
    module_costs,
    peer_pooled,
    resnet_mnist,
    seq_mnist,
)

SYNTHETIC = ["--synthetic", "--train-size", "256", "--test-size", "64", "--no-progress"]


def outputs(tmp_path, name):
    json_path, png_path = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    return ["--json", str(json_path), "--plot", str(png_path)], json_path, png_path


def check_written(result, json_path, png_path):
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["device"] and result["jax_version"]


def check_history(rows, epochs):
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for row in rows:
        assert {"train_loss", "test_loss", "train_err", "test_err", "epoch_s"} <= set(row)
        assert 0.0 <= row["test_err"] <= 1.0 and row["train_loss"] > 0


def test_synthetic_data_is_float32_in_the_unit_interval_and_image_shaped_on_request():
    args = mnist_mlp_best.parse_args(SYNTHETIC + ["--validation"])
    flat, image = _common.load_data(args), _common.load_data(args, image=True)
    assert flat.x_train.dtype == jnp.float32 and 0.0 <= flat.x_train.min() and flat.x_train.max() <= 1.0
    assert flat.x_train.shape[1:] == (784,) and image.x_train.shape[1:] == (28, 28, 1)
    assert len(flat.x_train) + len(flat.x_test) == 256  # --validation holds out part of the 256 training rows


@pytest.mark.slow
def test_mnist_mlp_best_reports_the_target_and_timing(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "mlp")
    result = mnist_mlp_best.main(SYNTHETIC + ["--epochs", "2", "--hidden", "32", "32", "--batch-size", "100"] + out)
    check_written(result, json_path, png_path)
    for key in ("test_error", "train_s", "compile_s", "cpu_s", "path", "device", "config", "history", "target_met"):
        assert key in result, key
    assert result["path"] == "custom" and result["target_test_error"] == 0.015
    assert result["config"]["steps_per_epoch"] == 3  # 256 rows in batches of 100: the last one smaller
    assert result["config"]["optimizer"]["name"] == "adamw" and result["config"]["optimizer"]["weight_decay"] == 0.05
    assert result["test_error"] == result["history"][-1]["test_err"]
    check_history(result["history"], 2)


def test_mnist_mlp_best_refuses_more_than_20_epochs():
    with pytest.raises(SystemExit):
        mnist_mlp_best.main(SYNTHETIC + ["--epochs", "21"])


@pytest.mark.slow
def test_mnist_conv_counts_its_work_and_trains_with_fit_and_the_shift(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "conv")
    argv = SYNTHETIC + ["--epochs", "1", "--convs", "3:4:2", "3:8:2", "--dense", "16", "--batch-size", "100"]
    result = mnist_conv.main(argv + out)
    check_written(result, json_path, png_path)
    for key in ("test_error", "train_s", "path", "device", "config", "history", "estimate", "layers", "budget_met"):
        assert key in result, key
    # 28x28x1 -> 14x14x4 -> 7x7x8 -> 16 -> 10
    assert [r["output"] for r in result["layers"]] == [[14, 14, 4], [7, 7, 8], [16], [10]]
    assert result["layers"][0]["macs"] == 14 * 14 * 9 * 1 * 4
    assert result["config"]["n_params"] == sum(r["params"] for r in result["layers"])
    assert result["estimate"]["xla_step_flop"] > 0
    assert result["loop"] == "fnn.fit" and "2 pixels" in result["config"]["augmentation"]
    assert result["config"]["steps_per_epoch"] == 3  # 256 rows in batches of 100: the last one smaller
    check_history(result["history"], 1)


@pytest.mark.slow
def test_mnist_conv_bn_trains_every_variant_of_the_ablation(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "conv_bn")
    argv = SYNTHETIC + ["--epochs", "1", "--convs", "3:4:2", "--dense", "8", "--batch-size", "100"]
    result = mnist_conv_bn.main(argv + ["--variants", "full", "none"] + out)
    check_written(result, json_path, png_path)
    for key in ("test_error", "train_s", "path", "device", "config", "history", "ablation", "target_met"):
        assert key in result, key
    full, none = result["ablation"]
    assert result["variant"] == "full" and result["test_error"] == full["test_error"] == full["history"][-1]["test_err"]
    assert full["model"].count("batch_norm") == 2 and "dropout" in full["model"]
    assert "batch_norm" not in none["model"] and "dropout" not in none["model"]
    check_history(result["history"], 1)
    with pytest.raises(SystemExit):
        mnist_conv_bn.parse_args(["--rate", "1.5"])


def test_mixed_precision_trains_the_recipe_both_ways_from_the_same_weights(tmp_path):
    json_path = tmp_path / "mixed.json"
    result = mixed_precision.main(SYNTHETIC + ["--epochs", "1", "--seeds", "2", "--json", str(json_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert [(r["dtype"], r["seed"]) for r in result["runs"]] == [
        (d, s) for s in (0, 1) for d in ("float32", "bfloat16")
    ]
    assert result["gap"] == result["mean_test_error"]["bfloat16"] - result["mean_test_error"]["float32"]
    assert result["gaps"] == {"bfloat16": result["gap"]} and result["model"] == "recipe"
    assert result["config"]["shuffle"] is False and result["aim_met"] == (result["gap"] <= 0.002)
    for bad in (["--dtypes", "bfloat16"], ["--dtypes", "float32", "float16", "float16"]):
        with pytest.raises(ValueError, match="--dtypes must start with float32"):
            mixed_precision.parse_args(bad)


@pytest.mark.slow  # the pooled CNN in float32 and in float16 with dynamic loss scaling
def test_mixed_precision_trains_the_pooled_cnn_in_float16_with_the_tutorials_settings(tmp_path):
    json_path = tmp_path / "mixed.json"
    argv = SYNTHETIC + ["--model", "pooled", "--dtypes", "float32", "float16", "--seeds", "1", "--json", str(json_path)]
    result = mixed_precision.main(argv)
    assert result["model"] == "pooled" and [r["dtype"] for r in result["runs"]] == ["float32", "float16"]
    assert result["config"]["batch_size"] == 32 and result["config"]["optimizer"]["name"] == "adamw"
    assert "gap" not in result and set(result["gaps"]) == {"float16"}
    assert all(np.isfinite(r["test_error"]) for r in result["runs"])


def test_fsdp_times_both_layouts_side_by_side_and_records_each_devices_share(tmp_path):
    json_path = tmp_path / "fsdp.json"
    argv = ["--devices", "1", "--sizes", "16", "32", "4", "--batch-size", "8", "--rounds", "6", "--block-s", "0.01"]
    result = fsdp.main([*argv, "--json", str(json_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert set(result["step_s"]) == {"replicated", "fsdp"} and result["time_ratio_ci95"][0] <= result["time_ratio"]
    assert result["state_share_per_device"] == {"replicated": 1.0, "fsdp": 1.0}  # one device holds it all
    assert result["aim_share"] == 1.05 and result["aim_share_met"]
    assert result["aim_ratio_met"] == (result["time_ratio_ci95"][1] <= 1.5)


@pytest.mark.slow  # fresh processes, each compiling the recipe cold or warm
def test_compile_time_times_each_program_of_fit_phase_by_phase_cold_and_warm(tmp_path):
    json_path = tmp_path / "compile_time.json"
    argv = ["--models", "recipe", "--repeats", "1", "--variants", "cold", "warm", "--synthetic"]
    result = compile_time.main([*argv, "--train-size", "256", "--test-size", "64", "--json", str(json_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result)) and result["complete"]
    assert result["device"] and result["jax_version"] == jax.__version__ and result["host_cpu"]
    model = result["models"]["recipe"]
    cold, warm = model["runs"]  # each in a process of its own, the warm one reading the cold one's cache
    assert (cold["variant"], warm["variant"]) == ("cold", "warm") and model["steps_per_epoch"] == 3
    assert set(cold["programs"]) == set(cold["fit_compile_seconds"]) == {"end", "steps[2]"}  # 256 rows, batches of 100
    for name, program in cold["programs"].items():
        assert program["cache"] == "miss" and warm["programs"][name]["cache"] == "hit"
        assert all(program[phase] > 0 for phase in ("trace_s", "lower_s", "backend_s"))
        assert program["trace_s"] + program["lower_s"] + program["backend_s"] <= program["fit_s"] * 1.05
        assert warm["programs"][name]["backend_s"] < program["backend_s"]  # a cache hit is no compile
    assert cold["cache"]["misses"] > 0 and warm["cache"] == {"hits": cold["cache"]["misses"], "misses": 0}
    assert cold["others"]["before_fit"]["programs"] > 0  # the parameters' initialisation compiles too
    timeline = cold["timeline"]
    assert (
        0 < timeline["fit_compile_s"] < timeline["fit_s"] < timeline["process_s"] and 0 < timeline["compile_share"] < 1
    )
    summary = model["summary"]
    assert summary["cold"]["programs"]["end"]["backend_s"]["median"] == cold["programs"]["end"]["backend_s"]
    assert summary["warm_over_cold"]["programs"]["end"]["backend_s"]["median"] < 1


def test_compile_time_reads_xlas_passes_and_code_generation_from_a_profile(tmp_path):
    def f(x, w):
        return jnp.sum(jnp.tanh(x @ w) @ w)

    x, w = jnp.ones((8, 16)), jnp.ones((16, 16))
    lowered = jax.jit(jax.grad(f, argnums=1)).lower(x, w)
    jax.profiler.start_trace(str(tmp_path), profiler_options=compile_time.profiler_options())
    try:
        lowered.compile()
    finally:
        jax.profiler.stop_trace()
    phases = compile_time.xla_phases(str(tmp_path), {"f": 0.0})
    assert "error" not in phases, phases
    f_phases = phases["programs"]["f"]  # XLA's module jit_f, named as fit's programs are
    assert f_phases["xla_s"] > 0 and f_phases["hlo_passes_s"] > 0 and f_phases["codegen_s"] >= 0
    assert abs(f_phases["hlo_passes_s"] + f_phases["codegen_s"] - f_phases["xla_s"]) < 1e-9
    assert f_phases["slowest_passes"] and all(s >= 0 for s in f_phases["slowest_passes"].values())
    assert phases["all_compiles"]["count"] >= 1
    assert compile_time.xla_phases(str(tmp_path / "nothing"), {"f": 0.0})["error"].startswith("FileNotFoundError")


def test_compile_time_intervals_are_order_statistics_and_bad_flags_are_refused():
    five = compile_time.median_interval([5, 1, 4, 2, 3])
    assert five == {"median": 3.0, "interval": [1.0, 5.0], "confidence": 1 - 2 / 32, "n": 5}
    ten = compile_time.median_interval(range(10))
    assert ten["interval"] == [1.0, 8.0] and ten["confidence"] >= 0.95  # x(2) and x(9)
    assert compile_time.median_interval([2.0])["confidence"] == 0 and compile_time.median_interval([]) is None
    args = compile_time.parse_args([])
    gpu, cpu = {"recipe": [{"platform": "gpu"}]}, {"recipe": [{"platform": "cpu"}]}
    order = ["cold", "warm", "profiled", "no_autotune"]  # without autotuning only once a run has found a GPU
    assert [compile_time.next_variant(args, gpu, order[:i]) for i in range(5)] == [*order, None]
    assert compile_time.next_variant(args, cpu, order[:3]) is None
    assert compile_time.next_variant(args, {"recipe": []}, order[:3]) is None
    chosen = compile_time.parse_args(["--variants", "warm", "cold"])
    assert (
        compile_time.next_variant(chosen, gpu, []) == "cold"
        and compile_time.next_variant(chosen, gpu, order[:2]) is None
    )
    bad = (["--repeats", "0"], ["--variants", "warm"], ["--variants", "cold", "cold"], ["--train-size", "0"])
    for argv in bad:
        with pytest.raises(ValueError):
            compile_time.parse_args(argv)


def test_image_scripts_shift_is_fnn_random_shift_and_zero_turns_it_off():
    augment = _images.shift_augment(1)
    assert augment == fnn.data.random_shift(1) and augment.__name__ == "random_shift_1px"
    assert _images.shift_augment(0) is None  # fit then draws and records no augmentation
    with pytest.raises(SystemExit):
        mnist_conv.parse_args(["--shift", "-1"])


def test_scripts_import_no_other_script():
    """A runnable script imports only the private helpers ``experiments/_*.py``, never another script."""
    for path in sorted(Path(_common.__file__).parent.glob("[!_]*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "experiments":
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
                names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("experiments.")]
            else:
                continue
            assert all(name.startswith("_") for name in names), (path.name, names)


@pytest.mark.slow
def test_activations_records_one_norm_per_layer_per_checkpoint(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "activations")
    argv = SYNTHETIC + ["--epochs", "1", "--depth", "3", "--width", "16", "--probe-size", "64"]
    argv += ["--activations", "sigmoid", "relu"]
    result = activations.main(argv + out)
    check_written(result, json_path, png_path)
    assert [r["activation"] for r in result["runs"]] == ["sigmoid", "relu"]
    assert [r["init"] for r in result["runs"]] == ["glorot_normal", "he"]
    for run in result["runs"]:
        assert [c["epoch"] for c in run["checkpoints"]] == [0, 1]
        for checkpoint in run["checkpoints"]:
            assert len(checkpoint["grad_norms"]) == 4 and all(n > 0 for n in checkpoint["grad_norms"])
        check_history(run["history"], 1)


@pytest.mark.slow
def test_resnet_mnist_runs_both_variants_on_the_same_budget(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "resnet")
    argv = SYNTHETIC + ["--epochs", "1", "--width", "16", "--hidden", "16", "--blocks", "1"]
    result = resnet_mnist.main(argv + out)
    check_written(result, json_path, png_path)
    assert [r["normalize"] for r in result["runs"]] == [False, True]
    plain, normed = result["runs"]
    assert normed["n_params"] - plain["n_params"] == 2 * (16 + 16)  # gamma and beta of two LayerNorms
    for run in result["runs"]:
        assert {"test_error", "train_s", "epoch_s", "history"} <= set(run)
        check_history(run["history"], 1)
    assert result["path"] == "custom"


def test_module_costs_measures_both_paths_and_a_control(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "module_costs")
    result = module_costs.main(["--items", "gelu", "cross_entropy", "--rounds", "6", "--block-s", "0.002"] + out)
    check_written(result, json_path, png_path)
    assert [r["item"] for r in result["rows"]] == ["gelu", "cross_entropy"]
    for row in result["rows"]:
        assert row["max_rel_diff"] < 1e-5
        for path in ("custom", "autodiff"):
            facts = row[path]
            assert facts["flops"] > 0 and facts["kernels"] > 0 and facts["arg_bytes"] > 0 and facts["temp_bytes"] >= 0
        r = row["time_ratio_wall"]
        assert r["ci95"][0] <= r["median"] <= r["ci95"][1] and row["verdict"] in ("faster", "slower", "tie")
        assert row["time_ratio_cpu"]["median"] > 0
        assert len(row["bench"]["custom"]["wall_s"]) == len(row["bench"]["autodiff"]["wall_s"]) == 6
        assert row["custom"]["residuals"]["computed_bytes"] >= 0 and row["custom"]["residuals"]["saved"]
    assert result["control"]["item"].endswith("autodiff / autodiff")
    assert set(result["flagged"]) == {
        "custom_temp_exceeds_autodiff",
        "custom_slower",
        "custom_slower_beyond_margin",
        "custom_faster",
    }


@pytest.mark.slow
def test_forward_costs_compares_the_custom_jvp_with_autodiffs(tmp_path):
    json_path, md_path = tmp_path / "forward_costs.json", tmp_path / "forward_costs.md"
    argv = ["--items", "tanh", "cross_entropy", "--rounds", "6", "--block-s", "0.002"]
    from experiments import forward_costs

    result = forward_costs.main(argv + ["--json", str(json_path), "--markdown", str(md_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert result["machine"]["device"] and "1.2x" in result["target"]["statement"]
    assert [r["item"] for r in result["rows"]] == ["tanh", "cross_entropy"]
    for row in result["rows"]:
        assert row["rel_error_float64"] < 1e-10 and row["rel_error_float32"] < 1e-5
        r = row["time_ratio"]
        assert r["ci95"][0] <= r["median"] <= r["ci95"][1]
        assert row["verdict"] in ("faster", "slower", "tie") and row["verdict_margin"] in ("faster", "slower", "tie")
        assert row["median_s_custom"] > 0 and row["median_s_autodiff"] > 0
        assert row["temp_bytes_custom"] >= 0 and row["temp_bytes_autodiff"] >= 0
        assert row["within_1_2x"] == (r["median"] <= 1.2)
        assert len(row["bench"]["custom"]["wall_s"]) == 6
    assert result["target"]["missed"] == [r["item"] for r in result["rows"] if not r["within_1_2x"]]
    assert "| tanh |" in md_path.read_text()


@pytest.mark.slow
def test_remat_measures_every_arrangement_on_every_path(tmp_path):
    from experiments import remat

    json_path = tmp_path / "remat.json"
    argv = ["--blocks", "3", "--batch", "16", "--rounds", "6", "--block-s", "0.002", "--json", str(json_path)]
    rows = remat.main(argv)
    assert json.loads(json_path.read_text())["rows"] == json.loads(json.dumps(rows))
    assert [r["path"] for r in rows] == list(fnn.PATHS)
    for row in rows:
        assert set(row["temp_bytes"]) == set(remat.ARRANGEMENTS)
        assert max(row["max_rel_grad_diff_vs_unrolled_autodiff"].values()) < 1e-5
        assert row["memory_ratio_repeat_remat"] == row["temp_bytes"]["repeat_remat"] / row["temp_bytes"]["repeat"]


@pytest.mark.slow
def test_attention_cost_measures_every_path_at_every_length(tmp_path):
    from experiments import attention_cost

    out, json_path, png_path = outputs(tmp_path, "attention_cost")
    argv = ["--seq-lens", "16", "40", "--batch", "1", "--heads", "2", "--head-dim", "4", "--rounds", "6"]
    result = attention_cost.main(argv + ["--block-s", "0.002", "--causal"] + out)
    check_written(result, json_path, png_path)
    assert [(r["seq_len"], r["path"]) for r in result["rows"]] == [
        (n, p) for n in (16, 40) for p in ("custom", "autodiff", "autodiff_tiled", "jax_nn")
    ]
    for row in result["rows"]:
        assert {"seq_len", "path", "temp_bytes", "step_s"} <= set(row) and row["step_s"] > 0
        assert row["max_rel_err_vs_float64"] < 1e-5  # float32 against float64
        r = row["time_ratio"]
        assert r["ci95"][0] <= r["median"] <= r["ci95"][1] and row["verdict"] in ("faster", "slower", "tie")
    assert result["config"]["causal"] and set(result["target"]["per_seq_len"]) == {16, 40}
    assert result["target"]["met"] == all(v["met"] for v in result["target"]["per_seq_len"].values())
    layer = attention_cost.main(argv + ["--block-s", "0.002", "--layer", "self_attention"])
    assert [(r["layer"], r["path"]) for r in layer["rows"]] == [
        ("self_attention", p) for p in ("custom", "autodiff")
    ] * 2
    assert all(r["max_rel_err_vs_float64"] < 1e-5 for r in layer["rows"])


def test_attention_cost_refuses_bad_flags():
    from experiments import attention_cost

    for argv in (["--seq-lens", "0"], ["--rounds", "2"], ["--margin", "1.5"]):
        with pytest.raises(SystemExit):
            attention_cost.parse_args(argv)


def test_module_costs_needs_the_rounds_of_fnn_bench():
    with pytest.raises(SystemExit):
        module_costs.parse_args(["--rounds", "3"])


def test_module_costs_items_cover_every_leaf_module_and_loss():
    """The items both cost studies measure (``module_costs``' and ``forward_costs``' ``--items``)."""
    assert set(_items.ITEMS) >= {
        "dense",
        "relu",
        "sigmoid",
        "tanh",
        "leaky_relu",
        "gelu",
        "softplus",
        "layer_norm",
        "conv2d",
        "cross_entropy",
        "mse",
        "logistic",
        "multiclass_hinge",
        "conv1d",
        "avg_pool",
        "max_pool",
        "group_norm",
        "softmax",
        "embedding",
        "positional_embedding",
        "attention",
        "self_attention",
        "batch_norm",
        "batch_norm_eval",
        "dropout",
    }


@pytest.mark.slow
def test_step_overlap_times_every_variant_pinned_and_free(tmp_path):
    from experiments import step_overlap

    result = step_overlap.main(["--rounds", "6", "--block-s", "0.002", "--json", str(tmp_path / "overlap.json")])
    assert list(result["runs"]) == ["one core", "every core"]
    for run in result["runs"].values():
        assert list(run) == [*fnn.PATHS, step_overlap.ONEHOT]
        assert run["autodiff"]["ratio"] == 1.0
        assert all(r["ci_low"] <= r["ratio"] <= r["ci_high"] and r["cpu_ratio"] > 0 for r in run.values())
    assert json.loads((tmp_path / "overlap.json").read_text())["runs"] == result["runs"]


def test_step_overlap_onehot_rule_gives_the_same_gradient():
    """The one-hot variant differs from fnn's cross-entropy only in how it builds its backward, not in value."""
    from experiments import step_overlap

    logits = jax.random.normal(jax.random.key(0), (7, 5), jnp.float64)
    labels = jnp.array([0, 4, 2, 2, 1, 3, 0])
    ours = jax.grad(fnn.losses.cross_entropy.by_rules.apply)(logits, labels)
    onehot = jax.grad(step_overlap.CROSS_ENTROPY_ONEHOT.by_rules.apply)(logits, labels)
    assert jnp.allclose(ours, onehot, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_conv_in_loop_times_every_path_both_ways_and_the_plain_jax_reproduction(tmp_path):
    args = [
        "--synthetic",
        "--train-size",
        "64",
        "--test-size",
        "32",
        "--batch-size",
        "32",
        "--nets",
        "pooled",  # the strided net goes through the same code; one net keeps the test short
        # The repro part's wiring (three variants, a row each) holds at any size: a batch of 2, timed once, keeps
        # the slow loop-body convolution it times from taking most of the test.
        "--repro-batch",
        "2",
        "--repro-repeats",
        "1",
        "--json",
        tmp_path / "c.json",
    ]
    result = conv_in_loop.main([str(a) for a in args])
    assert [r["how"] for r in result["repro"]] == ["jit, no loop", "lax.scan of 1", "lax.scan of 8"]
    assert [(r["net"], r["path"], r["compiled"]) for r in result["fit"]] == [
        ("pooled", p, c) for p in fnn.PATHS for c in ("step", "epoch", "auto")
    ]
    assert all(r["steps"] == 2 and r["train_s"] > 0 for r in result["fit"])
    assert [r["vs_custom_auto"] for r in result["fit"] if r["path"] == "custom"][2] == 1.0
    assert json.loads((tmp_path / "c.json").read_text())["fit"][0]["path"] == "autodiff"
    assert set(conv_in_loop.NETS) == {"strided", "pooled"} and conv_in_loop.parse_args([]).nets == ["strided", "pooled"]
    assert (conv_in_loop.parse_args([]).repro_batch, conv_in_loop.parse_args([]).repro_repeats) == (32, 5)


@pytest.mark.slow
def test_mnist_pooled_is_the_flax_tutorials_cnn_and_trains_with_fit(tmp_path):
    out, json_path, png_path = outputs(tmp_path, "pooled")
    result = mnist_pooled.main(SYNTHETIC + ["--epochs", "1", "--batch-size", "100"] + out)
    check_written(result, json_path, png_path)
    for key in ("test_error", "train_s", "compile_s", "path", "device", "config", "history"):
        assert key in result, key
    # conv 3x3x1x32 + conv 3x3x32x64 + dense 3136x256 + dense 256x10, with biases: the tutorial's 824,458
    assert result["config"]["n_params"] == 824_458
    shapes = [s for s, _ in _layer_shapes(_images.pooled_cnn(), _images.INPUT_SHAPE)]
    assert shapes[:7] == [(28, 28, 32), (28, 28, 32), (14, 14, 32), (14, 14, 64), (14, 14, 64), (7, 7, 64), (3136,)]
    assert result["loop"] == "fnn.fit" and "2 pixels" in result["config"]["augmentation"]
    check_history(result["history"], 1)


def _layer_shapes(model, input_shape):
    """The output shape of each of a serial model's layers."""
    shapes = []
    for layer in model.children:
        input_shape, params = layer.init(jax.random.key(0), input_shape)
        shapes.append((input_shape, params))
    return shapes


@pytest.mark.slow
@pytest.mark.parametrize("model", ["conv1d", "attention"])
def test_seq_mnist_reads_images_as_rows_and_reports_the_target(tmp_path, model):
    out, json_path, png_path = outputs(tmp_path, model)
    argv = SYNTHETIC + ["--model", model, "--epochs", "1", "--width", "8", "--depth", "1", "--heads", "2"]
    result = seq_mnist.main(argv + ["--batch-size", "100"] + out)
    check_written(result, json_path, png_path)
    for key in ("test_error", "train_s", "path", "device", "config", "history", "target_met", "budget_met"):
        assert key in result, key
    assert result["model"] == model and result["target_test_error"] == 0.02 and result["budget_s"] == 600
    assert result["config"]["steps_per_epoch"] == 3
    check_history(result["history"], 1)


@pytest.mark.slow  # about 15 s: compiles both sequence models
def test_seq_mnist_models_take_rows_and_refuse_bad_sizes():
    x = jnp.zeros((3, 28, 28), jnp.float32)
    for model in (seq_mnist.conv1d_model(8, 2), seq_mnist.attention_model(8, 1, 2)):
        shape, params = model.init(jax.random.key(0), (28, 28))
        assert shape == (10,) and model.apply(params, x).shape == (3, 10)
    with pytest.raises(ValueError, match="multiple of --heads"):
        seq_mnist.attention_model(10, 1, 4)
    for bad in (["--model", "conv1d", "--depth", "4"], ["--width", "0"], ["--shift", "-1"]):
        with pytest.raises(SystemExit):
            seq_mnist.parse_args(bad)


def test_seq_mnist_shift_moves_whole_images_not_single_rows():
    x = jnp.zeros((8, 28, 28), jnp.float32).at[:, 10:14, 12:16].set(1.0)
    augment = seq_mnist.shift_rows(2)
    shifted = augment(jax.random.key(0), x)
    assert shifted.shape == x.shape and jnp.array_equal(shifted.sum(axis=(1, 2)), x.sum(axis=(1, 2)))
    assert jnp.array_equal(shifted, fnn.data.random_shift(2)(jax.random.key(0), x[..., None])[..., 0])
    assert augment.__name__ == "random_shift_2px" and seq_mnist.shift_rows(0) is None


def test_peer_pooled_libraries_train_the_same_network_from_the_same_start():
    pytest.importorskip("flax")
    torch = pytest.importorskip("torch")
    args = peer_pooled.parse_args(SYNTHETIC + ["--train-size", "64", "--test-size", "32"])
    data = peer_pooled.shuffled(_common.load_data(args, image=True), 0)
    params = _images.pooled_cnn().init(jax.random.key(0), _images.INPUT_SHAPE)[1]
    # Full float32 products in all three (a GPU's default is TF32 in JAX and in cuDNN's convolutions).
    matmul, convolutions = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            rows = {name: side[0](params, data) for name, side in peer_pooled.sides(args).items()}
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = convolutions
    # Same start, batches and AdamW: after 2 steps the losses agree to float32 rounding (torch's convolutions
    # round differently from XLA's; a wrong weight layout or flatten order gives differences of order 1).
    for name, tol in (("flax", 1e-5), ("torch", 1e-3)):
        for key in ("train_loss", "test_loss"):
            assert rows[name][key] == pytest.approx(rows["fnn"][key], rel=tol), (name, key)
    assert all(r["epoch_s"] > 0 for r in rows.values()) and rows["flax"]["cpu_s"] > 0 and rows["torch"]["cpu_s"] > 0


def test_peer_pooled_compares_per_round_and_writes_its_results(tmp_path, monkeypatch):
    pytest.importorskip("torch")

    def quick_fnn(params, data, args):  # fnn.fit compiles anew each call: a fixed row keeps the test short
        row = {"train_loss": 1.0, "test_loss": 1.0, "train_err": 0.5, "test_err": 0.5, "epoch_s": 1e-3}
        return {**row, "epoch_flops": 1e9}, 0.1, 1e-3

    monkeypatch.setattr(peer_pooled, "fnn_epoch", quick_fnn)
    out, json_path, png_path = outputs(tmp_path, "peer")
    argv = SYNTHETIC + ["--train-size", "32", "--test-size", "32", "--libraries", "fnn", "torch", "--rounds", "6"]
    result = peer_pooled.main(argv + out)
    check_written(result, json_path, png_path)
    assert [len(rows) for rows in result["rounds"].values()] == [6, 6]
    (comparison,) = result["comparisons"]
    assert comparison["peer"] == "torch" and comparison["target_ratio"] == 0.7
    assert result["epoch_flops"] == 1e9 and result["achieved"]["fnn"]["flops_per_s"] == pytest.approx(1e12)
    rate = fnn.bench.machine_rate().flops_per_s
    assert result["achieved"]["torch"]["machine_fraction"] == pytest.approx(1e9 / result["train_s"]["torch"] / rate)
    low, high = comparison["time_ratio_ci95"]
    assert low <= comparison["time_ratio"] <= high and comparison["time_ratio"] < 1  # 1 ms against a torch epoch
    torch_mistakes = [round(r["test_err"] * 32) for r in result["rounds"]["torch"]]
    assert comparison["fnn_excess_test_mistakes"] == [16 - m for m in torch_mistakes]  # the fixed row: 16 of 32
    assert set(result["test_error"]) == set(result["train_s"]) == {"fnn", "torch"}
    assert result["path"] == "custom" and result["warm_up_s"]["torch"] > 0


def test_peer_pooled_rotates_the_order_and_refuses_bad_flags():
    orders = [fnn.bench.round_order(["fnn", "flax", "torch"], r) for r in range(6)]
    assert all(sorted(o) == ["flax", "fnn", "torch"] for o in orders)
    assert {o[0] for o in orders} == {"fnn", "flax", "torch"} and orders[0] != orders[1]
    for bad in (["--libraries", "torch", "fnn"], ["--rounds", "2"], ["--libraries", "fnn", "fnn"]):
        with pytest.raises(SystemExit):
            peer_pooled.parse_args(bad)


def device_check_environment(monkeypatch, tmp_path):
    """``experiments.device_check`` with an empty ``.device`` folder, and what its ``main`` sets in ``os.environ``
    put back after the test; the tests it starts get a run of their own (their own compilation cache, removed when
    they end)."""
    import os

    from experiments import device_check

    monkeypatch.setattr(device_check, "DEVICE", tmp_path / ".device")
    for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "PYTHONPATH", fnn.data.ENV_VAR):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    for name in ("FNN_TESTS_RUN_ID", "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(name, raising=False)
    return device_check


def test_device_check_stops_a_step_past_its_budget_and_reads_pytests_summary(tmp_path, monkeypatch):
    device_check = device_check_environment(monkeypatch, tmp_path)
    out = ["--out", str(tmp_path / "out")]
    result = device_check.main([*out, "--quick", "--steps", "recipe", "--budget", "recipe=0.5"])
    step = result["steps"]["recipe"]  # stopped while its process was still starting
    assert step["status"] == "timed_out" and step["budget_s"] == 0.5 and step["wall_s"] >= 0.5
    assert json.loads((tmp_path / "out" / "device_check.json").read_text()) == json.loads(json.dumps(result))
    assert result["device"] == fnn.bench.device_description() and result["environment"]["XLA_PYTHON_CLIENT_PREALLOCATE"]
    text = (
        "FAILED tests/test_a.py::test_x[1-2] - assert 0 == 1\nERROR tests/test_b.py::test_y\n"
        "2 failed, 10 passed, 1 skipped, 1 error, 3 deselected, 2 warnings in 9.51s (0:00:09)\n"
    )
    counts = {"passed": 10, "failed": 2, "skipped": 1, "errors": 1, "deselected": 3, "warnings": 2}
    failing = ["tests/test_a.py::test_x[1-2]", "tests/test_b.py::test_y"]
    assert device_check.pytest_summary(text) == {"counts": counts, "failing": failing}
    assert device_check.pytest_summary("bringing up nodes...\n..F.\n") == {"counts": None, "failing": []}
    for bad in (["--quick"], [*out, "--steps", "tests,nope"], [*out, "--budget", "tests=0"], [*out, "--budget", "x=3"]):
        with pytest.raises(SystemExit):
            device_check.parse_args(bad)


@pytest.mark.slow  # about 30 s: the compile-time study's three processes
def test_device_check_runs_the_compile_time_study(tmp_path, monkeypatch):
    device_check = device_check_environment(monkeypatch, tmp_path)
    result = device_check.main(["--out", str(tmp_path / "out"), "--quick", "--synthetic", "--steps", "compile"])
    step = result["steps"]["compile"]
    assert step["status"] == "ok" and step["device"] == result["device"] and step["budget_s"] == 40
    runs = step["compile_time"]["models"]["recipe"]["runs"]
    assert [r["variant"] for r in runs] == ["cold", "warm", "profiled"] and runs[0]["n_train"] == 512
    xla = step["summary"]["recipe"]["profiled"]["xla"]["programs"]
    assert set(xla) == {"end", "steps[5]"} and all(p["hlo_passes_s"]["median"] > 0 for p in xla.values())


@pytest.mark.slow  # about 30 s: a test run, the recipe on every path, mixed precision, each in a process of its own
def test_device_check_records_each_step_its_machine_and_timings(tmp_path, monkeypatch):
    device_check = device_check_environment(monkeypatch, tmp_path)
    argv = ["--out", str(tmp_path / "out"), "--quick", "--synthetic", "--steps", "attention,mixed,recipe,tests"]
    argv += ["--workers", "0", "--tests", "tests/test_surface.py -k downwards", "--budget", "attention=1"]
    result = device_check.main(argv)
    assert list(result["steps"]) == ["tests", "recipe", "attention", "mixed"]  # the check's order
    assert result["quick"] and result["jax_version"] == jax.__version__ and result["wall_s"] > 0
    tests = result["steps"]["tests"]
    assert tests["status"] == "ok" and tests["exit_code"] == 0 and tests["failing"] == []
    assert tests["counts"]["passed"] == 1 and tests["counts"]["deselected"] > 0 and tests["wall_s"] > 0
    assert "1 passed" in (tmp_path / "out" / tests["log"]).read_text() and " -n 0 " in tests["command"]
    recipe = result["steps"]["recipe"]
    assert recipe["status"] == "ok" and recipe["device"] == result["device"] and recipe["data"]["name"] == "synthetic"
    assert set(recipe["fnn"]) == set(fnn.PATHS) and recipe["epochs"] == 1
    for run in recipe["fnn"].values():
        assert run["compile_s"] > 0 and run["run_s"] > 0 and len(run["epoch_s"]) == 1 and 0 <= run["test_error"] <= 1
    assert "skipped" in recipe["torch"] or recipe["torch"]["wall_s"] > 0  # the notes' PyTorch code needs CUDA
    assert result["steps"]["attention"]["status"] == "timed_out"  # the others' results are kept
    mixed = result["steps"]["mixed"]
    assert mixed["status"] == "ok" and set(mixed["limits_flops_per_s"]) == {"float32", "bfloat16"}
    names = [f"{m}/{d}/{c}" for m in ("recipe", "wide") for d in ("float32", "bfloat16") for c in ("cold", "warm")]
    assert list(mixed["runs"]) == names
    assert all(0 < run["machine_fraction"] and 0 <= run["test_error"] <= 1 for run in mixed["runs"].values())
    cold, warm = (sum(r["compile_s"] for n, r in mixed["runs"].items() if n.endswith(c)) for c in ("cold", "warm"))
    assert warm < cold  # the second run of each found its programs in the cache
    assert json.loads((tmp_path / "out" / "device_check.json").read_text()) == json.loads(json.dumps(result))


@pytest.mark.slow  # an end-to-end study on eight simulated devices, in a process of its own
def test_fsdp_memory_splits_the_state_eight_ways_trains_and_holds_the_gradients_to_one_devices(tmp_path):
    json_path = tmp_path / "fsdp_memory.json"
    argv = ["--devices", "8", "--sizes", "64", "256", "256", "64", "--batch-size", "16", "--steps", "3", "--lr", "1e-3"]
    subprocess.run(
        [sys.executable, "-m", "experiments.fsdp_memory", *argv, "--json", str(json_path)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
    )
    result = json.loads(json_path.read_text())
    # (64*256 + 256*256 + 256*64) float32 weights, Adam's two moments of each and its int32 step count; each
    # weight, at least fnn.parallel.FSDP_MIN_BYTES, split eight ways: each device holds an eighth and the count.
    weights = 64 * 256 + 256 * 256 + 256 * 64
    assert result["state_bytes"] == 3 * 4 * weights + 4 and result["limit_bytes"] == result["state_bytes"] / 8
    assert result["state_bytes_per_device"] == 3 * 4 * weights // 8 + 4 and result["aim_share_met"]
    step, whole = result["compiled_step_per_device"], result["compiled_step_one_device"]
    assert step["arg_bytes"] >= result["state_bytes_per_device"] and step["alias_bytes"] <= step["out_bytes"]
    assert step["peak_bound_bytes"] >= step["arg_bytes"] and whole["arg_bytes"] >= result["state_bytes"]
    assert result["peak_bound_over_one_device"] < 0.5  # the split step needs far less than one device's
    assert result["trained"] and len(result["losses"]) == 3
    # float32 sums over the split batch in another order: a few ulps of each array's largest entry.
    assert set(result["gradient_gap"]) == set(fnn.PATHS) and 0 < max(result["gradient_gap"].values()) < 1e-5
