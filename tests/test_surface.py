"""The library's shape: imports that only go downwards, curated public names, one error class, first-hour messages."""

import ast
import dataclasses
import importlib
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn

PACKAGE = Path(fnn.__file__).resolve().parent


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """``({module: {fnn modules it imports}}, [(module, line) of fnn imports inside a function or class])``."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges, nested = {m: set() for m in paths}, []
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            targets = {t for t in targets if t in paths and t != name}
            if targets and node not in tree.body:
                nested.append((name, node.lineno))
            edges[name] |= targets
    return edges, nested


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_fnn_imports_only_downwards():
    edges, nested = import_graph()
    assert len(edges) > 40 and edges["fnn.nn._compose"] >= {"fnn.module", "fnn.context"}  # the walk sees imports
    assert cycles(edges) == []
    assert nested == [], "an fnn import inside a function or class (to dodge a cycle?)"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


#: Every public name of every public namespace: a new name is a decision, made here.
PUBLIC = {
    "fnn.nn": {
        "dense",
        "mlp",
        "mixed_precision",
        "serial",
        "residual",
        "remat",
        "repeat",
        "flatten",
        "identity",
        "resnet_s",
        "relu",
        "sigmoid",
        "tanh",
        "leaky_relu",
        "gelu",
        "silu",
        "softplus",
        "activation",
        "softmax",
        "layer_norm",
        "group_norm",
        "batch_norm",
        "dropout",
        "conv1d",
        "conv2d",
        "conv_form",
        "CONV_FORMS",
        "avg_pool",
        "max_pool",
        "embedding",
        "positional_embedding",
        "attention",
        "initializers",
    },
    "fnn.data": {
        "DATASETS",
        "ENV_VAR",
        "LAYOUTS",
        "Batches",
        "Dataset",
        "Records",
        "Stream",
        "load",
        "random_shift",
        "read_idx",
        "stream",
        "synthetic",
        "write_records",
    },
    "fnn.ops": {"NAMES", "OP_SETS", "autodiff", "custom", "get"},
    "fnn.testing": {
        "check_module",
        "check_loss",
        "assert_module",
        "assert_loss",
        "compare_vjp",
        "relative_error",
        "Report",
        "Check",
        "Difference",
        "VJP_CHECKS",
        "MODULE_CHECKS",
        "DTYPES",
        "DEFAULT_TOLERANCES",
    },
    "fnn.inspect": {
        "compare_paths",
        "PathRow",
        "wrong_rules",
        "Rule",
        "recorded_calls",
        "reference_grads",
        "gradient_errors",
        "compile_step",
        "compiled_cost",
        "memory",
        "hlo_counts",
        "op_diff",
        "residuals",
        "backprop_as_one_vjp",
        "LEARNING_RATE",
    },
    "fnn.bench": {
        "Result",
        "compare",
        "summarize",
        "verdict",
        "MachineRate",
        "machine_rate",
        "limit",
        "model_flops",
        "round_order",
        "FlopCount",
        "matmul_rate",
        "flops",
        "device_description",
    },
    "fnn.parallel": {
        "AXIS",
        "FSDP_MIN_BYTES",
        "LAYOUTS",
        "batch_sharding",
        "by_names",
        "data_mesh",
        "data_shards",
        "fsdp",
        "layout",
        "logical_axes",
        "place",
        "replicate",
        "replicated",
        "sharding_table",
        "state_axes",
        "training_mesh",
        "use_cpu_devices",
    },
    "fnn.checkpoint": {"Checkpoints"},
    "fnn.validate": {
        "check_binary_labels",
        "check_class_labels",
        "check_inputs",
        "check_params",
        "check_splits",
        "check_state",
        "check_targets",
        "check_values",
    },
    "fnn": {
        "PATHS",
        "History",
        "fit",
        "jvp",
        "value_and_grad",
        "use_compilation_cache",
        "__version__",
        "Error",
        "InputError",
        "UsageError",
        "DataError",
        "DatasetError",
        "NetworkError",
        "CheckpointError",
        "TrainingDiverged",
        "TrainingInterrupted",
        "TrainingStalled",
        "ShardingWarning",
        "UnidentifiedWarning",
        "StructureError",
        "CheckFailed",
        "bench",
        "checkpoint",
        "context",
        "data",
        "inspect",
        "loop",
        "losses",
        "metrics",
        "module",
        "nn",
        "ops",
        "parallel",
        "testing",
        "train",
        "validate",
    },
    "fnn.loop": {
        "fit",
        "History",
        "evaluate",
        "Run",
        "Callback",
        "Checkpointing",
        "EarlyStopping",
        "EpochFunction",
        "ProgressBar",
        "TrainingDiverged",
        "steps_per_epoch",
    },
    "fnn.module": {
        "Loss",
        "Module",
        "Setting",
        "as_custom_vjp",
        "leaf",
        "loss",
        "returned",
        "structural",
        "with_settings",
    },
    "fnn.context": {"bind", "child_key"},
    "fnn.metrics": {"error_rate"},
    "fnn.train": {
        "DynamicLossScale",
        "TrainState",
        "all_finite",
        "as_optimizer",
        "loss_scale_for",
        "optimizer_step",
        "optimizer_update",
        "sgd_step",
        "sgd_update",
        "train_step",
    },
    "fnn.losses": {"cross_entropy", "logistic", "mse", "multiclass_hinge"},
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_namespace_exports_only_what_a_user_calls(name):
    module = importlib.import_module(name)
    assert set(module.__all__) == PUBLIC[name]
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.{public} is listed but missing"
    stray = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and n not in PUBLIC[name]
        and isinstance(v, types.ModuleType)
        and v.__name__.startswith(f"{name}.")
        and not v.__name__.split(".")[-1].startswith("_")
    }
    assert not stray, f"{name} has public implementation modules {stray}: make them private (_name.py)"


def test_a_modules_public_face_is_what_a_user_calls_and_what_it_holds():
    """The plumbing (the positional forms, the leaf's and the wiring's records) is private; a leaf and a piece of
    wiring hold different records, so that no module can be both."""
    Module = fnn.module.Module
    public = {name for name in dir(Module) if not name.startswith("_")}
    public |= {field.name for field in dataclasses.fields(Module) if not field.name.startswith("_")}
    calls = {"init", "init_state", "apply", "forward", "backward", "pushforward", "describe", "leaves", "by_rules"}
    assert public == calls | {"name", "children", "settings"}
    dense, net = nn.dense(3), nn.serial(nn.dense(3), nn.relu)
    assert dense.children == () and not hasattr(dense._kind, "children") and not hasattr(net._kind, "stochastic")


def test_one_except_clause_catches_every_fnn_error():
    errors = [
        fnn.InputError,
        fnn.UsageError,
        fnn.DataError,
        fnn.DatasetError,
        fnn.NetworkError,
        fnn.CheckpointError,
        fnn.TrainingDiverged,
        fnn.StructureError,
        fnn.CheckFailed,
    ]
    assert all(issubclass(e, fnn.Error) for e in errors)
    assert issubclass(fnn.InputError, ValueError) and issubclass(fnn.UsageError, TypeError)  # old clauses still work
    with pytest.raises(fnn.Error, match="dense: n_out"):
        nn.dense(0)
    with pytest.raises(fnn.Error, match="unknown gradient path"):
        fnn.value_and_grad(nn.mlp([2, 2]), fnn.losses.cross_entropy, path="numeric")
    with pytest.raises(fnn.Error, match="is already a module"):
        nn.relu(jnp.ones(2))
    with pytest.raises(fnn.Error, match=r"cross_entropy is a loss, not a function to call: its value is loss.apply"):
        fnn.losses.cross_entropy(jnp.ones((2, 3)), jnp.zeros(2, int))
    assert issubclass(fnn.TrainingInterrupted, KeyboardInterrupt) and not issubclass(fnn.TrainingInterrupted, Exception)


# ------------------------------------------------------------------ the first hour at this surface
def toy(x, y):
    return types.SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)


FIT = {"epochs": 1, "batch_size": 4, "progress": False}


def test_a_constructor_put_in_serial_uncalled_says_call_it():
    with pytest.raises(
        fnn.UsageError,
        match=r"serial: argument 1 is the constructor nn.batch_norm, not a module; "
        r"call it: nn.batch_norm\(...\)",
    ):
        nn.serial(nn.dense(3), nn.batch_norm)


def test_labels_and_pixels_in_the_wrong_form_name_the_conversion():
    model = nn.mlp([4, 3])
    params = model.init(jax.random.key(0), (4,))[1]
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    one_hot = np.eye(3, dtype=np.float32)[np.arange(8) % 3]
    with pytest.raises(fnn.DataError, match=r"these look one-hot: pass y.argmax\(-1\)"):
        fnn.fit(model, params, toy(x, one_hot), **FIT)
    pixels = (x * 255).astype(np.uint8)
    with pytest.raises(fnn.DataError, match=r"got dtype uint8; .*pass x / 255"):
        fnn.fit(model, params, toy(pixels, np.arange(8) % 3), **FIT)


def test_init_s_whole_result_passed_as_params_names_the_pair():
    model = nn.mlp([4, 3])
    with pytest.raises(fnn.DataError, match=r"model.init, which returns \(output_shape, params\): take the second"):
        fnn.fit(model, model.init(jax.random.key(0), (4,)), toy(np.ones((8, 4), np.float32), np.arange(8) % 3), **FIT)


def test_the_error_rate_of_an_output_state_pair_names_the_pair():
    bn = nn.serial(nn.dense(3), nn.batch_norm())
    params, state = bn.init(jax.random.key(0), (4,))[1], bn.init_state((4,))
    outputs = bn.apply(params, jnp.ones((4, 4), jnp.float32), state=state, train=False)
    with pytest.raises(fnn.UsageError, match=r"error_rate: logits is a pair \(outputs, state\)"):
        fnn.metrics.error_rate(outputs, jnp.zeros(4, int))


def _state_tests(tree):
    """The ``if``s and conditional expressions of ``tree`` that test whether a ``state`` is ``None``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp)) and isinstance(node.test, ast.Compare):
            left = node.test.left
            name = left.id if isinstance(left, ast.Name) else getattr(left, "attr", "")
            none = [c for c in node.test.comparators if isinstance(c, ast.Constant) and c.value is None]
            if name == "state" and none:
                yield node


def _gives_state(expression):
    """Whether an expression is a tuple that gives back a new state (an element named ``*_state``)."""
    names = [e.value if isinstance(e, ast.Starred) else e for e in getattr(expression, "elts", ())]
    return isinstance(expression, ast.Tuple) and any(getattr(n, "id", "").endswith("_state") for n in names)


def test_the_call_contracts_rule_is_written_once():
    """Whether the new state comes back (exactly when ``state=`` was passed) is decided in one place,
    ``fnn.module.returned``: no other return in fnn chooses its shape by ``state is None``."""
    root = Path(fnn.__file__).parents[1]
    found = []
    for path in sorted((root / "fnn").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in _state_tests(function):
                returns = isinstance(node, ast.If) and any(isinstance(n, ast.Return) for n in ast.walk(node))
                in_return = any(node in list(ast.walk(r)) for r in ast.walk(function) if isinstance(r, ast.Return))
                gives_back = isinstance(node, ast.IfExp) and (_gives_state(node.body) or _gives_state(node.orelse))
                if returns or (in_return and gives_back):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {function.name}")
    assert found == [], found
