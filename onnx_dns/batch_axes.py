"""Where each model input holds its batch, and the model's feed made from sample-first data.

Data is always sample first: `array[i]` is sample i's value of an input. Most models take their batch on axis 0
too, but not all: a recurrent model's state `[layers, batch, hidden]` holds it on axis 1, and a sample-rate scalar
or a state fixed at `[1, 1, 128]` beside a symbolic batch holds none (one value for the whole batch). From the
declared dimensions: the batch symbol is the symbol on axis 0 of the first input that has one there; an input
holds its batch on the axis named by that symbol; an input of rank 0, or with fixed sizes only while another input
has the batch symbol, holds none (it is fed whole, and every sample of the data must hold the same value of it);
any other input holds it on axis 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

Axes = Mapping[str, "int | None"]


def batch_axes(inputs: Sequence[onnx.ValueInfoProto]) -> dict[str, int | None]:
    """The batch axis of each of these graph inputs (None for an input fed whole)."""
    symbols = {value.name: [d.dim_param if d.HasField("dim_param") else None
                            for d in value.type.tensor_type.shape.dim] for value in inputs}
    batch = next((dims[0] for dims in symbols.values() if dims and dims[0]), None)
    axes: dict[str, int | None] = {}
    for value in inputs:
        dims, declared = symbols[value.name], value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            axes[value.name] = 0
        elif not dims:
            axes[value.name] = None
        elif batch is not None and batch in dims:
            axes[value.name] = dims.index(batch)
        elif batch is not None and all(d.HasField("dim_value") and d.dim_value > 0 for d in declared):
            axes[value.name] = None
        else:
            axes[value.name] = 0
    return axes


def sample_dims(dims: tuple, axis: int | None) -> tuple:
    """The dimensions of one sample of an input: all of them for an input fed whole, else all but the batch's."""
    return tuple(dims) if axis is None else tuple(dims[:axis]) + tuple(dims[axis + 1:])


def feed_dims(sample: tuple, axis: int | None, batch: int | None) -> tuple:
    """The input's dimensions in the model for samples of dimensions `sample`, `batch` at a time."""
    return tuple(sample) if axis is None else tuple(sample[:axis]) + (batch,) + tuple(sample[axis:])


def model_feed(arrays: Mapping[str, np.ndarray], axes: Axes) -> dict[str, np.ndarray]:
    """Sample-first arrays as the model takes them: the batch moved to its axis, or the first sample's value for
    an input fed whole. Arrays not named in `axes` (targets, stored outputs) pass unchanged."""
    feed = {}
    for name, array in arrays.items():
        axis = axes.get(name, 0)
        if axis is None:
            feed[name] = np.asarray(array[0])
        elif axis:
            feed[name] = np.ascontiguousarray(np.moveaxis(array, 0, axis))
        else:
            feed[name] = array
    return feed


def fixed_batch(shapes: Sequence[tuple], axes: Sequence[int | None]) -> int | None:
    """The batch size a model was exported with, when an input fixes it on its batch axis."""
    return next((dims[axis] for dims, axis in zip(shapes, axes)
                 if axis is not None and len(dims) > axis and dims[axis] is not None), None)
