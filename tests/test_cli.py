"""The experiments' command line: user errors are one line and exit 2; devices and checkpoints plumb through."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
    from conftest import SHARED

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
    from conftest import SHARED

    _, data_dir, _ = mnist
    return ("--data-dir", data_dir, "--source-dir", SHARED / "mnist", "--grad", "custom")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--batch-size", "0"), "error: batch_size must be an int in [1, 60000]"),
        (("--lr", "1e6", "--epochs", "1"), "error: training diverged: the loss became "),
        (("--devices", "3"), "error: batch_size 100 does not split evenly over 3 devices"),
        (("--resume",), "error: --resume needs --checkpoint-dir"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(prepared, flags, message):
    proc = run(*prepared, *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr


#: The first 6,000 training images: 60 steps of 100 an epoch, not 600. Where the flags lead (the devices, the
#: checkpoints, the output) does not depend on how many steps there are, and the ten-fold shorter epochs keep the
#: tests that train short.
SUBSET = ("--train-size", "6000")


@pytest.mark.slow  # about 16 s: trains through the command line twice
def test_devices_and_checkpoints_plumb_through(prepared, tmp_path):
    first = run(
        *prepared,
        *SUBSET,
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
    assert "on 4 devices" in first.stdout and os.listdir(tmp_path / "ckpt" / "custom") == ["60"]
    resumed = run(
        *prepared,
        *SUBSET,
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
    assert a["devices"] == b["devices"] == 4 and a["train_size"] == b["train_size"] == 6000
    assert [r["epoch"] for r in b["history"]] == [1, 2] and b["history"][0] == a["history"][0]


def test_the_main_job_speaks_plainly_in_percent_and_says_where_its_results_go(prepared, tmp_path):
    prepared = prepared[:-2]  # every path compared, not custom alone
    proc = run(*prepared, *SUBSET, "--epochs", "1", "--lockstep-every", "30", "--json", tmp_path / "out.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("Loading mnist ...\n6,000 training and 10,000 test images\n")
    assert "Comparing the paths' gradients with the float64 gradient every 30 steps" in out
    assert "The gradient paths agree" in out and "(the notes: 2.6%)" in out
    assert re.search(r"\n    1 \| +\d\.\d{5} \| +\d\.\d{5} \| +\d+\.\d\d% \| +\d+\.\d\d%\n", out)
    for jargon in (" pp", "ulp", "trajectories", "(information)"):
        assert jargon not in out
    assert out.rstrip().endswith(
        f"Results: {tmp_path / 'out.json'} and {tmp_path / 'out.png'} (the committed runs are in experiments/results/)"
    )
    assert (tmp_path / "out.png").exists() and json.loads((tmp_path / "out.json").read_text())["lockstep"][
        "verdict"
    ] == "agree"


def test_the_main_job_writes_its_results_under_runs_by_default():
    from experiments import mnist_two_layer

    default = mnist_two_layer.outputs(mnist_two_layer.parse_args([]))
    assert default == (Path("runs/mnist_two_layer.json"), Path("runs/mnist_two_layer.png"))
    linear = mnist_two_layer.outputs(mnist_two_layer.parse_args(["--model", "linear", "--plot", "a.png"]))
    assert linear == (Path("runs/mnist_linear.json"), Path("a.png"))
    assert mnist_two_layer.outputs(mnist_two_layer.parse_args(["--init", "zeros"]))[0] == Path("runs/mnist_zeros.json")
    assert mnist_two_layer.parse_args([]).train_size is None  # the recipe trains on all 60,000 images
