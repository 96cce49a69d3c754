"""MNIST-style datasets as NumPy arrays, prepared by TensorFlow Datasets (TFDS).

``load("mnist")`` returns a :class:`Dataset` of images scaled to ``[0, 1]``
(flat rows ``[N, 784]``, or ``[N, 28, 28, 1]`` with ``layout="image"``) and
integer labels. The data always comes from TFDS's own prepared dataset, so
later plain ``tfds.load(name, data_dir=...)`` calls see the same data without
fnn:

* Online: TFDS downloads and prepares the dataset as usual.
* Offline: give ``source_dir=`` (or set ``FNN_DATASETS_DIR`` to a folder with one
  sub-folder per dataset) holding the four original IDX files, ``.gz`` or raw.
  fnn checks their decompressed contents (header, shape, counts, label range,
  and SHA-256 where fnn knows the canonical digests), then stages them in a
  temporary TFDS download cache, where TFDS finds them as if it had downloaded
  them itself, and lets TFDS extract and prepare them.

The arrays are then cached in ``<data_dir>/<name>/fnn_cache.npz`` (by
default ``~/tensorflow_datasets/<name>/fnn_cache.npz``) with a fingerprint
of the TFDS version and of TFDS's prepared files, so later loads read one
file and never import TFDS or TensorFlow, whichever route (a download, local
files, ``FNN_DATASETS_DIR`` set or not) prepared the dataset. A stale or
unreadable cache is rebuilt. A prepared TFDS dataset is never overwritten
and its source files are not used again: to re-prepare from different source
files, delete ``<data_dir>/<name>/<version>``.

Data larger than memory: :func:`stream` (or a :class:`Stream` over any
random-access source, such as :class:`Records` written by
:func:`write_records`) gives ``fnn.fit`` a training split that is read from
disk as training needs it, shuffled, sharded over processes and resumable
mid-epoch (the rules are :class:`Stream`'s).

Without TFDS: :func:`read_idx` reads a dataset straight from its four IDX
files (the same checks, no preparation and no cache), for a machine that has
the files but not TFDS or TensorFlow.

Besides the datasets: :func:`synthetic`, a learnable random dataset of any
input shape (for smoke tests and examples), and :func:`random_shift`, image
augmentation for ``fnn.fit(augment=...)``.

One job to a file: ``_specs`` (what each dataset is), ``_sources`` (where
its files are), ``_checks`` (their contents), ``_idx`` (the IDX format),
``_tfds`` (TFDS's preparation), ``_cache``, ``_dataset`` (the
:class:`Dataset`), ``_records`` (record files), ``_stream`` (streaming),
``_synthetic`` and ``_augment``.
"""

import logging
import os
from pathlib import Path

import numpy as np

from fnn._errors import DataError, DatasetError, InputError
from fnn.data import _cache, _checks, _idx, _records, _sources, _specs, _tfds
from fnn.data._augment import random_shift
from fnn.data._dataset import Dataset
from fnn.data._records import Records, write_records
from fnn.data._sources import ENV_VAR
from fnn.data._stream import Batches, Stream
from fnn.data._synthetic import synthetic

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "LAYOUTS",
    "Batches",
    "Dataset",
    "Records",
    "Stream",
    "load",
    "random_shift",
    "read_idx",
    "stream",
    "synthetic",
    "write_records",
]

DATASETS = tuple(sorted(_specs.SPECS))
#: How :func:`load` lays out each image: ``"flat"`` rows ``[N, H * W]`` or ``"image"`` ``[N, H, W, 1]`` (NHWC).
LAYOUTS = ("flat", "image")

_log = logging.getLogger("fnn.data")


def load(name, *, source_dir=None, data_dir=None, layout="flat", verbose=False):
    """Loads an MNIST-style dataset through TFDS, offline from IDX files if given.

    Args:
      name: one of :data:`DATASETS` (``"mnist"``, ``"fashion_mnist"``, ``"kmnist"``).
      source_dir: folder holding the four original IDX files (``.gz`` or raw),
        used when TFDS has not prepared the dataset yet. Defaults to
        ``$FNN_DATASETS_DIR/<name>`` if that folder exists, else TFDS downloads.
      data_dir: TFDS data directory. Defaults to TFDS's default,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      layout: ``"flat"`` for rows ``[N, 784]`` (for dense layers, the notes'
        recipe) or ``"image"`` for ``[N, 28, 28, 1]`` (NHWC, for
        convolutions).
      verbose: show TFDS's and TensorFlow's own output while preparing;
        otherwise fnn prints one line of its own.

    Returns:
      A :class:`Dataset`; ``x`` is ``float32`` in ``[0, 1]``, ``y`` is ``int32 [N]``.

    Raises:
      fnn.DatasetError: unknown name, missing or corrupt source files, or TFDS
        cannot prepare the dataset (:class:`fnn.NetworkError` when offline).
    """
    spec = _specs.spec(name)
    _check_layout(layout)
    data_dir = _data_dir(data_dir)
    files = _sources.source_files(spec, source_dir)
    cache = data_dir / name / _cache.CACHE_NAME
    arrays = _cache.read_cache(cache, spec, data_dir)
    if arrays is None:
        raw = None if files is None else _checks.validate(spec, files)
        arrays, prepared_dir = _tfds.from_tfds(spec, data_dir, raw, verbose=verbose)
        _cache.check_arrays(spec, arrays, f"TFDS's prepared {name} at {prepared_dir}")
        _cache.write_cache(cache, arrays, _cache.fingerprint(data_dir / name, prepared_dir.name))
    return _dataset(spec, arrays, layout)


