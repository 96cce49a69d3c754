"""fnn.inspect: the gradient paths compared on tiny models, its report, its pieces and its errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import fnn.inspect
from fnn import bench, inspect
from fnn._gradcheck.residuals import aval_bytes

LOSS = fnn.losses.cross_entropy
N_CLASSES = 3
#: float32 gradients agree with the float64 reference to this relative error (per leaf, against its largest entry).
FLOAT32_RTOL = 1e-5


def _problem(model, input_shape, batch, dtype=jnp.float32, seed=0):
    _, params = model.init(jax.random.key(seed), input_shape)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((batch, *input_shape)), dtype)
    labels = jnp.asarray(rng.integers(0, N_CLASSES, batch), jnp.int32)
    return model, params, x, labels


def _mlp(dtype=jnp.float32):
    return _problem(fnn.nn.mlp([6, 8, 8, N_CLASSES], dtype=dtype), (6,), 5, dtype)


def _conv():
    model = fnn.nn.serial(
        fnn.nn.conv2d(4, 3, form="convolution"), fnn.nn.relu, fnn.nn.flatten(), fnn.nn.dense(N_CLASSES)
    )
    return _problem(model, (6, 6, 2), 4)


@pytest.fixture(scope="module")
def mlp():
    model, params, x, labels = _mlp()
    return model, params, x, labels, inspect.compare_paths(model, LOSS, params, x, labels, timing=False)


@pytest.fixture(scope="module")
def conv():
    model, params, x, labels = _conv()
    return model, params, x, labels, inspect.compare_paths(model, LOSS, params, x, labels, timing=False)


def _nbytes(tree):
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("problem", ["mlp", "conv"])
def test_every_path_agrees_with_the_float64_reference(problem, request):
    model, params, x, labels, report = request.getfixturevalue(problem)
    assert report.keys == fnn.PATHS
    leaves = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for row in report.rows:
        assert [leaf["leaf"] for leaf in row.per_leaf] == leaves
        assert 0 <= row.max_abs_err and 0 <= row.max_rel_err < FLOAT32_RTOL, (row.path, row.per_leaf)
        assert row.max_rel_err == max(leaf["max_rel_err"] for leaf in row.per_leaf)


def test_float64_paths_agree_to_rounding():
    model, params, x, labels = _mlp(jnp.float64)
    report = inspect.compare_paths(
        model, LOSS, params, x, labels, paths=("custom", "backprop"), reference="custom", timing=False
    )
    assert report.keys == ("custom", "backprop") and report.settings["reference"] == "custom"
    assert all(row.max_rel_err < 1e-12 for row in report.rows)
    assert report["custom"].hlo_diff == {"ops_top": {}, "ops_all": {}}


@pytest.mark.parametrize("problem", ["mlp", "conv"])
def test_compiled_step_fields_make_sense(problem, request):
    model, params, x, labels, report = request.getfixturevalue(problem)
    for row in report.rows:
        assert row.compile_s > 0 and row.timing is None
        assert row.temp_bytes > 0
        assert row.arg_bytes == _nbytes((params, x, labels))  # the step's arguments, undonated
        assert row.out_bytes >= _nbytes(params) + 4  # new parameters and the float32 loss (and tuple tables)
        assert row.hlo["kernels"] > 0 and all(isinstance(v, int) for v in row.hlo["ops_all"].values())
    assert report["autodiff"].hlo_diff == {"ops_top": {}, "ops_all": {}}


def test_every_path_runs_the_same_matmuls(mlp):
    *_, report = mlp
    layers = 3
    for row in report.rows:
        # forward and dW per layer, dX for all but the first
        assert row.hlo["dots"] == 3 * layers - 1 and row.hlo["convolutions"] == 0, row.hlo


def test_every_path_runs_the_same_convolutions(conv):
    *_, report = conv
    for row in report.rows:
        # the convolution's forward and dW (the input needs no gradient); the dense layer's forward, dW and dX
        assert (row.hlo["convolutions"], row.hlo["dots"]) == (2, 3), (row.path, row.hlo)


@pytest.mark.parametrize("problem", ["mlp", "conv"])
def test_residuals_name_their_shapes_and_sources(problem, request):
    model, params, x, labels, report = request.getfixturevalue(problem)
    for row in report.rows:
        res = row.residuals
        assert res["saved"] and res["total_bytes"] == sum(r["bytes"] for r in res["saved"])
        assert 0 < res["computed_bytes"] < res["total_bytes"]
        assert all(not r["source"].startswith("/") and "/fnn/" not in r["source"] for r in res["saved"])
        assert f"path={row.path!r}" in res["of"]
    # custom and backprop run the same backward functions, so they keep the same values (on custom, as outputs of
    # the rules' calls)
    kept = {path: [(r["aval"], r["bytes"]) for r in report[path].residuals["saved"]] for path in ("custom", "backprop")}
    assert kept["custom"] == kept["backprop"]


def test_mlp_residuals_are_the_relu_outputs_and_softmax(mlp):
    *_, x, _, report = mlp
    expected = 4 * x.shape[0] * (8 + 8 + N_CLASSES)
    assert report["custom"].residuals["computed_bytes"] == expected


def test_report_lookup_table_and_json(conv):
    *_, report = conv
    assert report["backprop"] is report.rows[2]
    with pytest.raises(KeyError, match="no row named 'manual'"):
        report["manual"]
    text = str(report)
    assert all(path in text for path in fnn.PATHS) and "top-level HLO ops, custom minus autodiff" in text
    assert isinstance(report, fnn.testing.Report)  # one report type for every check and comparison
    legend = text[text.index("columns:") :]
    assert all(f"  {c.name}: " in legend for c in report.columns) and "kernels: top-level ops" in legend
    data = json.loads(json.dumps(report.to_dict()))
    assert data["settings"]["reference"] == "autodiff" and [r["path"] for r in data["rows"]] == list(fnn.PATHS)
    assert data["rows"][0]["timing"] is None and data["rows"][1]["per_leaf"][0]["leaf"] == "[0]['w']"


def test_timing_fields():
    model, params, x, labels = _mlp()
    report = inspect.compare_paths(
        model, LOSS, params, x, labels, paths=("autodiff", "backprop"), rounds=6, block_s=0.002
    )
    assert report.settings["rounds"] == 6 and report.settings["block_s"] == 0.002
    for row in report.rows:
        t = row.timing
        assert isinstance(t, bench.Result) and t.name == row.path
        assert t.median_s > 0 and t.calls >= 1 and len(t.wall_s) == len(t.cpu_s) == 6
        assert t.ci_low <= t.ratio <= t.ci_high and t.cpu_ratio > 0 and t.verdict in bench.VERDICTS
    assert report["autodiff"].timing.ratio == 1.0
    assert "[" in str(report) and json.dumps(report.to_dict())


def test_reference_works_without_x64():
    model, params, x, labels = _mlp()
    want = inspect.reference_grads(model, LOSS, params, x, labels)
    with jax.enable_x64(False):
        grads = inspect.reference_grads(model, LOSS, params, x, labels)
    assert jax.tree.leaves(grads)[0].dtype == jnp.float64
    jax.tree.map(np.testing.assert_array_equal, grads, want)


def test_gradient_errors():
    reference = {"a": np.array([2.0, -4.0]), "b": np.zeros(2)}
    errors = inspect.gradient_errors({"a": np.array([2.0, -3.0]), "b": np.zeros(2)}, reference)
    assert errors == [
        {"leaf": "['a']", "max_abs_err": 1.0, "max_rel_err": 0.25},
        {"leaf": "['b']", "max_abs_err": 0.0, "max_rel_err": 0.0},
    ]
    assert inspect.gradient_errors({"a": np.ones(2), "b": np.ones(2)}, reference)[1]["max_rel_err"] == float("inf")
    with pytest.raises(ValueError, match="1 leaves, the reference 2"):
        inspect.gradient_errors({"a": np.ones(2)}, reference)


def test_backprop_as_one_vjp_is_the_backprop_path():
    """The custom_vjp whose residuals the backprop row reports has the backprop path's value and gradient."""
    model, params, x, labels = _mlp(jnp.float64)
    value, grads = jax.jit(jax.value_and_grad(inspect.backprop_as_one_vjp(model, LOSS)))(params, x, labels)
    want_value, want_grads = jax.jit(fnn.value_and_grad(model, LOSS, path="backprop"))(params, x, labels)
    assert jax.tree.leaves(grads)[0].dtype == jnp.float64
    # The same float64 operations in the same order, compiled separately: equal to a few ulps.
    np.testing.assert_allclose(value, want_value, rtol=1e-15)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-16), grads, want_grads)


