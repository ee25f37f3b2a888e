"""What every graph pass returns, after onnx-ir: the new model and whether the pass changed anything; and
`sequence`, which runs passes one after the other (logging, at debug level, the ones that changed the model)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


Pass = Callable[[onnx.ModelProto], PassResult]


def sequence(model: onnx.ModelProto, passes: Sequence[Pass]) -> PassResult:
    """Run `passes` in order on `model` (never modified); the result is modified if any pass modified it."""
    modified = False
    for run in passes:
        result = run(model)
        if result.modified:
            log.debug("pass %s changed the model", getattr(run, "__name__", run))
        model, modified = result.model, modified or result.modified
    return PassResult(model, modified)
