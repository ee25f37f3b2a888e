"""Inspect a model: per-layer parameters, nonzeros and sparsity, totals, compression, file sizes, versions,
and the operators onnxruntime-training cannot differentiate on CPU (so a user knows before training)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_dns.channel_report import format_channels
from onnx_dns.fold import read_metadata
from onnx_dns.graph import initializers, to_array
from onnx_dns.insert_masks import mask_pairs
from onnx_dns.prepare import normalized
from onnx_dns.repack import unpack_model
from onnx_dns.prunable import Layer, find_layers
from onnx_dns.rewrites import CUDA_ONLY_GRADIENT, NO_GRADIENT, REWRITTEN_OPS
from onnx_dns.storage import tensor_storage


def training_support(op: str) -> str | None:
    """How onnxruntime-training 1.19 on CPU copes with an operator without a gradient of its own, or None."""
    if op in REWRITTEN_OPS:
        return "no CPU gradient; rewritten for training into equivalent operators, kept as is in the output"
    if op in CUDA_ONLY_GRADIENT:
        return "gradient on CUDA only: training cannot pass through it on CPU"
    if op in NO_GRADIENT:
        return "no gradient: training cannot pass through it"
    return None


@dataclass
class LayerStats:
    name: str
    op: str
    shape: list[int]
    params: int
    nonzeros: int
    weight_params: int
    weight_nonzeros: int
    storage: str | None = None
    stored_bytes: int | None = None

    @property
    def sparsity(self) -> float:
        return 100.0 * (1 - self.nonzeros / self.params) if self.params else 0.0


@dataclass
class ModelReport:
    path: str | None
    file_size: int | None
    gzip_size: int | None
    ir_version: int
    opsets: dict[str, int]
    layers: list[LayerStats]
    untrainable: dict[str, str] = field(default_factory=dict)
    channels: dict | None = None  # what channel surgery recorded: channels kept, MACs, latency

    @property
    def params(self) -> int:
        return sum(x.params for x in self.layers)

    @property
    def total(self) -> int:
        """Parameters of the prunable layers, biases counted."""
        return self.params

    @property
    def nonzero(self) -> int:
        """Nonzeros of the prunable layers, biases counted."""
        return self.nonzeros

    @property
    def nonzeros(self) -> int:
        return sum(x.nonzeros for x in self.layers)

    @property
    def weight_params(self) -> int:
        return sum(x.weight_params for x in self.layers)

    @property
    def weight_nonzeros(self) -> int:
        return sum(x.weight_nonzeros for x in self.layers)

    @property
    def compression(self) -> float:
        """Parameters over nonzeros, biases counted (the paper's way)."""
        return compression(self.layers, self.layers)

    @property
    def weight_compression(self) -> float:
        """Parameters over nonzeros, weights only."""
        return compression(self.layers, self.layers, weights_only=True)

    def to_dict(self) -> dict:
        data = asdict(self)
        for layer, stats in zip(data["layers"], self.layers):
            layer["sparsity"] = round(stats.sparsity, 4)
        data["totals"] = {
            "params": self.params, "nonzeros": self.nonzeros, "compression": round(self.compression, 4),
            "weight_params": self.weight_params, "weight_nonzeros": self.weight_nonzeros,
            "weight_compression": round(self.weight_compression, 4),
        }
        return data


def compression(before: list[LayerStats], after: list[LayerStats], *, weights_only: bool = False) -> float:
    """Parameters of `before` over nonzeros of `after`, with biases (the paper's way) or weights only."""
    if weights_only:
        return sum(x.weight_params for x in before) / max(sum(x.weight_nonzeros for x in after), 1)
    return sum(x.params for x in before) / max(sum(x.nonzeros for x in after), 1)


def layer_stats(model: onnx.ModelProto, layers: list[Layer],
                values: Mapping[str, np.ndarray] | None = None) -> list[LayerStats]:
    """Parameter and nonzero counts per layer; a masked model counts its masks' nonzeros.

    `values` replaces initializers by name (a training run's weights and masks)."""
    inits = initializers(model.graph)
    masks = mask_pairs(model)
    values = values or {}

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else to_array(inits[name])

    stats = []
    for layer in layers:
        counts = []
        for tensor in layer.tensors:
            kept = value(masks[tensor.name]) if tensor.name in masks else value(tensor.name)
            if tensor.name in masks:
                kept = np.broadcast_to(kept, tensor.shape)  # a channel mask covers its whole channel
            counts.append(int(np.count_nonzero(kept)))
        weights = [i for i, t in enumerate(layer.tensors) if t.role != "bias"]  # a recurrent layer's R too
        stats.append(LayerStats(
            name=layer.name, op=layer.op, shape=list(layer.weight.shape), params=layer.params,
            nonzeros=sum(counts), weight_params=sum(layer.tensors[i].size for i in weights),
            weight_nonzeros=sum(counts[i] for i in weights),
        ))
    return stats


def inspect_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> ModelReport:
    """Everything `onnx-dns inspect` prints, computed from a loaded model (and its file, when given)."""
    file_size = gzip_size = None
    if path is not None:
        raw = Path(path).read_bytes()
        file_size = len(raw)
        gzip_size = len(gzip.compress(raw, compresslevel=6))
    plain = unpack_model(model).model
    prepared = normalized(plain)
    layers = find_layers(prepared)
    stats = layer_stats(prepared, layers)
    stored = tensor_storage(model, plain)
    for layer, stat in zip(layers, stats):
        kinds = [stored[t.name] for t in layer.tensors if t.name in stored]
        if kinds:
            stat.storage = "/".join(dict.fromkeys(k.describe() for k in kinds))
            stat.stored_bytes = sum(k.bytes for k in kinds)
    ops = sorted({n.op_type for n in plain.graph.node if n.domain in ("", "ai.onnx")})
    return ModelReport(
        path=str(path) if path is not None else None,
        file_size=file_size,
        gzip_size=gzip_size,
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        layers=stats,
        untrainable={op: training_support(op) for op in ops if training_support(op)},
        channels=_channel_record(model),
    )


def _channel_record(model: onnx.ModelProto) -> dict | None:
    record = read_metadata(model) or {}
    return record if record.get("structure") == "channel" else None


def format_table(stats: list[LayerStats]) -> str:
    """A plain-text per-layer table with a totals row."""
    stored = any(s.storage for s in stats)
    rows = [("layer", "op", "shape", "params", "nonzeros", "sparsity") + (("storage", "bytes") if stored else ())]
    for s in stats:
        rows.append((s.name, s.op, "x".join(map(str, s.shape)), f"{s.params:,}", f"{s.nonzeros:,}", f"{s.sparsity:.2f}%")
                    + ((s.storage or "", f"{s.stored_bytes:,}" if s.stored_bytes is not None else "") if stored else ()))
    params = sum(s.params for s in stats)
    nonzeros = sum(s.nonzeros for s in stats)
    rows.append(("total", "", "", f"{params:,}", f"{nonzeros:,}",
                 f"{100 * (1 - nonzeros / params) if params else 0:.2f}%")
                + (("", f"{sum(s.stored_bytes or 0 for s in stats):,}") if stored else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 7}
    lines = []
    for k, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: ModelReport) -> str:
    lines = [format_table(report.layers)]
    if report.channels:
        lines.append(format_channels(report.channels))
    lines.append(
        f"compression {report.compression:.1f}x with biases ({report.params:,} -> {report.nonzeros:,}), "
        f"{report.weight_compression:.1f}x weights only"
    )
    if report.file_size is not None:
        lines.append(f"file {human_bytes(report.file_size)}, gzip {human_bytes(report.gzip_size)}")
    opsets = ", ".join(f"{d} {v}" for d, v in sorted(report.opsets.items()))
    lines.append(f"IR version {report.ir_version}, opsets: {opsets}")
    if report.untrainable:
        lines.append("operators without a CPU gradient of their own in onnxruntime-training:")
        lines.extend(f"  {op}: {why}" for op, why in report.untrainable.items())
    return "\n".join(lines)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
