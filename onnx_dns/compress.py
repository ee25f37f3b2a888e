"""The whole job: load -> find prunable weights -> insert masks -> build training artifacts ->
train with surgery -> fold -> write, then measure the written model against the original.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns import __version__
from onnx_dns.artifacts import build_artifacts
from onnx_dns.data import CallableData, Dataset, load_data, model_inputs
from onnx_dns.errors import DataError, Interrupted, ModelError, OptionError, OutputError
from onnx_dns.evaluate import Metrics, collect, compute_metrics, session_runner
from onnx_dns.fold import fold_masks
from onnx_dns.freeze import initializers_feeding, upstream_initializers
from onnx_dns.graph import FLOAT_TYPES
from onnx_dns.insert_masks import insert_masks, mask_name
from onnx_dns.losses import LossSpec, logits_name, loss_output
from onnx_dns.model_io import check_output_path, load_model, save_model
from onnx_dns.normalize import densify_sparse, lift_constants, pin_input_shapes, unlist_initializer_inputs
from onnx_dns.prunable import Layer, find_layers
from onnx_dns.repack import repack, unpack_model
from onnx_dns.report import LayerStats, compression, layer_stats
from onnx_dns.surgery import LayerPlan, Surgeon, allocate_keep
from onnx_dns.targets import Targets, attach_teacher
from onnx_dns.trainer import TrainConfig, Trainer
from onnx_dns.training_mode import estimate_statistics

log = logging.getLogger(__name__)

DEFAULT_C = 1.0
STOP_FRACTION = 0.75
BN_BATCHES = 100  # training batches that new BatchNormalization statistics are measured on (--update-bn-stats)
MISSED_SUFFIX = ".below-bound"


@dataclass
class CompressOptions:
    """Everything `compress` can be told; the CLI's options map one to one onto these fields."""

    data: str | None = None
    val: str | None = None
    distill: bool | None = None
    distill_weight: float = 0.5
    temperature: float = 4.0
    task: str | None = None
    output: str | None = None
    target: float | None = None
    c: dict[str, float] = field(default_factory=dict)
    default_c: float = DEFAULT_C
    sparsity: dict[str, float] = field(default_factory=dict)
    stop: dict[str, int] = field(default_factory=dict)
    surgery_stop: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    biases: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    val_fraction: float = 0.1
    dense: bool = False
    format: str = "sparse"  # the CLI passes its own default, auto
    bits: int | None = None
    prune: bool = True
    freeze_before: tuple[str, ...] = ()
    update_bn_stats: bool = False
    work_dir: str | None = None
    keep_work: bool = False


@dataclass
class CompressResult:
    output: str
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

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("accuracy_before", "accuracy_after"):
            data[key]["score"] = getattr(self, key).score
        data["history"] = [{**h, "metrics": asdict(h["metrics"])} for h in self.history]
        data["summary"] = {
            "params": self.params, "nonzeros": self.nonzeros, "compression": round(self.compression, 3),
            "weight_compression": round(self.weight_compression, 3),
        }
        return data


