"""Tests for fnn.data: IDX checks, the array cache, errors, real MNIST via TFDS, synthetic data, augmentation.

Most tests use tiny fake datasets (a ``_Spec`` registered for the test) with the
TFDS stage replaced by a fake, so they need neither TFDS nor TensorFlow. The
real-MNIST tests prepare the shared offline copy once per test run (``conftest.mnist_preparation``).
"""

import gzip
import hashlib
import itertools
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED

import fnn
from fnn import data
from fnn.data import _idx, _specs, _tfds
from fnn.module import jsonable

TRAIN_IMAGES, TRAIN_LABELS = _specs.FILES["train"]
TEST_IMAGES, TEST_LABELS = _specs.FILES["test"]
TINY = _specs.Spec("tiny", num_train=30, num_test=12)
# The offline datasets: $FNN_DATASETS_DIR, else shared/ beside the checkout.


# --- helpers ---------------------------------------------------------------------


def tiny_arrays(seed=0):
    """Random uint8 images and labels in TINY's shapes, by base file name."""
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, 30, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, 12, dtype=np.uint8),
    }


def write_file(folder, base, payload, gz=True):
    """Writes IDX bytes (or an array, encoded) as ``folder/base[.gz]``; returns the path."""
    if isinstance(payload, np.ndarray):
        payload = _idx.encode(payload)
    path = folder / (f"{base}.gz" if gz else base)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_source(folder, arrays, gz=True):
    """Writes the four IDX files of ``arrays`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for base, array in arrays.items():
        write_file(folder, base, array, gz)
    return folder


def bump_mtime(path):
    """Moves the file's mtime one second on, so size+mtime fingerprints see a change."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def tiny(monkeypatch):
    """Registers TINY and replaces the TFDS stage by a fake; returns its call log."""
    monkeypatch.setitem(_specs.SPECS, "tiny", TINY)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    calls = []

    def fake_from_tfds(spec, data_dir, raw, *, verbose=False):
        calls.append(raw)
        prepared = data_dir / spec.name / "1.0.0"
        prepared.mkdir(parents=True, exist_ok=True)
        (prepared / "dataset_info.json").write_text("{}")
        arr = {base: _idx.parse(payload) for base, payload in raw.items()}
        arrays = {
            "x_train": arr[TRAIN_IMAGES].reshape(30, -1),
            "y_train": arr[TRAIN_LABELS].astype(np.int32),
            "x_test": arr[TEST_IMAGES].reshape(12, -1),
            "y_test": arr[TEST_LABELS].astype(np.int32),
        }
        return arrays, prepared

    monkeypatch.setattr(_tfds, "from_tfds", fake_from_tfds)
    return calls


def assert_matches(ds, arrays):
    """Checks a Dataset against the uint8 source arrays it was loaded from."""
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (30, 784)
    assert ds.y_train.dtype == np.int32 and ds.y_train.shape == (30,)
    assert ds.x_test.shape == (12, 784) and ds.y_test.shape == (12,)
    np.testing.assert_array_equal(ds.x_train, arrays[TRAIN_IMAGES].reshape(30, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays[TEST_LABELS])


# --- the IDX format ----------------------------------------------------------------


def test_idx_round_trip():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    encoded = _idx.encode(images)
    assert encoded[:4] == b"\x00\x00\x08\x03"
    np.testing.assert_array_equal(_idx.parse(encoded), images)


# --- loading tiny datasets -----------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_tiny(tiny, tmp_path, gz):
    arrays = tiny_arrays()
    source = write_source(tmp_path / "src", arrays, gz)
    ds = data.load("tiny", source_dir=source, data_dir=tmp_path / "tfds")
    assert ds.name == "tiny"
    assert_matches(ds, arrays)
    assert len(tiny) == 1
    assert tiny[0][TEST_LABELS] == _idx.encode(arrays[TEST_LABELS])  # decompressed bytes


def test_source_from_env_var(tiny, tmp_path, monkeypatch):
    arrays = tiny_arrays()
    write_source(tmp_path / "datasets" / "tiny", arrays)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "datasets"))
    assert_matches(data.load("tiny", data_dir=tmp_path / "tfds"), arrays)


