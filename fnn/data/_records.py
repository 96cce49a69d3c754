"""Record files: a training split on disk as NumPy ``.npy`` shards, read a batch at a time through memory maps.

A record folder holds ``records.json`` (the manifest) and, per shard, one
``x-NNNNN.npy`` and one ``y-NNNNN.npy`` file: NumPy's own format, whose
header carries the shape and dtype. Reading maps the files into memory, so a
batch of records costs a copy of its bytes from the page cache and the
process's own (anonymous) memory does not grow with the dataset.

The manifest records each shard's record count, the record shapes and dtypes
and a CRC-32 of every block of :data:`BLOCK` records of each file. Opening a
folder checks every file against it (present, header, size) and, unless
``verify=False``, every block's checksum (one pass over the data, at disk or
page-cache speed), so a truncated or corrupted file is refused with its name
and the records it holds, before any training.
"""

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np

from fnn._errors import DataError, InputError

__all__ = ["BLOCK", "MANIFEST", "Records", "open_or_write", "write_records"]

#: The manifest's file name in a record folder.
MANIFEST = "records.json"
#: Records per checksummed block.
BLOCK = 4096
_FORMAT = 1
#: What a manifest must hold besides its format.
_MANIFEST_KEYS = ("count", "x", "y", "block", "shards")
_SHARD_BYTES = 1 << 30


def write_records(folder, x, y=None, *, meta=None, shard_bytes=_SHARD_BYTES):
    """Writes ``(x, y)`` as a record folder that :class:`Records` reads; returns the folder as a ``Path``.

    Args:
      folder: the folder to write (created; it must not hold records already).
      x: inputs ``[N, ...]``, stored with their dtype (what the model takes,
        e.g. ``float32``); or, with ``y`` left out, an iterable of ``(x, y)``
        chunks of records (each ``[n, ...]``, of one shape and dtype), so
        that data larger than memory is written a chunk at a time.
      y: targets ``[N, ...]``, one per input.
      meta: JSON-ready notes kept in the manifest (``Records(folder).meta``),
        e.g. where the records came from.
      shard_bytes: at most about this many bytes of inputs go to one shard
        file (a chunk is split into shards of that size).

    Each shard is written to a temporary name and renamed when complete, and
    the manifest last, so a folder whose writing was interrupted has no
    manifest and is refused when opened.
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        raise InputError(f"{folder} already holds records ({MANIFEST}); write to a new folder or delete it")
    folder.mkdir(parents=True, exist_ok=True)
    shards, spec = [], None
    for x_chunk, y_chunk in [(x, y)] if y is not None else x:
        x_chunk, y_chunk = np.asarray(x_chunk), np.asarray(y_chunk)
        if x_chunk.ndim < 1 or y_chunk.ndim < 1 or x_chunk.shape[0] != y_chunk.shape[0] or not len(x_chunk):
            raise InputError(
                f"write_records needs as many targets as inputs, at least one, got x {x_chunk.shape} and y "
                f"{y_chunk.shape}" + (f" in chunk {len(shards)}" if y is None else "")
            )
        chunk_spec = {
            a: {"shape": list(v.shape[1:]), "dtype": v.dtype.str} for a, v in (("x", x_chunk), ("y", y_chunk))
        }
        if spec is not None and chunk_spec != spec:
            raise InputError(f"write_records: a chunk of records {chunk_spec} unlike the first chunk's {spec}")
        spec = chunk_spec
        per_shard = max(1, shard_bytes // max(1, x_chunk[0].nbytes))
        for start in range(0, len(x_chunk), per_shard):
            shards.append(
                _write_shard(
                    folder, len(shards), x_chunk[start : start + per_shard], y_chunk[start : start + per_shard]
                )
            )
    if spec is None:
        raise InputError("write_records got no records (an empty iterable of chunks)")
    manifest = {
        "format": _FORMAT,
        "block": BLOCK,
        **spec,
        "count": sum(shard["count"] for shard in shards),
        "meta": meta,
        "shards": shards,
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder


def _write_shard(folder, number, x, y):
    """Writes shard ``number``'s two files; returns its manifest entry."""
    shard = {"count": len(x)}
    for part, array in (("x", x), ("y", y)):
        name = f"{part}-{number:05d}.npy"
        array = np.ascontiguousarray(array)
        _write_atomically(folder / name, array)
        shard[part] = {"file": name, "crc32": _block_checksums(array)}
    return shard


def _write_atomically(path, array):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


def _block_checksums(array):
    """CRC-32 of each :data:`BLOCK` records of ``array``."""
    return [_checksum(array[i : i + BLOCK]) for i in range(0, array.shape[0], BLOCK)]


def _checksum(rows):
    """CRC-32 of the bytes of ``rows`` (records of any shape, zero-size ones included)."""
    return zlib.crc32(np.ascontiguousarray(rows).data)


