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
