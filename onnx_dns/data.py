"""Training and validation data: `.npz` files, folders of `.npy` or MNIST-style idx files, or `module:function`
(`file.py:function` loads a file by its path).

Arrays are named after the model's inputs, with an optional `labels` array. Everything is checked against the
model's inputs (names, dtypes, shapes) before training starts. Batches are a pure function of (seed, iteration),
so a run is reproducible from its seed and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnx_dns.batch_axes import batch_axes, sample_dims
from onnx_dns.dataset import Batch, Dataset
from onnx_dns.errors import DataError
from onnx_dns.graph import initializers
from onnx_dns.idx import find_idx, load_mnist_split
from onnx_dns.npz import read_npz
from onnx_dns.user_code import code_source, load_function

log = logging.getLogger(__name__)

LABELS = "labels"
IDX_SCALE = 1.0 / 256.0

@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype, shape (None for a symbolic dimension) and the axis that holds the batch
    (None for an input fed whole, batch_axes.py)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    batch_axis: int | None = 0

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}]"

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample's array in the data (sample-first data holds one more axis in front)."""
        return sample_dims(self.shape, self.batch_axis)


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    inits = set(initializers(model.graph))
    fed = [value for value in model.graph.input if value.name not in inits]
    axes = batch_axes(fed)
    specs = []
    for value in fed:
        tensor = value.type.tensor_type
        # some exporters write -1 (or 0) for a dynamic size where ONNX has a symbolic dimension
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims,
                               axes[value.name]))
    return specs


class CallableData:
    """Batches from a user function `module:function` returning an iterable of batches.

    A batch is a dict of arrays named after the model's inputs (plus optional `labels`) or a tuple
    (inputs, labels) for a single-input model. The function is called again for each new pass.
    Runs are reproducible and resumable when the function yields the same batches each time it is called.
    """

    def __init__(self, function: Callable[[], Iterable], source: str, specs: list[InputSpec]) -> None:
        self.function = function
        self.source = source
        self.specs = specs
        self._stream: Iterator | None = None
        self._position = 0

    def _normalize(self, item) -> Batch:
        if isinstance(item, dict):
            arrays = dict(item)
            labels = arrays.pop(LABELS, None)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and len(self.specs) == 1:
            arrays, labels = {self.specs[0].name: item[0]}, item[1]
        else:
            raise DataError(f"{self.source}: a batch must be a dict of arrays named after the model inputs "
                            "(and optional 'labels'), or (inputs, labels) for a one-input model")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        labels = None if labels is None else np.asarray(labels)
        return check_arrays(arrays, labels, self.specs, self.source)

    def _calls(self) -> Iterator:
        try:
            return iter(self.function())
        except Exception as exc:
            raise DataError(f"{self.source}: calling it failed ({type(exc).__name__}: {exc})") from exc

    def batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        if self._stream is None or iteration != self._position:
            self._stream = self._calls()
            for _ in range(iteration):
                self._next()
        self._position = iteration + 1
        return self._normalize(self._next())

    def _next(self):
        for _ in range(2):
            try:
                return next(self._stream)
            except StopIteration:
                self._stream = self._calls()
        raise DataError(f"{self.source}: returned no batches")

    def iterate(self, batch_size: int) -> Iterator[Batch]:
        for item in self._calls():
            yield self._normalize(item)

    def __len__(self) -> int:
        return sum(len(next(iter(b[0].values()))) for b in self.iterate(0))


