"""Settings saved beside a model (`dns.json`): the defaults `onnx-dns compress` uses for that model.

Keys are the long option names of `onnx-dns compress` with dashes as underscores (`batch_size`, `c`, ...).
Relative paths (`data`, `val`) are resolved against the folder of the settings file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from onnx_dns.compress import CompressOptions
from onnx_dns.errors import DnsError, OptionError
from onnx_dns.schedules import SCHEDULES
from onnx_dns.trainer import TrainConfig
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
    if settings:
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())
        log.info("%s: options not given on the command line are taken from it: %s", path, shown)
    return settings


def _code_hint(key: str, code: tuple[str, str], folder: Path) -> str:
    """The command-line option that runs the code a dns.json named, for a user who trusts it."""
    target, function = code
    if target.endswith(".py"):
        return f"--{key} {folder / target}:{function}"
    return (f"--{key} {target}:{function} (an installed module) or --{key} "
            f"{folder / target.replace('.', '/')}.py:{function} (a file)")


TRAIN_DEFAULTS = {"iterations": 10000, "batch_size": 64, "lr": 0.01, "optimizer": "sgd", "schedule": "inv",
                  "warmup": 0, "seed": 0, "eval_every": 1000, "checkpoint_every": 1000, "eval_batch_size": 1000,
                  "threads": 0, "weight_decay": None, "max_accuracy_drop": None}
OTHER_DEFAULTS = {"data": None, "val": None, "distill": None, "distill_weight": 0.5, "temperature": 4.0,
                  "task": None, "output_name": None, "target": None, "default_c": 1.0, "surgery_stop": None,
                  "c": {}, "sparsity": {}, "stop": {}, "include": (), "exclude": (), "biases": True,
                  "freeze_before": (), "update_bn_stats": False}


def parse_target(value: str | float | None) -> float | None:
    """'100x', '100' or 100 -> 100.0; at least 1 and finite."""
    if value is None:
        return None
    text = str(value).strip().lower().removesuffix("x")
    try:
        number = float(text)
    except ValueError:
        raise OptionError(f"--target {value!r}: give a compression such as 100x") from None
    if not 1 <= number < math.inf:
        raise OptionError(f"--target {value!r}: the compression must be a finite number of at least 1x")
    return number


class Range(NamedTuple):
    """The values an option takes: integers or finite numbers, from `low` to `high` (None: no bound)."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return math.isfinite(value) and (self.low is None or (value > self.low if self.low_open else
                                                               value >= self.low)) and (
            self.high is None or (value < self.high if self.high_open else value <= self.high))

    def describe(self) -> str:
        text = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{text} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            text += f" above {self.low}" if self.low_open else f" of at least {self.low}"
        return text


RANGES = {
    "iterations": Range(True, 1), "batch_size": Range(True, 1), "warmup": Range(True, 0), "seed": Range(True),
    "eval_every": Range(True, 1), "checkpoint_every": Range(True, 1), "eval_batch_size": Range(True, 1),
    "threads": Range(True, 0), "surgery_stop": Range(True, 1), "lr": Range(low=0, low_open=True),
    "weight_decay": Range(low=0), "max_accuracy_drop": Range(low=0), "distill_weight": Range(low=0, high=1),
    "temperature": Range(low=0, low_open=True), "default_c": Range(),
}
PER_LAYER = {"c": Range(), "sparsity": Range(low=0, high=1, high_open=True), "stop": Range(True, 0)}
CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": SCHEDULES, "task": ("classify", "regress")}
FLAGS = ("distill", "biases", "update_bn_stats")
GLOBS = ("include", "exclude", "freeze_before")


def check_options(values: dict, from_settings: set[str]) -> None:
    """Refuse option values of the wrong kind or out of range, naming the option (and dns.json if from there)."""

    def name(key: str, value, layer: str | None = None) -> str:
        shown = f"{layer}={value!r}" if layer is not None else repr(value)
        return f"--{key.replace('_', '-')} {shown}" + (" (from dns.json)" if key in from_settings else "")

    for key, allowed in RANGES.items():
        if values[key] is not None and not allowed.holds(values[key]):
            raise OptionError(f"{name(key, values[key])}: give {allowed.describe()}")
    for key, choices in CHOICES.items():
        if values[key] is not None and values[key] not in choices:
            raise OptionError(f"{name(key, values[key])}: choose one of {', '.join(choices)}")
    for key in FLAGS:
        if values[key] is not None and not isinstance(values[key], bool):
            raise OptionError(f"{name(key, values[key])}: give true or false")
    for key in GLOBS:
        if not isinstance(values[key], (list, tuple)) or not all(isinstance(g, str) for g in values[key]):
            raise OptionError(f"{name(key, values[key])}: give a list of layer name patterns")
    for key, allowed in PER_LAYER.items():
        if not isinstance(values[key], dict):
            raise OptionError(f"{name(key, values[key])}: give layer names with values, e.g. {{\"fc1\": 1}}")
        for layer, value in values[key].items():
            if not allowed.holds(value):
                raise OptionError(f"{name(key, value, layer)}: give {allowed.describe()}")


def compress_options(given: dict, settings: dict, *, dense: bool = False, work_dir: str | None = None,
                     keep_work: bool = False) -> CompressOptions:
    """Options for `compress`: each from the command line (`given`, None when absent), else the model's
    settings, else the default. Per-layer c on the command line means paper mode over a target in the settings."""
    unknown = set(settings) - set(TRAIN_DEFAULTS) - set(OTHER_DEFAULTS)
    if unknown:
        raise OptionError(f"dns.json: unknown setting {sorted(unknown)[0]!r}; keys are the option names of "
                          "onnx-dns compress with underscores")
    if given.get("c") and given.get("target") is None:
        settings = {k: v for k, v in settings.items() if k != "target"}

    def pick(key: str):
        if given.get(key) is not None:
            return given[key]
        if key in settings:
            return settings[key]
        return TRAIN_DEFAULTS.get(key, OTHER_DEFAULTS.get(key))

    values = {key: pick(key) for key in (*TRAIN_DEFAULTS, *OTHER_DEFAULTS)}
    check_options(values, {k for k in settings if given.get(k) is None})
    return CompressOptions(
        data=values["data"], val=values["val"], distill=values["distill"], distill_weight=values["distill_weight"],
        temperature=values["temperature"], task=values["task"], output=values["output_name"],
        target=parse_target(values["target"]), c=dict(values["c"]), default_c=values["default_c"],
        sparsity=dict(values["sparsity"]), stop=dict(values["stop"]), surgery_stop=values["surgery_stop"],
        include=tuple(values["include"]), exclude=tuple(values["exclude"]), biases=values["biases"],
        freeze_before=tuple(values["freeze_before"]), update_bn_stats=values["update_bn_stats"],
        train=TrainConfig(**{k: values[k] for k in TRAIN_DEFAULTS}), dense=dense, work_dir=work_dir,
        keep_work=keep_work,
    )
