"""Read idx files (the MNIST format), gzip-compressed or not, and the bundled MNIST copy with its checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from onnx_dns.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The uncompressed bytes of an idx file (`.gz` is decompressed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from exc


def parse_idx(data: bytes, name: str = "idx") -> np.ndarray:
    """Decode an idx payload: 2 zero bytes, a type code, the number of dimensions, big-endian uint32 sizes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"{name}: not an idx file (bad magic number); expected MNIST-style idx data")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: idx header is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{name}: idx payload has {len(data) - header} bytes, its header announces {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    return parse_idx(read_idx_bytes(path), str(path))


def find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_mnist_split(folder: str | os.PathLike, split: str, *, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of the `train` or `t10k` split of an MNIST-style folder.

    `verify` checks the MD5 of the uncompressed files against the original MNIST release.
    """
    folder = Path(folder)
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{split}-{kind}"
        path = find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder}: no {stem} or {stem}.gz; an MNIST-style folder holds the four idx files")
        data = read_idx_bytes(path)
        if verify and hashlib.md5(data).hexdigest() != MNIST_MD5[stem]:
            raise DataError(f"{path}: MD5 differs from the original MNIST file; the copy is damaged, restore it")
        arrays.append(parse_idx(data, str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels
