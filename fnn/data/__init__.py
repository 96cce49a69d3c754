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

The arrays are then cached in ``<data_dir>/<name>/fnn_cache.npz`` with a
fingerprint of the TFDS version, the prepared files and the source files, so
later loads read one file and never import TFDS or TensorFlow. A stale or
unreadable cache is rebuilt. A prepared TFDS dataset is never overwritten: to
re-prepare from different source files, delete ``<data_dir>/<name>/<version>``.

Besides the datasets: :func:`synthetic`, a learnable random dataset of any
input shape (for smoke tests and examples), and :func:`random_shift`, image
augmentation for ``fnn.fit(augment=...)``.

One job to a file: ``_specs`` (what each dataset is), ``_sources`` (where
its files are), ``_checks`` (their contents), ``_idx`` (the IDX format),
``_tfds`` (TFDS's preparation), ``_cache``, ``_dataset`` (the
:class:`Dataset`), ``_synthetic`` and ``_augment``.
"""

import os
from pathlib import Path

import numpy as np

from fnn._errors import InputError
from fnn.data import _cache, _checks, _sources, _specs, _tfds
from fnn.data._augment import random_shift
from fnn.data._dataset import Dataset
from fnn.data._sources import ENV_VAR
from fnn.data._synthetic import synthetic

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "LAYOUTS",
    "Dataset",
    "load",
    "random_shift",
    "synthetic",
]

DATASETS = tuple(sorted(_specs.SPECS))
#: How :func:`load` lays out each image: ``"flat"`` rows ``[N, H * W]`` or ``"image"`` ``[N, H, W, 1]`` (NHWC).
LAYOUTS = ("flat", "image")


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
    if layout not in LAYOUTS:
        raise InputError(f"layout must be 'flat' ([N, 784]) or 'image' ([N, 28, 28, 1]), got {layout!r}")
    data_dir = _data_dir(data_dir)
    files = _sources.source_files(spec, source_dir)
    cache = data_dir / name / _cache.CACHE_NAME
    arrays = _cache.read_cache(cache, spec, data_dir, files)
    if arrays is None:
        raw = None if files is None else _checks.validate(spec, files)
        arrays, prepared_dir = _tfds.from_tfds(spec, data_dir, raw, verbose=verbose)
        _cache.check_arrays(spec, arrays, f"TFDS's prepared {name} at {prepared_dir}")
        _cache.write_cache(cache, arrays, _cache.fingerprint(data_dir / name, prepared_dir.name, files))
    return _dataset(spec, arrays, layout)


def _data_dir(data_dir):
    """Returns ``data_dir`` or TFDS's default (``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    return Path(data_dir).expanduser().absolute()


def _dataset(spec, arrays, layout):
    """Builds a Dataset from cached ``uint8`` pixels and integer labels."""
    shape = (-1, *spec.image_shape, 1) if layout == "image" else (-1, int(np.prod(spec.image_shape)))
    scale = {k: np.divide(arrays[k], np.float32(255), dtype=np.float32).reshape(shape) for k in ("x_train", "x_test")}
    labels = {k: arrays[k].astype(np.int32, copy=False) for k in ("y_train", "y_test")}
    return Dataset(name=spec.name, **scale, **labels)
