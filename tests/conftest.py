"""Test-wide settings.

float64 is enabled so that gradient paths can be compared to ~1e-12; tests that
are about float32 or bfloat16 ask for those dtypes explicitly.
"""

import os
import time
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

from fnn import data

jax.config.update("jax_enable_x64", True)

# Every new shape compiles afresh, so examples are few and deadlines off.
settings.register_profile("fnn", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fnn"))

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


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    """Real MNIST prepared by TFDS from the shared IDX files: (Dataset, data_dir, seconds)."""
    source = SHARED / "mnist"
    if not (source / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no offline MNIST copy at {source} (set {data.ENV_VAR})")
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    data_dir = tmp_path_factory.mktemp("tfds")
    before = _checksum_file_state()
    start = time.perf_counter()
    ds = data.load("mnist", source_dir=source, data_dir=data_dir)
    seconds = time.perf_counter() - start
    assert _checksum_file_state() == before, "TFDS's installed checksums were modified"
    return ds, data_dir, seconds
