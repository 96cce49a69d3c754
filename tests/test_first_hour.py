"""What a new user meets in the first hour: images for conv nets, errors that name the fix, a quiet data set-up."""

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED

import fnn
from fnn import nn

ROOT = Path(__file__).resolve().parents[1]
KEY = jax.random.key(0)
CONV = nn.serial(nn.conv2d(4, 3, stride=2), nn.relu, nn.flatten(), nn.dense(10))


def mnist_like(layout, n=20):
    """``n`` MNIST-shaped examples, flat rows or images."""
    shape = (n, 784) if layout == "flat" else (n, 28, 28, 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    y = np.arange(n, dtype=np.int32) % 10
    return types.SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)


# ------------------------------------------------------------------ images for conv nets
def test_load_gives_images_for_conv_nets_without_a_reshape(mnist):
    dataset, data_dir, _ = mnist
    images = fnn.data.load("mnist", data_dir=data_dir, source_dir=SHARED / "mnist", layout="image")
    assert images.x_train.shape == (60_000, 28, 28, 1) and images.x_test.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(images.x_train.reshape(60_000, 784), dataset.x_train)
    assert dataset.x_train.shape == (60_000, 784)  # flat rows stay the default
    with pytest.raises(
        ValueError, match=r"layout must be 'flat' \(\[N, 784\]\) or 'image' \(\[N, 28, 28, 1\]\), got 'nhwc'"
    ):
        fnn.data.load("mnist", data_dir=data_dir, layout="nhwc")


def test_validation_holds_out_the_last_training_examples():
    data = fnn.data.Dataset("toy", np.arange(10.0)[:, None], np.arange(10), np.zeros((2, 1)), np.zeros(2, int))
    held = data.validation(3)
    np.testing.assert_array_equal(held.x_train[:, 0], np.arange(7.0))
    np.testing.assert_array_equal(held.y_test, [7, 8, 9])
    assert held.name == "toy (validation split)"
    with pytest.raises(ValueError, match=r"validation size must be an int in \[1, 9\] \(the training set has 10\)"):
        data.validation(10)


# ------------------------------------------------------------------ errors that name the fix
def test_a_conv_net_fit_on_flat_rows_names_the_image_layout():
    _, params = CONV.init(KEY, (28, 28, 1))
    hint = r"got \(784,\); the input is flat rows of 784 values: load images with fnn.data.load\(..., layout='image'\) "
    with pytest.raises(ValueError, match=hint + r".*x.reshape\(-1, 28, 28, 1\)"):
        fnn.fit(CONV, params, mnist_like("flat"), epochs=1, batch_size=10, progress=False)
    not_nhwc = r"conv2d: input must be \[N, H, W, C\], 4 axes \(NHWC\), got shape \(5, 784\); "
    with pytest.raises(ValueError, match=not_nhwc):
        CONV.apply(params, jnp.zeros((5, 784), jnp.float32))


def test_an_mlp_fit_on_images_names_flatten():
    model = nn.mlp([784, 10])
    _, params = model.init(KEY, (784,))
    hint = r"the input is image-shaped, .* put nn.flatten\(\) before this layer"
    with pytest.raises(ValueError, match=r"mlp: built for 784 input features, got input_shape \(28, 28, 1\); " + hint):
        fnn.fit(model, params, mnist_like("image"), epochs=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match=r"dense: input has 1 features but w expects 784 .*put nn.flatten\(\) before"):
        model.apply(params, jnp.zeros((5, 28, 28, 1), jnp.float32))


def test_a_dense_layer_is_not_silently_built_for_image_shaped_input():
    message = r"dense: input_shape \(28, 28, 1\) is image-shaped; .* would build a \(1, 64\) weight applied at every"
    with pytest.raises(ValueError, match=message + r" position. Put nn.flatten\(\) before it"):
        nn.serial(nn.dense(64), nn.relu, nn.dense(10)).init(KEY, (28, 28, 1))
    _, params = nn.serial(nn.flatten(), nn.dense(64)).init(KEY, (28, 28, 1))
    assert params[1]["w"].shape == (784, 64)
    assert nn.dense(8).init(KEY, (5, 3))[0] == (5, 8)  # sequences [T, D] stay per-position