def compress(model_path: str | os.PathLike, output_path: str | os.PathLike, options: CompressOptions,
             progress: Callable[[dict], None] | None = None, resume: bool = False) -> CompressResult:
    """Compress the model at `model_path` with DNS and write it to `output_path`.

    When `--max-accuracy-drop` is set and missed, the model is written with the suffix `.below-bound` before
    the output's extension and the result says so (`met_bound` False), so no work is lost.
    """
    started = time.perf_counter()
    progress = progress or (lambda event: None)
    model_path, output_path = Path(model_path), Path(output_path)
    check_output_path(output_path, forbid=model_path)
    if options.train.max_accuracy_drop is not None:  # where a model that misses the bound goes
        check_output_path(below_bound_path(output_path), forbid=model_path)
    original = load_model(model_path)
    model = unlist_initializer_inputs(densify_sparse(lift_constants(unpack_model(original).model).model).model).model
    _check_finite(model, model_path)
    output = loss_output(model, options.output, str(model_path))
    layers = find_layers(model, include=options.include, exclude=options.exclude, biases=options.biases)
    frozen = upstream_initializers(model, options.freeze_before) if options.freeze_before else set()
    feeding = initializers_feeding(model, output)  # layers that do not feed the trained output stay as they are
    left_alone = {layer.name: f"is before --freeze-before {', '.join(options.freeze_before)}"
                  for layer in layers if any(t.name in frozen for t in layer.tensors)}
    left_alone |= {layer.name: f"does not feed output {output!r}" for layer in layers
                   if layer.name not in left_alone and not all(t.name in feeding for t in layer.tensors)}
    for name, why in left_alone.items():
        log.warning("layer %s is neither trained nor pruned: it %s", name, why)
    _check_layer_names(layers, options, left_alone)
    layers = [layer for layer in layers if layer.name not in left_alone]
    if not options.prune:
        layers = []
    elif not layers:
        raise ModelError(f"{model_path}: no prunable weights (float initializers of Conv, ConvTranspose, Gemm or "
                         "MatMul) were found" + (" matching --include/--exclude" if options.include or
                                                 options.exclude else "")
                         + (f"; {len(left_alone)} layers were left alone by --freeze-before or --output-name"
                            if left_alone else ""))
    plans = _plans(layers, options)
    cfg = options.train
    specs = model_inputs(model)
    if options.data is None:
        raise DataError("no training data: give --data (a .npz, a folder of .npy or idx files, or module:function)")
    train, val = _train_and_validation(options, specs)
    for spec in specs:
        if spec.shape and spec.shape[0] is not None and spec.shape[0] != cfg.batch_size:
            raise DataError(f"model input {spec.name!r} has a fixed batch size of {spec.shape[0]}; pass "
                            f"--batch-size {spec.shape[0]} or re-export the model with a dynamic batch axis")
    fixed_batch = next((s.shape[0] for s in specs if s.shape and s.shape[0] is not None), None)

    teacher = _teacher(model, output)
    first_inputs, first_labels = train.batch(0, cfg.batch_size, cfg.seed)
    sample = teacher(first_inputs)
    task = options.task or _guess_task(first_labels, sample)
    spec = _loss_spec(task, output, first_labels, sample, options)
    if isinstance(train, Dataset) and spec.distill_weight > 0:
        attach_teacher(train, teacher, cfg.eval_batch_size if fixed_batch is None else fixed_batch)
    if isinstance(val, Dataset) and val.labels is None:  # the reference for agreement when there are no labels
        attach_teacher(val, teacher, cfg.eval_batch_size if fixed_batch is None else fixed_batch)
    targets = Targets(spec, teacher, sample.shape[1:] if task == "regress" else (spec.num_classes,),
                      np.dtype(sample.dtype))

    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    work = Path(options.work_dir) if options.work_dir else output_path.with_name(output_path.name + ".dns-work")
    if resume and not (work / "checkpoint.npz").exists():
        raise OptionError(f"{work}: no checkpoint to resume from; run without --resume to start afresh")
    _check_resume_settings(work, model_path, options, resume)
    progress({"event": "building", "layers": len(layers)})
    t_art = time.perf_counter()
    # symbolic sizes break pooling gradients in onnxruntime-training 1.19 (see pin_input_shapes)
    batch = cfg.batch_size if any(n.op_type == "AveragePool" for n in model.graph.node) else None
    sizes = {s.name: (batch, *first_inputs[s.name].shape[1:]) for s in specs}
    art = build_artifacts(pin_input_shapes(masked, sizes).model, spec, work / "artifacts",
                          update_bn_stats=options.update_bn_stats, frozen=frozen)
    artifact_seconds = time.perf_counter() - t_art
    surgeon = Surgeon(plans, start=0)
    trainer = Trainer(art, surgeon, cfg, train, val, targets, work, progress)
    result = trainer.run(resume=resume)

    values = dict(result.params) | {mask_name(w): m for w, m in result.masks.items()}
    if options.update_bn_stats:
        progress({"event": "bn-statistics", "batches": BN_BATCHES})
        trained = fold_masks(masked, sparse=False, values=values).model
        batches = (train.batch(i, cfg.batch_size, cfg.seed)[0] for i in range(BN_BATCHES))
        # only layers that feed the trained output and are not before --freeze-before get new statistics
        values |= estimate_statistics(trained, batches, layers=feeding - frozen)
        del trained
    layers_after = layer_stats(masked, layers, values)
    record = {
        "method": "dynamic network surgery", "compression": round(compression(layers_after, layers_after), 3),
        "layers": {s.name: {"params": s.params, "nonzeros": s.nonzeros} for s in layers_after},
    }
    folded = fold_masks(masked, sparse=not options.dense, record=record, values=values).model
    storage = "dense" if options.dense else options.format
    if options.bits or storage in ("auto", "packed"):
        folded = repack(folded, storage, options.bits).model
    final_path = output_path if result.meets_bound else below_bound_path(output_path)
    progress({"event": "writing", "path": str(final_path)})
    resume_hint = f"the checkpoint is in {work}: continue with --resume {work} and the same options"
    try:
        save_model(folded, final_path, forbid=model_path)
    except OutputError as exc:
        raise OutputError(f"{exc}; {resume_hint}") from exc
    except KeyboardInterrupt as exc:
        raise Interrupted(f"interrupted while writing {final_path}, which was not written; {resume_hint}") from exc

    before = _measure(original, val, spec, teacher, cfg.eval_batch_size, fixed_batch)
    after = _measure(folded, val, spec, teacher, cfg.eval_batch_size, fixed_batch)
    met = options.train.max_accuracy_drop is None or after.score >= before.score - options.train.max_accuracy_drop
    # the written model's own measurement decides where it lies (the trainer's estimate may differ slightly)
    wanted = output_path if met else below_bound_path(output_path)
    if final_path != wanted:
        os.replace(final_path, wanted)
        final_path = wanted
    if not options.keep_work and met:
        shutil.rmtree(work, ignore_errors=True)
    steps = max(result.iterations_run, 1)
    return CompressResult(
        output=str(final_path), met_bound=met, layers_before=layer_stats(model, layers), layers_after=layers_after,
        accuracy_before=before, accuracy_after=after, file_size_before=model_path.stat().st_size,
        file_size_after=final_path.stat().st_size, seconds=time.perf_counter() - started,
        train_seconds=result.seconds, iterations=cfg.iterations, host_overhead=result.host_seconds / max(
            result.seconds, 1e-9), surgery_ms_per_step=1000 * result.surgery_seconds / steps,
        images_per_second=steps * cfg.batch_size / max(result.seconds, 1e-9),
        chosen_iteration=result.chosen.iteration, history=result.history, val_source=val.source,
        artifact_seconds=artifact_seconds,
    )