def test_matching_digest_is_accepted(tiny, tmp_path, monkeypatch):
    arrays = tiny_arrays()
    digests = {base: hashlib.sha256(_idx.encode(a)).hexdigest() for base, a in arrays.items()}
    monkeypatch.setitem(_specs.SPECS, "tiny", _specs.Spec("tiny", 30, 12, sha256=digests))
    source = write_source(tmp_path / "src", arrays)
    assert_matches(data.load("tiny", source_dir=source, data_dir=tmp_path / "tfds"), arrays)


def test_mnist_digests_match_shared_sums():
    sums = SHARED / "mnist" / "SHA256SUMS.raw"
    if not sums.exists():
        pytest.skip(f"no shared MNIST copy at {sums.parent}")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines())
    assert _specs.SPECS["mnist"].sha256 == listed


# --- errors ---------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(
        fnn.DatasetError,
        match=r"unknown dataset 'cifar10'.*fashion_mnist, kmnist, mnist",
    ):
        data.load("cifar10")


def test_source_dir_must_be_a_folder(tiny, tmp_path):
    with pytest.raises(fnn.DatasetError, match="is not a folder"):
        data.load("tiny", source_dir=tmp_path / "nowhere", data_dir=tmp_path / "tfds")


def _truncate_gz(src):
    path = src / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:-100])


def _bad_gzip(src):
    (src / f"{TEST_IMAGES}.gz").write_bytes(b"this is not gzip data")


def _truncate_raw(src):
    (src / f"{TRAIN_IMAGES}.gz").unlink()
    write_file(src, TRAIN_IMAGES, _idx.encode(tiny_arrays()[TRAIN_IMAGES])[:-5], gz=False)


def _trailing_bytes(src):
    write_file(src, TEST_LABELS, _idx.encode(tiny_arrays()[TEST_LABELS]) + b"\0")


def _bad_magic(src):
    write_file(src, TRAIN_LABELS, b"\x12\x34" + _idx.encode(tiny_arrays()[TRAIN_LABELS])[2:])


def _bad_element_type(src):
    payload = bytearray(_idx.encode(tiny_arrays()[TRAIN_LABELS]))
    payload[2] = 0x0D  # float
    write_file(src, TRAIN_LABELS, bytes(payload))


def _gzip_named_raw(src):
    (src / f"{TEST_LABELS}.gz").rename(src / TEST_LABELS)


def _wrong_dims(src):
    write_file(src, TRAIN_IMAGES, np.zeros((30, 27, 28), np.uint8))


def _labels_as_images(src):
    write_file(src, TEST_IMAGES, np.zeros(12, np.uint8))


def _count_mismatch(src):
    write_file(src, TRAIN_LABELS, np.zeros(29, np.uint8))


def _wrong_count(src):
    write_file(src, TEST_IMAGES, np.zeros((11, 28, 28), np.uint8))
    write_file(src, TEST_LABELS, np.zeros(11, np.uint8))


def _label_out_of_range(src):
    labels = tiny_arrays()[TEST_LABELS]
    labels[3] = 10
    write_file(src, TEST_LABELS, labels)


def _missing_file(src):
    (src / f"{TEST_LABELS}.gz").unlink()


def test_parent_folder_as_source_dir_gets_a_hint(tiny, tmp_path):
    write_source(tmp_path / "datasets" / "tiny", tiny_arrays())
    with pytest.raises(fnn.DatasetError, match="did you mean source_dir="):
        data.load("tiny", source_dir=tmp_path / "datasets", data_dir=tmp_path / "tfds")


