"""Load and save ONNX models: clear errors for bad files, external data, atomic writes.

onnxruntime-training 1.19 accepts IR version <= 10 and default-domain opset <= 21, so a model beyond those
limits is refused here, before any work starts, with the versions named.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import onnx

from onnx_dns.errors import ModelError, OutputError
from onnx_dns.external_data import load_external_data, uses_external_data
from onnx_dns.graph import payload_bytes
from onnx_dns.model_checks import check_structure, check_tensors

MAX_IR_VERSION = 10
MAX_OPSET = 21
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(source: str | os.PathLike | bytes, *, check: bool = True) -> onnx.ModelProto:
    """Read a model from a path or bytes, with its external data, and refuse what training cannot take.

    The file may come from anyone: declared sizes are checked against the bytes present, external data is read
    only from regular files inside the model's folder, and nesting and node order are checked in Python before
    onnx's C++ checker sees the model (model_checks, external_data)."""
    if isinstance(source, (bytes, bytearray)):
        name = "<bytes>"
        model = _parse(bytes(source), name)
    else:
        path = Path(source)
        name = str(path)
        model = _parse(_read_file(path), name, path.suffix)
    check_structure(model, name, order=check)
    if uses_external_data(model):
        if isinstance(source, (bytes, bytearray)):
            raise ModelError(f"{name}: the model keeps tensors in external data files; load it from its file")
        load_external_data(model, Path(source).parent, name)
    check_tensors(model, name)
    if not model.graph.node:
        raise ModelError(f"{name}: not an ONNX model (the graph has no nodes); check the file")
    check_versions(model, name)
    if check and not over_protobuf_limit(model, PROTOBUF_LIMIT):
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"{name}: fails onnx.checker ({_short(exc)}); fix or re-export the model") from exc
    return model


def _read_file(path: Path) -> bytes:
    """The bytes of a model file; anything but a non-empty regular file is refused before it is read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file; give the path of an .onnx model") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror}); check the path and its permissions") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelError(f"{path}: is a directory; give the path of an .onnx model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(f"{path}: is not a regular file (a device, pipe or socket); give an .onnx model file")
    if info.st_size == 0:
        raise ModelError(f"{path}: the file is empty; re-export the model")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror}); check the path and its permissions") from exc


def _parse(data: bytes, name: str, suffix: str = "") -> onnx.ModelProto:
    """Decode a model, in the text format its file extension names (`.onnxtxt`, `.textproto`...) as onnx.load
    does, else binary protobuf."""
    fmt = onnx.serialization.registry.get_format_from_file_extension(suffix) if suffix else None
    try:
        model = onnx.load_model_from_string(data, format=fmt or "protobuf")
    except Exception as exc:  # noqa: BLE001 - google.protobuf.message.DecodeError, whose import path varies
        raise ModelError(f"{name}: not a readable ONNX model, truncated, corrupted or nested too deeply "
                         f"({_short(exc)}); re-export it") from exc
    return model


def check_versions(model: onnx.ModelProto, name: str = "model") -> None:
    """Refuse IR and opset versions newer than onnxruntime-training 1.19 runs."""
    if model.ir_version > MAX_IR_VERSION:
        raise ModelError(
            f"{name}: IR version {model.ir_version} is newer than onnxruntime-training 1.19 accepts "
            f"(at most {MAX_IR_VERSION}); re-export with onnx<1.18 or set the model's ir_version to "
            f"{MAX_IR_VERSION} if it uses no newer feature"
        )
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > MAX_OPSET:
            raise ModelError(
                f"{name}: opset {opset.version} is newer than onnxruntime-training 1.19 accepts "
                f"(at most {MAX_OPSET}); re-export with opset_version={MAX_OPSET} or lower"
            )


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, forbid: str | os.PathLike | None = None) -> Path:
    """Write a model atomically (temporary file, then rename); models near the 2 GB limit get external data.

    `forbid` names the input model: writing over it is refused so the input is never modified.
    """
    path = Path(path)
    directory = check_output_path(path, forbid=forbid)
    external = over_protobuf_limit(model, EXTERNAL_DATA_THRESHOLD)
    try:
        tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise write_failed(path, exc) from exc
    try:
        tmp_model = Path(tmpdir) / path.name
        data_name = path.name + ".data"
        try:
            if external:
                # onnx.save_model converts the tensors it writes to external references in place: save a copy
                # so that the caller's model keeps its weights.
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                onnx.save_model(
                    copy, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(tmp_model))
            if external and (Path(tmpdir) / data_name).exists():
                os.replace(Path(tmpdir) / data_name, directory / data_name)
            os.replace(tmp_model, path)
        except OSError as exc:
            raise write_failed(path, exc) from exc
    finally:
        for leftover in Path(tmpdir).iterdir() if Path(tmpdir).exists() else ():
            leftover.unlink()
        if Path(tmpdir).exists():
            os.rmdir(tmpdir)
    return path


def write_failed(path: Path, exc: OSError) -> OutputError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return OutputError(f"{path}: writing failed ({exc.strerror or exc}); "
                       f"{'free space' if full else 'check the permissions'} or choose another path")


def _graph_payload(graph: onnx.GraphProto) -> int:
    """Bytes of tensor data in a graph: initializers and tensor attributes, subgraphs included."""
    total = sum(payload_bytes(t) for t in graph.initializer)
    total += sum(payload_bytes(s.values) + payload_bytes(s.indices) for s in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            total += sum(payload_bytes(t) for t in [*attribute.tensors, *([attribute.t] if attribute.HasField("t")
                                                                             else [])])
            total += sum(_graph_payload(g) for g in [*attribute.graphs, *([attribute.g] if attribute.HasField("g")
                                                                          else [])])
    return total


def over_protobuf_limit(model: onnx.ModelProto, limit: int) -> bool:
    """Whether the serialized model exceeds `limit` bytes. Tensor data decides without serializing when it is
    clearly under or over (measuring a model of hundreds of MB takes a second); near the limit the model is
    measured, and protobuf's upb backend refuses to measure a message over 2 GB, which also means it is over."""
    payload = _graph_payload(model.graph)
    if payload < 0.9 * limit:
        return False
    if payload > limit:
        return True
    try:
        return model.ByteSize() > limit
    except Exception:  # noqa: BLE001 - google.protobuf.message.EncodeError, whose import path varies by backend
        return True


def check_output_path(path: str | os.PathLike, *, forbid: str | os.PathLike | None = None) -> Path:
    """Refuse an output path that is the input model or lies in a missing or read-only directory.

    Returns the directory the output goes to. Called before long work starts, and again when writing.
    """
    path = Path(path)
    if forbid is not None and path.resolve() == Path(forbid).resolve():
        raise OutputError(f"{path}: the output path is the input model; choose another output path")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path such as {path / 'model.dns.onnx'}")
    directory = path.parent
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{path}: {directory} is a file, not a directory; choose another output path")
    if not directory.is_dir():
        raise OutputError(f"{path}: the directory {directory} does not exist; create it or choose another path")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{path}: the directory {directory} is not writable; choose another output path")
    return directory


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
