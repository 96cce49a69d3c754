"""Fully sharded data parallelism (``fit(..., sharding="fsdp")``, :func:`fnn.parallel.fsdp`) and resuming a run
on another number of devices, on eight simulated CPU devices in a child process."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_robust import ON_CPU, PRELUDE, run_python

import fnn
from fnn import nn

GOLDEN = Path(__file__).parent / "golden"
#: What the children that train share: eight simulated devices, a learnable problem (64 features, 8 classes) and
#: the largest difference between two pytrees' entries.
EIGHT_DEVICES = """
import json, tempfile, warnings
import jax, jax.numpy as jnp, optax, fnn
from fnn import nn
jax.config.update("jax_num_cpu_devices", 8)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 64)).astype(np.float32)
y = np.argmax(x @ rng.standard_normal((64, 8)), axis=1).astype(np.int32)
data = types.SimpleNamespace(x_train=x, y_train=y, x_test=x[:64], y_test=y[:64])
def biggest_gap(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in pairs)
"""

CHILD = """
model = nn.mlp([64, 512, 512, 8])
_, params = model.init(jax.random.key(0), (64,))
found = {}

# The layout: each device holds an eighth of the parameters and Adam's moments, the small arrays whole.
mesh = fnn.parallel.data_mesh(8)
state = fnn.train.TrainState.create(params, optax.adam(1e-3))
placed = fnn.parallel.place(state, fnn.parallel.layout("fsdp", state, mesh))
rows = fnn.parallel.sharding_table(placed)
found["per_device"] = sum(r["bytes_per_device"] for r in rows) / sum(r["bytes"] for r in rows)
found["specs"] = {r["array"]: r["spec"] for r in fnn.parallel.sharding_table(placed.params)}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tree = {"w": np.zeros((304, 704), np.float32), "b": np.zeros(704, np.float32), "odd": np.zeros((999, 99))}
    found["rule"] = {k: list(v.spec) for k, v in fnn.parallel.fsdp(tree, mesh).items()}
found["rule_said"] = [str(w.message) for w in caught if issubclass(w.category, fnn.ShardingWarning)]

# The gradient of sharded parameters on a sharded batch, on every path, against one device's.
batch = [jax.device_put(a, fnn.parallel.batch_sharding(mesh)) for a in (x, y)]
for path in fnn.PATHS:
    grad_fn = jax.jit(fnn.value_and_grad(model, fnn.losses.cross_entropy, path=path))
    found[f"grad_{path}"] = biggest_gap(grad_fn(placed.params, *batch)[1], grad_fn(params, x, y)[1])

