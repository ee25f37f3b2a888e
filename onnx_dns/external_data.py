"""Read a model's external data without trusting it: each tensor's bytes come from a regular file inside the
model's folder, at an offset and length that lie inside that file and match the tensor's declared size.

onnx's own loader reads what a location names: a link to /dev/zero makes it read until memory runs out, a FIFO
blocks it, a length past the end of the file gives a short tensor, and a link can lead out of the folder. Here a
location is resolved (links followed) and must stay inside the folder; the file is opened without blocking and
must be a regular file; the tensors together may not read more bytes than each file holds.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import onnx
from onnx import TensorProto

from onnx_dns.errors import ModelError
from onnx_dns.model_checks import RAW_BYTES, PACKED_4BIT, raw_bytes, tensors


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t, _ in tensors(model))


def load_external_data(model: onnx.ModelProto, folder: Path, name: str) -> None:
    """Replace each external tensor's reference by its bytes, in place, or raise ModelError naming the tensor."""
    root = folder.resolve()
    opened: dict[Path, tuple[int, int]] = {}
    read: dict[Path, int] = {}
    try:
        for tensor, where in tensors(model):
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            label = f"{name}: external data of {where} {tensor.name!r}"
            location, offset, length = _reference(tensor, label)
            path = _inside(root, location, label)
            if path not in opened:
                opened[path] = _open_regular(path, label)
            fd, size = opened[path]
            if offset + length > size:
                raise ModelError(f"{label}: bytes {offset:,} to {offset + length:,} lie past the end of {location} "
                                 f"({size:,} bytes); the data file is truncated or not the model's")
            read[path] = read.get(path, 0) + length
            if read[path] > size:
                raise ModelError(f"{label}: the tensors read more bytes from {location} than it holds ({size:,}); "
                                 "their regions overlap, so the file is corrupted or hostile")
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise ModelError(f"{label}: {location} ended early; the data file changed while it was read")
            tensor.raw_data = data
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    finally:
        for fd, _ in opened.values():
            os.close(fd)


def _reference(tensor: TensorProto, label: str) -> tuple[str, int, int]:
    """Location, offset and length of a tensor's external data; the length must be what its dims need."""
    if tensor.data_type not in RAW_BYTES and tensor.data_type not in PACKED_4BIT:
        raise ModelError(f"{label}: data type {tensor.data_type} cannot be stored as external data")
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"{label}: offset or length is not a number; the file is corrupted") from None
    needed = raw_bytes(tensor.data_type, math.prod(tensor.dims))
    if length is None:
        length = needed
    if offset < 0 or length != needed:
        raise ModelError(f"{label}: declares offset {offset:,} and length {length:,}, but dimensions "
                         f"{list(tensor.dims)} need {needed:,} bytes; the file is corrupted")
    return location, offset, length


def _inside(root: Path, location: str, label: str) -> Path:
    """The file `location` names, links resolved, when it lies inside the model's folder."""
    if not location or os.path.isabs(location) or "\0" in location:
        raise ModelError(f"{label}: location {location!r} must be a file name relative to the model's folder")
    path = Path(os.path.realpath(root / location))
    if not path.is_relative_to(root):
        raise ModelError(f"{label}: location {location!r} leads outside the model's folder ({path}); keep the "
                         "data files beside the model")
    return path


def _open_regular(path: Path, label: str) -> tuple[int, int]:
    """Open a regular file without blocking (a FIFO would block) and return its descriptor and size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise ModelError(f"{label}: the external data could not be read ({path}: {exc.strerror}); keep the data "
                         "files beside the model under the names it records") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ModelError(f"{label}: {path} is not a regular file; external data must be a plain file beside the "
                         "model")
    return fd, info.st_size