def test_calling_a_module_says_it_already_is_one():
    with pytest.raises(
        TypeError, match=r"relu is already a module, not a function to call: .*\(nn.relu, not nn.relu\(\)\)"
    ):
        nn.relu()
    with pytest.raises(TypeError, match="dense is already a module"):
        nn.dense(3)(jnp.zeros((2, 4)))


def test_an_optimizer_named_by_a_string_names_the_argument_passed():
    model = nn.mlp([784, 10])
    with pytest.raises(TypeError, match=r"^optimizer must be a step size .* got the string 'adam'$"):
        fnn.fit(model, model.init(KEY, (784,))[1], mnist_like("flat"), batch_size=10, optimizer="adam", progress=False)


# ------------------------------------------------------------------ a quiet set-up, and the name clash
def test_offline_preparation_prints_one_line_of_its_own(mnist_preparation):
    """A fresh process prepares MNIST from the IDX files: no TFDS bars, no TensorFlow start-up logs.

    The process is the test session's one preparation of MNIST (``conftest.mnist_preparation``: ``python -c
    "fnn.data.load('mnist', source_dir=..., data_dir=...)"`` in a new process), whose output it recorded.
    """
    proc = mnist_preparation
    assert proc["returncode"] == 0, proc["stderr"][-3000:]
    assert proc["stdout"] == ""
    assert proc["stderr"].splitlines() == [
        f"fnn.data: reading mnist from its local files into {proc['data_dir']} (once; later loads read a cache)"
    ]


def test_the_readme_warns_about_a_script_beside_the_clone():
    readme = (ROOT / "README.md").read_text()
    assert "a script saved beside the\nclone's `fnn/` folder imports that folder" in readme


