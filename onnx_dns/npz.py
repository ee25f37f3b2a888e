"""Read a `.npz` without loading it: arrays stored uncompressed (`np.savez`) are memory-mapped from the zip file,
compressed ones (`np.savez_compressed`) are read whole, as numpy must.

An uncompressed member of a zip file is its bytes after a local header (30 bytes, the name, an extra field);
the member is a `.npy` file whose own header gives dtype, shape and order, so the array is an `np.memmap` at the
offset where its data begins.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of `path` by name (without the `.npy` suffix), memory-mapped where they are stored raw."""
    path = Path(path)
    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            mapped = _mapped(path, raw, info) if info.compress_type == zipfile.ZIP_STORED else None
            if mapped is None:
                with archive.open(info) as member:
                    mapped = np.lib.format.read_array(member, allow_pickle=False)
            arrays[name] = mapped
    return arrays


def _mapped(path: Path, raw, info: zipfile.ZipInfo) -> np.ndarray | None:
    raw.seek(info.header_offset)
    header = LOCAL_HEADER.unpack(raw.read(LOCAL_HEADER.size))
    if header[0] != b"PK\x03\x04":
        return None
    raw.seek(info.header_offset + LOCAL_HEADER.size + header[9] + header[10])
    version = np.lib.format.read_magic(raw)
    if version not in ((1, 0), (2, 0)):
        return None
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(raw)
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects; save plain numeric arrays")
    if int(np.prod(shape)) * dtype.itemsize > info.file_size:
        raise ValueError(f"{info.filename} declares {shape} {dtype} but holds {info.file_size} bytes")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape, order="F" if fortran else "C")
