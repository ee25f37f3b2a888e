"""Stage 4 of `compress`: the trained values written into the user's graph, and the result measured.

The trained weights and masks (and, with --update-bn-stats, new BatchNorm statistics) are folded into the
masked model (`fold`), which is then measured in a plain onnxruntime session against the original on the
validation data: what a deployment will see decides whether the accuracy bound is met.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dns.batch_axes import model_feed
from onnx_dns.channel_fold import fold_channels, kept_channels
from onnx_dns.channel_report import channel_record
from onnx_dns.dataset import Dataset
from onnx_dns.evaluate import Metrics
from onnx_dns.fold import fold_masks, read_metadata, write_metadata
from onnx_dns.insert_masks import mask_name
from onnx_dns.objective import Objective, measure_model
from onnx_dns.options import CompressOptions
from onnx_dns.prepare import Prepared
from onnx_dns.repack import repack
from onnx_dns.report import LayerStats, compression, layer_stats
from onnx_dns.result import CompressResult
from onnx_dns.selection import within_bound
from onnx_dns.targets import TEACHER
from onnx_dns.training import TrainResult
from onnx_dns.training_mode import estimate_statistics

BN_BATCHES = 100  # training batches that new BatchNormalization statistics are measured on (--update-bn-stats)


@dataclass
class Timings:
    started: float
    artifact_seconds: float


def finalize(prepared: Prepared, masked: onnx.ModelProto, objective: Objective, trained: TrainResult,
             options: CompressOptions, timings: Timings, size_before: int,
             progress: Callable[[dict], None], original: Metrics) -> CompressResult:
    """Fold the chosen state into the model and measure it against `original`, the original model's metrics;
    the caller decides where it is written."""
    values = dict(trained.params) | {mask_name(w): m for w, m in trained.masks.items()}
    if options.update_bn_stats:
        values |= _new_statistics(prepared, masked, objective, values, progress, options.train.seed)
    layers_after = layer_stats(masked, prepared.layers, values)
    record = _record(layers_after)
    fmt = "dense" if prepared.channels is not None else options.storage

    def refold(format: str) -> onnx.ModelProto:
        folded = fold_masks(masked, sparse=format != "dense", record=record, values=values).model
        if prepared.channels is not None:
            return fold_channels(folded, prepared.channels, _keeps(prepared, values)).model
        if options.bits or format in ("auto", "packed"):
            folded = repack(folded, format, options.bits).model
        return folded

    progress({"event": "folding", "model": masked, "values": values})
    folded = refold(fmt)
    if prepared.channels is not None:
        layers_after = layer_stats(folded, prepared.layers)
        progress({"event": "latency"})
        record = _record(layers_after) | channel_record(prepared.channels, _keeps(prepared, values),
                                                        prepared.model, folded, sample=objective.sample)
        write_metadata(folded, (read_metadata(folded) or {}) | record)
    progress({"event": "measuring"})
    cfg = options.train
    batch = prepared.fixed_batch
    after = measure_model(folded, objective, cfg.eval_batch_size, batch, progress)
    steps = max(trained.iterations_run, 1)
    return CompressResult(
        model=folded, format=fmt, met_bound=within_bound(after, original, cfg.max_accuracy_drop),
        layers_before=layer_stats(prepared.model, prepared.layers), layers_after=layers_after,
        accuracy_before=original, accuracy_after=after, file_size_before=size_before,
        file_size_after=folded.ByteSize(), seconds=time.perf_counter() - timings.started,
        train_seconds=trained.seconds, iterations=cfg.iterations,
        host_overhead=trained.host_seconds / max(trained.seconds, 1e-9),
        surgery_ms_per_step=1000 * trained.surgery_seconds / steps,
        images_per_second=steps * objective.batch_size / max(trained.seconds, 1e-9),
        chosen_iteration=trained.chosen.iteration, history=trained.history, val_source=objective.val.source,
        artifact_seconds=timings.artifact_seconds, rollbacks=trained.rollbacks, learning_rate=trained.lr,
        optimizer=cfg.optimizer, grad_clip=trained.clip, lr_probe=trained.probe,
        refold=None if prepared.channels is not None else refold,
    )


def _keeps(prepared: Prepared, values: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    masks = {t: values[mask_name(t)] for t in prepared.pruned}
    return kept_channels(prepared.channels, masks)


def _new_statistics(prepared: Prepared, masked: onnx.ModelProto, objective: Objective,
                    values: dict[str, np.ndarray], progress: Callable[[dict], None], seed: int) -> dict:
    """BatchNorm statistics re-measured on training batches, for the layers that feed the trained output and
    are not before --freeze-before."""
    progress({"event": "bn-statistics", "batches": BN_BATCHES})
    trained = fold_masks(masked, sparse=False, values=values).model
    axes = {s.name: s.batch_axis for s in prepared.specs}
    train = objective.train.without(TEACHER) if isinstance(objective.train, Dataset) else objective.train
    batches = (model_feed(train.batch(i, objective.batch_size, seed)[0], axes) for i in range(BN_BATCHES))
    return estimate_statistics(trained, batches, layers=prepared.feeding - prepared.frozen)


def _record(layers_after: list[LayerStats]) -> dict:
    """What the written model records of its compression (metadata_props `onnx_dns`)."""
    return {
        "method": "dynamic network surgery", "compression": round(compression(layers_after, layers_after), 3),
        "layers": {s.name: {"params": s.params, "nonzeros": s.nonzeros} for s in layers_after},
    }
