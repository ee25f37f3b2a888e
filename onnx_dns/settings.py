"""Settings saved beside a model (`dns.json`): the defaults `onnx-dns compress` uses for that model.

Keys are the long option names of `onnx-dns compress` with dashes as underscores (`batch_size`, `c`, ...).
Relative paths (`data`, `val`) are resolved against the folder of the settings file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnx_dns.errors import DnsError

SETTINGS_FILE = "dns.json"
PATH_KEYS = ("data", "val")


def load_settings(model_path: str | os.PathLike) -> dict:
    """The settings beside `model_path`, or {} when there is no `dns.json` there."""
    path = Path(model_path).parent / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DnsError(f"{path}: cannot read the settings ({exc}); fix the JSON or remove the file") from exc
    if not isinstance(settings, dict):
        raise DnsError(f"{path}: the settings must be a JSON object of option names and values")
    for key in PATH_KEYS:
        if isinstance(settings.get(key), str) and ":" not in settings[key]:
            settings[key] = str((path.parent / settings[key]).resolve())
    settings.pop("comment", None)
    return settings
