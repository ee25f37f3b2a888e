"""What `compress` returns: the compressed model, per-layer counts before and after, accuracy before and after,
sizes, timings and the training history."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import onnx

from onnx_dns.evaluate import Metrics
from onnx_dns.model_io import save_model
from onnx_dns.report import LayerStats, compression

FORMATS = ("auto", "sparse", "dense", "packed")
SMALL_MODEL = 64 << 20  # above this, a model file is taken to hold its tensors itself


@dataclass
class CompressResult:
    """The outcome of a compression; `model` is the folded model (also written to `output` by the CLI)."""

    model: onnx.ModelProto = field(repr=False)
    format: str
    met_bound: bool
    layers_before: list[LayerStats]
    layers_after: list[LayerStats]
    accuracy_before: Metrics
    accuracy_after: Metrics
    file_size_before: int
    file_size_after: int
    seconds: float
    train_seconds: float
    iterations: int
    host_overhead: float
    surgery_ms_per_step: float
    images_per_second: float
    chosen_iteration: int
    history: list[dict]
    val_source: str
    artifact_seconds: float
    rollbacks: int = 0
    learning_rate: float | None = None
    optimizer: str | None = None
    grad_clip: float | None = None
    lr_probe: list[dict] | None = None
    output: str | None = None
    refold: Callable[[str], onnx.ModelProto] | None = field(default=None, repr=False, compare=False)

    @property
    def layers(self) -> list[LayerStats]:
        return self.layers_after

    @property
    def metrics(self) -> dict[str, Metrics]:
        return {"before": self.accuracy_before, "after": self.accuracy_after}

    @property
    def params(self) -> int:
        return sum(x.params for x in self.layers_before)

    @property
    def nonzeros(self) -> int:
        return sum(x.nonzeros for x in self.layers_after)

    @property
    def compression(self) -> float:
        return compression(self.layers_before, self.layers_after)

    @property
    def weight_compression(self) -> float:
        return compression(self.layers_before, self.layers_after, weights_only=True)

    @property
    def format_sizes(self) -> dict[str, int]:
        """Bytes of the compressed model in each format (serialized, external data included)."""
        return {format: self.model_as(format).ByteSize() for format in ("sparse", "dense", "packed")}

    def model_as(self, format: str) -> onnx.ModelProto:
        """The compressed model stored as `format`: sparse initializers, dense with exact zeros, packed (rebuilt
        by standard operators), or auto (the smaller of sparse and packed)."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        if format == self.format or self.refold is None:
            return self.model
        return self.refold(format)

    def save(self, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write the model atomically (external data beside it above 2 GB); returns the path written."""
        written = save_model(self.model_as(format or self.format), path)
        self.output = str(written)
        self.file_size_after = written.stat().st_size
        return written

    def to_dict(self) -> dict:
        skip = {"model", "refold", "history", "layers_before", "layers_after", "accuracy_before", "accuracy_after"}
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        data["layers_before"] = [asdict(x) for x in self.layers_before]
        data["layers_after"] = [asdict(x) for x in self.layers_after]
        for key in ("accuracy_before", "accuracy_after"):
            data[key] = {**asdict(getattr(self, key)), "score": getattr(self, key).score}
        data["history"] = [{**h, "metrics": asdict(h["metrics"])} for h in self.history]
        data["summary"] = {
            "params": self.params, "nonzeros": self.nonzeros, "compression": round(self.compression, 3),
            "weight_compression": round(self.weight_compression, 3), "measure": self.accuracy_after.measure,
        }
        return data


def stored_size(path: str | os.PathLike) -> int:
    """Bytes of a model file plus the external-data files it refers to (a model with external data is read
    without them to list them)."""
    path = Path(path)
    size = path.stat().st_size
    if size > SMALL_MODEL:
        return size
    try:
        skeleton = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a file onnx cannot parse has no external data to count
        return size
    locations = {entry.value for tensor in _all_tensors(skeleton.graph) for entry in tensor.external_data
                 if entry.key == "location"}
    for location in locations:
        data = path.parent / location
        if data.is_file():
            size += data.stat().st_size
    return size


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
