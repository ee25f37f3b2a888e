"""The work folder of a run: training graphs, the checkpoint, and the settings a resume must repeat.

A new run empties a folder that onnx-dns made before and refuses any other non-empty one; a resumed run must
use the settings it was started with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

from onnx_dns import __version__
from onnx_dns.checkpoint import CHECKPOINT
from onnx_dns.errors import OptionError, OutputError
from onnx_dns.options import CompressOptions

SETTINGS = "settings.json"
NOT_COMPARED = ("work_dir", "keep_work", "dense", "format", "bits")  # how the output is stored, not trained


def open_work_dir(work: Path, model: str, options: CompressOptions, resume: bool) -> Path:
    """Check or start the work folder `work` for a run on `model` (a resolved path or a description)."""
    settings = json.loads(json.dumps({"model": model, "version": __version__, **_comparable(options)}, default=str))
    path = work / SETTINGS
    if resume:
        if not (work / CHECKPOINT).exists():
            raise OptionError(f"{work}: no checkpoint to resume from; run without --resume to start afresh")
        saved = json.loads(path.read_text()) if path.exists() else {}
        for key, value in settings.items():
            if saved.get(key) != value:
                raise OptionError(f"--resume {work}: the run was started with {key}={saved.get(key)!r}, now "
                                  f"{value!r}; resume with the same options, or start afresh without --resume")
        return work
    if work.exists() and not work.is_dir():
        raise OutputError(f"{work}: the work folder is a file; choose another --work-dir")
    if work.exists() and any(work.iterdir()):
        if not (path.exists() or (work / CHECKPOINT).exists()):
            raise OutputError(f"{work}: the work folder exists and is not an onnx-dns work folder; "
                              "choose an empty or new --work-dir")
        shutil.rmtree(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))
    except OSError as exc:
        raise OutputError(f"{work}: cannot write the work folder ({exc.strerror or exc}); free space or choose "
                          "another --work-dir") from exc
    return work


def _comparable(options: CompressOptions) -> dict:
    data = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in NOT_COMPARED}
    data["train"] = asdict(options.train)
    for key in ("data", "val"):  # arrays or functions given to the API are described, not serialized
        if data[key] is not None and not isinstance(data[key], str):
            data[key] = f"<{type(data[key]).__name__}>"
    return data
