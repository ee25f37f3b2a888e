"""The whole job, stage after stage, each handing the next a typed result:

    prepare (load, normalize, find layers, plans)  ->  objective (data, loss, teacher)
    ->  artifacts (masks inserted, training graphs)  ->  training (DNS loop)  ->  finalize (fold, measure)

`run` works on a model in memory; `compress_file` is the command line's job around it: read the model, write
the result atomically (as NAME.below-bound.onnx when it misses the accuracy bound) and clean up the work folder.
Each stage announces itself through `progress` (events prepared, temperature, optimizer, calibrating,
calibrating-layer, calibrated, teacher, building, built, sized, lr-probe, lr-chosen, start, step, sharing, rollback,
pass, bn-statistics, folding, measuring, writing, written), which is also how benchmarks time the stages.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from onnx_dns.artifacts import TrainingArtifacts, build_artifacts
from onnx_dns.batch_axes import feed_dims
from onnx_dns.batch_memory import PROBE_BATCH, largest_batch, load_choice, measure_step, save_choice
from onnx_dns.calibrated_start import SAMPLES as CALIBRATION
from onnx_dns.calibrated_start import calibrated_start
from onnx_dns.errors import Interrupted, OutputError
from onnx_dns.finalize import Timings, finalize
from onnx_dns.insert_masks import insert_masks
from onnx_dns.lr_probe import ADAMW_CANDIDATES
from onnx_dns.model_io import check_output_path, load_model, save_model
from onnx_dns.normalize import pin_input_shapes
from onnx_dns.objective import Objective, build_objective, measure_original, with_teacher_outputs
from onnx_dns.optimizers import choose as choose_optimizer
from onnx_dns.options import DEFAULT_BATCH_SIZE, CompressOptions
from onnx_dns.prepare import Prepared, prepare, replan, training_batch_size
from onnx_dns.result import CompressResult, stored_size
from onnx_dns.sizing import size_run, with_iterations
from onnx_dns.surgery import Surgeon
from onnx_dns.trainer import Trainer
from onnx_dns.training import TrainingLoop
from onnx_dns.weight_sharing import WeightSharing
from onnx_dns.workdir import open_work_dir

log = logging.getLogger(__name__)

MISSED_SUFFIX = ".below-bound"
Progress = Callable[[dict], None]


@dataclass
class Ready:
    """What training starts from: the prepared model, the options as settled (batch size), the objective with
    the original model's outputs, the masked model and its training artifacts."""

    prepared: Prepared
    options: CompressOptions
    objective: Objective
    masked: onnx.ModelProto
    art: TrainingArtifacts
    artifact_seconds: float
    trainer: Trainer | None = None  # the batch-size probe's, on these artifacts, as it was before its step


def set_up(original: onnx.ModelProto, source: str, options: CompressOptions, work: Path, identity: str,
           resume: bool, progress: Progress) -> Ready:
    """The stages before training, shared by `run` and the sweep: prepare, objective, work folder, teacher
    outputs, training graphs."""
    prepared = prepare(original, source, options)
    progress({"event": "prepared", "layers": len(prepared.layers)})
    bounded = options.train.batch_size is None and prepared.fixed_batch is None
    batch_size = training_batch_size(prepared, options.train.batch_size or DEFAULT_BATCH_SIZE)
    options = replace(options, train=replace(options.train, batch_size=batch_size))
    objective = build_objective(prepared, options)
    if options.temperature is None and objective.spec.task == "classify" and objective.spec.distill_weight > 0:
        progress({"event": "temperature", "temperature": objective.spec.temperature})
    if options.train.optimizer is None:
        chosen = choose_optimizer(objective.spec.label_weight > 0)
        options = replace(options, train=replace(options.train, optimizer=chosen))
        progress({"event": "optimizer", "optimizer": chosen, "labelled": objective.spec.label_weight > 0})
        if options.train.lr is not None and chosen == "adamw" and options.train.lr >= ADAMW_CANDIDATES[0]:
            log.warning("--lr %g trains with AdamW, the default without labels, which moves every weight by about "
                        "the rate each step; a rate chosen for the paper's SGD (such as 0.01) is far too large for "
                        "it: give --optimizer sgd, or leave --lr out to probe", options.train.lr)
    if options.start == "calibrated" and not resume:  # a resume restores the calibrated weights from its checkpoint
        prepared = calibrate_stage(prepared, objective, options, progress)
    open_work_dir(work, identity, options, resume)
    built, trainer = None, None
    if bounded:
        options, objective, built, trainer = bounded_batch(prepared, objective, options, work, resume, progress)
    if objective.sequence:  # evaluated on the runs it trains on (sequence_batch.py)
        options = replace(options, train=replace(options.train, eval_batch_size=options.train.batch_size))
    with closed_on_error(trainer):
        objective = with_teacher_outputs(objective, options.train.eval_batch_size, prepared.fixed_batch, work,
                                         progress)
        masked, art, artifact_seconds = built or build_stage(prepared, objective, options, work, progress)
    return Ready(prepared, options, objective, masked, art, artifact_seconds, trainer)