CORRUPTIONS = {
    "truncated_gz": (_truncate_gz, rf"{TRAIN_IMAGES}\.gz: not a valid gzip file"),
    "bad_gzip": (_bad_gzip, rf"{TEST_IMAGES}\.gz: not a valid gzip file"),
    "truncated_raw": (_truncate_raw, rf"{TRAIN_IMAGES}: truncated: .* needs"),
    "trailing_bytes": (_trailing_bytes, "has trailing bytes"),
    "bad_magic": (_bad_magic, rf"{TRAIN_LABELS}\.gz: bad magic number 0x12340801"),
    "bad_element_type": (_bad_element_type, r"element type 0x0d, expected 0x08"),
    "gzip_named_raw": (_gzip_named_raw, "looks gzip-compressed"),
    "wrong_dims": (_wrong_dims, "images are 27x28, expected 28x28"),
    "labels_as_images": (_labels_as_images, r"1-D array .* expected images \(3-D\)"),
    "count_mismatch": (
        _count_mismatch,
        "count mismatch: .* 30 images but .* 29 labels",
    ),
    "wrong_count": (_wrong_count, "holds 11 examples, expected 12"),
    "label_out_of_range": (_label_out_of_range, r"label 10 is out of range 0\.\.9"),
    "missing_file": (_missing_file, rf"missing file {TEST_LABELS}\.gz .*in .*src"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_source_is_refused(tiny, tmp_path, corrupt):
    mutate, message = corrupt
    source = write_source(tmp_path / "src", tiny_arrays())
    mutate(source)
    with pytest.raises(fnn.DatasetError, match=message):
        data.load("tiny", source_dir=source, data_dir=tmp_path / "tfds")
    assert not tiny, "nothing may reach TFDS before the source files pass"


def test_read_idx_reads_the_checked_files_without_tfds(tiny, tmp_path, monkeypatch):
    arrays = tiny_arrays()
    source = write_source(tmp_path / "datasets" / "tiny", arrays)
    assert_matches(data.read_idx("tiny", source_dir=source), arrays)  # the files' order
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "datasets"))
    image = data.read_idx("tiny", layout="image")
    assert image.x_train.shape == (30, 28, 28, 1) and image.y_test.dtype == np.int32
    assert not tiny and not (tmp_path / "datasets" / "tiny" / "fnn_cache.npz").exists()  # no TFDS, no cache
    _truncate_gz(source)
    with pytest.raises(fnn.DatasetError, match=CORRUPTIONS["truncated_gz"][1]):
        data.read_idx("tiny")
    monkeypatch.delenv(data.ENV_VAR)
    with pytest.raises(fnn.DatasetError, match=f"no IDX files for 'tiny'.*{data.ENV_VAR}"):
        data.read_idx("tiny")


def test_digest_mismatch_is_refused(tiny, tmp_path, monkeypatch):
    digests = {TRAIN_LABELS: hashlib.sha256(b"something else").hexdigest()}
    monkeypatch.setitem(_specs.SPECS, "tiny", _specs.Spec("tiny", 30, 12, sha256=digests))
    source = write_source(tmp_path / "src", tiny_arrays())
    with pytest.raises(fnn.DatasetError, match=rf"{TRAIN_LABELS}\.gz: SHA-256 digest mismatch"):
        data.load("tiny", source_dir=source, data_dir=tmp_path / "tfds")
    assert not tiny


# --- the cache -------------------------------------------------------------------------


@pytest.fixture
def cached(tiny, tmp_path):
    """A tiny dataset loaded once: (source folder, data_dir, arrays)."""
    arrays = tiny_arrays()
    source, data_dir = write_source(tmp_path / "src", arrays), tmp_path / "tfds"
    data.load("tiny", source_dir=source, data_dir=data_dir)
    assert len(tiny) == 1
    return source, data_dir, arrays


def test_second_load_hits_cache(tiny, cached):
    source, data_dir, arrays = cached
    assert_matches(data.load("tiny", source_dir=source, data_dir=data_dir), arrays)
    assert len(tiny) == 1
    leftovers = [p.name for p in (data_dir / "tiny").iterdir()]
    assert sorted(leftovers) == ["1.0.0", "fnn_cache.npz"]  # no temporary files


def test_one_cache_serves_every_route(tiny, cached, monkeypatch):
    """Loads with and without the source folder (FNN_DATASETS_DIR on and off) read the one cache: no rebuild."""
    source, data_dir, arrays = cached
    assert_matches(data.load("tiny", data_dir=data_dir), arrays)  # no source folder: the prepared dataset's cache
    monkeypatch.setenv(data.ENV_VAR, str(source.parent))
    (source.parent / "tiny").mkdir(exist_ok=True)
    for base in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS):
        shutil.copy(source / f"{base}.gz", source.parent / "tiny")
    assert_matches(data.load("tiny", data_dir=data_dir), arrays)  # through the variable
    assert len(tiny) == 1