# fit under FSDP against replicated, and a run killed on 8 devices resumed on 4 (and back).
# SGD with momentum: its state is laid out as the parameters are, and its steps are linear in the gradients, so
# the gradients' float32 rounding is not amplified as Adam's normalisation amplifies it near zero.
options = dict(batch_size=64, optimizer=optax.sgd(0.1, momentum=0.9), shuffle_key=jax.random.key(1), progress=False)
whole, history = fnn.fit(model, params, data, epochs=4, devices=8, sharding="fsdp", **options)
replicated, _ = fnn.fit(model, params, data, epochs=4, devices=8, **options)
found["fit_fsdp_vs_replicated"] = biggest_gap(whole, replicated)
by_names, _ = fnn.fit(model, params, data, epochs=4, devices=8, sharding={"in": "data", "out": None}, **options)
found["fit_by_names_vs_replicated"] = biggest_gap(by_names, replicated)
found["by_names_specs"] = [list(p.sharding.spec) for p in jax.tree.leaves(by_names)]
found["returned_specs"] = [list(p.sharding.spec) for p in jax.tree.leaves(whole)]
for first, then in (((8, "fsdp"), (4, "replicated")), ((4, "replicated"), (8, "fsdp"))):
    folder = tempfile.mkdtemp() + "/run"
    checkpoint = lambda: [fnn.loop.Checkpointing(folder, resume=True)]
    fnn.fit(model, params, data, epochs=2, devices=first[0], sharding=first[1], callbacks=checkpoint(), **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, again = fnn.fit(
            model, params, data, epochs=4, devices=then[0], sharding=then[1], callbacks=checkpoint(), **options
        )
    name = f"{first[0]}_to_{then[0]}"
    found[name] = biggest_gap(whole, resumed)
    found[name + "_errors_equal"] = again.test_err.tolist() == history.test_err.tolist()
    found[name + "_said"] = [str(w.message) for w in caught if issubclass(w.category, fnn.ShardingWarning)]
print(json.dumps(found))
"""


@pytest.mark.slow  # about 40 s: eight simulated devices in a child process, fit five times
def test_fsdp_holds_an_eighth_per_device_trains_as_replicated_and_resumes_on_another_mesh():
    found = json.loads(run_python(PRELUDE + EIGHT_DEVICES + CHILD, env=ON_CPU).splitlines()[-1])
    # Two 512-wide weights and their two Adam moments are split; the biases, the 512x8 output weight (16 KiB) and
    # the step count stay whole: a few percent over the eighth.
    assert found["per_device"] <= 1 / 8 + 0.05, found["per_device"]
    assert found["specs"] == {
        "[0]['w']": [None, "data"],
        "[2]['w']": ["data", None],
        "[4]['w']": [None, None],
    }
    # The largest axis that 8 divides (704, not 304); a 2.8 KB bias whole; an array no axis of which divides, whole
    # and named.
    assert found["rule"] == {"w": [None, "data"], "b": [], "odd": []}
    assert found["rule_said"] == [
        "fsdp: 1 arrays of at least 65536 bytes stay whole on every device, no axis of theirs dividing by 8 devices: "
        "['odd'] (999, 99)"
    ]
    # float32: the same gradient summed in another order (a few ulps of entries of order 1).
    for path in fnn.PATHS:
        assert found[f"grad_{path}"] < 1e-6, (path, found[f"grad_{path}"])
    assert found["fit_fsdp_vs_replicated"] < 1e-5  # 16 steps of those ulps
    assert found["returned_specs"] == [[None, "data"], ["data", None], []]
    assert found["fit_by_names_vs_replicated"] < 1e-5  # every weight's "in" axis over the 8 devices
    assert found["by_names_specs"] == [["data", None], ["data", None], ["data", None]]
    for name in ("8_to_4", "4_to_8"):
        assert found[name] < 1e-5 and found[name + "_errors_equal"], (name, found[name])
        (said,) = found[name + "_said"]
        first, then = name.split("_to_")
        assert f"saved on {first} devices" in said and f"on {then} (" in said and "another order" in said


#: The rules the golden tables are made with: FSDP over "data" by the input-side names, tensor parallelism over
#: "model" by the output-side names, on a 4 x 2 mesh.
RULES = {"in": "data", "out": "model", "embed": "data", "heads": "model", "vocab": "model", "window": None}

TENSOR_PARALLEL = """
import json, warnings
import jax, jax.numpy as jnp, optax, fnn
from fnn import nn
from experiments._images import pooled_cnn
jax.config.update("jax_num_cpu_devices", 8)
rules = json.loads(sys.argv[1])
mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
found = {"tables": {}}
block = nn.serial(
    nn.residual(nn.serial(nn.layer_norm(), nn.attention(4, 16))),
    nn.residual(nn.serial(nn.layer_norm(), nn.dense(256, bias=True), nn.gelu, nn.dense(64, bias=True))),
)
models = {
    "mlp": (nn.mlp([784, 500, 10]), (784,)),
    "pooled_cnn": (pooled_cnn(), (28, 28, 1)),
    "transformer_block": (block, (16, 64)),
}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name, (model, shape) in models.items():
        _, params = model.init(jax.random.key(0), shape)
        layout = fnn.parallel.by_names(params, fnn.parallel.logical_axes(model, params), mesh, rules)
        placed = fnn.parallel.place(params, layout)
        rows = fnn.parallel.sharding_table(placed)
        found["tables"][name] = [{k: r[k] for k in ("array", "shape", "spec", "bytes_per_device")} for r in rows]
        # The hand-written rules under XLA's partitioner: every path's gradient on the 4 x 2 mesh against one device.
        x = jax.random.normal(jax.random.key(1), (8, *shape))
        y = jnp.arange(8) % (10 if name != "transformer_block" else 64)
        loss = fnn.losses.cross_entropy if name != "transformer_block" else fnn.losses.mse
        y = y if name != "transformer_block" else x
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        for path in fnn.PATHS:
            grad_fn = jax.jit(fnn.value_and_grad(model, loss, path=path))
            got, want = grad_fn(placed, xs, y)[1], grad_fn(params, x, y)[1]
            pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want))
            found[f"{name}_{path}"] = max(fnn.testing.relative_error(a, b) for a, b in pairs)