def _check_finite(model: onnx.ModelProto, path: Path) -> None:
    """Refuse weights holding NaN or infinity: training would only spread them."""
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            values = numpy_helper.to_array(tensor)
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                raise ModelError(f"{path}: initializer {tensor.name!r} holds {bad} NaN or infinite values; "
                                 "fix the model (re-export it from a healthy checkpoint)")


def below_bound_path(path: str | os.PathLike) -> Path:
    """Where a model that misses the accuracy bound goes: NAME.below-bound.onnx beside the requested path."""
    path = Path(path)
    return path.with_name(path.stem + MISSED_SUFFIX + path.suffix)


def _train_and_validation(options: CompressOptions, specs) -> tuple[Dataset | CallableData, Dataset | CallableData]:
    """--data and --val; without --val, an idx folder's test split, else a held-out part of --data."""
    train = load_data(options.data, specs, "train")
    if options.val is not None:
        return train, load_data(options.val, specs, "t10k")
    source = Path(options.data)
    if source.is_dir() and any(source.glob("t10k-images-idx3-ubyte*")):
        return train, load_data(options.data, specs, "t10k")
    if isinstance(train, CallableData):
        raise DataError(f"{options.data}: callable data needs a validation set; give --val")
    return train.split(options.val_fraction, options.train.seed)