def test_prepared_data_wins_over_changed_sources(tiny, cached):
    """Once TFDS prepared a dataset, its source files are not read again (re-preparing means deleting it)."""
    source, data_dir, arrays = cached
    new = tiny_arrays(seed=1)
    for base in (TRAIN_IMAGES, TEST_LABELS):
        bump_mtime(write_file(source, base, new[base]))
    assert_matches(data.load("tiny", source_dir=source, data_dir=data_dir), arrays)
    assert len(tiny) == 1


def test_stream_writes_the_records_once_then_reads_only_the_test_split(tiny, cached, monkeypatch, caplog):
    source, data_dir, arrays = cached
    loaded = data.load("tiny", data_dir=data_dir, layout="image")
    first = data.stream("tiny", data_dir=data_dir, layout="image")
    x, y = first.train.read(np.arange(30))
    np.testing.assert_array_equal(x, loaded.x_train)
    np.testing.assert_array_equal(y, loaded.y_train)
    assert first.train.folder == data_dir / "tiny" / "fnn_records" / "image"

    def no_load(*args, **kwargs):
        raise AssertionError("the training split was loaded")

    load = data.load
    monkeypatch.setattr(data, "load", no_load)
    again = data.stream("tiny", data_dir=data_dir, layout="image")
    np.testing.assert_array_equal(again.x_test, loaded.x_test)
    assert again.y_test.dtype == np.int32 and again.name == "tiny records"
    monkeypatch.setattr(data, "load", load)
    damaged = next(first.train.folder.glob("x-*.npy"))
    damaged.write_bytes(damaged.read_bytes()[:-7] + b"\x00" * 7)
    with caplog.at_level("WARNING", logger="fnn.data"):
        rewritten = data.stream("tiny", data_dir=data_dir, layout="image")
    assert "rewriting the unreadable records" in caplog.text and "fail their checksum" in caplog.text
    np.testing.assert_array_equal(rewritten.train.read(np.arange(30))[0], loaded.x_train)


def test_changed_prepared_data_invalidates_cache(tiny, cached):
    source, data_dir, _ = cached
    bump_mtime(data_dir / "tiny" / "1.0.0" / "dataset_info.json")
    data.load("tiny", source_dir=source, data_dir=data_dir)
    assert len(tiny) == 2


@pytest.mark.parametrize(
    "damage",
    [lambda b: b"garbage", lambda b: b[: len(b) // 2], lambda b: b[:-40]],
    ids=["garbage", "half", "tail"],
)
def test_corrupt_cache_is_rebuilt(tiny, cached, damage):
    source, data_dir, arrays = cached
    cache = data_dir / "tiny" / "fnn_cache.npz"
    cache.write_bytes(damage(cache.read_bytes()))
    assert_matches(data.load("tiny", source_dir=source, data_dir=data_dir), arrays)
    assert len(tiny) == 2
    data.load("tiny", source_dir=source, data_dir=data_dir)
    assert len(tiny) == 2


# --- no network --------------------------------------------------------------------------


@pytest.fixture
def offline_mnist(monkeypatch, tmp_path):
    """TFDS importable, no source folder: load("mnist") must go online."""
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(_tfds.urllib.request, "getproxies", dict)
    return tmp_path / "tfds"


def test_no_network_fails_fast(offline_mnist, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(_tfds.socket, "create_connection", unreachable)
    with pytest.raises(
        fnn.NetworkError,
        match=r"network is unreachable.*source_dir=.*FNN_DATASETS_DIR",
    ):
        data.load("mnist", data_dir=offline_mnist)


def test_no_network_during_tfds_download(offline_mnist, monkeypatch, tmp_path):
    import requests
    import tensorflow_datasets as tfds

    def download_and_prepare(self, *args, **kwargs):  # what TFDS raises offline, at once
        raise requests.exceptions.ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(_tfds, "_probe_network", lambda builder: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(fnn.NetworkError, match="network is unreachable") as info:
        data.load("mnist", data_dir=offline_mnist)
    assert "has no mnist/ folder" in str(info.value)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


# --- synthetic data ----------------------------------------------------------------


def test_synthetic_shapes_dtypes_and_labels():
    ds = data.synthetic(20, 8, shape=(4, 4, 1), classes=3, seed=1)
    assert ds.name == "synthetic"
    assert ds.x_train.shape == (20, 4, 4, 1) and ds.x_test.shape == (8, 4, 4, 1)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() < 1.0
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32 and ds.y_train.shape == (20,)
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_test]))) <= {0, 1, 2}


