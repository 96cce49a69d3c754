"""fit holds up: no silent wrong results, divergence stops training, runs resume bit for bit."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import CheckpointError, DataError
from fnn.loop import Checkpointing, TrainingDiverged

pytest.importorskip("orbax.checkpoint")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_data(n_train=200, n_test=40, n=20, k=3, seed=0):
    """A separable 3-class problem in float32: labels are the arg-max of a random linear map."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((n, k))

    def split(m):
        x = rng.standard_normal((m, n)).astype(np.float32)
        return x, np.argmax(x @ teacher, axis=1).astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


MODEL = fnn.nn.mlp([20, 8, 3])
#: A model with state and randomness: batch statistics must be the whole batch's, masks the same on resuming.
STATEFUL = fnn.nn.serial(fnn.nn.dense(8), fnn.nn.batch_norm(), fnn.nn.relu, fnn.nn.dropout(0.2), fnn.nn.dense(3))


def init(model=MODEL):
    """Initial parameters of ``model`` (:data:`MODEL` by default)."""
    return model.init(jax.random.key(0), (20,))[1]


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ------------------------------------------------------------------ no silent wrong results
def _with(**changes):
    """The toy data with some arrays replaced by ``changes[name](array)``."""

    def make():
        data = toy_data()
        for name, change in changes.items():
            setattr(data, name, change(getattr(data, name).copy()))
        return data

    return make


def _set(index, value):
    def change(a):
        a[index] = value
        return a

    return change


