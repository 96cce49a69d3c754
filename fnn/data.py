"""MNIST-style datasets as numpy arrays, prepared by TensorFlow Datasets (TFDS).

``load("mnist")`` returns a :class:`Dataset` of flattened images scaled to
``[0, 1]`` and integer labels. The data always comes from TFDS's own prepared
dataset, so later plain ``tfds.load(name, data_dir=...)`` calls see the same
data without fnn:

* Online: TFDS downloads and prepares the dataset as usual.
* Offline: give ``source_dir=`` (or set ``FNN_DATASETS_DIR`` to a folder with one
  sub-folder per dataset) holding the four original IDX files, ``.gz`` or raw.
  fnn checks their decompressed contents (header, shape, counts, label range,
  and SHA-256 where fnn knows the canonical digests), then stages them in a
  temporary TFDS download cache, where TFDS finds them as if it had downloaded
  them itself, and lets TFDS extract and prepare them.

The arrays are then cached in ``<data_dir>/<name>/fnn_cache.npz`` with a
fingerprint of the TFDS version, the prepared files and the source files, so
later loads read one file and never import TFDS or TensorFlow. A stale or
unreadable cache is rebuilt. A prepared TFDS dataset is never overwritten: to
re-prepare from different source files, delete ``<data_dir>/<name>/<version>``.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import stat
import tempfile
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np

from fnn import _idx

__all__ = ["DATASETS", "ENV_VAR", "Dataset", "DatasetError", "NetworkError", "load"]

log = logging.getLogger(__name__)

ENV_VAR = "FNN_DATASETS_DIR"
_CACHE_NAME = "fnn_cache.npz"
_CACHE_FORMAT = 1
_PROBE_TIMEOUT_S = 5.0
_SPLITS = ("train", "test")
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# (images, labels) base names of the original files, per split.
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SHA256 = {  # decompressed; shared/datasets/mnist/SHA256SUMS.raw
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DatasetError(RuntimeError):
    """A dataset cannot be loaded; the message says what is wrong and how to fix it."""


class NetworkError(DatasetError):
    """A dataset must be downloaded, but the network is unreachable."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test splits as numpy arrays.

    Attributes:
      name: the TFDS name, e.g. ``"mnist"``.
      x_train: ``float32 [N_train, 784]`` pixels in ``[0, 1]`` (uint8 / 255).
      y_train: ``int32 [N_train]`` labels in ``0..9``.
      x_test: ``float32 [N_test, 784]``.
      y_test: ``int32 [N_test]``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    """What fnn expects of one dataset: counts, image shape, classes, digests."""

    name: str
    num_train: int = 60_000
    num_test: int = 10_000
    image_shape: tuple = (28, 28)
    num_classes: int = 10
    sha256: dict = dataclasses.field(default_factory=dict)  # base name -> hex digest

    def num_examples(self, split):
        """Number of examples in ``split`` ("train" or "test")."""
        return self.num_train if split == "train" else self.num_test


_SPECS = {
    "mnist": _Spec("mnist", sha256=_MNIST_SHA256),
    "fashion_mnist": _Spec("fashion_mnist"),
    "kmnist": _Spec("kmnist"),
}
DATASETS = tuple(sorted(_SPECS))


def load(name, *, source_dir=None, data_dir=None):
    """Loads an MNIST-style dataset through TFDS, offline from IDX files if given.

    Args:
      name: one of :data:`DATASETS` (``"mnist"``, ``"fashion_mnist"``, ``"kmnist"``).
      source_dir: folder holding the four original IDX files (``.gz`` or raw),
        used when TFDS has not prepared the dataset yet. Defaults to
        ``$FNN_DATASETS_DIR/<name>`` if that folder exists, else TFDS downloads.
      data_dir: TFDS data directory. Defaults to TFDS's default,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

    Returns:
      A :class:`Dataset`; ``x`` is ``float32 [N, 784]`` in ``[0, 1]``, ``y`` is
      ``int32 [N]``.

    Raises:
      DatasetError: unknown name, missing or corrupt source files, or TFDS
        cannot prepare the dataset (:class:`NetworkError` when offline).
    """
    spec = _spec(name)
    data_dir = _data_dir(data_dir)
    files = _source_files(spec, source_dir)
    cache = data_dir / name / _CACHE_NAME
    arrays = _read_cache(cache, spec, data_dir, files)
    if arrays is None:
        raw = None if files is None else _validate(spec, files)
        arrays, prepared_dir = _from_tfds(spec, data_dir, raw)
        _check_arrays(spec, arrays, f"TFDS's prepared {name} at {prepared_dir}")
        _write_cache(
            cache, arrays, _fingerprint(data_dir / name, prepared_dir.name, files)
        )
    return _dataset(name, arrays)