def test_synthetic_defaults_are_the_documented_draws():
    """MNIST's sizes by default, drawn as documented (teacher, train, test): the experiments' numbers stay put."""
    ds = data.synthetic(6, 3)
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((784, 10)).astype(np.float32)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        expected = rng.random((len(x), 784), dtype=np.float32)
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y, np.argmax((expected - 0.5) @ teacher, axis=1))
    images = data.synthetic(6, 3, shape=(28, 28, 1))
    np.testing.assert_array_equal(images.x_train, ds.x_train.reshape(6, 28, 28, 1))
    np.testing.assert_array_equal(images.y_test, ds.y_test)


def test_synthetic_is_seeded():
    a, b, c = data.synthetic(5, 2, seed=3), data.synthetic(5, 4, seed=3), data.synthetic(5, 2, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)  # more test examples leave the training split alone
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_train": 0}, r"n_train must be an int of at least 1 \(a number of examples\), got 0"),
        ({"n_test": 2.0}, "n_test must be an int of at least 1"),
        ({"shape": (28, 0)}, r"shape must be one example's shape, a tuple of positive ints .*got \(28, 0\)"),
        ({"shape": "784"}, "shape must be one example's shape"),
        ({"classes": 1}, "classes must be an int of at least 2, got 1"),
        ({"seed": 0.5}, "seed must be an int, got 0.5"),
    ],
)
def test_synthetic_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match="synthetic: " + message):
        data.synthetic(**kwargs)


# --- augmentation ------------------------------------------------------------------


def translated(image, dy, dx):
    """NumPy reference: ``image [H, W, C]`` moved ``dy`` down and ``dx`` right, zero-filled."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_random_shift_translates_each_image_by_at_most_pixels_zero_filled(jit):
    images = np.random.default_rng(0).random((12, 5, 6, 2)).astype(np.float32)
    augment = data.random_shift(2)
    shifted = np.asarray((jax.jit(augment) if jit else augment)(jax.random.key(0), images))
    assert shifted.shape == images.shape and shifted.dtype == np.float32
    moves = []
    for image, out in zip(images, shifted):
        found = [d for d in itertools.product(range(-2, 3), repeat=2) if np.array_equal(out, translated(image, *d))]
        assert len(found) == 1, found  # exactly one translation of at most 2 pixels each way
        moves.append(found[0])
    assert len(set(moves)) > 1  # each image draws its own offset


def test_random_shift_keeps_integer_dtypes_and_is_a_function_of_the_key():
    images = jnp.arange(8 * 4 * 4, dtype=jnp.uint8).reshape(8, 4, 4, 1)
    augment = data.random_shift(1)
    first = augment(jax.random.key(1), images)
    assert first.dtype == jnp.uint8
    np.testing.assert_array_equal(first, augment(jax.random.key(1), images))
    assert not np.array_equal(first, augment(jax.random.key(2), images))


def test_random_shift_of_zero_is_the_identity():
    images = jnp.ones((3, 4, 4, 1))
    np.testing.assert_array_equal(data.random_shift(0)(jax.random.key(0), images), images)


def test_random_shift_names_itself_for_fits_record():
    augment = data.random_shift(np.int64(2))
    assert augment.pixels == 2 and type(augment.pixels) is int
    assert augment.__name__ == "random_shift_2px"  # what fit records as the run's augmentation
    assert repr(augment) == jsonable(augment) == "random_shift(2)"
    assert augment == data.random_shift(2) and hash(augment) == hash(data.random_shift(2))


@pytest.mark.parametrize(
    "pixels, error, message",
    [
        (-1, ValueError, r"pixels must be 0 or more .*got -1; pass 0 for no shift"),
        (1.5, TypeError, r"pixels must be an int .*got float 1.5; pass e.g. random_shift\(2\)"),
        (True, TypeError, "pixels must be an int .*got bool True"),
        ("2", TypeError, "pixels must be an int .*got str '2'"),
    ],
)
def test_random_shift_refuses_bad_pixels(pixels, error, message):
    with pytest.raises(error, match="random_shift: " + message):
        data.random_shift(pixels)


def test_random_shift_refuses_images_without_a_channel_axis():
    with pytest.raises(
        ValueError, match=r"random_shift\(1\): images must be \[N, H, W, C\] .*\(8, 5, 5\) .*x\[\.\.\., None\]"
    ):
        data.random_shift(1)(jax.random.key(0), jnp.zeros((8, 5, 5)))
    with pytest.raises(ValueError, match=r"got shape \(8, 25\); flat rows .*layout='image'"):
        data.random_shift(1)(jax.random.key(0), jnp.zeros((8, 25)))


# --- real MNIST through TFDS ---------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_arrays(mnist):
    ds, _, _ = mnist
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS


def test_mnist_holds_the_source_examples(mnist):
    """TFDS reorders examples; as a multiset, (image, label) rows equal the IDX files'."""
    ds, _, _ = mnist
    images = _idx.parse(_idx.read_bytes(SHARED / "mnist" / f"{TEST_IMAGES}.gz"))
    labels = _idx.parse(_idx.read_bytes(SHARED / "mnist" / f"{TEST_LABELS}.gz"))

    def rows(x, y):
        table = np.concatenate([x.reshape(len(x), -1), y.reshape(-1, 1)], axis=1)
        return np.sort(np.ascontiguousarray(table).view(f"V{table.shape[1]}").ravel())

    loaded = rows(np.round(ds.x_test * 255).astype(np.uint8), ds.y_test.astype(np.uint8))
    assert np.array_equal(loaded, rows(images, labels))