# Every way a run could end "successfully" with a meaningless model, and what fit says instead:
# (name, data, model, fit options, exception, message pattern).
BAD_INPUTS = [
    ("label >= classes", _with(y_train=_set(5, 3)), MODEL, {}, DataError,
     r"train labels must be class ids in \[0, 3\) for a model with 3 outputs; label 3 at index 5"),
    ("negative label", _with(y_test=_set(0, -1)), MODEL, {}, DataError, r"test labels .* label -1 at index 0"),
    ("model with too few classes", toy_data, fnn.nn.mlp([20, 8, 2]), {}, DataError,
     r"class ids in \[0, 2\) for a model with 2 outputs; label 2"),
    ("NaN input", _with(x_train=_set((3, 2), np.nan)), MODEL, {}, DataError,
     r"train inputs must be finite; 1 of 4000 entries are NaN or infinite, the first nan at example 3"),
    ("infinite test input", _with(x_test=_set((0, 0), np.inf)), MODEL, {}, DataError, r"test inputs must be finite"),
    ("diverging step size", toy_data, MODEL, {"optimizer": 1e6}, TrainingDiverged,
     r"training diverged: the loss became \S+(, more than 10000 times .*)? at epoch 1, step \d+ of 10; no checkpoint"),
    ("empty training set", _with(x_train=lambda a: a[:0], y_train=lambda a: a[:0]), MODEL, {}, DataError,
     r"the train split is empty \(x has shape \(0, 20\)\); it needs at least one example"),
    ("empty test set", _with(x_test=lambda a: a[:0], y_test=lambda a: a[:0]), MODEL, {}, DataError,
     r"the test split is empty"),
    ("fewer labels than inputs", _with(y_train=lambda a: a[:-1]), MODEL, {}, DataError,
     r"the train split has 200 inputs but 199 targets"),
    ("float labels", _with(y_train=lambda a: a.astype(np.float32)), MODEL, {}, DataError,
     r"train labels must be integer class ids in \[0, 3\), got dtype float32"),
    ("one-hot labels", _with(y_train=lambda a: np.eye(3, dtype=np.int32)[a]), MODEL, {}, DataError,
     r"train labels must have shape \(200,\) \(one class id per example\), got \(200, 3\)"),
    ("integer inputs", _with(x_train=lambda a: a.astype(np.int32)), MODEL, {}, DataError,
     r"train inputs must be floating-point, got dtype int32"),
    ("inputs of the wrong width", _with(x_train=lambda a: a[:, :19], x_test=lambda a: a[:, :19]), MODEL, {},
     ValueError, r"mlp: built for 20 input features, got input_shape \(19,\)"),
    ("params of another model", toy_data, fnn.nn.mlp([20, 9, 3]), {"params": init()}, DataError,
     r"params\[0\]\['w'\] has shape \(20, 8\), but the model .* expects \(20, 9\)"),
    ("batch larger than the data", toy_data, MODEL, {"batch_size": 201}, ValueError,
     r"batch_size must be an int in \[1, 200\] \(the training set has 200 examples\), got 201"),
    ("no epochs", toy_data, MODEL, {"epochs": 0}, ValueError, r"epochs must be an int >= 1, got 0"),
    ("unknown path", toy_data, MODEL, {"path": "manual"}, ValueError, r"unknown gradient path 'manual'"),
    ("logistic label 2",
     _with(y_train=lambda a: a.reshape(-1, 1), y_test=lambda a: (a.reshape(-1, 1) > 0).astype(np.int32)),
     fnn.nn.mlp([20, 8, 1]), {"loss": fnn.losses.logistic}, DataError, r"train labels must be 0 or 1; got 2"),
    ("NaN regression target",
     _with(y_train=lambda a: np.where(np.arange(200)[:, None] == 7, np.nan, a[:, None] * 1.0).astype(np.float32),
           y_test=lambda a: a[:, None].astype(np.float32)),
     fnn.nn.mlp([20, 8, 1]), {"loss": fnn.losses.mse}, DataError, r"train targets must be finite; 1 of 200 entries"),
    ("divergence factor", toy_data, MODEL, {"divergence_factor": 1.0}, ValueError,
     r"fit: divergence_factor must be above 1 \(or None\), got 1.0"),
    ("steps per call", toy_data, MODEL, {"steps_per_call": 0}, ValueError,
     r"steps_per_call must be an int >= 1, got 0"),
    ("eps that float32 rounds to 0", toy_data, fnn.nn.serial(fnn.nn.layer_norm(1e-50), MODEL), {}, ValueError,
     r"layer_norm: eps=1e-50 is 0.0 in the input's dtype float32, below the smallest normal float32 "
     r"1.17549\d*e-38 \(XLA flushes smaller values to 0\), so a constant input gives NaN; use eps >= 1.17549\d*e-38 "
     r"or a wider dtype"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "model", "options", "error", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_with_a_clear_error(data, model, options, error, message):
    options = {"epochs": 2, "batch_size": 20, "progress": False, **options}
    params = options.pop("params") if "params" in options else model.init(jax.random.key(0), (20,))[1]
    with pytest.raises(error, match=message):
        fnn.fit(model, params, data(), **options)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    # Sane for two epochs (20 steps), then a step size that blows up.
    schedule = optax.piecewise_constant_schedule(0.1, {20: 1e7})
    with pytest.raises(
        TrainingDiverged, match=rf"at epoch 3, step \d+ of 10; the last good checkpoint is 20 in {tmp_path}"
    ):
        fnn.fit(
            MODEL,
            init(),
            toy_data(),
            epochs=4,
            batch_size=20,
            optimizer=optax.sgd(schedule),
            progress=False,
            callbacks=[Checkpointing(tmp_path)],
        )
    params, history = fnn.fit(
        MODEL,
        init(),
        toy_data(),
        epochs=2,
        batch_size=20,
        optimizer=optax.sgd(schedule),
        progress=False,
        callbacks=[Checkpointing(tmp_path, resume=True)],
    )
    assert len(history.train_loss) == 2 and np.isfinite(history.train_loss).all()
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def exploding_run(**options):
    """One SGD step of size 1e5, then none: the loss jumps to a finite 1e9 and stays there, the net ruined."""
    optimizer = optax.sgd(optax.piecewise_constant_schedule(1e5, {1: 0.0}))
    return fnn.fit(MODEL, init(), toy_data(), epochs=2, batch_size=20, optimizer=optimizer, progress=False, **options)


def test_a_finite_explosion_of_the_loss_stops_training():
    with pytest.raises(TrainingDiverged, match=r"the loss became \S+, more than 10000 times max\(\|first loss\| "):
        exploding_run()


def test_without_the_factor_only_non_finite_losses_stop_training():
    # The same run, watched for NaN and inf only, ends "successfully" with a ruined network.
    _, history = exploding_run(divergence_factor=None)
    assert np.isfinite(history.train_loss).all() and history.train_loss.min() > 1e8


def test_a_healthy_run_is_never_stopped_by_the_factor():
    # SGD at a large but stable step: the loss rises above its first value early on, by far less than 1e4.
    _, history = fnn.fit(MODEL, init(), toy_data(), epochs=3, batch_size=20, optimizer=2.0, progress=False)
    assert np.isfinite(history.train_loss).all()


# ------------------------------------------------------------------ settings and shapes that would give wrong results
def zeros(*shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def norm_params(n, dtype=jnp.float32):
    return {"gamma": jnp.ones(n, dtype), "beta": jnp.zeros(n, dtype)}


def attention_of(x):
    """Self-attention of ``x[N, T, 4]``, two heads of 3."""
    attention = fnn.nn.attention(2, 3)
    return attention.apply(attention.init(jax.random.key(0), (5, 4))[1], x)


# Inputs a layer would silently misread (pooling over the batch axis), divide by zero on, or NaN on:
# (name, call, message pattern); each raises ValueError naming the module, the shapes and the fix.
BAD_SHAPES = [
    ("pooling without a channel axis", lambda: fnn.nn.max_pool((2, 2)).apply((), zeros(4, 6, 6)),
     r"max_pool: input must be \[N, H, W, C\], 4 axes for the window \(2, 2\), got shape \(4, 6, 6\); without a "
     r"channel axis, add one: x\[\.\.\., None\] \(shape \(4, 6, 6, 1\)\); without a batch axis, add one: x\[None\] "
     r"\(shape \(1, 4, 6, 6\)\)"),
    ("pooling over extra leading axes", lambda: fnn.ops.custom.avg_pool(zeros(2, 3, 6, 1), (2,)),
     r"avg_pool: input must be \[N, W, C\], 3 axes for the window \(2,\), got shape \(2, 3, 6, 1\); merge the leading "
     r"axes into one batch axis: x.reshape\(-1, \*x.shape\[-2:\]\)"),
    ("pooling init without a channel axis", lambda: fnn.nn.avg_pool((2, 2)).init(jax.random.key(0), (6, 6)),
     r"avg_pool: input_shape must be a tuple of 3 positive ints \(batch axis excluded\), got \(6, 6\); for inputs "
     r"without a channel axis, give one: input_shape \(6, 6, 1\) and x\[\.\.\., None\]"),
    ("convolution without a channel axis", lambda: fnn.nn.conv2d(3, 2).apply({"w": zeros(2, 2, 6, 3)}, zeros(4, 6, 6)),
     r"conv2d: input must be \[N, H, W, C\], 4 axes \(NHWC\), got shape \(4, 6, 6\); without a channel axis, add one"),
    ("convolution init without a channel axis", lambda: fnn.nn.conv1d(3, 2).init(jax.random.key(0), (6,)),
     r"conv1d: input_shape must be a tuple of 2 positive ints .*got \(6,\); for inputs without a channel axis"),
    ("attention without keys", lambda: fnn.ops.custom.attention(zeros(2, 4, 2, 3), *(zeros(2, 0, 2, 3),) * 2),
     r"attention: needs at least one query, one key and one feature per head \(T, S, D >= 1\), "
     r"got q \(2, 4, 2, 3\) \[B, T, H, D\] and k, v \(2, 0, 2, 3\) \[B, S, H, D\]"),
    ("attention without features", lambda: fnn.ops.autodiff.attention(*(zeros(2, 4, 2, 0),) * 3),
     r"attention: needs at least one query, one key and one feature per head .*got q \(2, 4, 2, 0\)"),
    ("self-attention without positions", lambda: attention_of(zeros(2, 0, 4)),
     r"attention: needs at least one position T and one feature D_model, got input shape \(2, 0, 4\) "
     r"\[\.\.\., T, D_model\]"),
    ("eps that float16 rounds to 0", lambda: fnn.nn.group_norm(1, 1e-8).apply(norm_params(3, jnp.float16),
                                                                                zeros(2, 3, dtype=jnp.float16)),
     r"group_norm: eps=1e-08 is 0.0 in the input's dtype float16, below the smallest normal float32 1.17549\d*e-38 .*"
     r"use eps >= 1.17549\d*e-38 or a wider dtype"),
    ("eps subnormal in bfloat16", lambda: fnn.ops.custom.batch_norm(zeros(2, 3, dtype=jnp.bfloat16),
                                                                     *norm_params(3, jnp.bfloat16).values(), eps=1e-40),
     r"batch_norm: eps=1e-40 is 9.\d+e-41 in the input's dtype bfloat16, below the smallest normal float32"),
    ("eps that float32 rounds to inf", lambda: fnn.nn.layer_norm(1e39).apply(norm_params(3), zeros(2, 3)),
     r"layer_norm: eps=1e\+39 is inf in the input's dtype float32, so sigma would be infinite and every output beta; "
     r"use eps <= 3.40282\d*e\+38 or a wider dtype"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "message"), [c[1:] for c in BAD_SHAPES], ids=[c[0] for c in BAD_SHAPES])
def test_inputs_a_layer_would_misread_are_refused_naming_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# Numeric settings: (owner, setting, build from the value, a value out of range, the range in words).
SETTINGS = [
    ("dropout", "rate", fnn.nn.dropout, 1.0, "in [0, 1)"),
    ("batch_norm", "momentum", lambda v: fnn.nn.batch_norm(momentum=v), -1.0, "in [0, 1)"),
    ("batch_norm", "eps", lambda v: fnn.nn.batch_norm(eps=v), 0.0, "in (0, inf)"),
    ("layer_norm", "eps", fnn.nn.layer_norm, float("inf"), "in (0, inf)"),
    ("group_norm", "eps", lambda v: fnn.nn.group_norm(2, eps=v), -1.0, "in (0, inf)"),
    ("leaky_relu", "negative_slope", fnn.nn.leaky_relu, 1.0, "in [0, 1)"),
    ("softplus", "beta", fnn.nn.softplus, 0.0, "in (0, inf)"),
    ("multiclass_hinge", "margin", fnn.losses.multiclass_hinge, float("nan"), "in [0, inf)"),
    ("verdict", "margin", lambda v: fnn.bench.verdict(0.9, 1.1, v), 1.0,
     "in [0, 1) (0.02 means differences within 2% are a tie)"),
]  # fmt: skip
#: Values that are not real numbers (made when a test runs), and how the message names them.
NOT_NUMBERS = {
    "bool": (lambda: True, "bool True"),
    "str": (lambda: "0.5", "str '0.5'"),
    "array": (lambda: np.array([0.5]), "ndarray of shape (1,)"),
    "jax_array": (lambda: jnp.array([0.5]), "ArrayImpl of shape (1,)"),
}
settings = pytest.mark.parametrize(
    ("owner", "arg", "build", "out_of_range", "within"), SETTINGS, ids=[f"{s[0]}_{s[1]}" for s in SETTINGS]
)


@settings
@pytest.mark.parametrize("kind", list(NOT_NUMBERS))
def test_a_setting_that_is_not_a_number_is_refused_naming_its_type(owner, arg, build, out_of_range, within, kind):
    make, named = NOT_NUMBERS[kind]
    with pytest.raises(TypeError, match=re.escape(f"{owner}: {arg} must be a real number {within}, got {named}")):
        build(make())


@settings
def test_a_setting_out_of_range_is_refused_as_the_number_it_is(owner, arg, build, out_of_range, within):
    # Given as a NumPy float32, named as the Python float it converts to: not "got np.float32(1.0)".
    with pytest.raises(ValueError, match=re.escape(f"{owner}: {arg} must be {within}, got {out_of_range!r}")):
        build(np.float32(out_of_range))


# ------------------------------------------------------------------ determinism and resuming
RUN = {"epochs": 4, "batch_size": 30, "progress": False}  # 200 rows: 6 batches of 30 and one of 20


@pytest.mark.parametrize("shuffle", [False, True])
def test_same_seed_same_results_bit_for_bit(shuffle):
    key = jax.random.key(3) if shuffle else None
    runs = [fnn.fit(MODEL, init(), toy_data(), optimizer=optax.adam(1e-2), shuffle_key=key, **RUN) for _ in range(2)]
    (p1, h1), (p2, h2) = runs
    assert leaves_equal(p1, p2)
    assert h1.rows()[-1]["train_loss"] == h2.rows()[-1]["train_loss"]
    np.testing.assert_array_equal(h1.test_err, h2.test_err)


def _columns(history):
    return [{k: v for k, v in row.items() if k != "epoch_s"} for row in history.rows()]


@pytest.mark.parametrize("every_steps", [None, 4])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, every_steps):
    options = {"optimizer": optax.adam(1e-2), "shuffle_key": jax.random.key(3), **RUN}
    want_params, want = fnn.fit(MODEL, init(), toy_data(), **options)
    ckpt = {"every_steps": every_steps, "keep": 2}
    fnn.fit(MODEL, init(), toy_data(), **{**options, "epochs": 2}, callbacks=[Checkpointing(tmp_path, **ckpt)])
    assert len(os.listdir(tmp_path)) == 2  # keep=2
    resumed = Checkpointing(tmp_path, **ckpt, resume=True)
    got_params, got = fnn.fit(MODEL, init(), toy_data(), **options, callbacks=[resumed])
    assert leaves_equal(got_params, want_params)
    assert _columns(got) == _columns(want)


def test_resuming_refuses_a_different_run(tmp_path):
    options = {"epochs": 2, "progress": False}
    fnn.fit(MODEL, init(), toy_data(), epochs=1, batch_size=20, progress=False, callbacks=[Checkpointing(tmp_path)])
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(newest 10\); pass .*resume=True"):
        fnn.fit(MODEL, init(), toy_data(), batch_size=20, **options, callbacks=[Checkpointing(tmp_path)])
    with pytest.raises(CheckpointError, match=r"is from a different run; batch_size: checkpoint 20, this run 25"):
        fnn.fit(MODEL, init(), toy_data(), batch_size=25, **options, callbacks=[Checkpointing(tmp_path, resume=True)])


# ------------------------------------------------------------------ processes: kills, devices, hosts
def run_python(code, *args, env=None, timeout=240):
    """Runs ``code`` in a fresh Python (JAX unconfigured); returns its stdout, failing on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


#: The environment of a child that simulates CPU devices, whatever accelerator the machine has.
ON_CPU = {"JAX_PLATFORMS": "cpu"}

PRELUDE = f"""
import sys, types
import numpy as np
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
"""

TRAIN = """
import jax, optax, fnn
from test_robust import toy_data, MODEL, STATEFUL, init
def train(devices=None, checkpoint=None, model=MODEL, **kw):
    \"\"\"(params, history); (params, state) in place of params for a model with state.\"\"\"
    options = dict(epochs=3, batch_size=40, optimizer=optax.adam(1e-2), shuffle_key=jax.random.key(3), progress=False)
    callbacks = [] if checkpoint is None else [fnn.loop.Checkpointing(**checkpoint)]
    options |= {"devices": devices, "callbacks": callbacks, **kw}
    state = {"state": model.init_state((20,))} if model._has_state else {}
    *trained, history = fnn.fit(model, init(model), toy_data(), **options, **state)
    return (trained[0] if len(trained) == 1 else tuple(trained)), history
"""


@pytest.mark.slow  # about 15 s: eight simulated devices in a subprocess
def test_eight_simulated_devices_match_one_and_are_deterministic():
    """For a plain model and one with batch norm (statistics of the whole batch over the devices) and dropout."""
    out = run_python(
        PRELUDE
        + "import jax\njax.config.update('jax_num_cpu_devices', 8)\n"
        + TRAIN
        + """
assert jax.device_count() == 8
for name, model in (("plain", MODEL), ("stateful", STATEFUL)):
    one_p, one = train(1, model=model)
    eight_p, eight = train(8, model=model)
    again_p, again = train(8, model=model)
    bitwise = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(eight_p), jax.tree.leaves(again_p)))
    print(name, "bitwise", bitwise)
    print(name, "max_rel_loss", float(np.max(np.abs(eight.train_loss - one.train_loss) / one.train_loss)))
    pairs = zip(jax.tree.leaves(eight_p), jax.tree.leaves(one_p))
    print(name, "max_param_diff", max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs))
