"""Test-wide settings.

float64 is enabled so that gradient paths can be compared to ~1e-12; tests that
are about float32 or bfloat16 ask for those dtypes explicitly.
"""

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

from fnn import data

jax.config.update("jax_enable_x64", True)


#: One id per test run, shared by every process of the run: pytest-xdist's workers and the command lines the tests
#: start inherit it from the run's first process.
RUN_ID = os.environ.setdefault("FNN_TESTS_RUN_ID", uuid.uuid4().hex)
#: Compiled programs go to a cache folder that this run's processes share, so a program compiled in one process is
#: not compiled again in another; removed at the end of the run, unless ``$FNN_TESTS_COMPILED`` names it (``.ci/run``
#: keeps one for the default tier and the slow tier, which share many programs).
KEEP_COMPILED = bool(os.environ.get("FNN_TESTS_COMPILED"))
COMPILED = Path(os.environ.get("FNN_TESTS_COMPILED") or Path(tempfile.gettempdir()) / f"fnn-tests-compiled-{RUN_ID}")
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(COMPILED)  # the command lines the tests start inherit these
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", str(COMPILED))
#: fnn's own cache (the machine's matrix-product rate, measured once) is the run's too, not the user's.
os.environ["FNN_CACHE_DIR"] = str(COMPILED / "fnn")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and not KEEP_COMPILED:  # the run's first process, after its workers
        shutil.rmtree(COMPILED, ignore_errors=True)


# Every new shape compiles afresh, so examples are few and deadlines off.
settings.register_profile("fnn", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fnn"))

ROOT = Path(__file__).resolve().parents[1]
# The offline datasets: $FNN_DATASETS_DIR, else shared/ beside the checkout.
SHARED = (
    Path(os.environ[data.ENV_VAR])
    if os.environ.get(data.ENV_VAR)
    else Path(__file__).resolve().parents[2] / "shared" / "datasets"
)


def _checksum_file_state():
    """Bytes and mtime of TFDS's installed MNIST checksums file (must not change)."""
    import tensorflow_datasets as tfds

    path = Path(tfds.__file__).parent / "url_checksums" / "mnist.txt"
    return path.read_bytes(), path.stat().st_mtime_ns


def _run_folder(tmp_path_factory):
    """A folder of this test run that every pytest-xdist worker shares (each worker's base folder is in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path):
    """Holds an exclusive lock on the file ``path`` (between the processes of one test run)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def mnist_preparation(tmp_path_factory):
    """Real MNIST prepared by TFDS from the shared IDX files, once per test run, in a fresh Python process.

    The preparation takes tens of seconds, so the pytest-xdist workers share
    it: the first to need it prepares (under a file lock), the others wait and
    read what it recorded. It runs as a new user's first ``fnn.data.load``
    does, in a process of its own (JAX and TensorFlow not yet started), which
    ``test_first_hour`` checks for quiet. Returns the record: ``data_dir``,
    the process's ``returncode``, ``stdout`` and ``stderr``, ``seconds``, and
    ``checksums_kept`` (TFDS's installed checksums file unchanged).
    """
    source = SHARED / "mnist"
    if not (source / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no offline MNIST copy at {source} (set {data.ENV_VAR})")
    for module in ("tensorflow_datasets", "tensorflow"):  # installed? (the preparing process imports them)
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"could not find {module!r}: MNIST is prepared with it")
    folder = _run_folder(tmp_path_factory) / "mnist_preparation"
    record = folder / "record.json"
    with _locked(_run_folder(tmp_path_factory) / "mnist_preparation.lock"):
        if not record.exists():
            data_dir = folder / "tfds"
            data_dir.mkdir(parents=True, exist_ok=True)
            code = "import sys, fnn; fnn.data.load('mnist', source_dir=sys.argv[1], data_dir=sys.argv[2])"
            before = _checksum_file_state()
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", code, str(source), str(data_dir)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=600,
            )
            seconds = time.perf_counter() - start
            facts = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
            facts |= {"data_dir": str(data_dir), "seconds": seconds, "checksums_kept": _checksum_file_state() == before}
            record.write_text(json.dumps(facts))
    return json.loads(record.read_text())


@pytest.fixture(scope="session")
def mnist(mnist_preparation):
    """Real MNIST prepared by TFDS from the shared IDX files: (Dataset, data_dir, seconds the preparation took).

    The Dataset is loaded in this process from the preparation's cache. Tests
    must not change what is in ``data_dir`` (other workers read it): copy it
    first (see ``test_data.test_prepared_mnist_needs_no_network``).
    """
    prepared = mnist_preparation
    assert prepared["returncode"] == 0, prepared["stderr"][-3000:]
    assert prepared["checksums_kept"], "TFDS's installed checksums were modified"
    data_dir = Path(prepared["data_dir"])
    ds = data.load("mnist", source_dir=SHARED / "mnist", data_dir=data_dir)
    return ds, data_dir, prepared["seconds"]