class Records:
    """A record folder (see :func:`write_records`) as a random-access source of ``(x, y)`` records.

    ``len(records)`` is the number of records; ``records[i]`` is record
    ``i`` as a pair of NumPy arrays; ``records.read(indices)`` reads many at
    once as ``(x [n, ...], y [n, ...])``, what :class:`fnn.data.Stream` uses;
    ``records.meta`` is what :func:`write_records` was given as ``meta``.
    It is also a Grain data source (``grain.MapDataset.source(records)``).

    Args:
      folder: the folder :func:`write_records` wrote.
      verify: check every block's CRC-32 when opening (one pass over the
        files); ``False`` checks only the files' presence, headers and sizes.

    Attributes:
      fingerprint: a digest of the records' contents, from the manifest's
        shapes, record counts and block checksums: equal records give equal
        fingerprints whatever folder holds them (what a checkpoint records).

    Raises:
      DataError: a missing manifest or file, a header or size that differs
        from the manifest (a truncated file), or a block whose checksum
        differs (a corrupted file), naming the file and its records.
    """

    def __init__(self, folder, *, verify=True):
        self.folder = Path(folder)
        manifest = self._manifest()
        self.meta = manifest.get("meta")
        self.fingerprint = hashlib.sha256(
            json.dumps([manifest[k] for k in _MANIFEST_KEYS], sort_keys=True).encode()
        ).hexdigest()[:32]
        try:
            starts = self._open_shards(manifest, verify)
        except DataError:
            raise
        except (KeyError, TypeError, ValueError) as e:  # a manifest entry missing or of the wrong kind
            raise DataError(
                f"{self.folder / MANIFEST} is not a readable record manifest ({type(e).__name__}: {e}); write the "
                "records again (fnn.data.write_records)"
            ) from None
        self._starts = np.asarray(starts)
        if starts[-1] != manifest["count"]:
            raise DataError(f"{self.folder / MANIFEST}: its shards hold {starts[-1]} records, not {manifest['count']}")

    def _open_shards(self, manifest, verify):
        """Opens (and with ``verify`` checks) every shard's files; returns each shard's first record, then the count."""
        self.x_shape, self.y_shape = tuple(manifest["x"]["shape"]), tuple(manifest["y"]["shape"])
        self.x_dtype, self.y_dtype = np.dtype(manifest["x"]["dtype"]), np.dtype(manifest["y"]["dtype"])
        self._x, self._y, starts = [], [], [0]
        for shard in manifest["shards"]:
            first = starts[-1]
            for part, maps, shape, dtype in (
                ("x", self._x, self.x_shape, self.x_dtype),
                ("y", self._y, self.y_shape, self.y_dtype),
            ):
                array = self._open(shard[part]["file"], (shard["count"], *shape), dtype, first)
                if verify:
                    self._verify(shard[part], array, first, manifest["block"])
                maps.append(array)
            starts.append(first + shard["count"])
        return starts

    def _manifest(self):
        path = self.folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                f"{self.folder} is not a record folder: it has no {MANIFEST} (write one with "
                "fnn.data.write_records; a folder whose writing was interrupted has none either)"
            ) from None
        except ValueError as e:
            raise DataError(f"{path} is not a readable record manifest ({e}); write the records again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise DataError(f"{path}: record format {found!r}, expected {_FORMAT}; write the records again")
        missing = [k for k in _MANIFEST_KEYS if k not in manifest]
        if missing:
            raise DataError(
                f"{path} is not a whole record manifest: it has no {', '.join(map(repr, missing))}; write the records "
                "again (fnn.data.write_records)"
            )
        return manifest

    def _open(self, name, shape, dtype, first):
        path = self.folder / name
        where = f"{path} (records {first}..{first + shape[0] - 1})"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{where} is missing") from None
        except (ValueError, OSError, EOFError) as e:  # a damaged header, or a file shorter than its header says
            raise DataError(
                f"{where} is not a whole .npy file of {shape} {dtype} ({e}); it is truncated or damaged"
            ) from None
        if array.shape != shape or array.dtype != dtype:
            raise DataError(f"{where} holds {array.shape} {array.dtype}, but the manifest says {shape} {dtype}")
        return array

    def _verify(self, shard, array, first, block):
        for i, want in enumerate(shard["crc32"]):
            rows = array[i * block : (i + 1) * block]
            if _checksum(rows) != want:
                raise DataError(
                    f"{self.folder / shard['file']}: records {first + i * block}..{first + i * block + len(rows) - 1} "
                    "fail their checksum: the file is corrupted; write the records again"
                )

    def __len__(self):
        return int(self._starts[-1])

    def __getitem__(self, index):
        x, y = self.read(np.asarray([index]))
        return x[0], y[0]

    def read(self, indices):
        """Records ``indices`` (an int array) as ``(x [n, ...], y [n, ...])``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"record indices must be in [0, {len(self)}), got {indices.min()}..{indices.max()}")
        if len(self._x) == 1:  # one gather, no second copy
            return np.take(self._x[0], indices, axis=0), np.take(self._y[0], indices, axis=0)
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        x = np.empty((len(indices), *self.x_shape), self.x_dtype)
        y = np.empty((len(indices), *self.y_shape), self.y_dtype)
        for s in np.unique(shard):
            rows = np.flatnonzero(shard == s)
            local = indices[rows] - self._starts[s]
            x[rows], y[rows] = np.take(self._x[s], local, axis=0), np.take(self._y[s], local, axis=0)
        return x, y

    def __reduce__(self):  # for Grain's worker processes: reopen the folder rather than copy the maps
        return _reopen, (str(self.folder),)

    def __repr__(self):
        return f"Records({str(self.folder)!r}: {len(self)} x {self.x_shape} {self.x_dtype}, y {self.y_shape})"


def _reopen(folder):
    return Records(folder, verify=False)


def open_or_write(folder, x, y, meta):
    """The :class:`Records` in ``folder`` if they pass their checks and their ``meta`` is ``meta``, else ``(x, y)``
    written there anew.

    The records are written to a temporary sibling folder and renamed into
    place, so concurrent callers and interrupted writes never leave a
    half-written folder under ``folder``'s name.
    """
    folder = Path(folder)
    meta = json.loads(json.dumps(meta))
    with contextlib.suppress(DataError):
        records = Records(folder)
        if records.meta == meta:
            return records
    tmp = write_records(folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp"), x, y, meta=meta)
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.old")
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process put its (equal) records there first
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return Records(folder, verify=False)
