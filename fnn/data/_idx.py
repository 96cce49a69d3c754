"""Reading IDX files, the format of the original MNIST files, raw or gzip-compressed.

An IDX file is a big-endian header, the magic number ``0x0000TTNN`` (``TT`` the
element type, ``08`` for unsigned bytes; ``NN`` the number of dimensions), then
one ``uint32`` per dimension, then the elements in row-major order. Every
function here raises ``ValueError`` with a short description of what is wrong;
callers add the file name.
"""

import gzip
import math
import struct
import zlib

import numpy as np

from fnn._errors import InputError

UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path):
    """Returns the bytes of ``path``, gunzipped when its name ends in ``.gz``.

    Args:
      path: a file path; ``.gz`` files must hold one complete gzip stream.

    Returns:
      The (decompressed) contents as ``bytes``.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not str(path).endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"not a valid gzip file ({e})") from e


def encode(array):
    """Returns the IDX bytes of a ``uint8`` array (the inverse of :func:`parse`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, UINT8, array.ndim, *array.shape)
    return header + array.tobytes()


def parse(data):
    """Returns the ``uint8`` array held in IDX bytes (a read-only view of ``data``).

    Args:
      data: the complete, decompressed contents of one IDX file.

    Returns:
      ``np.ndarray`` of dtype ``uint8`` with the shape the header records.
    """
    ndim = _check_magic(data)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise InputError(f"truncated header: {len(data)} bytes, a {ndim}-D header needs {header_size}")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise InputError(f"{problem}: {len(data)} bytes, but the header's shape {dims} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def _check_magic(data):
    """Checks the 4-byte magic number and returns the number of dimensions."""
    if len(data) < 4:
        raise InputError(f"too short for an IDX header ({len(data)} bytes)")
    if data[:2] != b"\0\0":
        hint = " (the data looks gzip-compressed: name the file *.gz)" if data[:2] == _GZIP_MAGIC else ""
        raise InputError(f"bad magic number 0x{data[:4].hex()}: IDX files start with two zero bytes{hint}")
    if data[2] != UINT8:
        raise InputError(f"bad magic number 0x{data[:4].hex()}: element type 0x{data[2]:02x}, expected 0x08 (uint8)")
    return data[3]
