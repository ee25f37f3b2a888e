"""Settings saved beside a model (`dns.json`): the defaults `onnx-dns compress` uses for that model.

Keys are the long option names of `onnx-dns compress` with dashes as underscores (`batch_size`, `c`, ...).
Relative paths (`data`, `val`) are resolved against the folder of the settings file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from onnx_dns.errors import DnsError, OptionError
from onnx_dns.user_code import code_source

SETTINGS_FILE = "dns.json"
PATH_KEYS = ("data", "val")

log = logging.getLogger(__name__)


def load_settings(model_path: str | os.PathLike, given: Mapping[str, object] | None = None) -> dict:
    """The settings beside `model_path` for the options not in `given` (the command line's, None when absent),
    or {} when there is no `dns.json` there.

    A model's folder may come from anyone, so its settings are data only: a `data` or `val` naming Python code
    (`module:function`, `file.py:function`) is refused before anything is imported, and every setting taken is
    logged, so that none is applied silently."""
    path = Path(model_path).parent / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DnsError(f"{path}: cannot read the settings ({exc}); fix the JSON or remove the file") from exc
    if not isinstance(settings, dict):
        raise DnsError(f"{path}: the settings must be a JSON object of option names and values")
    settings.pop("comment", None)
    for key, value in (given or {}).items():
        if value is not None:
            settings.pop(key, None)
    for key in PATH_KEYS:
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise OptionError(f"{path}: {key!r} must be a path (a string), not {value!r}")
        code = None if (path.parent / value).exists() else code_source(value)
        if code is not None:
            raise OptionError(f"{path}: {key!r} names Python code ({value}), which a dns.json may not do since it "
                              f"would run code from the model's folder; if you trust the code, give it on the "
                              f"command line: {_code_hint(key, code, path.parent)}")
        settings[key] = str((path.parent / value).resolve())
    return settings


def announce_settings(model_path: str | os.PathLike, settings: Mapping[str, object]) -> None:
    """Log every setting a run takes from the `dns.json` beside the model (once the options are known good)."""
    if settings:
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())
        log.info("%s: options not given on the command line are taken from it: %s",
                 Path(model_path).parent / SETTINGS_FILE, shown)


def _code_hint(key: str, code: tuple[str, str], folder: Path) -> str:
    """The command-line option that runs the code a dns.json named, for a user who trusts it."""
    target, function = code
    if target.endswith(".py"):
        return f"--{key} {folder / target}:{function}"
    return (f"--{key} {target}:{function} (an installed module) or --{key} "
            f"{folder / target.replace('.', '/')}.py:{function} (a file)")

