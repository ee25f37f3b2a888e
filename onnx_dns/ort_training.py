"""Import the onnxruntime training API without torch, and keep its C++ logging off the user's screen.

`import onnxruntime.training` imports torch through `optim` (onnxruntime issue 22070). The training API itself
(`artifacts`, `api`) needs no torch, so a bare package module is registered under the name
`onnxruntime.training`, pointing at the installed folder, before onnxruntime itself is imported: the training
build's `import onnxruntime` imports `onnxruntime.training` to validate itself, which would import its artifacts
module and, through onnxruntime.tools, call `logging.basicConfig` on the user's root logger. All of this happens on
first use (`runtime()`, `training_api()`, the module attributes `onnxruntime`, `api`, `artifacts`), not when this
module is imported. Sessions are made quiet one by one (`session_options`); the process-wide logger is left alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import types
from collections.abc import Iterator

__all__ = ["captured_stderr", "runtime", "session_options", "training_api", "training_artifacts"]

QUIET = 3  # onnxruntime's severity "error": its warnings about unused initializers and the like are not for users


def runtime() -> types.ModuleType:
    """The onnxruntime module, imported with the bare `onnxruntime.training` package in place."""
    if "onnxruntime.training" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [os.path.join(os.path.dirname(spec.origin), "training")]
        sys.modules["onnxruntime.training"] = package
    return importlib.import_module("onnxruntime")


def _import_training(name: str) -> types.ModuleType:
    runtime()
    return importlib.import_module(f"onnxruntime.training.{name}")


def __getattr__(name: str) -> types.ModuleType:
    if name in ("api", "artifacts"):
        return _import_training(name)
    if name == "onnxruntime":
        return runtime()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def training_api() -> tuple[types.ModuleType, types.ModuleType]:
    """(onnxruntime, onnxruntime.training.api)."""
    return runtime(), _import_training("api")


def training_artifacts() -> types.ModuleType:
    """onnxruntime.training.artifacts. Importing it configures the root logger (a `logging.basicConfig` at INFO in
    onnxruntime.quantization, which it imports), so it is imported only when artifacts are built."""
    return _import_training("artifacts")


def session_options(threads: int = 0, arena: bool = True, pattern: bool = True):
    """onnxruntime.SessionOptions that log only errors, with `threads` intra-op threads (0: onnxruntime chooses).

    Without `arena` a session returns its working memory after each run instead of keeping its largest run's
    worth for good: a training session holds 1.7 GB at batch 16 of a text recognizer, which evaluation and the
    original model's sessions would otherwise add their own to (one step took as long either way, measured).
    Without `pattern` (memory pattern planning) a run allocates tensor by tensor from the C heap instead of one
    block mapped afresh each run: a recognizer's step peaks 12% lower at batch 16 and takes 20% less CPU time at
    batch 4, where the fresh block's page faults cost (measured, benchmarks/results/memory.md)."""
    options = runtime().SessionOptions()
    options.log_severity_level = QUIET
    if threads:
        options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = pattern
    return options


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect the process's stderr (file descriptor 2, where the C++ gradient builder prints) to a buffer.

    Yields a list that holds the captured text once the block ends, for error messages.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))
