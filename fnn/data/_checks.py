"""Checks of the original files' contents before TFDS sees them: IDX header, shape, counts, labels, digests."""

import hashlib

from fnn._errors import DatasetError
from fnn.data import _idx
from fnn.data._specs import FILES


def validate(spec, files):
    """Checks the source files against ``spec``; returns ``{base: decompressed bytes}``."""
    raw = {base: _read(path) for base, path in files.items()}
    arrays = {base: _parse(spec, base, files[base], data) for base, data in raw.items()}
    for split, (images, labels) in FILES.items():
        _check_pair(files, arrays, images, labels)
        for base in (images, labels):
            _check_count(spec, split, files[base], arrays[base])
        _check_labels(spec, files[labels], arrays[labels])
    for base, data in raw.items():
        _check_digest(spec, base, files[base], data)
    return raw


def _fail(path, problem, spec):
    """Returns the DatasetError for a bad source file."""
    return DatasetError(f"{path}: {problem}. Replace it with an intact copy of the original {spec.name} file.")


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
        raise _fail(path, f"label {bad} is out of range 0..{spec.num_classes - 1}", spec)


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