def test_plain_tfds_load_works_afterwards(mnist):
    import tensorflow_datasets as tfds

    ds, data_dir, _ = mnist
    test = tfds.load("mnist", data_dir=data_dir, split="test", batch_size=-1, download=False)
    test = tfds.as_numpy(test)
    np.testing.assert_array_equal(test["image"].reshape(10000, -1) / np.float32(255), ds.x_test)
    np.testing.assert_array_equal(test["label"], ds.y_test)
    assert not (data_dir / "downloads").exists(), "staged files must not stay in data_dir"


def test_mnist_second_load_hits_cache(mnist, monkeypatch):
    ds, data_dir, _ = mnist

    def no_tfds(*args, **kwargs):
        raise AssertionError("cache miss: TFDS was called")

    monkeypatch.setattr(_tfds, "from_tfds", no_tfds)
    start = time.perf_counter()
    again = data.load("mnist", source_dir=SHARED / "mnist", data_dir=data_dir)
    seconds = time.perf_counter() - start
    assert seconds < 2.0, f"cached load took {seconds:.2f} s"
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)


def test_prepared_mnist_needs_no_network(mnist, monkeypatch, tmp_path):
    """Without a source folder, a prepared dataset is read from TFDS with no download."""
    ds, shared_dir, _ = mnist
    # A copy of the prepared data (its cache included): the load below rewrites the cache, which the other tests
    # (and pytest-xdist workers) sharing the session's data_dir read with the source folder's fingerprint.
    data_dir = tmp_path / "tfds"
    shutil.copytree(shared_dir, data_dir)
    read = []

    def unreachable(*args, **kwargs):
        raise OSError("network unreachable")

    def read_splits(tfds, builder):  # reading was tested above; skip its 5 s here
        read.append(builder.data_dir)
        x = {k: np.round(getattr(ds, k) * 255).astype(np.uint8) for k in ("x_train", "x_test")}
        return {**x, "y_train": ds.y_train, "y_test": ds.y_test}

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(_tfds.socket, "create_connection", unreachable)
    monkeypatch.setattr(_tfds, "_read_splits", read_splits)
    again = data.load("mnist", data_dir=data_dir)  # new fingerprint: no source files
    assert read == [os.fspath(data_dir / "mnist" / "3.0.1")]
    np.testing.assert_array_equal(again.x_test, ds.x_test)