try:
    train(8, batch_size=20)
except ValueError as e:
    print("uneven", e)
""",
        env=ON_CPU,
    )
    for name in ("plain", "stateful"):
        assert f"{name} bitwise True" in out
        # float32 noise: the 8-device gradient sums the batch in another order (eps 1.2e-7, a few ulps per step).
        assert float(re.search(rf"{name} max_rel_loss (\S+)", out)[1]) < 1e-5
        assert float(re.search(rf"{name} max_param_diff (\S+)", out)[1]) < 1e-5
    assert "uneven batch_size 20 does not split evenly over 8 devices" in out


def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path):
    """Two processes of 2 CPU devices each, through jax.distributed on 127.0.0.1 (gloo collectives). The processes
    use the CPU even on a machine with an accelerator: one GPU cannot be two processes' device."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = (
        PRELUDE
        + """
import jax
jax.config.update("jax_num_cpu_devices", 2)
process, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process)
"""
        + TRAIN
        + """
params, history = train(jax.devices())
print("devices", jax.device_count(), "losses", history.train_loss.tolist())
"""
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(i), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **ON_CPU},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    single = run_python(
        PRELUDE
        + "import jax\njax.config.update('jax_num_cpu_devices', 4)\n"
        + TRAIN
        + """
params, history = train(4)
print("devices", jax.device_count(), "losses", history.train_loss.tolist())
""",
        env=ON_CPU,
    )
    losses = [eval(re.search(r"losses (\[.*\])", out)[1]) for out, _ in outs] + [
        eval(re.search(r"losses (\[.*\])", single)[1])
    ]
    assert all("devices 4" in out for out, _ in outs)
    assert losses[0] == losses[1]  # both processes hold the same replicated result
    np.testing.assert_allclose(losses[0], losses[2], rtol=1e-6)  # float32 noise of another reduction order


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    """SIGKILL at random moments (training or saving); the last checkpoint loads and the resumed run ends the same.

    The model keeps batch norm's running statistics and draws dropout masks: both must resume exactly."""
    script = (
        PRELUDE
        + TRAIN
        + """
import hashlib, json
folder = sys.argv[1] if len(sys.argv) > 1 else None
checkpoint = None if folder is None else {"directory": folder, "every_steps": 2, "keep": 2, "resume": True}
params, history = train(epochs=6, checkpoint=checkpoint, model=STATEFUL)
digest = hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in jax.tree.leaves(params))).hexdigest()
rows = [{k: v for k, v in r.items() if k != "epoch_s"} for r in history.rows()]
print(json.dumps({"params": digest, "history": rows}))
"""
    )
    want = run_python(script)
    rng = np.random.default_rng(0)
    folder = tmp_path / "run"
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(folder)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 60
        while not (folder.exists() and any(p.name.isdigit() for p in folder.iterdir())) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_python(script, folder) == want


