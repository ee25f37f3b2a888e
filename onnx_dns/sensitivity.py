"""Per-layer sensitivity: the accuracy after pruning one layer alone by magnitude, with no training.

For layer k and sparsity s, the entries of the layer's weights and bias with the smallest |w| (a fraction s of
them, ranked jointly as target mode ranks them) are set to zero in a copy of the model, which is scored in a
plain onnxruntime session on the validation data. A quick first look at which layers hurt; retraining recovers
much of the loss, so the curves rank layers rather than predict a compressed model's accuracy.

`allocate_sparsities` turns the curves into per-layer sparsities for a total compression target: every layer
gets the largest sparsity whose drop stays within a common tolerance tau (drops interpolated linearly in
log(1 - s) between measured points), with tau the smallest that fits the kept budget n / target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.criteria.target import magnitude_for_keep
from onnx_dns.errors import OptionError
from onnx_dns.evaluate import Metrics
from onnx_dns.graph import initializers
from onnx_dns.objective import Objective, measure_model
from onnx_dns.prepare import Prepared

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass
class LayerCurve:
    """One layer's accuracy at each sparsity, pruned alone."""

    layer: str
    params: int
    sparsities: list[float]
    metrics: list[Metrics]

    @property
    def scores(self) -> list[float]:
        return [m.score for m in self.metrics]


@dataclass
class SensitivityResult:
    baseline: Metrics
    curves: list[LayerCurve]

    def to_dict(self) -> dict:
        return {"baseline": {**asdict(self.baseline), "score": self.baseline.score},
                "layers": [{"layer": c.layer, "params": c.params, "sparsities": c.sparsities,
                            "scores": c.scores} for c in self.curves]}

    def markdown(self) -> str:
        sparsities = self.curves[0].sparsities if self.curves else []
        head = "| layer | params | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"
        rows = [f"{self.baseline.label} of the original: {self.baseline.score:.2f}; each layer pruned alone, "
                "no retraining.", "", head, "|---|---|" + "---|" * len(sparsities)]
        rows += [f"| {c.layer} | {c.params:,} | " + " | ".join(f"{v:.2f}" for v in c.scores) + " |"
                 for c in self.curves]
        return "\n".join(rows) + "\n"


def pruned_copy(model: onnx.ModelProto, tensors: Sequence[str], sparsity: float) -> onnx.ModelProto:
    """A copy of `model` with the smallest-magnitude `sparsity` of the entries of `tensors` set to zero."""
    inits = initializers(model.graph)
    arrays = {name: numpy_helper.to_array(inits[name]) for name in tensors}
    threshold = magnitude_for_keep(list(arrays.values()), 1.0 - sparsity)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in arrays:
            values = arrays[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(np.where(np.abs(values) >= threshold, values, 0).astype(
                values.dtype), tensor.name))
    return copy


def layer_sensitivity(prepared: Prepared, objective: Objective, sparsities: Sequence[float] = SPARSITIES,
                      batch_size: int = 1000, progress: Callable[[dict], None] | None = None) -> SensitivityResult:
    """The curve of every prunable layer of `prepared` on `objective`'s validation data."""
    progress = progress or (lambda event: None)

    def score(model: onnx.ModelProto) -> Metrics:
        return measure_model(model, objective, batch_size, prepared.fixed_batch)

    baseline = score(prepared.model)
    curves = []
    for layer in prepared.layers:
        names = [t.name for t in layer.tensors]
        metrics = []
        for sparsity in sparsities:
            progress({"event": "sensitivity", "layer": layer.name, "sparsity": sparsity})
            metrics.append(score(pruned_copy(prepared.model, names, sparsity)))
        curves.append(LayerCurve(layer.name, layer.params, list(sparsities), metrics))
    return SensitivityResult(baseline, curves)


def _drop_at(curve: LayerCurve, baseline: float, keep: float) -> float:
    """The curve's drop at kept fraction `keep`, linear in log(keep) between points (0 drop at keep 1)."""
    keeps = [1.0] + [1.0 - s for s in curve.sparsities]
    drops = [0.0] + [baseline - v for v in curve.scores]
    logs = [math.log(k) for k in keeps]
    return float(np.interp(-math.log(keep), [-x for x in logs], drops))


def _keep_for(curve: LayerCurve, baseline: float, tau: float) -> float:
    """The smallest kept fraction on the measured range whose interpolated drop, and every drop before it,
    is at most `tau`."""
    grid = np.exp(np.linspace(0.0, math.log(1.0 - max(curve.sparsities)), 200))
    keep = 1.0
    for value in grid:
        if _drop_at(curve, baseline, float(value)) > tau:
            break
        keep = float(value)
    return keep


def allocate_sparsities(result: SensitivityResult, target: float) -> dict[str, float]:
    """Per-layer sparsities reaching `target` total compression with the smallest common tolerated drop."""
    sizes = {c.layer: c.params for c in result.curves}
    budget = sum(sizes.values()) / target
    base = result.baseline.score

    def kept(tau: float) -> float:
        return sum(sizes[c.layer] * _keep_for(c, base, tau) for c in result.curves)

    high = max(base - min(c.scores) for c in result.curves) + 1.0
    if kept(high) > budget:
        raise OptionError(f"--target {target:g}x is beyond the measured sparsities (up to "
                          f"{100 * max(result.curves[0].sparsities):g}%); measure higher sparsities")
    low = 0.0
    for _ in range(40):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if kept(mid) <= budget else (mid, high)
    return {c.layer: 1.0 - _keep_for(c, base, high) for c in result.curves}