found["said"] = [str(w.message) for w in caught if issubclass(w.category, fnn.ShardingWarning)]
print(json.dumps(found))
"""


@pytest.mark.slow  # about 30 s: eight simulated devices in a child process
def test_tensor_parallel_rules_lay_out_the_models_as_committed_and_the_rules_run_under_the_partitioner():
    """Golden tables (``tests/golden/sharding_*.json``): a change that lays out a parameter otherwise, or silently
    leaves it whole, fails here. To accept a change on purpose, run the test once with ``FNN_UPDATE_GOLDEN=1``."""
    found = json.loads(run_python(PRELUDE + TENSOR_PARALLEL, json.dumps(RULES), env=ON_CPU).splitlines()[-1])
    for name, table in found["tables"].items():
        golden = GOLDEN / f"sharding_{name}.json"
        if os.environ.get("FNN_UPDATE_GOLDEN") == "1":
            golden.write_text(json.dumps(table, indent=1) + "\n")
        assert table == json.loads(golden.read_text()), name
    # float32 gradients summed in another order: relative to each leaf's largest entry, a few ulps.
    for key, gap in found.items():
        if key not in ("tables", "said"):
            assert gap < 1e-5, (key, gap)
    # Said, not silent: the rules each model has no axis for (one table for all three), the first convolution's one
    # input channel that 4 devices cannot split (pooled CNN), the layer norms' "features" that no rule names
    # (transformer block); nothing large is left whole.
    assert found["said"] == [
        "by_names: rules for axis names no array has: ['embed', 'heads', 'vocab', 'window']",
        "by_names: rules for axis names no array has: ['embed', 'heads', 'vocab']; rules that could not split (not "
        "divisible, or the mesh axis taken): [0]['w'] in->data",
        "by_names: no rule for the axis names ['features']; rules for axis names no array has: ['vocab', 'window']",
    ]


def test_fsdp_on_one_device_replicates():
    tree = {"w": np.zeros((304, 704), np.float32), "b": np.zeros(704, np.float32)}
    found = fnn.parallel.fsdp(tree, fnn.parallel.data_mesh(1))
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(found))


def test_a_layout_that_is_not_one_is_refused_naming_those_there_are():
    data = type("D", (), {"x_train": np.ones((8, 3)), "y_train": np.zeros(8, int)})()
    data.x_test, data.y_test = data.x_train, data.y_train
    model = nn.dense(2)
    with pytest.raises(fnn.InputError, match=r"sharding must be one of 'replicated', 'fsdp', or rules .* got 'zero3'"):
        fnn.fit(model, model.init(jax.random.key(0), (3,))[1], data, epochs=1, batch_size=4, sharding="zero3")
    with pytest.raises(fnn.InputError, match=r"sharding must be one of"):
        fnn.parallel.layout("zero3", {}, fnn.parallel.data_mesh(1))
    params, axes, mesh = {"w": np.zeros((4, 2), np.float32)}, {"w": P("in", "out")}, fnn.parallel.data_mesh(1)
    with pytest.raises(fnn.InputError, match=r"by_names: rules map to mesh axes \['model'\] that the mesh"):
        fnn.parallel.by_names(params, axes, mesh, {"in": "model"})
    with pytest.raises(fnn.InputError, match=r"by_names: rules map each axis name to one mesh axis name or None"):
        fnn.parallel.by_names(params, axes, mesh, {"in": ["data"]})
    unnamed = fnn.module.leaf("scale", forward=lambda p, x: (x, x), backward=None, param_axes={"s": ("a",)})
    with pytest.raises(fnn.InputError, match=r"scale: param_axes names the axes of \['s'\], not of its arrays"):
        fnn.parallel.logical_axes(unnamed, {"t": np.ones(3)})
    wrong = fnn.module.leaf("scale", forward=lambda p, x: (x * p["s"], x), backward=None, param_axes={"s": ("a", "b")})
    with pytest.raises(
        fnn.InputError, match=r"logical_axes: scale names 2 axes \('a', 'b'\) for the array \['s'\] of shape \(3,\)"
    ):
        fnn.parallel.logical_axes(wrong, {"s": np.ones(3)})
    with pytest.raises(fnn.InputError, match=r"a mesh to train on needs the axis 'data'.* got the axes \('batch',\)"):
        fnn.parallel.training_mesh(jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,)))


def test_a_rule_no_array_has_is_named_with_the_names_no_rule_covers():
    model = nn.serial(nn.dense(4, bias=True), nn.layer_norm())
    _, params = model.init(jax.random.key(0), (3,))
    axes, mesh = fnn.parallel.logical_axes(model, params), fnn.parallel.data_mesh(1)
    with pytest.warns(fnn.ShardingWarning) as caught:
        fnn.parallel.by_names(params, axes, mesh, {"in": "data", "out": None, "fetaures": None})
    (said,) = [str(w.message) for w in caught]
    assert said == "by_names: no rule for the axis names ['features']; rules for axis names no array has: ['fetaures']"


def test_state_axes_without_state_is_refused_naming_both():
    with pytest.raises(fnn.UsageError, match=r"scale: state_axes names the axes of a state.*pass both"):
        fnn.module.leaf("scale", forward=lambda p, x: (x, x), backward=None, state_axes={"s": ("a",)})


def test_batch_norm_names_its_statistics_axes_as_its_scale():
    model = nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.repeat(nn.serial(nn.dense(4), nn.batch_norm()), 3))
    state = model.init_state((5,))
    assert fnn.parallel.state_axes(model, state) == [
        (),
        {"mean": P("features"), "var": P("features")},
        (),
        [(), {"mean": P("layers", "features"), "var": P("layers", "features")}],
    ]
    assert fnn.parallel.state_axes(nn.dense(3), ()) == ()


MESH_2D = """
# Batch norm's statistics and dropout's masks under the rules, beside parameters split over both mesh axes.
model = nn.serial(nn.dense(256), nn.batch_norm(), nn.relu, nn.dropout(0.2), nn.dense(8, bias=True))
_, params = model.init(jax.random.key(0), (64,))
mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
rules = {"in": "data", "out": "model", "features": "model"}
options = dict(
    epochs=3, batch_size=64, optimizer=optax.sgd(0.1, momentum=0.9), shuffle_key=jax.random.key(1), progress=False
)
found = {}
for path in fnn.PATHS:
    options["path"], options["state"] = path, model.init_state((64,))
    one = fnn.fit(model, params, data, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two = fnn.fit(model, params, data, devices=mesh, sharding=rules, **options)
    found[path] = {
        "params": biggest_gap(one[0], two[0]),
        "state": biggest_gap(one[1], two[1]),
        "errors_equal": one[2].test_err.tolist() == two[2].test_err.tolist(),
        "said": [str(w.message) for w in caught],
    }
try:  # no rule maps to "model": its two devices would repeat each other's work
    fnn.fit(model, params, data, devices=mesh, sharding="fsdp", **options)
except fnn.InputError as error:
    found["idle"] = str(error)
found["param_specs"] = [list(a.sharding.spec) for a in jax.tree.leaves(two[0])]
found["state_specs"] = [list(a.sharding.spec) for a in jax.tree.leaves(two[1])]
# Killed on the 4 x 2 mesh after 2 epochs, resumed under FSDP on 8 devices of one axis.
folder = tempfile.mkdtemp() + "/run"
checkpoint = lambda: [fnn.loop.Checkpointing(folder, resume=True)]
fnn.fit(model, params, data, **{**options, "epochs": 2}, devices=mesh, sharding=rules, callbacks=checkpoint())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    resumed = fnn.fit(model, params, data, **options, devices=8, sharding="fsdp", callbacks=checkpoint())
found["resumed"] = biggest_gap(two[:2], resumed[:2])
found["resumed_errors_equal"] = resumed[2].test_err.tolist() == two[2].test_err.tolist()
found["resumed_said"] = [str(w.message) for w in caught if issubclass(w.category, fnn.ShardingWarning)]
print(json.dumps(found))
"""


@pytest.mark.slow  # about 25 s: eight simulated devices in a child process, fit eight times
def test_fit_on_a_2d_mesh_splits_parameters_and_statistics_by_rules_and_trains_as_one_device():
    found = json.loads(run_python(PRELUDE + EIGHT_DEVICES + MESH_2D, env=ON_CPU).splitlines()[-1])
    for path in fnn.PATHS:
        # float32 sums in another order over 12 steps of SGD with momentum: a few ulps of entries of order 1; the
        # dropout masks are the same (else the gap would be of order 1).
        row = found[path]
        assert row["params"] < 1e-5 and row["state"] < 1e-5 and row["errors_equal"], (path, row)
        assert row["said"] == [], row["said"]
    # The first weight over both axes, the output weight's 8 columns over "model", gamma, beta and the running
    # statistics over "model" with the features they scale.
    assert found["param_specs"] == [["data", "model"], ["model"], ["model"], ["model"], ["data", "model"]]
    assert found["state_specs"] == [["model"], ["model"]]
    assert found["idle"].startswith("the mesh's axes ['model'] would repeat the same work"), found["idle"]
    assert found["resumed"] < 1e-5 and found["resumed_errors_equal"], found["resumed"]
    (said,) = found["resumed_said"]
    assert "saved on 8 devices as {'data': 4, 'model': 2} (" in said and "on 8 (fsdp)" in said, said


SHARDED_CHECKS = """
import json
import jax, jax.numpy as jnp, fnn
from fnn import nn
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
ids = lambda rng, shape: jnp.asarray(rng.integers(0, 6, shape))
statistics = {"mean": np.array([0.3, -0.2, 0.1, 0.4]), "var": np.array([0.5, 2.0, 1.3, 0.7])}
# Every module with parameters, each parameter with an axis that 2 divides.
ROWS = {
    "dense": (nn.dense(4), (4, 6), {}),
    "dense_bias": (nn.dense(4, bias=True), (2, 3, 6), {}),
    "layer_norm": (nn.layer_norm(), (4, 6), {}),
    "group_norm": (nn.group_norm(2), (2, 3, 4, 4), {}),
    "conv2d_stride2_bias": (nn.conv2d(4, 3, stride=2, bias=True), (2, 5, 6, 2), {}),
    "conv1d": (nn.conv1d(4, 3), (2, 7, 2), {}),
    "embedding": (nn.embedding(6, 4), (2, 5), {"x": ids}),
    "positional_embedding": (nn.positional_embedding(), (2, 4, 4), {}),
    "attention_bias": (nn.attention(2, 4, bias=True), (2, 4, 8), {}),
    "batch_norm_train": (nn.batch_norm(), (4, 2, 4), {}),
    "batch_norm_eval": (nn.batch_norm(), (6, 4), {"train": False, "state": statistics}),
    "residual": (nn.residual(nn.serial(nn.dense(6, bias=True), nn.tanh)), (4, 6), {}),
    "serial_bn_dropout": (
        nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dropout(0.5), nn.dense(2)), (4, 2, 6), {}
    ),
    "repeat": (nn.repeat(nn.serial(nn.dense(6, bias=True), nn.tanh), 2), (4, 6), {}),
    "remat": (nn.remat(nn.serial(nn.dense(4), nn.gelu)), (4, 6), {}),
}
mesh = fnn.parallel.data_mesh(2)
split = lambda tree: fnn.parallel.place(tree, fnn.parallel.fsdp(tree, mesh, min_bytes=0))
# What the checker's compiled programs are given: the arrays split over the two devices among their arguments.
from fnn._gradcheck import gradients as compiled
given = []
def spied(fn):
    def call(*args, **kwargs):
        sharded = lambda a: isinstance(a, jax.Array) and a.sharding.num_devices > 1
        given.extend(list(a.sharding.spec) for a in jax.tree.leaves((args, kwargs)) if sharded(a))
        return fn(*args, **kwargs)
    return call
