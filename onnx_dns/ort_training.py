"""Import the onnxruntime training API without torch, and silence its C++ logging.

`import onnxruntime.training` imports torch through `optim` (onnxruntime issue 22070). The training API itself
(`artifacts`, `api`) needs no torch, so a bare package module is registered under the name
`onnxruntime.training`, pointing at the installed folder, before its submodules are imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import types
from collections.abc import Iterator

import onnxruntime

onnxruntime.set_default_logger_severity(3)

if "onnxruntime.training" not in sys.modules:
    _spec = importlib.util.find_spec("onnxruntime")
    _package = types.ModuleType("onnxruntime.training")
    _package.__path__ = [os.path.join(os.path.dirname(_spec.origin), "training")]
    sys.modules["onnxruntime.training"] = _package

from onnxruntime.training import api, artifacts  # noqa: E402

__all__ = ["api", "artifacts", "onnxruntime", "captured_stderr"]


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