def load_data(spec: str, inputs: list[InputSpec], split: str = "train") -> Dataset | CallableData:
    """Open `spec` (file, folder, `module:function` or `file.py:function`) as data for a model with these inputs.

    For an MNIST-style idx folder `split` picks `train` or `t10k`; images are scaled by 1/256 as in the paper.
    """
    path = Path(spec)
    if not path.exists() and code_source(spec) is not None:
        return CallableData(load_function(spec), spec, inputs)
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder; give a .npz file, a folder of .npy or idx files, "
                        "module:function or path/to/file.py:function")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{spec}: unsupported data file; give a .npz, a folder of .npy or idx files, "
                            "or module:function")
        try:
            arrays = read_npz(path)
        except Exception as exc:
            raise DataError(f"{spec}: cannot read the .npz file ({exc})") from exc
        return _dataset(arrays, inputs, str(path))
    if find_idx(path, "train-images-idx3-ubyte") or find_idx(path, "t10k-images-idx3-ubyte"):
        return _idx_dataset(path, inputs, split)
    npys = sorted(path.glob("*.npy"))
    if npys:
        return _dataset({p.stem: np.load(p, allow_pickle=False, mmap_mode="r") for p in npys}, inputs, str(path))
    raise DataError(f"{spec}: the folder holds neither .npy files nor MNIST-style idx files")


def as_data(source, inputs: list[InputSpec], split: str = "train") -> Dataset | CallableData:
    """Data in any form the API takes: a path or `module:function` (as `load_data`), a dict of arrays named
    after the model inputs (plus optional `labels`), a Dataset, or a function returning an iterable of batches.
    A list or tuple of batches is used as it is; a one-shot iterator is refused, since every pass re-reads it."""
    if isinstance(source, (Dataset, CallableData)):
        return source
    if isinstance(source, (str, Path)):
        return load_data(str(source), inputs, split)
    if isinstance(source, dict):
        return _dataset(source, inputs, "the arrays given")
    if isinstance(source, (list, tuple)):
        batches = list(source)
        return CallableData(lambda: batches, "the batches given", inputs)
    if callable(source):
        return CallableData(source, getattr(source, "__name__", "the data function"), inputs)
    raise DataError(f"data of type {type(source).__name__}: give a path, a dict of arrays named after the model "
                    "inputs, a list of batches, or a function returning an iterable of batches")


def _dataset(arrays: dict[str, np.ndarray], inputs: list[InputSpec], source: str) -> Dataset:
    arrays = dict(arrays)
    labels = arrays.pop(LABELS, None)
    names = {s.name for s in inputs}
    if len(inputs) == 1 and len(arrays) == 1 and not names & set(arrays):
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    checked, labels = check_arrays(arrays, labels, inputs, source)
    return Dataset({k: v if isinstance(v, np.memmap) else np.ascontiguousarray(v) for k, v in checked.items()},
                   labels, source)


def _idx_dataset(folder: Path, inputs: list[InputSpec], split: str) -> Dataset:
    if len(inputs) != 1:
        raise DataError(f"{folder}: idx image data feeds a model with one input; the model has {len(inputs)}")
    if split == "t10k" and not find_idx(folder, "t10k-images-idx3-ubyte"):
        split = "train"
    images, labels = load_mnist_split(folder, split)
    spec = inputs[0]
    if not np.issubdtype(spec.dtype, np.floating):
        raise DataError(f"{folder}: idx images are fed as floats but input {spec.name} is {spec.dtype}")
    per_sample = images[0].size
    rest = [d for d in spec.shape[1:]]
    if None in rest or int(np.prod(rest)) != per_sample:
        raise DataError(f"{folder}: idx images have {per_sample} pixels each, which do not fit input "
                        f"{spec.describe()}")
    x = (images.reshape((len(images), *rest)).astype(spec.dtype) * spec.dtype.type(IDX_SCALE))
    return Dataset({spec.name: x}, labels.astype(np.int64), f"{folder} ({split})")