def _spec(name):
    """Returns the spec of ``name`` or raises a DatasetError listing the known names."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise DatasetError(
            f"unknown dataset {name!r}; fnn.data supports: {', '.join(sorted(_SPECS))}"
        ) from None


def _data_dir(data_dir):
    """Returns ``data_dir`` or TFDS's default (``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``)."""
    if data_dir is None:
        data_dir = (
            os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
        )
    return Path(data_dir).expanduser().absolute()


def _dataset(name, arrays):
    """Builds a Dataset from cached ``uint8`` pixels and integer labels."""
    scale = {
        k: np.divide(arrays[k], np.float32(255), dtype=np.float32)
        for k in ("x_train", "x_test")
    }
    labels = {k: arrays[k].astype(np.int32, copy=False) for k in ("y_train", "y_test")}
    return Dataset(name=name, **scale, **labels)


# --- the source folder --------------------------------------------------------


def _source_files(spec, source_dir):
    """Returns ``{base name: path}`` of the source IDX files, or None to go online."""
    folder = _source_folder(spec.name, source_dir)
    if folder is None:
        return None
    return {
        base: _find_file(spec, folder, base)
        for pair in _FILES.values()
        for base in pair
    }


def _source_folder(name, source_dir):
    """Returns ``source_dir``, else ``$FNN_DATASETS_DIR/<name>`` if it exists, else None."""
    if source_dir is not None:
        folder = Path(source_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"source_dir {str(folder)!r} is not a folder")
        return folder
    root = os.environ.get(ENV_VAR)
    if root and (Path(root).expanduser() / name).is_dir():
        return Path(root).expanduser() / name
    return None


def _find_file(spec, folder, base):
    """Returns ``folder/base.gz`` or ``folder/base``; raises if neither exists."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    wanted = ", ".join(b for pair in _FILES.values() for b in pair)
    hint = ""
    if (folder / spec.name).is_dir():
        hint = f" (did you mean source_dir={str(folder / spec.name)!r}?)"
    raise DatasetError(
        f"missing file {base}.gz (or raw {base}) in {folder}; the source folder "
        f"for {spec.name!r} must hold the four IDX files {wanted}, each .gz or raw"
        + hint
    )


# --- checking the source files ------------------------------------------------


def _validate(spec, files):
    """Checks the source files against ``spec``; returns ``{base: decompressed bytes}``."""
    raw = {base: _read(path) for base, path in files.items()}
    arrays = {base: _parse(spec, base, files[base], data) for base, data in raw.items()}
    for split, (images, labels) in _FILES.items():
        _check_pair(files, arrays, images, labels)
        for base in (images, labels):
            _check_count(spec, split, files[base], arrays[base])
        _check_labels(spec, files[labels], arrays[labels])
    for base, data in raw.items():
        _check_digest(spec, base, files[base], data)
    return raw


def _fail(path, problem, spec):
    """Returns the DatasetError for a bad source file."""
    return DatasetError(
        f"{path}: {problem}. Replace it with an intact copy of the original {spec.name} file."
    )


def _read(path):
    """Returns the decompressed bytes of one source file."""
    try:
        return _idx.read_bytes(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e})") from e
    except ValueError as e:
        raise DatasetError(f"{path}: {e}. Replace it with an intact copy.") from e


def _parse(spec, base, path, data):
    """Parses one IDX file and checks its number of dimensions and image size."""
    try:
        array = _idx.parse(data)
    except ValueError as e:
        raise _fail(path, e, spec) from e
    is_images = "images" in base
    want_ndim = 1 + len(spec.image_shape) if is_images else 1
    if array.ndim != want_ndim:
        kind = f"images ({want_ndim}-D)" if is_images else "labels (1-D)"
        raise _fail(
            path,
            f"holds a {array.ndim}-D array of shape {array.shape}, expected {kind}",
            spec,
        )
    if is_images and array.shape[1:] != tuple(spec.image_shape):
        got, want = (
            "x".join(map(str, array.shape[1:])),
            "x".join(map(str, spec.image_shape)),
        )
        raise _fail(path, f"images are {got}, expected {want}", spec)
    return array


def _check_pair(files, arrays, images, labels):
    """Checks that an images file and its labels file hold the same number of examples."""
    n_images, n_labels = len(arrays[images]), len(arrays[labels])
    if n_images != n_labels:
        raise DatasetError(
            f"count mismatch: {files[images]} holds {n_images} images but "
            f"{files[labels]} holds {n_labels} labels; the files do not belong together"
        )


def _check_count(spec, split, path, array):
    """Checks the number of examples against the spec."""
    if len(array) != spec.num_examples(split):
        raise _fail(
            path,
            f"holds {len(array)} examples, expected {spec.num_examples(split)}",
            spec,
        )


def _check_labels(spec, path, labels):
    """Checks that every label is a class id ``0..num_classes-1``."""
    if labels.size and labels.max() >= spec.num_classes:
        bad = int(labels.max())
        raise _fail(
            path, f"label {bad} is out of range 0..{spec.num_classes - 1}", spec
        )


def _check_digest(spec, base, path, data):
    """Checks the SHA-256 of the decompressed bytes where fnn knows the canonical digest."""
    want = spec.sha256.get(base)
    if want is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise _fail(
            path,
            f"SHA-256 digest mismatch of the decompressed contents: got {got}, expected {want}",
            spec,
        )


# --- TFDS -----------------------------------------------------------------------


def _from_tfds(spec, data_dir, raw):
    """Prepares ``spec.name`` with TFDS if needed and reads both splits.

    Args:
      spec: the dataset's spec.
      data_dir: TFDS data directory.
      raw: ``{base name: decompressed IDX bytes}`` to prepare from, or None to
        let TFDS download.

    Returns:
      ``(arrays, prepared_dir)``: ``{"x_train": uint8 [N, 784], "y_train": int32
      [N], ...}`` and TFDS's version folder, e.g. ``<data_dir>/mnist/3.0.1``.
    """
    tfds = _import_tfds()
    try:
        builder = tfds.builder(spec.name, data_dir=os.fspath(data_dir))
        if not _is_prepared(builder):
            if raw is None:
                _download_and_prepare(builder)
            else:
                _prepare_from_idx(tfds, builder, raw)
        return _read_splits(tfds, builder), Path(builder.data_dir)
    except ModuleNotFoundError as e:
        raise DatasetError(
            f"TFDS needs the Python module {e.name!r}, which is not installed "
            f"(try: pip install {e.name})"
        ) from e


def _is_prepared(builder):
    """``builder.is_prepared()``, without TFDS's warning when nothing is there yet."""
    return Path(builder.data_dir).is_dir() and builder.is_prepared()