# ------------------------------------------------------------------ training that says what went wrong
def toy_classes(n=300, seed=0):
    """A linear teacher's 3 classes of 6 Gaussian features, learnable in one epoch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((6, 3)), axis=1).astype(np.int32)
    return types.SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)


def test_a_run_stuck_at_the_chance_level_says_so_in_one_line_and_a_learning_one_does_not(recwarn):
    data = toy_classes()
    stuck = nn.mlp([6, 8, 3], w_init="zeros")  # the notes' zero start: a saddle, every gradient zero
    fnn.fit(stuck, stuck.init(KEY, (6,))[1], data, epochs=2, batch_size=30, progress=False)
    stalled = [w for w in recwarn if issubclass(w.category, fnn.TrainingStalled)]
    assert len(stalled) == 1 and "\n" not in str(stalled[0].message), [str(w.message) for w in recwarn]
    assert "after epoch 1 the loss is still at the chance level" in str(stalled[0].message)
    assert "Try a smaller step" in str(stalled[0].message) and stalled[0].filename == __file__
    recwarn.clear()
    learning = nn.mlp([6, 8, 3])
    fnn.fit(learning, learning.init(KEY, (6,))[1], data, epochs=1, batch_size=30, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, fnn.TrainingStalled)]


class Interrupt(fnn.loop.Callback):
    every_steps = 2

    def on_steps(self, run):
        if run.epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_ends_a_run_with_one_line_naming_the_last_checkpoint_and_how_to_resume(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    data, model = toy_classes(), nn.mlp([6, 8, 3])
    params = model.init(KEY, (6,))[1]
    with pytest.raises(fnn.TrainingInterrupted) as caught:
        fnn.fit(model, params, data, epochs=3, batch_size=30, progress=False,
                callbacks=[fnn.loop.Checkpointing(tmp_path), Interrupt()])  # fmt: skip
    assert caught.value.__suppress_context__ and "\n" not in str(caught.value)
    assert str(caught.value) == (
        f"training interrupted in epoch 2, after step 2 of 10; the last checkpoint is 10 in {tmp_path}: call fit "
        f"again with fnn.loop.Checkpointing({str(tmp_path)!r}, resume=True) to continue from it"
    )
    with pytest.raises(KeyboardInterrupt, match="no checkpoint was saved \\(add fnn.loop.Checkpointing"):
        fnn.fit(model, params, data, epochs=3, batch_size=30, progress=False, callbacks=[Interrupt()])


@pytest.mark.parametrize(
    "callbacks, message",
    [
        ([42], r"callbacks\[0\] is int 42: each callback must be an fnn.loop.Callback"),
        (fnn.loop.EarlyStopping(), r"callbacks must be a list of callbacks, got one EarlyStopping: pass \[it\]"),
    ],
)
def test_callbacks_that_are_not_callbacks_are_refused_before_any_training(callbacks, message):
    data, model = toy_classes(), nn.mlp([6, 8, 3])
    with pytest.raises(fnn.UsageError, match=message):
        fnn.fit(model, model.init(KEY, (6,))[1], data, epochs=1, batch_size=30, progress=False, callbacks=callbacks)


def test_a_checkpoint_folder_that_is_a_file_is_refused_naming_it(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    blocker = tmp_path / "run"
    blocker.write_text("")
    for folder, what in ((blocker, "is a file"), (blocker / "below", f"lies under {blocker}, which is a file")):
        with pytest.raises(fnn.CheckpointError, match=f"the checkpoint folder {folder} {what}; give a folder"):
            fnn.checkpoint.Checkpoints(folder)


def test_a_function_made_with_its_mode_refuses_a_mode_at_the_call():
    model = nn.serial(nn.dense(3), nn.dropout(0.5))
    with pytest.raises(fnn.UsageError, match=r"pass train=True or train=False, to fnn.value_and_grad\(model, loss,"):
        fnn.value_and_grad(model, fnn.losses.cross_entropy)
    grad_fn = fnn.value_and_grad(model, fnn.losses.cross_entropy, train=True)
    with pytest.raises(fnn.UsageError, match=r"train is fixed when the function is made, not when it is called"):
        grad_fn({}, jnp.ones((2, 4)), jnp.zeros(2, int), train=True)
    with pytest.raises(fnn.UsageError, match=r"train is fixed when the function is made"):
        fnn.jvp(model, train=False)({}, jnp.ones((2, 4)), dx=jnp.ones((2, 4)), train=False)


def test_use_cpu_devices_after_jax_started_is_an_fnn_error():
    jnp.ones(1).block_until_ready()
    with pytest.raises(fnn.UsageError, match="JAX has already started with"):
        fnn.parallel.use_cpu_devices(jax.device_count() + 1)


def test_a_checkpoint_of_other_shapes_is_refused_in_one_line_without_orbaxs_advice(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    with fnn.checkpoint.Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(1, {"w": jnp.ones(3)}, {"epoch": 1})
        with pytest.raises(fnn.CheckpointError) as caught:
            checkpoints.restore(1, {"w": jnp.ones(3), "b": jnp.ones(2)})
    message = str(caught.value)
    assert "\n" not in message and "partial_restore" not in message, message
    assert message.startswith(f"checkpoint 1 in {tmp_path} does not match this run's model or optimizer (")
    assert message.endswith(
        "resume with the model and optimizer it was saved with, or start this run in an empty folder"
    )


def test_a_checkpoints_meta_is_what_it_was_when_saved_and_must_be_json(tmp_path):
    """The arrays and the meta are written in the background; a history that grows meanwhile is not saved grown."""
    pytest.importorskip("orbax.checkpoint")
    history = [{"epoch": 1}]
    with fnn.checkpoint.Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(1, {"w": jnp.ones((1000, 1000))}, {"history": history})
        history.append({"epoch": 2})
        with pytest.raises(fnn.InputError, match="a checkpoint's meta must be JSON: .*set"):
            checkpoints.save(2, {"w": jnp.ones(3)}, {"seen": {1, 2}})
    with fnn.checkpoint.Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.restore(1, {"w": jnp.ones((1000, 1000))})[1] == {"history": [{"epoch": 1}]}
