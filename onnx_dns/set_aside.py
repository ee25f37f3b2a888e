"""Hand models to onnxruntime-training without their tensor bytes: the tensors are written once to files in the
artifact folder and the model keeps only references to them (the parameters' file serves the checkpoint and is
removed after; the constants' file stays, read by the training and eval graphs).

generate_artifacts serializes the model about twenty times (shape inference, the checker, each block's copy)
before it converts the parameters into its checkpoint. With the parameters and masks set aside it serializes a
model of a few KB and the checkpoint reads the bytes from the file: `build_artifacts` of a 50M-parameter MLP
(benchmarks/speed.py's wide MLP) went from 43 s to 12 s on a machine shared with three trainings, 8 s of it the
checkpoint's own writing of 400 MB (weights and masks). onnx's checker, which generate_artifacts runs, takes
external data only at a relative location inside the current folder, so the build runs from the artifact folder
(`inside`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx import TensorProto

MIN_BYTES = 1024  # smaller tensors stay in the model: a reference costs about as much


def set_aside(model: onnx.ModelProto, names: Collection[str], path: Path) -> int:
    """Move the bytes of `model`'s initializers named in `names` (of MIN_BYTES or more, held as raw bytes) into
    the file `path`, in place, leaving references relative to the file's folder; returns how many were moved.
    Tensors held in typed fields (strings, which external data cannot hold, among them) stay as they are."""
    moved = 0
    with open(path, "wb") as handle:
        for tensor in model.graph.initializer:
            if (tensor.name not in names or tensor.data_location == TensorProto.EXTERNAL
                    or not tensor.HasField("raw_data") or len(tensor.raw_data) < MIN_BYTES):
                continue
            offset, length = handle.tell(), len(tensor.raw_data)
            handle.write(tensor.raw_data)
            del tensor.external_data[:]
            for key, value in (("location", path.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            moved += 1
    return moved


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run the body with `folder` as the current folder, restored after, also on an error or Ctrl-C."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
