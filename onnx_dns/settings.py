"""Settings saved beside a model (`dns.json`): the defaults `onnx-dns compress` uses for that model.

Keys are the long option names of `onnx-dns compress` with dashes as underscores (`batch_size`, `c`, ...).
Relative paths (`data`, `val`) are resolved against the folder of the settings file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnx_dns.compress import CompressOptions
from onnx_dns.errors import DnsError, OptionError
from onnx_dns.trainer import TrainConfig

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


TRAIN_DEFAULTS = {"iterations": 10000, "batch_size": 64, "lr": 0.01, "optimizer": "sgd", "schedule": "inv",
                  "warmup": 0, "seed": 0, "eval_every": 1000, "checkpoint_every": 1000, "eval_batch_size": 1000,
                  "threads": 0, "weight_decay": None, "max_accuracy_drop": None}
OTHER_DEFAULTS = {"data": None, "val": None, "distill": None, "distill_weight": 0.5, "temperature": 4.0,
                  "task": None, "output_name": None, "target": None, "default_c": 1.0, "surgery_stop": None,
                  "c": {}, "sparsity": {}, "stop": {}, "include": (), "exclude": (), "biases": True}


def parse_target(value: str | float | None) -> float | None:
    """'100x', '100' or 100 -> 100.0; at least 1."""
    if value is None:
        return None
    text = str(value).strip().lower().removesuffix("x")
    try:
        number = float(text)
    except ValueError:
        raise OptionError(f"--target {value!r}: give a compression such as 100x") from None
    if not number >= 1:
        raise OptionError(f"--target {value!r}: the compression must be at least 1x")
    return number


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

    return CompressOptions(
        data=pick("data"), val=pick("val"), distill=pick("distill"), distill_weight=pick("distill_weight"),
        temperature=pick("temperature"), task=pick("task"), output=pick("output_name"),
        target=parse_target(pick("target")), c=dict(pick("c")), default_c=pick("default_c"),
        sparsity=dict(pick("sparsity")), stop={k: int(v) for k, v in dict(pick("stop")).items()},
        surgery_stop=pick("surgery_stop"), include=tuple(pick("include")), exclude=tuple(pick("exclude")),
        biases=pick("biases"), train=TrainConfig(**{k: pick(k) for k in TRAIN_DEFAULTS}), dense=dense,
        work_dir=work_dir, keep_work=keep_work,
    )
