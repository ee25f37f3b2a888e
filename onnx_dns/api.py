"""The Python API: compress, inspect and evaluate models held in memory or in files.

    import onnx_dns
    result = onnx_dns.compress("model.onnx", {"input": x, "labels": y}, target="4x", iterations=2000)
    result.save("model.dns.onnx")
    curve = onnx_dns.sweep("model.onnx", {"input": x, "labels": y}, targets="2x,4x,8x", out_dir="sweep")
    curves = onnx_dns.sensitivity("model.onnx", {"input": x, "labels": y})

Errors are the typed exceptions of `onnx_dns.errors` (the command line maps them to exit codes).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_dns.errors import ModelError, OptionError
from onnx_dns.gate import GateResult, evaluate_model
from onnx_dns.model_io import PROTOBUF_LIMIT, check_versions, load_model, over_protobuf_limit
from onnx_dns.options import CompressOptions, TrainConfig, defaults, merge
from onnx_dns.pipeline import run
from onnx_dns.repack import FORMATS, repack
from onnx_dns.report import ModelReport, inspect_model
from onnx_dns.objective import build_objective
from onnx_dns.prepare import prepare
from onnx_dns.result import CompressResult, stored_size
from onnx_dns.sensitivity import SPARSITIES, SensitivityResult, layer_sensitivity
from onnx_dns.sweep import SweepResult, parse_targets, run_sweep
from onnx_dns.sweep_output import check_sweep_outputs, write_sweep

ModelLike = str | os.PathLike | onnx.ModelProto


def compress(model: ModelLike, data: Any, *, labels: np.ndarray | None = None, val: Any = None,
             target: float | str | None = None, iterations: int | None = None, batch_size: int | None = None,
             distill: bool | None = None, progress: Callable[[dict], None] | None = None,
             work_dir: str | os.PathLike | None = None, **options: Any) -> CompressResult:
    """Compress `model` with Dynamic Network Surgery and return the result; `.model` is the compressed ModelProto.

    `data` (and `val`) is a path as on the command line, a dict of arrays named after the model inputs (plus
    `labels`), an array for a one-input model, a list of batches or a function returning an iterable of batches.
    `options` are the other options of `onnx-dns compress`, with underscores (`lr`, `sparsity`, `c`, ...).
    Nothing is written outside a temporary folder unless `work_dir` is given (then it keeps the checkpoint).
    """
    given = {**options, "target": target, "iterations": iterations, "batch_size": batch_size, "distill": distill}
    settings = _options("compress", data, labels, val, work_dir, given)
    original, source, size = _open(model)
    if work_dir is not None:
        return run(original, source, settings, Path(work_dir), identity=source, size_before=size,
                   progress=progress)
    with tempfile.TemporaryDirectory(prefix="onnx-dns-") as scratch:
        return run(original, source, settings, Path(scratch) / "work", identity=source, size_before=size,
                   progress=progress)


def sweep(model: ModelLike, data: Any, *, targets: str | Sequence[float | str], labels: np.ndarray | None = None,
          val: Any = None, out_dir: str | os.PathLike | None = None, name: str | None = None, warm_start: bool = True,
          progress: Callable[[dict], None] | None = None, work_dir: str | os.PathLike | None = None,
          **options: Any) -> SweepResult:
    """Compress `model` at each of `targets` ('2x,4x,8x' or a list), ascending, each warm-started from the
    previous one unless `warm_start` is False, with one set of training graphs. With `out_dir`, writes
    NAME.<target>x.onnx per target, NAME.best.onnx (the most compressed within `max_accuracy_drop`) and the
    table NAME.sweep.md / .json. Other keywords are the options of `compress`."""
    if "target" in options:
        raise OptionError("sweep() takes targets=, not target=")
    wanted = parse_targets(targets)
    if not wanted:
        raise OptionError("--targets: give at least one compression, such as 2x,4x,8x")
    settings = _options("sweep", data, labels, val, work_dir, options)
    original, source, size = _open(model)
    is_path = isinstance(model, (str, os.PathLike))
    name = name or (Path(model).stem if is_path else "model")
    forbid = Path(model) if is_path else None
    if out_dir is not None:
        check_sweep_outputs(Path(out_dir), name, wanted, forbid)

    def go(work: Path) -> SweepResult:
        result = run_sweep(original, source, settings, wanted, work, identity=source, size_before=size,
                           warm_start=warm_start, progress=progress)
        return result if out_dir is None else write_sweep(result, out_dir, name, forbid)

    if work_dir is not None:
        return go(Path(work_dir))
    with tempfile.TemporaryDirectory(prefix="onnx-dns-") as scratch:
        return go(Path(scratch) / "work")


def sensitivity(model: ModelLike, data: Any, *, labels: np.ndarray | None = None, val: Any = None,
                sparsities: Sequence[float] = SPARSITIES, progress: Callable[[dict], None] | None = None,
                **options: Any) -> SensitivityResult:
    """Accuracy after pruning each prunable layer alone by magnitude at each of `sparsities`, no training.
    Other keywords are the options of `compress` that choose layers, data and task (`include`, `task`, ...)."""
    if not sparsities or not all(0 < s < 1 for s in sparsities):
        raise OptionError(f"--sparsities {list(sparsities)}: give fractions between 0 and 1, e.g. 0.5,0.9")
    settings = _options("sensitivity", data, labels, val, None, options)
    original, source, _ = _open(model)
    prepared = prepare(original, source, settings)
    objective = build_objective(prepared, settings)
    return layer_sensitivity(prepared, objective, sorted(sparsities), settings.train.eval_batch_size, progress)


def _options(function: str, data: Any, labels: np.ndarray | None, val: Any, work_dir: str | os.PathLike | None,
             given: dict[str, Any]) -> CompressOptions:
    """The options of `compress` from keywords, checked as the command line checks them."""
    known = (set(defaults(CompressOptions)) | set(defaults(TrainConfig))) - {"train", "work_dir", "keep_work"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise OptionError(f"{function}() got an unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}")
    given = {**given, "data": _with_labels(data, labels), "val": val}
    return merge(given, {}, work_dir=None if work_dir is None else str(work_dir), keep_work=work_dir is not None)


def convert(model: ModelLike, *, format: str = "auto", bits: int | None = None) -> onnx.ModelProto:
    """`model` (already compressed) with its pruned weights stored as `format` (auto, sparse, dense, packed),
    shared among 2^bits values per layer when `bits` is given; without it the outputs are unchanged."""
    if format not in FORMATS:
        raise OptionError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if bits is not None and not 2 <= bits <= 8:
        raise OptionError(f"--bits {bits}: give an integer from 2 to 8")
    return repack(_open(model)[0], format, bits).model


def inspect(model: ModelLike) -> ModelReport:
    """Per-layer parameters, nonzeros and sparsity, totals, versions and operators training cannot pass."""
    original, source, _ = _open(model)
    return inspect_model(original, source if isinstance(model, (str, os.PathLike)) else None)


def evaluate(model: ModelLike, data: Any, *, labels: np.ndarray | None = None,
             reference: ModelLike | None = None, **bounds: Any) -> GateResult:
    """Score `model` on `data` (against labels, or agreement with `reference`) and list the bounds it misses
    (`min_accuracy`, `max_accuracy_drop`, `min_compression`; also `output`, `task`, `fidelity`, `batch_size`,
    `split`)."""
    model, reference = (_path_or_checked(m) for m in (model, reference))
    return evaluate_model(model, _with_labels(data, labels), reference=reference, **bounds)


def _path_or_checked(model: ModelLike | None) -> str | onnx.ModelProto | None:
    if isinstance(model, onnx.ModelProto):
        check_model_proto(model)
        return model
    return None if model is None else str(model)


def _open(model: ModelLike) -> tuple[onnx.ModelProto, str, int]:
    """The model, a name for messages, and its stored size in bytes."""
    if isinstance(model, onnx.ModelProto):
        check_model_proto(model)
        return model, "<model>", model.ByteSize()
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), str(model), stored_size(model) if Path(model).is_file() else 0
    raise ModelError(f"model of type {type(model).__name__}: give a path or an onnx.ModelProto")


def check_model_proto(model: onnx.ModelProto, name: str = "<model>") -> None:
    """What `load_model` checks of a file, for a model already in memory."""
    if not model.graph.node:
        raise ModelError(f"{name}: the graph has no nodes")
    check_versions(model, name)
    if not over_protobuf_limit(model, PROTOBUF_LIMIT):
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"{name}: fails onnx.checker ({str(exc).splitlines()[0]}); fix the model") from exc


def _with_labels(data: Any, labels: np.ndarray | None) -> Any:
    if isinstance(data, np.ndarray):
        data = {"input": data}
    if labels is None:
        return data
    if not isinstance(data, dict):
        raise OptionError("labels= goes with data given as arrays; put labels in each batch otherwise")
    return {**data, "labels": labels}
