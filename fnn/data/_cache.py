"""The array cache: ``<data_dir>/<name>/fnn_cache.npz``, with a fingerprint of TFDS and of every file it came from."""

import contextlib
import json
import logging
import os
import stat
import uuid
import zipfile

import numpy as np

from fnn._errors import DatasetError
from fnn.data._specs import SPLITS
from fnn.data._tfds import tfds_version

log = logging.getLogger("fnn.data")

CACHE_NAME = "fnn_cache.npz"
_CACHE_FORMAT = 2
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def fingerprint(dataset_dir, version):
    """A JSON string that changes when TFDS or its prepared files do.

    The source files are not part of it: whichever route prepared the
    dataset (a download, or local IDX files), the prepared files are what the
    arrays come from, and TFDS never prepares a dataset twice.
    """
    return json.dumps(
        {
            "format": _CACHE_FORMAT,
            "tfds": tfds_version(),
            "version": version,
            "prepared": _stats(sorted((dataset_dir / version).glob("*"))),
        },
        sort_keys=True,
    )


def stamp(path):
    """``[size, mtime_ns]`` of the cache file at ``path``: what records made from it remember of it."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _stats(paths):
    """``[[path, size, mtime_ns, inode], ...]`` of the regular files among ``paths``."""
    out = []
    for path in paths:
        st = path.stat()
        if stat.S_ISREG(st.st_mode):
            out.append([str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def read_cache(path, spec, data_dir, keys=_ARRAY_KEYS):
    """Returns the cached arrays ``keys`` (all four by default) if the cache is intact and current, else None."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            stored = str(cache["fingerprint"])
            version = json.loads(stored)["version"]
            if stored != fingerprint(data_dir / spec.name, version):
                log.info("fnn cache %s is stale; rebuilding it", path)
                return None
            arrays = {key: cache[key] for key in keys}
        check_arrays(spec, arrays, f"cache {path}")
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


def check_arrays(spec, arrays, where):
    """Checks shapes and dtypes of uint8 pixel / integer label arrays (of the splits in ``arrays``)."""
    for split in (s for s in SPLITS if f"x_{s}" in arrays):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        n, pixels = spec.num_examples(split), int(np.prod(spec.image_shape))
        if x.dtype != np.uint8 or x.shape != (n, pixels) or y.shape != (n,) or y.dtype.kind not in "iu":
            raise DatasetError(
                f"{where}: {split} split has x {x.dtype}{list(x.shape)}, y {y.dtype}{list(y.shape)}; "
                f"expected x uint8[{n}, {pixels}] and integer y[{n}]"
            )


def write_cache(path, arrays, fingerprint):
    """Writes the cache atomically (temporary file, then ``os.replace``); warns on failure."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            np.savez(f, fingerprint=np.array(fingerprint), **arrays)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write fnn cache %s (%s); later loads will be slower", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
