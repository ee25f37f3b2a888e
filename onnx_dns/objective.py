"""Stage 2 of `compress`: what training learns from, decided from the data and the model's own outputs.

The training and validation sets (`--data`, `--val`, else the idx folder's test split, else a held-out part),
the task (classification with integer labels or a (batch, classes) output, else regression), the loss (labels,
distillation from the original model, or both) and the original model as teacher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_dns.data import CallableData, as_data
from onnx_dns.dataset import Dataset
from onnx_dns.errors import DataError, ModelError, OptionError
from onnx_dns.evaluate import Metrics, measure, session_runner
from onnx_dns.losses import LossSpec, ends_in_softmax, logits_name
from onnx_dns.options import CompressOptions
from onnx_dns.prepare import Prepared
from onnx_dns.targets import Targets, batch_axis, caching, stored_bytes, with_teacher

log = logging.getLogger(__name__)

Teacher = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Objective:
    """The data, the loss and the loss inputs of each batch."""

    train: Dataset | CallableData
    val: Dataset | CallableData
    spec: LossSpec
    teacher: Teacher
    targets: Targets
    batch_size: int
    sample: dict[str, np.ndarray]


def build_objective(prepared: Prepared, options: CompressOptions) -> Objective:
    """Open and check the data, and choose the task and the loss (`with_teacher_outputs` adds the original
    model's outputs where the loss or the metrics need them)."""
    cfg = options.train
    batch_size = cfg.batch_size
    train, val = split_data(options, prepared)
    teacher = session_runner(prepared.model, logits_name(prepared.model, prepared.output))
    first_inputs, first_labels = train.batch(0, batch_size, cfg.seed)
    raw = teacher(first_inputs)
    axis = batch_axis(raw, len(next(iter(first_inputs.values()))))
    sample = np.moveaxis(raw, axis, 0)
    task = options.task or guess_task(prepared.model, prepared.output, first_labels, sample)
    spec = loss_spec(task, prepared.output, first_labels, sample, options)
    if axis != 0:  # the channel scale is laid out for a batch-first output
        spec = replace(spec, channel_scale=None)
    targets = Targets(spec, teacher, sample.shape[1:], np.dtype(sample.dtype), axis)
    return Objective(train, val, spec, teacher, targets, batch_size, first_inputs)


def with_teacher_outputs(objective: Objective, batch_size: int, fixed_batch: int | None, work: Path | None,
                         progress: Callable[[dict], None] | None = None) -> Objective:
    """The original model's outputs computed once beside data held in arrays: the training set's when the loss
    distills, the validation set's when it has no labels (large ones memory-mapped under `work`; beyond
    `targets.ON_DISK_BYTES` left to be computed batch by batch). A model with a fixed batch size runs on batches
    of that size, the last one padded."""
    train, val = objective.train, objective.val
    if isinstance(train, Dataset) and objective.spec.distill_weight > 0:
        train = _taught(objective, train, "train", batch_size, fixed_batch, work, progress)
    if isinstance(val, Dataset) and val.labels is None:
        val = _taught(objective, val, "validation", batch_size, fixed_batch, work, progress)
    return replace(objective, train=train, val=val)


def _taught(objective: Objective, data: Dataset, which: str, batch_size: int, fixed_batch: int | None,
            work: Path | None, progress: Callable[[dict], None] | None) -> Dataset:
    """`data` with the original model's outputs stored beside it, or as it is when they are too large to store."""
    size = stored_bytes(len(data), objective.targets.sample_shape, objective.targets.dtype)
    where = caching(size)
    if where == "on the fly":
        log.info("the original model's outputs on %d %s samples would take %.1f GB: computed batch by batch when "
                 "needed (one extra forward pass per batch) instead of stored", len(data), which, size / 1e9)
    if progress is not None:
        progress({"event": "teacher", "data": which, "samples": len(data), "bytes": size, "where": where})
    if where == "on the fly":
        return data
    folder = work / f"teacher-{'train' if which == 'train' else 'val'}" if work else None
    return with_teacher(data, objective.teacher, fixed_batch or batch_size, folder, fixed_batch is not None,
                        progress)


def split_data(options: CompressOptions, prepared: Prepared) -> tuple[Dataset | CallableData, Dataset | CallableData]:
    """--data and --val; without --val, an idx folder's test split, else a held-out part of --data."""
    if options.data is None:
        raise DataError("no training data: give --data (a .npz, a folder of .npy or idx files, or module:function)")
    specs = prepared.specs
    train = as_data(options.data, specs, "train")
    if options.val is not None:
        return train, as_data(options.val, specs, "t10k")
    if isinstance(options.data, (str, Path)):
        source = Path(options.data)
        if source.is_dir() and any(source.glob("t10k-images-idx3-ubyte*")):
            return train, as_data(options.data, specs, "t10k")
    if isinstance(train, CallableData):
        raise DataError(f"{train.source}: streamed data needs a validation set; give --val")
    return train.split(options.val_fraction, options.train.seed)


def guess_task(model: onnx.ModelProto, output: str, labels: np.ndarray | None, sample: np.ndarray) -> str:
    """Integer labels mean classification; without labels, a (batch, classes) output or one made by a Softmax
    over its last axis ([B, T, C] scored per position) does too. Anything else is regression."""
    if labels is not None:
        return "classify" if np.issubdtype(labels.dtype, np.integer) else "regress"
    if sample.ndim == 2 and sample.shape[1] > 1:
        return "classify"
    return "classify" if sample.ndim > 2 and ends_in_softmax(model, output, sample.ndim) else "regress"


def loss_spec(task: str, output: str, labels: np.ndarray | None, sample: np.ndarray,
              options: CompressOptions) -> LossSpec:
    """The loss: labels, distillation (automatic without labels) or a mix, for `task` on `output`."""
    if task not in ("classify", "regress"):
        raise OptionError(f"--task must be classify or regress, not {task!r}")
    distill = options.distill if options.distill is not None else labels is None
    if labels is None and options.distill is False:
        raise DataError(f"{_name(options.data)}: the data has no 'labels' array; use --distill to learn from the "
                        "original model's outputs instead")
    label_weight = 0.0 if labels is None else (1.0 - options.distill_weight if distill else 1.0)
    distill_weight = 0.0 if not distill else (1.0 if labels is None else options.distill_weight)
    num_classes = None
    if task == "classify":
        if sample.ndim < 2:
            raise ModelError(f"classification needs an output with a class axis, (batch, classes) or (batch, "
                             f"positions, classes); {output!r} has {sample.ndim}: pass --task regress or choose "
                             "another --output-name")
        num_classes = int(sample.shape[-1])
        if labels is not None and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{_name(options.data)}: labels range over {labels.min()}..{labels.max()} but the "
                            f"model has {num_classes} classes")
    scale = channel_scale(sample) if task == "regress" and distill and labels is None and sample.ndim >= 3 else None
    return LossSpec(task, output, label_weight, distill_weight, options.temperature, num_classes, sample.ndim, scale)


def channel_scale(sample: np.ndarray) -> tuple[float, ...]:
    """Per channel (axis 1 of a batch-first output), the standard deviation of the original model's output,
    floored at 1e-6 of the largest so that a constant channel does not blow up its error."""
    spread = np.moveaxis(sample.astype(np.float64), 1, 0).reshape(sample.shape[1], -1).std(axis=1)
    floor = max(float(spread.max()) * 1e-6, 1e-12)
    return tuple(float(v) for v in np.maximum(spread, floor))


def _name(data: Any) -> str:
    return str(data) if isinstance(data, (str, Path)) else "the data"


def measure_model(model: onnx.ModelProto, objective: Objective, batch_size: int, fixed_batch: int | None,
                  progress: Callable[[dict], None] | None = None) -> Metrics:
    """Metrics of a plain onnxruntime session of `model` on the validation data (what a deployment would see)."""
    return measure(session_runner(model, objective.spec.output), objective.val, objective.spec.task, batch_size,
                   fixed_batch, objective.teacher, progress)