@contextmanager
def closed_on_error(trainer: Trainer | None) -> Iterator[None]:
    """Close `trainer` (its thread pool) when the body fails or is interrupted; it stays open otherwise."""
    try:
        yield
    except BaseException:
        if trainer is not None:
            trainer.close()
        raise


def calibrate_stage(prepared: Prepared, objective: Objective, options: CompressOptions,
                    progress: Progress) -> Prepared:
    """`--start calibrated`: each layer pruned at once to its target kept fraction on the first training samples
    (`calibrated_start`); the original stays the teacher."""
    keep = {name: plan.criterion.keep for name, plan in prepared.plans.items()}
    batch = options.train.batch_size
    batches = [objective.train.batch(i, batch, options.train.seed)[0] for i in range(-(-CALIBRATION // batch))]
    samples = sum(len(next(iter(b.values()))) for b in batches)
    progress({"event": "calibrating", "layers": len(prepared.layers), "samples": samples})
    start = calibrated_start(prepared.model, prepared.layers, keep, batches, progress)
    progress({"event": "calibrated", "corrected": start.corrected, "layers": start.layers, "seconds": start.seconds})
    return replace(prepared, start=start.model)


def bounded_batch(prepared: Prepared, objective: Objective, options: CompressOptions, work: Path, resume: bool,
                  progress: Progress) -> tuple[CompressOptions, Objective, tuple | None, Trainer | None]:
    """Without --batch-size: the largest batch up to the default whose step fits --max-memory (`batch_memory`),
    measured on training graphs built at a small batch (returned, with the trainer that measured them restored
    to its start, when they serve the chosen batch too: a training session takes seconds to open), or read back
    when resuming."""
    wanted = options.train.batch_size
    choice = load_choice(work) if resume else None
    built, trainer = None, None
    if choice is None:
        probe = min(PROBE_BATCH, wanted)
        built = build_stage(prepared, replace(objective, batch_size=probe), options, work, progress)
        trainer = Trainer(built[1], Surgeon(prepared.plans), options.train, objective.targets)
        inputs, labels = objective.train.batch(0, probe, options.train.seed)
        try:
            start = trainer.save_state()  # AdamW's moments move even at a learning rate of 0
            # a first step maps the graphs' constants from their file (set_aside.py): memory, but not the step's
            trainer.step(0, inputs, labels, 0.0, surgery=False)
            measured = measure_step(lambda: trainer.step(0, inputs, labels, 0.0, surgery=False), probe)
            trainer.restore_state(start)
        except BaseException:
            trainer.close()
            raise
        choice = largest_batch(measured, wanted, options.train.max_memory)
        save_choice(work, choice)
        if choice.batch != probe and pinned_batch(prepared, objective):
            built = None
            trainer.close()
            trainer = None
    (log.warning if choice.limited else log.info)("%s", choice.describe())
    progress({"event": "batch", "batch": choice.batch, "wanted": choice.wanted, "needed": choice.needed,
              "needed_wanted": choice.needed_wanted, "budget": choice.budget})
    options = replace(options, train=replace(options.train, batch_size=choice.batch))
    return options, replace(objective, batch_size=choice.batch), built, trainer


def pinned_batch(prepared: Prepared, objective: Objective) -> bool:
    """Whether the training graphs are built for one batch size: symbolic sizes break pooling gradients in
    onnxruntime-training 1.19 (see pin_input_shapes), and a sequence's recurrent layers unroll over its length."""
    return objective.sequence or any(n.op_type == "AveragePool" for n in prepared.model.graph.node)


def run(original: onnx.ModelProto, source: str, options: CompressOptions, work: Path, *, identity: str,
        size_before: int, progress: Progress | None = None, resume: bool = False) -> CompressResult:
    """Compress `original` (never modified); `source` names it in messages, `identity` in the work folder's
    settings (a resume must be on the same model). Training graphs and checkpoints go to `work`."""
    started = time.perf_counter()
    progress = progress or (lambda event: None)
    ready = set_up(original, source, options, work, identity, resume, progress)
    prepared, options, objective = ready.prepared, ready.options, ready.objective
    timings = Timings(started, ready.artifact_seconds)
    trainer = ready.trainer or Trainer(ready.art, Surgeon(prepared.plans), options.train, objective.targets)
    with closed_on_error(trainer):
        if ready.trainer is not None:
            trainer.reconfigure(options.train, Surgeon(prepared.plans))
        if options.train.iterations is None:
            options, prepared = sized(trainer, prepared, objective, options, work, resume, progress)
        share_from = share_weights(trainer, prepared, options)
        baseline = None if resume else measure_original(  # a resume reads it back from its checkpoint
            prepared.original, objective, options.train.eval_batch_size, prepared.fixed_batch, progress)
    trained = TrainingLoop(trainer, objective.train, objective.val, work, progress, share_from,
                           baseline).run(resume=resume)
    return finalize(prepared, ready.masked, objective, trained, options, timings, size_before, progress,
                    trained.baseline)


def build_stage(prepared: Prepared, objective: Objective, options: CompressOptions, work: Path,
                progress: Progress) -> tuple[onnx.ModelProto, TrainingArtifacts, float]:
    """The masked model and its training artifacts under `work`, and the seconds building them took."""
    masked = insert_masks(prepared.start or prepared.model, prepared.pruned, prepared.mask_shapes).model
    progress({"event": "building", "layers": len(prepared.layers)})
    started = time.perf_counter()
    pinned = pinned_batch(prepared, objective)
    sizes = {s.name: feed_dims(objective.sample[s.name].shape[1:], s.batch_axis,
                               objective.batch_size if pinned else None) for s in prepared.specs}
    art = build_artifacts(pin_input_shapes(masked, sizes).model, objective.spec, work / "artifacts",
                          update_bn_stats=options.update_bn_stats, frozen=prepared.frozen)
    art = replace(art, batch_axes={s.name: s.batch_axis for s in prepared.specs if s.batch_axis != 0},
                  batch=objective.batch_size if objective.sequence else art.batch)
    seconds = time.perf_counter() - started
    progress({"event": "built", "artifacts": art, "seconds": seconds})
    return masked, art, seconds


def sized(trainer: Trainer, prepared: Prepared, objective: Objective, options: CompressOptions, work: Path,
          resume: bool, progress: Progress) -> tuple[CompressOptions, Prepared]:
    """Options and plans for the number of iterations the time budget holds (`sizing`), given to `trainer`."""
    sizing = size_run(trainer, objective.train, options, work, resume)
    progress({"event": "sized", "iterations": sizing.iterations, "step_seconds": sizing.step_seconds,
              "budget": sizing.budget, "limited": sizing.limited})
    options = with_iterations(options, sizing.iterations)
    prepared = replan(prepared, options)
    trainer.reconfigure(options.train, Surgeon(prepared.plans))
    return options, prepared


def share_weights(trainer: Trainer, prepared: Prepared, options: CompressOptions) -> int | None:
    """With --bits, the iteration from which the kept weights train as shared values (the last stop)."""
    if options.bits is None:
        return None
    trainer.sharing = WeightSharing(options.bits)
    return max((plan.stop for plan in prepared.plans.values()), default=0)


def compress_file(model_path: str | os.PathLike, output_path: str | os.PathLike, options: CompressOptions,
                  progress: Progress | None = None, resume: bool = False) -> CompressResult:
    """Compress the model at `model_path` and write it to `output_path`, or beside it as NAME.below-bound.onnx
    when the accuracy bound is missed (`met_bound` False), so no work is lost."""
    progress = progress or (lambda event: None)
    model_path, output_path = Path(model_path), Path(output_path)
    check_output_path(output_path, forbid=model_path)
    if options.train.max_accuracy_drop is not None:
        check_output_path(below_bound_path(output_path), forbid=model_path)
    original = load_model(model_path)
    work = Path(options.work_dir) if options.work_dir else output_path.with_name(output_path.name + ".dns-work")
    result = run(original, str(model_path), options, work, identity=str(model_path.resolve()),
                 size_before=stored_size(model_path), progress=progress, resume=resume)
    final_path = output_path if result.met_bound else below_bound_path(output_path)
    progress({"event": "writing", "path": str(final_path)})
    resume_hint = f"the checkpoint is in {work}: continue with --resume {work} and the same options"
    try:
        save_model(result.model, final_path, forbid=model_path)
    except OutputError as exc:
        raise OutputError(f"{exc}; {resume_hint}") from exc
    except KeyboardInterrupt as exc:
        raise Interrupted(f"interrupted while writing {final_path}, which was not written; {resume_hint}") from exc
    progress({"event": "written", "path": str(final_path)})
    result.output, result.file_size_after = str(final_path), stored_size(final_path)
    if not options.keep_work and result.met_bound:
        shutil.rmtree(work, ignore_errors=True)
    return result


def below_bound_path(path: str | os.PathLike) -> Path:
    """Where a model that misses the accuracy bound goes: NAME.below-bound.onnx beside the requested path."""
    path = Path(path)
    return path.with_name(path.stem + MISSED_SUFFIX + path.suffix)