def jitter(key, x):
    """Data augmentation for the tests: Gaussian noise of scale 0.1 on each input."""
    return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)


def test_augmented_runs_repeat_resume_and_really_augment(tmp_path):
    options = {"optimizer": optax.adam(1e-2), "shuffle_key": jax.random.key(3), **RUN}
    plain_params, _ = fnn.fit(MODEL, init(), toy_data(), **options)
    identity_params, _ = fnn.fit(MODEL, init(), toy_data(), augment=lambda key, x: x, **options)
    assert leaves_equal(identity_params, plain_params)
    want_params, want = fnn.fit(MODEL, init(), toy_data(), augment=jitter, **options)
    assert not leaves_equal(want_params, plain_params)
    again_params, _ = fnn.fit(MODEL, init(), toy_data(), augment=jitter, **options)
    assert leaves_equal(again_params, want_params)
    first = [Checkpointing(tmp_path, every_steps=3)]
    fnn.fit(MODEL, init(), toy_data(), augment=jitter, **{**options, "epochs": 2}, callbacks=first)
    resumed = [Checkpointing(tmp_path, every_steps=3, resume=True)]
    got_params, got = fnn.fit(MODEL, init(), toy_data(), augment=jitter, **options, callbacks=resumed)
    assert leaves_equal(got_params, want_params) and _columns(got) == _columns(want)
