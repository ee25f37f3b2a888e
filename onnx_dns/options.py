"""The options of `compress`: their defaults and their checks, in one place for the Python API, the command line
and `dns.json` alike.

Each field's metadata says which values it takes (`Range`, a tuple of choices, `FLAG`, `GLOBS` or a per-layer
`Range` in `PER_LAYER`) and whether a `dns.json` may set it. Building an options object checks every value, so
no caller can hand the pipeline an option out of range.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple

from onnx_dns.errors import OptionError
from onnx_dns.fidelity import CHOICES as FIDELITY_CHOICES
from onnx_dns.schedules import SCHEDULES


DEFAULT_ITERATIONS = 10_000  # the paper's schedule; without --iterations, fewer when the time budget needs it
DEFAULT_BATCH_SIZE = 64  # the paper's; without --batch-size, smaller when a step would not fit --max-memory
DEFAULT_MAX_MEMORY = 2e9  # bytes; a fixed bound, not a share of free memory, so that a run repeats on any machine


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


class PerLayer(NamedTuple):
    """NAME=VALUE options: a dict from layer names to values in `values`."""

    values: Range


FLAG = "flag"
GLOBS = "globs"


def option(default: Any, check: Any = None, *, settings: bool = True) -> Any:
    """A dataclass field with its check and whether `dns.json` may set it."""
    meta = {"check": check, "settings": settings}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """How the weights are fine-tuned while surgery runs."""

    iterations: int | None = option(None, Range(True, 1))  # None: sized to time_budget (`sizing`)
    time_budget: float = option(3600.0, Range(low=0, low_open=True))  # seconds
    batch_size: int | None = option(None, Range(True, 1))  # None: DEFAULT_BATCH_SIZE or less (`batch_memory`)
    max_memory: float | None = option(DEFAULT_MAX_MEMORY, Range(low=0, low_open=True))  # bytes; None: no bound
    lr: float | None = option(None, Range(low=0, low_open=True))
    schedule: str = option("inv", SCHEDULES)
    warmup: int = option(0, Range(True, 0))
    optimizer: str | None = option(None, ("sgd", "adamw"))  # None: chosen from the loss (`optimizers.choose`)
    weight_decay: float | None = option(None, Range(low=0))
    seed: int = option(0, Range(True))
    eval_every: int | None = option(None, Range(True, 1))
    checkpoint_every: int | None = option(None, Range(True, 1))
    eval_batch_size: int = option(64, Range(True, 1))
    max_accuracy_drop: float | None = option(5.0, Range(low=0))
    clip_grad_norm: float | None = option(None, Range(low=0, low_open=True))
    threads: int = option(0, Range(True, 0))

    def __post_init__(self) -> None:
        check_values(self, TrainConfig, set())

    @property
    def eval_interval(self) -> int:
        """--eval-every, else a tenth of the iterations (at most 1,000)."""
        return self.eval_every or _tenth(self.iterations)

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or _tenth(self.iterations)


def _tenth(iterations: int | None) -> int:
    return max(1, min(1000, (iterations or DEFAULT_ITERATIONS) // 10))


@dataclass(frozen=True)
class CompressOptions:
    """Everything `compress` can be told besides the model and where its output goes."""

    data: Any = option(None)
    val: Any = option(None)
    distill: bool | None = option(None, FLAG)
    distill_weight: float = option(0.5, Range(low=0, high=1))
    temperature: float | None = option(None, Range(low=0, low_open=True))  # None: `targets.choose_temperature`
    task: str | None = option(None, ("classify", "regress"))
    output_name: str | None = option(None)
    fidelity: str = option("auto", FIDELITY_CHOICES)
    target: float | None = option(None)
    structure: str = option("weight", ("weight", "channel"))
    start: str = option("dense", ("dense", "calibrated"))
    c: dict[str, float] = option({}, PerLayer(Range()))
    default_c: float = option(1.0, Range())
    sparsity: dict[str, float] = option({}, PerLayer(Range(low=0, high=1, high_open=True)))
    stop: dict[str, int] = option({}, PerLayer(Range(True, 0)))
    surgery_stop: int | None = option(None, Range(True, 1))
    include: tuple[str, ...] = option((), GLOBS)
    exclude: tuple[str, ...] = option((), GLOBS)
    biases: bool = option(True, FLAG)
    freeze_before: tuple[str, ...] = option((), GLOBS)
    update_bn_stats: bool = option(False, FLAG)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_fraction: float = option(0.1, Range(low=0, high=1, low_open=True, high_open=True), settings=False)
    dense: bool = option(False, FLAG, settings=False)
    format: str = option("auto", ("auto", "sparse", "dense", "packed"))
    bits: int | None = option(None, Range(True, 2, 8))
    prune: bool = option(True, FLAG, settings=False)
    work_dir: str | None = option(None, settings=False)
    keep_work: bool = option(False, FLAG, settings=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", parse_target(self.target))
        check_values(self, CompressOptions, set())
        if self.dense and self.format not in ("auto", "dense"):
            raise OptionError(f"--dense contradicts --format {self.format}; give one of them")
        if self.start == "calibrated" and (self.structure == "channel" or (self.target is None and not self.sparsity)):
            raise OptionError("--start calibrated prunes single weights to a target before training: use it with "
                              "compress --target (or --sparsity) and --structure weight; sweep does not take it")
        if self.structure == "channel" and (self.format in ("sparse", "packed") or self.bits):
            raise OptionError("--structure channel writes a smaller dense model: drop --format "
                              f"{self.format}{' and --bits' if self.bits else ''}")

    @property
    def storage(self) -> str:
        """How the written model stores pruned weights (--dense is an alias of --format dense)."""
        return "dense" if self.dense else self.format


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


def parse_duration(value: str | float) -> float:
    """'90m', '2h', '45s' or a number of seconds -> seconds, above 0."""
    return _with_unit(str(value).strip().lower(), {"s": 1, "m": 60, "h": 3600}, "--time-budget", value,
                      "a duration such as 30m, 2h or 900s")


def parse_memory(value: str | float) -> float | None:
    """'2GB', '1500MB', '2G', a number of bytes, or 'none' (no bound) -> bytes (decimal units), above 0."""
    text = str(value).strip().lower().removesuffix("b")
    if text == "none":
        return None
    return _with_unit(text, {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}, "--max-memory", value,
                      "a size such as 2GB or 1500MB, or none")


def _with_unit(text: str, units: dict[str, float], option: str, value: object, example: str) -> float:
    """A number with an optional unit suffix from `units`, scaled, and above 0; else an OptionError for `option`."""
    scale = units.get(text[-1:])
    try:
        number = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise OptionError(f"{option} {value!r}: give {example}") from None
    if not 0 < number < math.inf:
        raise OptionError(f"{option} {value!r}: give a value above 0, {example}")
    return number


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of an options dataclass."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}


def settings_keys() -> set[str]:
    """The keys a `dns.json` may hold: the option names of `onnx-dns compress` with underscores."""
    own = {f.name for f in fields(CompressOptions) if f.metadata.get("settings", False)}
    return own | {f.name for f in fields(TrainConfig)}


def check_values(values: Any, cls: type, from_settings: set[str]) -> None:
    """Refuse option values of the wrong kind or out of range, naming the option (and dns.json if from there).

    `values` is an options object or a mapping of field names."""
    get = values.get if isinstance(values, dict) else (lambda key: getattr(values, key))
    for f in fields(cls):
        check = f.metadata.get("check")
        if check is not None:
            _check_one(f.name, get(f.name), check, f.name in from_settings)


def _check_one(key: str, value: Any, check: Any, from_settings: bool) -> None:
    def name(shown: Any, layer: str | None = None) -> str:
        text = f"{layer}={shown!r}" if layer is not None else repr(shown)
        return f"--{key.replace('_', '-')} {text}" + (" (from dns.json)" if from_settings else "")

    if value is None and not isinstance(check, (PerLayer, str)):
        return
    if isinstance(check, Range) and not check.holds(value):
        raise OptionError(f"{name(value)}: give {check.describe()}")
    if type(check) is tuple and value not in check:
        raise OptionError(f"{name(value)}: choose one of {', '.join(check)}")
    if check == FLAG and value is not None and not isinstance(value, bool):
        raise OptionError(f"{name(value)}: give true or false")
    if check == GLOBS and (not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value)):
        raise OptionError(f"{name(value)}: give a list of layer name patterns")
    if isinstance(check, PerLayer):
        if not isinstance(value, dict):
            raise OptionError(f"{name(value)}: give layer names with values, e.g. {{\"fc1\": 1}}")
        for layer, item in value.items():
            if not check.values.holds(item):
                raise OptionError(f"{name(item, layer)}: give {check.values.describe()}")


def merge(given: dict[str, Any], settings: dict[str, Any], **extra: Any) -> CompressOptions:
    """Options for `compress`: each from `given` (the command line or API; None when absent), else the model's
    settings, else the default. Per-layer c given means paper mode over a target in the settings; a
    max_accuracy_drop of "none" turns the accuracy bound off."""
    unknown = set(settings) - settings_keys()
    if unknown:
        raise OptionError(f"dns.json: unknown setting {sorted(unknown)[0]!r}; keys are the option names of "
                          "onnx-dns compress with underscores")
    if given.get("c") and given.get("target") is None:
        settings = {k: v for k, v in settings.items() if k != "target"}
    base = defaults(CompressOptions) | defaults(TrainConfig)
    values = {key: given[key] if given.get(key) is not None else settings.get(key, default)
              for key, default in base.items() if key != "train"}
    from_settings = {k for k in settings if given.get(k) is None}
    if isinstance(values["max_accuracy_drop"], str) and values["max_accuracy_drop"].strip().lower() == "none":
        values["max_accuracy_drop"] = None  # the bound turned off
    if isinstance(values["time_budget"], str):
        values["time_budget"] = parse_duration(values["time_budget"])
    if isinstance(values["max_memory"], str):
        values["max_memory"] = parse_memory(values["max_memory"])
    check_values(values, TrainConfig, from_settings)
    check_values(values, CompressOptions, from_settings)
    if values["target"] is not None and "target" in from_settings:
        try:
            parse_target(values["target"])
        except OptionError as exc:
            raise OptionError(f"{exc} (from dns.json)") from None
    train = TrainConfig(**{f.name: values.pop(f.name) for f in fields(TrainConfig)})
    for key in ("include", "exclude", "freeze_before"):
        values[key] = tuple(values[key])
    return CompressOptions(**{**values, **extra, "train": train})