def read_idx(name, *, source_dir=None, layout="flat"):
    """Reads an MNIST-style dataset straight from its four original IDX files, without TFDS.

    The files are checked as :func:`load` checks them (header, shape, counts,
    label range, and SHA-256 where fnn knows the canonical digests), then
    parsed; nothing is prepared or cached, and neither TFDS nor TensorFlow is
    imported. The examples are those :func:`load` gives, in the files' order
    (TFDS's prepared dataset holds them in an order of its own), so a run on
    this data is not step for step one on :func:`load`'s.

    Args:
      name: one of :data:`DATASETS`.
      source_dir: folder holding the four IDX files (``.gz`` or raw). Defaults
        to ``$FNN_DATASETS_DIR/<name>``.
      layout: ``"flat"`` or ``"image"``, as for :func:`load`.

    Returns:
      A :class:`Dataset`; ``x`` is ``float32`` in ``[0, 1]``, ``y`` is ``int32 [N]``.

    Raises:
      fnn.DatasetError: unknown name, no source folder, or missing or corrupt files.
    """
    spec = _specs.spec(name)
    _check_layout(layout)
    files = _sources.source_files(spec, source_dir)
    if files is None:
        raise DatasetError(f"no IDX files for {name!r}: pass source_dir= or set {ENV_VAR} to a folder holding {name}/")
    raw = _checks.validate(spec, files)
    arrays = {}
    for split, (images, labels) in _specs.FILES.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _idx.parse(raw[images]), _idx.parse(raw[labels])
    return _dataset(spec, arrays, layout)


def stream(name, *, source_dir=None, data_dir=None, layout="flat", transform=None, workers=0, verbose=False):
    """An MNIST-style dataset as a :class:`Stream`: its training split read from record files as training needs it.

    The first call writes the training split as record files
    (:func:`write_records`) in ``<data_dir>/<name>/fnn_records/<layout>/``
    from the arrays :func:`load` gives (so a streamed run trains on the same
    values as one from arrays); later calls check them (their checksums) and
    read only the test split into memory. They are written again when the
    dataset's cache changes or they fail their checks. The test split is
    returned as arrays. ``fnn.fit(model, params, fnn.data.stream("mnist"))`` trains the
    notes' recipe as ``fnn.fit(model, params, fnn.data.load("mnist"))`` does,
    step for step.

    Args:
      name, source_dir, data_dir, layout, verbose: as for :func:`load`.
      transform, workers: as for :class:`Stream`.

    Returns:
      A :class:`Stream` over :class:`Records`.
    """
    spec, data_dir = _specs.spec(name), _data_dir(data_dir)
    _check_layout(layout)
    dataset_dir = data_dir / name
    cache, folder = dataset_dir / _cache.CACHE_NAME, dataset_dir / "fnn_records" / layout
    options = {"transform": transform, "workers": workers, "name": f"{name} records"}
    try:
        records = Records(folder)  # checksums included
        current = records.meta == {"cache": _cache.stamp(cache), "layout": layout}
    except (DataError, FileNotFoundError) as e:
        if not isinstance(e, FileNotFoundError) and folder.exists():
            _log.warning("rewriting the unreadable records in %s (%s)", folder, e)
        current = False
    if current:
        test = _cache.read_cache(cache, spec, data_dir, keys=("x_test", "y_test"))
        if test is not None:  # only the test split in memory
            return Stream(records, _scaled(spec, test["x_test"], layout), test["y_test"].astype(np.int32), **options)
    data = load(name, source_dir=source_dir, data_dir=data_dir, layout=layout, verbose=verbose)
    made_from = {"cache": _cache.stamp(cache), "layout": layout}
    records = _records.open_or_write(folder, data.x_train, data.y_train, made_from)
    return Stream(records, data.x_test, data.y_test, **options)


def _data_dir(data_dir):
    """Returns ``data_dir`` or TFDS's default (``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    return Path(data_dir).expanduser().absolute()


def _dataset(spec, arrays, layout):
    """Builds a Dataset from cached ``uint8`` pixels and integer labels."""
    scale = {k: _scaled(spec, arrays[k], layout) for k in ("x_train", "x_test")}
    labels = {k: arrays[k].astype(np.int32, copy=False) for k in ("y_train", "y_test")}
    return Dataset(name=spec.name, **scale, **labels)


def _scaled(spec, pixels, layout):
    """``uint8`` pixels ``[N, H * W]`` as ``float32`` in ``[0, 1]``, laid out as ``layout`` says."""
    shape = (-1, *spec.image_shape, 1) if layout == "image" else (-1, int(np.prod(spec.image_shape)))
    return np.divide(pixels, np.float32(255), dtype=np.float32).reshape(shape)


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise InputError(f"layout must be 'flat' ([N, 784]) or 'image' ([N, 28, 28, 1]), got {layout!r}")
