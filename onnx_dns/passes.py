"""What every graph pass returns, after onnx-ir: the new model and whether the pass changed anything."""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool
