"""Preparing a dataset with TFDS: a download (after a fast network probe), or TFDS's own preparation of local files.

Offline, the checked bytes of the original files are staged in a temporary
TFDS download cache, where TFDS finds them as if it had downloaded them
itself. That preparation prints TFDS's download bars and TensorFlow's start-up
logs, none of which mean anything here: unless ``verbose``, they are hidden
(Python's standard output, and the process's standard error, where
TensorFlow's C++ logs go) and replayed only if the preparation fails.
"""

import contextlib
import gzip
import importlib.metadata
import io
import os
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from fnn._errors import DatasetError, NetworkError
from fnn.data._sources import ENV_VAR
from fnn.data._specs import FILES, SPLITS

_PROBE_TIMEOUT_S = 5.0


def from_tfds(spec, data_dir, raw, *, verbose=False):
    """Prepares ``spec.name`` with TFDS if needed and reads both splits.

    Args:
      spec: the dataset's spec.
      data_dir: TFDS data directory.
      raw: ``{base name: decompressed IDX bytes}`` to prepare from, or None to
        let TFDS download.
      verbose: show TFDS's and TensorFlow's own output; otherwise one line
        says what happens, and their output is shown only if it fails (a
        download always shows TFDS's progress; preparing from local files
        and reading a prepared dataset show nothing else).

    Returns:
      ``(arrays, prepared_dir)``: ``{"x_train": uint8 [N, 784], "y_train": int32
      [N], ...}`` and TFDS's version folder, e.g. ``<data_dir>/mnist/3.0.1``.
    """
    tfds = _import_tfds()
    prepared = any((Path(data_dir) / spec.name).glob("*/dataset_info.json"))
    downloading = raw is None and not prepared
    source = "TFDS's prepared files" if prepared else "its local files" if raw is not None else "a TFDS download"
    message = f"fnn.data: reading {spec.name} from {source} into {data_dir} (once; later loads read a cache)"
    print(message, file=sys.stderr, flush=True)
    try:
        with _silenced(not verbose and not downloading):  # a download shows TFDS's progress
            builder = tfds.builder(spec.name, data_dir=os.fspath(data_dir))
            if not _is_prepared(builder):
                if raw is None:
                    _download_and_prepare(builder)
                else:
                    _prepare_from_idx(tfds, builder, raw)
            return _read_splits(tfds, builder), Path(builder.data_dir)
    except ModuleNotFoundError as e:
        raise DatasetError(
            f"TFDS needs the Python module {e.name!r}, which is not installed (try: pip install {e.name})"
        ) from e


@contextlib.contextmanager
def _silenced(enabled):
    """Hides Python's standard output and the process's standard error (file descriptor 2) while enabled.

    What was hidden is written to standard error if the block raises.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    printed = io.StringIO()
    with tempfile.TemporaryFile() as hidden:
        failed = False
        try:
            os.dup2(hidden.fileno(), 2)
            with contextlib.redirect_stdout(printed):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                hidden.seek(0)
                sys.stderr.write(printed.getvalue() + hidden.read().decode(errors="replace"))


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
            hosts.add((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
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
    files = ", ".join(f"{b}.gz" for pair in FILES.values() for b in pair)
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
            builder.download_and_prepare(download_dir=download_dir, download_config=config)
        except Exception as e:
            if _is_network_error(e):
                raise DatasetError(
                    f"TFDS {tfds_version()} ignored the staged local files of "
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
            raise DatasetError(f"TFDS's {builder.name!r} needs {info.filename}, which fnn does not stage")
        rel = tfds.download.Resource(url=url).relative_download_dir
        path = download_dir / builder.name / rel / resource.get_dl_fname(url, info.checksum)
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
    for split in SPLITS:
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        images = batch["image"]
        arrays[f"x_{split}"] = images.reshape(len(images), -1)
        arrays[f"y_{split}"] = batch["label"].astype(np.int32)
    return arrays


def tfds_version():
    """The installed tensorflow-datasets version, read without importing it."""
    try:
        return importlib.metadata.version("tensorflow-datasets")
    except importlib.metadata.PackageNotFoundError:
        return None
