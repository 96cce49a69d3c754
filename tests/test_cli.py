"""The experiments' command line: user errors are one line and exit 2; devices and checkpoints plumb through."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    """Runs ``python -m experiments.mnist_two_layer ARGS``; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.mnist_two_layer", "--no-progress", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def broken_source(tmp_path):
    """A copy of the MNIST source folder whose training images are cut short."""
    from tests.conftest import SHARED

    source = tmp_path / "mnist"
    shutil.copytree(SHARED / "mnist", source)
    (source / "train-images-idx3-ubyte.gz").write_bytes(
        (SHARED / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()[:1000]
    )
    return source


def test_a_broken_data_file_is_one_line_and_exit_2(broken_source, tmp_path):
    proc = run("--source-dir", broken_source, "--data-dir", tmp_path / "tfds")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte.gz: not a valid gzip file" in proc.stderr


def test_a_missing_data_file_is_one_line_and_exit_2(broken_source, tmp_path):
    (broken_source / "t10k-labels-idx1-ubyte.gz").unlink()
    proc = run("--source-dir", broken_source, "--data-dir", tmp_path / "tfds")
    assert proc.returncode == 2 and proc.stderr.startswith("error: missing file t10k-labels-idx1-ubyte.gz")


def test_debug_shows_the_traceback(broken_source, tmp_path):
    proc = run("--source-dir", broken_source, "--data-dir", tmp_path / "tfds", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.fixture
def prepared(mnist):
    """Options that load the test session's prepared MNIST from its cache (the child imports no TensorFlow)."""
    from tests.conftest import SHARED

    _, data_dir, _ = mnist
    return ("--data-dir", data_dir, "--source-dir", SHARED / "mnist", "--grad", "custom")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--batch-size", "0"), "error: batch_size must be an int in [1, 60000]"),
        (("--lr", "1e6", "--epochs", "1"), "error: training diverged: the loss became nan at epoch 1, step"),
        (("--devices", "3"), "error: batch_size 100 does not split evenly over 3 devices"),
        (("--resume",), "error: --resume needs --checkpoint-dir"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(prepared, flags, message):
    proc = run(*prepared, *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr


def test_devices_and_checkpoints_plumb_through(prepared, tmp_path):
    first = run(
        *prepared,
        "--epochs",
        "1",
        "--devices",
        "4",
        "--checkpoint-dir",
        tmp_path / "ckpt",
        "--json",
        tmp_path / "a.json",
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "on 4 devices" in first.stdout and os.listdir(tmp_path / "ckpt" / "custom") == ["600"]
    resumed = run(
        *prepared,
        "--epochs",
        "2",
        "--devices",
        "4",
        "--checkpoint-dir",
        tmp_path / "ckpt",
        "--resume",
        "--json",
        tmp_path / "b.json",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a["devices"] == b["devices"] == 4
    assert [r["epoch"] for r in b["history"]] == [1, 2] and b["history"][0] == a["history"][0]
