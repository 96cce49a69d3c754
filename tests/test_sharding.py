"""Fully sharded data parallelism (``fit(..., sharding="fsdp")``, :func:`fnn.parallel.fsdp`) and resuming a run
on another number of devices, on eight simulated CPU devices in a child process."""

import json

import jax
import numpy as np
import pytest
from test_robust import ON_CPU, PRELUDE, run_python

import fnn
from fnn import nn

CHILD = """
import json, tempfile, warnings
import jax, jax.numpy as jnp, optax, fnn
from fnn import nn
jax.config.update("jax_num_cpu_devices", 8)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 64)).astype(np.float32)
y = np.argmax(x @ rng.standard_normal((64, 8)), axis=1).astype(np.int32)
data = types.SimpleNamespace(x_train=x, y_train=y, x_test=x[:64], y_test=y[:64])
model = nn.mlp([64, 512, 512, 8])
_, params = model.init(jax.random.key(0), (64,))
found = {}
def biggest_gap(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in pairs)

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
    found = json.loads(run_python(PRELUDE + CHILD, env=ON_CPU).splitlines()[-1])
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
    for name in ("8_to_4", "4_to_8"):
        assert found[name] < 1e-5 and found[name + "_errors_equal"], (name, found[name])
        (said,) = found[name + "_said"]
        first, then = name.split("_to_")
        assert f"saved on {first} devices" in said and f"on {then} (" in said and "another order" in said


def test_fsdp_on_one_device_replicates():
    tree = {"w": np.zeros((304, 704), np.float32), "b": np.zeros(704, np.float32)}
    found = fnn.parallel.fsdp(tree, fnn.parallel.data_mesh(1))
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(found))


def test_a_layout_that_is_not_one_is_refused_naming_those_there_are():
    data = type("D", (), {"x_train": np.ones((8, 3)), "y_train": np.zeros(8, int)})()
    data.x_test, data.y_test = data.x_train, data.y_train
    model = nn.dense(2)
    with pytest.raises(fnn.InputError, match=r"sharding must be one of 'replicated', 'fsdp', got 'zero3'"):
        fnn.fit(model, model.init(jax.random.key(0), (3,))[1], data, epochs=1, batch_size=4, sharding="zero3")
    with pytest.raises(fnn.InputError, match=r"sharding must be one of"):
        fnn.parallel.layout("zero3", {}, fnn.parallel.data_mesh(1))
