"""Measure a model on data and check it against bounds: the CI gate behind `onnx-dns evaluate`.

Accuracy comes from a plain onnxruntime session of the model file (what a deployment runs). With a reference
model (usually the uncompressed original) the drop is measured on the same samples, and label-free data is
scored by agreement with the reference (a regression output by the measure `fidelity` names or auto chooses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnx_dns.batch_axes import fixed_batch
from onnx_dns.data import as_data, model_inputs
from onnx_dns.errors import AccuracyBoundError, DataError
from onnx_dns.evaluate import Metrics, measure, session_runner
from onnx_dns.objective import choose_fidelity, guess_task
from onnx_dns.targets import find_batch_axis
from onnx_dns.losses import loss_output
from onnx_dns.model_io import load_model
from onnx_dns.report import ModelReport, inspect_model


@dataclass
class GateResult:
    model: ModelReport
    metrics: Metrics
    reference: Metrics | None = None
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "metrics": {**asdict(self.metrics), "score": self.metrics.score},
                "reference": None if self.reference is None else {**asdict(self.reference),
                                                                  "score": self.reference.score},
                "failures": self.failures, "passed": not self.failures}


def evaluate_model(model: str | onnx.ModelProto, data: Any, *, reference: str | onnx.ModelProto | None = None,
                   split: str = "t10k", output: str | None = None, task: str | None = None, batch_size: int = 64,
                   min_accuracy: float | None = None, max_accuracy_drop: float | None = None,
                   min_compression: float | None = None, name: str | None = None,
                   fidelity: str = "auto") -> GateResult:
    """Score `model` (a path or a loaded model) on `data` (a path, arrays or batches); list every bound it
    misses in `failures`."""
    path = model if isinstance(model, str) else None
    name = name or path or "<model>"
    model = load_model(model) if isinstance(model, str) else model
    output = output or loss_output(model, name=name)
    specs = model_inputs(model)
    dataset = as_data(data, specs, split)
    fixed = fixed_batch([s.shape for s in specs], [s.batch_axis for s in specs])
    run = session_runner(model, output)
    ref_run = None
    if reference is not None:
        ref_run = session_runner(load_model(reference) if isinstance(reference, str) else reference, output)
    first_inputs, first_labels = next(iter(dataset.iterate(fixed or batch_size)))
    if first_labels is None and ref_run is None:
        raise DataError(f"{data if isinstance(data, str) else 'the data'}: no labels; give --reference ORIGINAL "
                        "to score agreement with it instead")
    first = run(first_inputs)
    axis = find_batch_axis(run, first_inputs, first)  # then kept: a later batch may hold T samples
    sample = np.moveaxis(first, axis, 0)
    task = task or guess_task(model, output, first_labels, sample)
    fidelity = choose_fidelity(fidelity, model, output, task, first_labels, sample, first_inputs)
    metrics = measure(run, dataset, task, batch_size, fixed, ref_run, fidelity=fidelity, axis=axis)
    ref_metrics = None if ref_run is None else measure(ref_run, dataset, task, batch_size, fixed, ref_run,
                                                         fidelity=fidelity, axis=axis)
    result = GateResult(inspect_model(model, path), metrics, ref_metrics)
    if min_accuracy is not None and metrics.score < min_accuracy:
        result.failures.append(f"{metrics.label} {metrics.score:.2f} is below --min-accuracy {min_accuracy}")
    if max_accuracy_drop is not None:
        if ref_metrics is None:
            raise AccuracyBoundError("--max-accuracy-drop needs --reference ORIGINAL to measure the drop against")
        drop = ref_metrics.score - metrics.score
        if drop > max_accuracy_drop:
            hint = f" ({metrics.bound_hint})" if metrics.bound_hint else ""
            result.failures.append(f"{metrics.fall_from(ref_metrics)} from the reference, more than "
                                   f"--max-accuracy-drop {max_accuracy_drop}{hint}")
    if min_compression is not None and result.model.compression < min_compression:
        result.failures.append(f"compression {result.model.compression:.1f}x is below --min-compression "
                               f"{min_compression}x")
    return result
