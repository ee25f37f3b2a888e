"""Stage 2 of `compress`: what training learns from, decided from the data and the model's own outputs.

The training and validation sets (`--data`, `--val`, else the idx folder's test split, else a held-out part),
the task (classification with integer labels or a (batch, classes) output, else regression), the loss (labels,
distillation from the original model, or both; a YOLO head label-free: `detection_loss`), the original model as
teacher, and how a label-free regression output is scored (`choose_fidelity`: detections, decisions, cosine or
relative error; `onnx_dns.fidelity`).
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
from onnx_dns.fidelity import CHOICES as FIDELITY_CHOICES
from onnx_dns.graph import producers, source
from onnx_dns.losses import LossSpec, ends_in_softmax, logits_name
from onnx_dns.options import DEFAULT_BATCH_SIZE, CompressOptions
from onnx_dns.prepare import Prepared
from onnx_dns.sequence_batch import samples_interact
from onnx_dns.stream import BURN_IN_RUNS, state_pairs
from onnx_dns.targets import (TEACHER, TEMPERATURES, LazyOutputs, Targets, caching, choose_temperature,
                              find_batch_axis, stored_bytes, with_teacher)
from onnx_dns.yolo_heads import detection_head, is_raw_yolox, is_yolo_head

log = logging.getLogger(__name__)

Teacher = Callable[[dict[str, np.ndarray]], np.ndarray]
FEATURE_WIDTH = 16  # a last axis at least this wide may be a feature vector
LAYOUT_OPS = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Cast"}
SIGMOIDS = {"Sigmoid", "HardSigmoid"}
AVERAGES = {"ReduceMean", "AveragePool", "GlobalAveragePool"}  # a mean of probabilities is a probability
EMBEDDING_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "Div", "LpNormalization", "GlobalAveragePool",
                 "GlobalMaxPool", "LayerNormalization"}
KEEPS_LAYOUT = {"Identity", "Cast", "Dropout", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Tanh", "Sigmoid",
                "HardSigmoid", "HardSwish", "Softplus", "Clip", "Abs", "Neg", "Exp", "Sqrt", "Pow", "Add", "Sub",
                "Mul", "Div", "BatchNormalization", "InstanceNormalization"}
SPATIAL_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Resize", "Upsample", "DepthToSpace",
               "SpaceToDepth", "Pad"}


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
    sequence: bool = False  # the batch axis is a sequence (sequence_batch.py)
    val_teacher: Teacher | None = None  # the original as the validation set is scored (a stream: `onnx_dns.stream`)


def build_objective(prepared: Prepared, options: CompressOptions) -> Objective:
    """Open and check the data, and choose the task and the loss (`with_teacher_outputs` adds the original
    model's outputs where the loss or the metrics need them)."""
    cfg = options.train
    batch_size = cfg.batch_size or DEFAULT_BATCH_SIZE
    train, val = split_data(options, prepared)
    teacher = session_runner(prepared.model, logits_name(prepared.model, prepared.output))
    first_inputs, first_labels = train.batch(0, batch_size, cfg.seed)
    raw = teacher(first_inputs)
    axis = find_batch_axis(teacher, first_inputs, raw)
    sequence = prepared.fixed_batch is None and samples_interact(teacher, first_inputs, raw, axis)
    pairs = state_pairs(prepared.model) if sequence else {}
    if sequence:
        log.warning("%s: a sample's output depends on the other samples of its batch (the batch axis is a "
                    "sequence): training on runs of %d consecutive samples", prepared.source, batch_size)
        train, val = split_data(options, prepared, windows=True, burn_in=BURN_IN_RUNS * batch_size if pairs else 0)
        first_inputs, first_labels = train.batch(0, batch_size, cfg.seed)
        raw = teacher(first_inputs)
        axis = find_batch_axis(teacher, first_inputs, raw)
    sample = np.moveaxis(raw, axis, 0)
    task = options.task or guess_task(prepared.model, prepared.output, first_labels, sample)
    spec = loss_spec(task, prepared.output, first_labels, sample, options)
    if axis != 0:  # the channel scale is laid out for a batch-first output
        spec = replace(spec, channel_scale=None)
    elif spec.channel_scale is not None:
        head = detection_head(prepared.model, prepared.output, sample, image_size(first_inputs))
        spec = spec if head is None else replace(spec, channel_scale=None, detection=head)
    fidelity = choose_fidelity(options.fidelity, prepared.model, prepared.output, task, first_labels, sample,
                               first_inputs)
    targets = Targets(spec, teacher, sample.shape[1:], np.dtype(sample.dtype), axis, fidelity)
    targets.stream = pairs
    val_teacher = session_runner(prepared.model, logits_name(prepared.model, prepared.output), pairs) if pairs else None
    return Objective(train, val, spec, teacher, targets, batch_size, first_inputs, sequence, val_teacher)


def with_teacher_outputs(objective: Objective, batch_size: int, fixed_batch: int | None, work: Path | None,
                         progress: Callable[[dict], None] | None = None) -> Objective:
    """The original model's outputs stored beside data held in arrays: the training set's when the loss distills
    (each computed when a batch first draws it), the validation set's when it has no labels (computed now, in one
    pass). Large ones are memory-mapped under `work`; beyond `targets.ON_DISK_BYTES` they are left to be computed
    batch by batch. A model with a fixed batch size runs on batches of that size, padded."""
    train, val = objective.train, objective.val
    if isinstance(train, Dataset) and objective.spec.distill_weight > 0 and not objective.sequence:
        train = _taught(objective, train, "train", batch_size, fixed_batch, work, progress)
    if isinstance(val, Dataset) and val.labels is None:
        val = _taught(objective, val, "validation", batch_size, fixed_batch, work, progress, objective.val_teacher)
    return replace(objective, train=train, val=val)


def _taught(objective: Objective, data: Dataset, which: str, batch_size: int, fixed_batch: int | None,
            work: Path | None, progress: Callable[[dict], None] | None, teacher: Teacher | None = None) -> Dataset:
    """`data` with the original model's outputs stored beside it, or as it is when they are too large to store."""
    size = stored_bytes(len(data), objective.targets.sample_shape, objective.targets.dtype)
    where = caching(size)
    if where == "on the fly":
        log.info("the original model's outputs on %d %s samples would take %.1f GB: computed batch by batch when "
                 "needed (one extra forward pass per batch) instead of stored", len(data), which, size / 1e9)
    if progress is not None:
        progress({"event": "teacher", "data": which, "samples": len(data), "bytes": size, "where": where,
                  "lazy": which == "train"})
    if where == "on the fly":
        return data
    folder = work / f"teacher-{'train' if which == 'train' else 'val'}" if work else None
    if which == "train":
        targets = objective.targets
        return data.with_aligned(TEACHER, LazyOutputs(data, teacher or objective.teacher, fixed_batch or batch_size,
                                                      targets.sample_shape, targets.dtype, folder,
                                                      fixed_batch is not None, targets.axis))
    return with_teacher(data, teacher or objective.teacher, fixed_batch or batch_size, folder, fixed_batch is not None,
                        progress, objective.targets.axis)


def split_data(options: CompressOptions, prepared: Prepared, windows: bool = False,
               burn_in: int = 0) -> tuple[Dataset | CallableData, Dataset | CallableData]:
    """--data and --val; without --val, an idx folder's test split, else a held-out part of --data (the last
    samples, after `burn_in` unscored ones, and batches of consecutive ones, with `windows`)."""
    if options.data is None:
        raise DataError("no training data: give --data (a .npz, a folder of .npy or idx files, or module:function)")
    specs = prepared.specs
    train = as_data(options.data, specs, "train")
    if windows and isinstance(train, Dataset):
        train = train.as_windows()
    if options.val is not None:
        return train, as_data(options.val, specs, "t10k")
    if isinstance(options.data, (str, Path)):
        source = Path(options.data)
        if source.is_dir() and any(source.glob("t10k-images-idx3-ubyte*")):
            return train, as_data(options.data, specs, "t10k")
    if isinstance(train, CallableData):
        raise DataError(f"{train.source}: streamed data needs a validation set; give --val")
    return train.split(options.val_fraction, options.train.seed, options.train.batch_size, burn_in)


def guess_task(model: onnx.ModelProto, output: str, labels: np.ndarray | None, sample: np.ndarray) -> str:
    """Integer labels mean classification; without labels, a (batch, classes) output or one made by a Softmax
    over its last axis ([B, T, C] scored per position) does too, unless the (batch, D) output is a pooled or
    normalized embedding (`is_embedding`). Anything else is regression."""
    if labels is not None:
        return "classify" if np.issubdtype(labels.dtype, np.integer) else "regress"
    if sample.ndim == 2 and sample.shape[1] > 1:
        return "regress" if is_embedding(model, output) else "classify"
    return "classify" if sample.ndim > 2 and ends_in_softmax(model, output, sample.ndim) else "regress"


def is_embedding(model: onnx.ModelProto, output: str) -> bool:
    """Whether `output` comes, through layout operators, from a pooling or a normalization (a sentence or image
    embedding such as mean-pooled tokens or GlobalAveragePool + Flatten) rather than from a classifier layer. A
    softmax written out as Exp(z) / ReduceSum(Exp(z)) (jax2tf's, magika's) is a Div of class scores, not an
    L2-normalized embedding: taken for one, it was distilled by MSE on saturated probabilities, whose gradient
    vanishes (every learning rate left the loss flat)."""
    node = source(producers(model.graph), output, LAYOUT_OPS | {"Concat"})
    if node is not None and node.op_type == "Div" and logits_name(model, node.output[0]) != node.output[0]:
        return False
    return node is not None and node.op_type in EMBEDDING_OPS


def choose_fidelity(option: str, model: onnx.ModelProto, output: str, task: str, labels: np.ndarray | None,
                    sample: np.ndarray, inputs: dict[str, np.ndarray]) -> str:
    """How a regression output is scored: `option` when not auto; with labels, relative error; else boxes for a
    YOLO head over the image input, decisions for a Sigmoid's output, cosine for a feature vector on the last
    axis, else relative error. `sample` holds the original model's outputs for `inputs`, batch first."""
    if option not in FIDELITY_CHOICES:
        raise OptionError(f"--fidelity {option!r}: choose one of {', '.join(FIDELITY_CHOICES)}")
    if task == "classify":
        if option not in ("auto", "relative-error"):
            raise OptionError(f"--fidelity {option} scores a regression output, but {output!r} is scored as "
                              "classification; add --task regress or drop --fidelity")
        return "relative-error"
    if option != "auto":
        return option
    if labels is not None:
        return "relative-error"
    if is_yolo_head(sample, image_size(inputs)) or is_raw_yolox(sample, image_size(inputs)):
        return "boxes"
    if ends_in_sigmoid(model, output, sample):
        return "decisions"
    if sample.ndim >= 2 and sample.shape[-1] >= FEATURE_WIDTH and not spatial_last_axis(model, output):
        return "cosine"
    return "relative-error"


def image_size(inputs: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(height, width) of the first image input [B, C, H, W], or None."""
    return next((tuple(v.shape[2:]) for v in inputs.values() if v.ndim == 4 and v.dtype.kind == "f"), None)


def ends_in_sigmoid(model: onnx.ModelProto, output: str, sample: np.ndarray) -> bool:
    """Whether `output` is a Sigmoid's, or has values in [0, 1] and comes from a Sigmoid or HardSigmoid through
    layout operators (Reshape, Transpose, Slice ...) and means only (Silero's op18 VAD averages its Sigmoid)."""
    made_by = producers(model.graph)
    first = made_by.get(output)
    if first is not None and first.op_type == "Sigmoid":
        return True
    node = source(made_by, output, LAYOUT_OPS | AVERAGES)
    in_unit = bool(np.all((sample >= 0) & (sample <= 1)))
    return node is not None and node.op_type in SIGMOIDS and in_unit


def spatial_last_axis(model: onnx.ModelProto, output: str) -> bool:
    """Whether `output`'s last axis is a spatial axis: it comes from a convolution, pooling or resize (channels
    first) through operators that keep the layout."""
    node = source(producers(model.graph), output, KEEPS_LAYOUT)
    return node is not None and node.op_type in SPATIAL_OPS


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
    temperature = options.temperature
    if temperature is None:
        temperature = TEMPERATURES[0]
        if task == "classify" and distill:
            temperature = choose_temperature(sample)
    return LossSpec(task, output, label_weight, distill_weight, temperature, num_classes, sample.ndim, scale)


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
    run = session_runner(model, objective.spec.output, objective.targets.stream)
    return measure(run, objective.val, objective.spec.task, batch_size, fixed_batch,
                   objective.val_teacher or objective.teacher, progress, objective.targets.fidelity,
                   objective.targets.axis)


def measure_original(model: onnx.ModelProto, objective: Objective, batch_size: int, fixed_batch: int | None,
                     progress: Callable[[dict], None] | None = None) -> Metrics:
    """The original model's metrics on the validation data: scored from its outputs stored beside unlabelled
    validation data (no pass), else as `measure_model`."""
    val = objective.val
    if isinstance(val, Dataset) and val.labels is None and TEACHER in val.aligned:
        return measure(None, val, objective.spec.task, batch_size, None, None, progress, objective.targets.fidelity)
    return measure_model(model, objective, batch_size, fixed_batch, progress)