for name in ("jit_draws", "jit_dtypes", "jit_on_paths"):
    setattr(compiled, name, spied(getattr(compiled, name)))
found = {}
for name, (module, shape, context) in ROWS.items():
    _, params = module.init(jax.random.key(0), shape[1:])
    rng = np.random.default_rng(0)
    params = split(jax.tree.map(lambda a: rng.standard_normal(a.shape), params))
    given.clear()
    report = fnn.testing.check_module(module, shape[1:], batch_size=shape[0], params=params, **context)
    found[name] = {
        "failed": [f"{r.name}: {r.detail}" for r in report.rows if r.status == "failed"],
        "specs": [list(a.sharding.spec) for a in jax.tree.leaves(params)],
        "given": given[:],
        "said": str(report).splitlines()[0],
        "module": module.name,
    }
print(json.dumps(found))
"""


@pytest.mark.slow  # about 45 s: the checker on 15 modules in a child process with two simulated devices
def test_the_checker_passes_every_module_with_its_parameters_split_over_two_devices():
    """The hand-written rules under XLA's partitioner: each parameter split along an axis over 2 devices (and batch
    norm's statistics in evaluation), every check of :func:`fnn.testing.check_module` passes."""
    from test_modules import CASES

    found = json.loads(run_python(PRELUDE + SHARDED_CHECKS, env=ON_CPU).splitlines()[-1])
    for name, row in found.items():
        assert row["failed"] == [], (name, row["failed"])
        assert all("data" in spec for spec in row["specs"]), (name, row["specs"])  # every array split, none whole
        # The compiled programs get the parameters split as given: the float64 draws stacked (a leading axis
        # whole), each lower precision as the parameters are; the report says so.
        specs = {tuple(spec) for spec in row["specs"]}
        assert {tuple(spec) for spec in row["given"]} == specs | {(None, *spec) for spec in specs}, (name, row)
        assert "parameters split over 2 devices" in row["said"], row["said"]
    # Every kind of module with parameters in the conformance table has a row here.
    with_params = set()
    for case in CASES:
        built = case.build()
        if isinstance(built, fnn.module.Module) and jax.tree.leaves(
            built.init(jax.random.key(0), case.input_shape[1:])[1]
        ):
            with_params.add(built.name)
    assert with_params <= {row["module"] for row in found.values()}, with_params