@pytest.mark.parametrize(
    "aval, size",
    [("f32[8,16]", 512), ("bf16[3]", 6), ("bool[4,2]", 8), ("f64[]", 8), ("i32[5,1,1]", 20), ("f8_e4m3fn[4]", 4)],
)
def test_aval_bytes(aval, size):
    assert aval_bytes(aval) == size


def test_op_diff():
    assert inspect.op_diff({"dot": 3, "add": 1}, {"dot": 3, "mul": 2}) == {"add": 1, "mul": -2}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"paths": "custom"}, TypeError, "not the string 'custom'"),
        ({"paths": ()}, ValueError, "at least one"),
        ({"paths": ("autodiff", "manual")}, ValueError, "unknown gradient path 'manual'"),
        ({"paths": ("autodiff", "autodiff")}, ValueError, "must not repeat"),
        ({"paths": ("custom", "backprop")}, ValueError, "reference path 'autodiff' must be one of"),
        ({"reference": "jvp"}, ValueError, "unknown gradient path 'jvp'"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate must be a positive step size"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    model, params, x, labels = _mlp()
    with pytest.raises(error, match=message):
        inspect.compare_paths(model, LOSS, params, x, labels, timing=False, **kwargs)


def test_bad_model_or_loss():
    model, params, x, labels = _mlp()
    with pytest.raises(TypeError, match="model must be an fnn module"):
        inspect.compare_paths(lambda p, x: x, LOSS, params, x, labels, timing=False)
    with pytest.raises(TypeError, match="loss must be an fnn loss"):
        inspect.compare_paths(model, lambda y, t: 0.0, params, x, labels, timing=False)


GPU_HLO = """HloModule step, entry_computation_layout={(f32[2,8,8,3]{3,2,1,0}, f32[3,3,3,4]{3,2,1,0})->f32[]}

%fused_computation (param_0: f32[8,4], param_1: f32[4,3]) -> f32[8,3] {
  %param_0 = f32[8,4]{1,0} parameter(0)
  %param_1 = f32[4,3]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,3]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (p0: f32[2,8,8,3], p1: f32[3,3,3,4], p2: f32[8,4], p3: f32[4,3]) -> f32[8,3] {
  %p0 = f32[2,8,8,3]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,3,4]{3,2,1,0} parameter(1)
  %p2 = f32[8,4]{1,0} parameter(2)
  %p3 = f32[4,3]{1,0} parameter(3)
  %custom-call.1 = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), custom_call_target="__cudnn$convForward"
  %custom-call.2 = (f32[3,3,3,4], u8[0]) custom-call(%p0, %p1), custom_call_target="__cudnn$convBackwardFilter"
  %custom-call.3 = (f32[8,3]{1,0}, s8[4]{0}) custom-call(%p2, %p3), custom_call_target="__cublas$gemm"
  ROOT %fusion = f32[8,3]{1,0} fusion(%p2, %p3), kind=kCustom, calls=%fused_computation
}
"""


def test_hlo_counts_take_a_gpus_library_kernels_for_the_ops_they_compute():
    counts = fnn.inspect.hlo_counts(GPU_HLO)
    assert counts["convolutions"] == 2 and counts["dots"] == 2 and counts["dots_unfused"] == 1, counts
    assert counts["ops_top"]["custom-call:__cudnn$convForward"] == 1 and counts["other_ops"] == 2, counts