def _import_tfds():
    """Imports tensorflow_datasets, or raises a DatasetError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError(
            "fnn.data prepares datasets with tensorflow-datasets and TensorFlow, "
            f"which are not installed ({e}): pip install 'fnn[data]'"
        ) from e
    return tfds


def _download_and_prepare(builder):
    """Lets TFDS download and prepare; raises NetworkError if the network is unreachable."""
    _probe_network(builder)
    try:
        builder.download_and_prepare()
    except Exception as e:
        if _is_network_error(e):
            raise NetworkError(_offline_message(builder.name, e)) from e
        raise


def _probe_network(builder):
    """Fails fast (TFDS retries for minutes) if the download hosts cannot be reached."""
    if urllib.request.getproxies():
        return  # downloads go through a proxy: a direct connection proves nothing
    for host, port in sorted(_hosts(builder.url_infos or ())):
        try:
            socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
        except OSError as e:
            raise NetworkError(_offline_message(builder.name, e)) from e


def _hosts(urls):
    """The ``(host, port)`` pairs that ``urls`` point to."""
    hosts = set()
    for url in map(urllib.parse.urlsplit, urls):
        if url.hostname:
            hosts.add(
                (url.hostname, url.port or (443 if url.scheme == "https" else 80))
            )
    return hosts


def _is_network_error(exc):
    """Whether ``exc`` or an exception it was raised from means "no network"."""
    kinds = (ConnectionError, TimeoutError, socket.gaierror)
    with contextlib.suppress(ImportError):
        import requests

        kinds += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _offline_message(name, exc):
    """The NetworkError message: what failed and how to load ``name`` offline."""
    files = ", ".join(f"{b}.gz" for pair in _FILES.values() for b in pair)
    message = (
        f"cannot download {name!r}: the network is unreachable ({exc}). To load it "
        f"offline, pass source_dir= (a folder holding {files}; .gz or raw) or set "
        f"{ENV_VAR} to a folder holding {name}/ with those four IDX files."
    )
    if os.environ.get(ENV_VAR):
        message += f" ({ENV_VAR}={os.environ[ENV_VAR]!r} has no {name}/ folder.)"
    return message


def _prepare_from_idx(tfds, builder, raw):
    """Runs TFDS's own preparation on local IDX bytes, staged as TFDS's download cache.

    TFDS records the archive checksum of each URL. A download whose file lies at
    ``<download_dir>/<name>/<get_dl_fname(url, checksum)>`` (plus ``.INFO``) is
    taken from that cache without downloading or re-hashing. fnn puts gzip
    archives of the bytes it has just checked there, in a temporary download
    dir, so no checksum is registered anywhere and nothing outside
    ``data_dir`` and the temporary folder is written.
    """
    with tempfile.TemporaryDirectory(prefix=f"fnn-{builder.name}-") as download_dir:
        _stage_downloads(tfds, builder, raw, Path(download_dir))
        config = tfds.download.DownloadConfig(try_download_gcs=False)
        try:
            builder.download_and_prepare(
                download_dir=download_dir, download_config=config
            )
        except Exception as e:
            if _is_network_error(e):
                raise DatasetError(
                    f"TFDS {_tfds_version()} ignored the staged local files of "
                    f"{builder.name!r} and tried to download ({e}); fnn's offline "
                    "path does not support this TFDS version."
                ) from e
            raise


def _stage_downloads(tfds, builder, raw, download_dir):
    """Writes each IDX file, gzipped, where TFDS looks for its cached download."""
    from tensorflow_datasets.core.download import resource

    for url, info in (builder.url_infos or {}).items():
        base = info.filename.removesuffix(".gz")
        if base not in raw:
            raise DatasetError(
                f"TFDS's {builder.name!r} needs {info.filename}, which fnn does not stage"
            )
        rel = tfds.download.Resource(url=url).relative_download_dir
        path = (
            download_dir
            / builder.name
            / rel
            / resource.get_dl_fname(url, info.checksum)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_gzip(raw[base]))
        resource.write_info_file(
            url=url,
            path=path,
            dataset_name=builder.name,
            original_fname=info.filename,
            url_info=info,
        )


def _gzip(data):
    """Fast, deterministic gzip (TFDS only decompresses it)."""
    return gzip.compress(data, compresslevel=1, mtime=0)


def _read_splits(tfds, builder):
    """Reads both splits of a prepared builder: uint8 ``[N, 784]`` pixels, int32 labels."""
    arrays = {}
    for split in _SPLITS:
        batch = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
        )
        images = batch["image"]
        arrays[f"x_{split}"] = images.reshape(len(images), -1)
        arrays[f"y_{split}"] = batch["label"].astype(np.int32)
    return arrays


def _tfds_version():
    """The installed tensorflow-datasets version, read without importing it."""
    try:
        return importlib.metadata.version("tensorflow-datasets")
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the array cache -------------------------------------------------------------


def _fingerprint(dataset_dir, version, files):
    """A JSON string that changes when TFDS, its prepared files or the source files do."""
    return json.dumps(
        {
            "format": _CACHE_FORMAT,
            "tfds": _tfds_version(),
            "version": version,
            "prepared": _stats(sorted((dataset_dir / version).glob("*"))),
            "source": None
            if files is None
            else _stats(files[b] for b in sorted(files)),
        },
        sort_keys=True,
    )


def _stats(paths):
    """``[[path, size, mtime_ns, inode], ...]`` of the regular files among ``paths``."""
    out = []
    for path in paths:
        st = path.stat()
        if stat.S_ISREG(st.st_mode):
            out.append([str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def _read_cache(path, spec, data_dir, files):
    """Returns the cached arrays if the cache is intact and current, else None."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            stored = str(cache["fingerprint"])
            version = json.loads(stored)["version"]
            if stored != _fingerprint(data_dir / spec.name, version, files):
                log.info("fnn cache %s is stale; rebuilding it", path)
                return None
            arrays = {key: cache[key] for key in _ARRAY_KEYS}
        _check_arrays(spec, arrays, f"cache {path}")
    except FileNotFoundError:
        return None
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        DatasetError,
    ) as e:
        log.warning("ignoring unreadable fnn cache %s (%s); rebuilding it", path, e)
        return None
    return arrays


def _check_arrays(spec, arrays, where):
    """Checks shapes and dtypes of uint8 pixel / integer label arrays."""
    for split in _SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        n, pixels = spec.num_examples(split), int(np.prod(spec.image_shape))
        if (
            x.dtype != np.uint8
            or x.shape != (n, pixels)
            or y.shape != (n,)
            or y.dtype.kind not in "iu"
        ):
            raise DatasetError(
                f"{where}: {split} split has x {x.dtype}{list(x.shape)}, y {y.dtype}{list(y.shape)}; "
                f"expected x uint8[{n}, {pixels}] and integer y[{n}]"
            )


def _write_cache(path, arrays, fingerprint):
    """Writes the cache atomically (temporary file, then ``os.replace``); warns on failure."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            np.savez(f, fingerprint=np.array(fingerprint), **arrays)
        os.replace(tmp, path)
    except OSError as e:
        log.warning(
            "could not write fnn cache %s (%s); later loads will be slower", path, e
        )
        with contextlib.suppress(OSError):
            tmp.unlink()