def _teacher(model: onnx.ModelProto, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The original model as a function from a batch to its logits (the input of a final Softmax) or output."""
    return session_runner(model, logits_name(model, output))


def _guess_task(labels: np.ndarray | None, sample: np.ndarray) -> str:
    """Integer labels, or no labels and a (batch, classes) output, mean classification."""
    if labels is not None:
        return "classify" if np.issubdtype(labels.dtype, np.integer) else "regress"
    return "classify" if sample.ndim == 2 and sample.shape[1] > 1 else "regress"


def _loss_spec(task: str, output: str, labels: np.ndarray | None, sample: np.ndarray,
               options: CompressOptions) -> LossSpec:
    if task not in ("classify", "regress"):
        raise OptionError(f"--task must be classify or regress, not {task!r}")
    distill = options.distill if options.distill is not None else labels is None
    if labels is None and options.distill is False:
        raise DataError(f"{options.data}: the data has no 'labels' array; use --distill to learn from the "
                        "original model's outputs instead")
    label_weight = 0.0 if labels is None else (1.0 - options.distill_weight if distill else 1.0)
    distill_weight = 0.0 if not distill else (1.0 if labels is None else options.distill_weight)
    num_classes = None
    if task == "classify":
        if sample.ndim != 2:
            raise ModelError(f"classification needs an output of shape (batch, classes); {output!r} has "
                             f"{sample.ndim} dimensions: pass --task regress or choose another --output")
        num_classes = int(sample.shape[1])
        if labels is not None and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{options.data}: labels range over {labels.min()}..{labels.max()} but the model "
                            f"has {num_classes} classes")
    return LossSpec(task, output, label_weight, distill_weight, options.temperature, num_classes)


def _plans(layers: list[Layer], options: CompressOptions) -> dict[str, LayerPlan]:
    iterations = options.train.iterations
    default_stop = options.surgery_stop or max(1, int(STOP_FRACTION * iterations))
    keep = None
    if options.target is not None or options.sparsity:
        fixed = {k: 1.0 - v for k, v in options.sparsity.items()}
        sizes = {layer.name: layer.params for layer in layers}
        try:
            keep = allocate_keep(sizes, options.target or _implied_target(sizes, fixed), fixed)
        except ValueError as exc:
            raise OptionError(f"--target {options.target:g}x with --sparsity {', '.join(fixed)}: the layers named keep "
                              "more weights than the target allows; raise their --sparsity or lower --target") from exc
    plans = {}
    for layer in layers:
        stop = min(options.stop.get(layer.name, default_stop), iterations)
        tensors = [t.name for t in layer.tensors]
        if keep is not None:
            plans[layer.name] = LayerPlan(tensors, stop, keep=keep[layer.name])
        else:
            plans[layer.name] = LayerPlan(tensors, stop, c=options.c.get(layer.name, options.default_c))
    return plans


def _implied_target(sizes: dict[str, int], fixed: dict[str, float]) -> float:
    """With per-layer sparsities only, layers not named keep everything."""
    kept = sum(n * fixed.get(k, 1.0) for k, n in sizes.items())
    return sum(sizes.values()) / kept


def _check_layer_names(layers: list[Layer], options: CompressOptions, left_alone: dict[str, str]) -> None:
    names = {layer.name for layer in layers}
    for option, given in (("--c", options.c), ("--sparsity", options.sparsity), ("--stop", options.stop)):
        for name in given:
            if name in left_alone:
                raise OptionError(f"{option} {name}=...: layer {name!r} is not pruned, since it {left_alone[name]}")
            if name not in names:
                raise OptionError(f"{option} {name}=...: no prunable layer named {name!r}; layers: "
                               + ", ".join(sorted(names)) + " (see onnx-dns inspect)")
    for name, value in options.sparsity.items():
        if not 0 <= value < 1:
            raise OptionError(f"--sparsity {name}={value}: give a fraction in [0, 1), e.g. 0.95")


def _check_resume_settings(work: Path, model_path: Path, options: CompressOptions, resume: bool) -> None:
    """Save the settings of a run in its work folder; a resume must use the same ones."""
    settings = json.loads(json.dumps({"model": str(model_path.resolve()), "version": __version__,
                                      **_comparable(options)}, default=str))
    path = work / "settings.json"
    if resume:
        saved = json.loads(path.read_text()) if path.exists() else {}
        for key, value in settings.items():
            if saved.get(key) != value:
                raise OptionError(f"--resume {work}: the run was started with {key}={saved.get(key)!r}, now "
                               f"{value!r}; resume with the same options, or start afresh without --resume")
        return
    if work.exists() and not work.is_dir():
        raise OutputError(f"{work}: the work folder is a file; choose another --work-dir")
    if work.exists() and any(work.iterdir()):
        if not (path.exists() or (work / "checkpoint.npz").exists()):
            raise OutputError(f"{work}: the work folder exists and is not an onnx-dns work folder; "
                              "choose an empty or new --work-dir")
        shutil.rmtree(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))
    except OSError as exc:
        raise OutputError(f"{work}: cannot write the work folder ({exc.strerror or exc}); free space or choose "
                          "another --work-dir") from exc


def _comparable(options: CompressOptions) -> dict:
    data = asdict(options)
    for key in ("work_dir", "keep_work", "dense"):
        data.pop(key)
    return data


def _measure(model: onnx.ModelProto, data: Dataset | CallableData, spec: LossSpec, teacher: Callable,
             batch_size: int, fixed_batch: int | None) -> Metrics:
    """Metrics of a plain onnxruntime session of `model` on `data` (what a deployment would see)."""
    outputs, labels, reference = collect(session_runner(model, spec.output), data, batch_size, fixed_batch)
    if labels is None and reference is None:
        reference, _, _ = collect(teacher, data, batch_size, fixed_batch)
    return compute_metrics(spec.task, outputs, labels, reference)