def check_arrays(arrays: dict[str, np.ndarray], labels: np.ndarray | None, inputs: list[InputSpec],
                 source: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Check names, dtypes and shapes against the model's inputs (sample first); cast floats to the model's float
    type. An input fed whole (no batch axis) may be given once, or missing when it is a float state (zeros)."""
    names = [s.name for s in inputs]
    missing = [s for s in inputs if s.name not in arrays and not _zero_state(s)]
    extra = [n for n in arrays if n not in names]
    if missing:
        whole = missing[0].batch_axis is None
        raise DataError(f"{source}: no array for model input {missing[0].name!r} (it has "
                        f"{sorted(arrays) or 'none'}); name the arrays after the model inputs: {', '.join(names)}"
                        + (f"; {missing[0].name!r} has no batch axis: give its one value, shape "
                           f"{list(missing[0].shape)}" if whole else ""))
    if extra:
        raise DataError(f"{source}: array {extra[0]!r} is not a model input; the model takes {', '.join(names)} "
                        f"and optional '{LABELS}'")
    out = {}
    count = None
    for spec in inputs:
        if spec.name not in arrays or (spec.batch_axis is None and np.ndim(arrays[spec.name]) == len(spec.shape)):
            continue
        array = _checked(np.asarray(arrays[spec.name]), spec, source)
        if count is not None and len(array) != count:
            raise DataError(f"{source}: arrays have different numbers of samples ({count} and {len(array)})")
        count = len(array)
        out[spec.name] = array
    out |= _whole_inputs(arrays, inputs, count or 1, source)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if count is not None and len(labels) != count:
            raise DataError(f"{source}: {len(labels)} labels for {count} samples")
    return {n: out[n] for n in names}, labels


def _checked(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """One input's sample-first array in the model's dtype, its shape checked; an input fed whole must hold the
    same value in every sample, since the model takes one value for the whole batch."""
    if array.dtype != spec.dtype:
        same_kind = (np.issubdtype(array.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)) or (
            np.issubdtype(array.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer))
        if not same_kind:
            raise DataError(f"{source}: input {spec.name!r} is {array.dtype} but the model wants {spec.dtype}; "
                            "convert it (and scale it as in training) before saving")
        array = array.astype(spec.dtype)
    sample = spec.sample_shape
    if array.ndim != len(sample) + 1 or any(d is not None and d != a for d, a in zip(sample, array.shape[1:])):
        where = ("" if spec.batch_axis in (0, None) else
                 f" (its batch is on axis {spec.batch_axis} in the model; the data holds it first)")
        raise DataError(f"{source}: input {spec.name!r} has shape {list(array.shape)} but the model wants "
                        f"{spec.describe()}, so the data must hold [samples, "
                        + ", ".join("?" if d is None else str(d) for d in sample) + f"]{where}")
    if spec.batch_axis is None and len(array) > 1:
        differs = np.flatnonzero(np.any((array != array[:1]).reshape(len(array), -1), axis=1))
        if differs.size:
            raise DataError(f"{source}: input {spec.name!r} has no batch axis in the model ({spec.describe()}), "
                            f"so every sample must hold the same value, but sample {differs[0]} differs from "
                            "sample 0; split the data by its value and compress once per value")
    return array


def _zero_state(spec: InputSpec) -> bool:
    """A float input without a batch axis (a recurrent state) that the data may leave out: it is fed zeros."""
    return spec.batch_axis is None and np.issubdtype(spec.dtype, np.floating) and None not in spec.shape


def _whole_inputs(arrays: dict[str, np.ndarray], inputs: list[InputSpec], count: int,
                  source: str) -> dict[str, np.ndarray]:
    """The inputs fed whole that the data gives once or leaves out (zeros), repeated for each of the samples."""
    out = {}
    for spec in inputs:
        if spec.batch_axis is not None or (spec.name in arrays and np.ndim(arrays[spec.name]) != len(spec.shape)):
            continue
        if spec.name in arrays:
            value = _checked(np.asarray(arrays[spec.name])[None], spec, source)[0]
        else:
            _warn_zeros(source, spec.name, spec.describe())
            value = np.zeros(spec.shape, spec.dtype)
        out[spec.name] = np.broadcast_to(value, (count, *value.shape))
    return out


@functools.lru_cache(maxsize=64)
def _warn_zeros(source: str, name: str, described: str) -> None:
    """Said once per data source and input, though streamed data is checked batch by batch."""
    log.warning("%s: input %r (%s) has no batch axis and no array: it is fed zeros", source, name, described)
