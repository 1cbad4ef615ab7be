"""Reader and writer for the IDX format of (Fashion-)MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the array in C order, big-endian. Files may be gzip-compressed
(``.gz``). Format description: http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST
DATABASE"). Every header field and the payload size are checked, so a corrupt or truncated file
raises :class:`IdxFormatError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IdxFormatError", "read_idx", "write_idx"]

# dtype code → big-endian numpy dtype (the code table of the format description).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


class IdxFormatError(ValueError):
    """The file is not a well-formed IDX file (bad magic, header, or payload size)."""


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":  # gzip magic
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read()
            return fh.read()
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise IdxFormatError(
            f"{path}: the gzip stream is corrupt or truncated ({err}); delete the file and fetch it again"
        ) from err


def read_idx(path: str | os.PathLike, expected_shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian numpy array.

    Args:
        path: ``*.idx*`` or ``*.idx*.gz`` file.
        expected_shape: optional shape to enforce; ``None`` entries match any size.

    Returns:
        array with the shape stored in the header, e.g. (60000, 28, 28) uint8 images or (60000,) labels.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxFormatError: bad magic number, unknown dtype code, truncated header, payload size that does
            not match the header, or a shape other than ``expected_shape``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an IDX header (need at least 4)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000<dtype code><ndim> with dtype code "
            f"in {{{', '.join(hex(c) for c in _DTYPES)}}} and ndim >= 1); this is not an IDX file"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, a {ndim}-d IDX header needs {header_len})")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _DTYPES[code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload != expected_bytes:
        what = "truncated" if payload < expected_bytes else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: file {what}: header says shape {shape} of {dtype.name} = {expected_bytes} bytes, "
            f"found {payload}; delete the file and fetch it again"
        )
    if expected_shape is not None:
        ok = len(expected_shape) == len(shape) and all(
            e is None or e == s for e, s in zip(expected_shape, shape, strict=True)
        )
        if not ok:
            raise IdxFormatError(f"{path}: shape {shape} does not match the expected {expected_shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; a path ending in ``.gz`` is gzip-compressed."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in _CODES)}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX stores arrays with 1 to 255 dimensions, got ndim={array.ndim}")
    header = bytes([0, 0, _CODES[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(native.newbyteorder(">"), copy=False).tobytes(order="C")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(body)
