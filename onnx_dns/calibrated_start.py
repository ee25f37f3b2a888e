"""Calibrated start (`--start calibrated`): prune each layer once to its target before training, choosing the
weights by their effect on a few training inputs and correcting what the cut changed, so that training starts
from a model that still does its task.

Magnitude alone ruins fragile models: on the PP-OCRv4 recognizer, half of one 480x480 1x1 conv pruned by
magnitude leaves 0% of the non-blank positions as they were, and the same conv scaled by 0.9 keeps 92%: the
network reads the scale of that layer's output, which pruning shrinks. Layer by layer, in graph order:

1. importance |w_ij| * ||x_j|| (Sun et al. 2023, "Wanda"): each weight times the RMS of the input channel it
   reads, over the calibration inputs as the original model computes them; the layer keeps the `keep` fraction
   of its weights with the largest importance (its bias is not pruned here);
2. correction: with the layers before it already pruned, each output channel o of the layer is refit to the
   original's output on the same inputs, y_o ~ r_o * z_o + c_o by least squares (z_o the pruned layer's output
   without bias): the kept weights of channel o are scaled by r_o and its bias set to c_o (scale only when the
   layer has no bias of its own). Each layer so absorbs the drift of every cut before it.

On that recognizer one-shot at 2x, this keeps 91.5% of the non-blank positions where magnitude keeps 0%.
Conv (any groups), MatMul with a 2-D weight and Gemm are scored and corrected; other layers are pruned by
magnitude. Training then starts from this sparse model: target mode's schedule starts at the density it finds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.batch_axes import model_feed
from onnx_dns.data import model_inputs
from onnx_dns.errors import OptionError
from onnx_dns.graph import attribute
from onnx_dns.ort_training import runtime, session_options
from onnx_dns.prunable import Layer

SAMPLES = 64  # calibration inputs: the first training samples


@dataclass(frozen=True)
class CalibratedStart:
    """The pruned model training starts from, and how many layers were scored and corrected."""

    model: onnx.ModelProto
    corrected: int
    layers: int
    seconds: float


@dataclass(frozen=True)
class _Geometry:
    """Where a layer's node keeps its input channels (importance) and output channels (correction)."""

    node: onnx.NodeProto
    out_weight_axis: int  # the weight axis of output channels
    out_axis: int  # the axis of output channels in the node's output
    has_bias: bool  # the node adds the layer's bias itself (Conv, Gemm)


def calibrated_start(model: onnx.ModelProto, layers: list[Layer], keep: dict[str, float],
                     batches: list[dict[str, np.ndarray]],
                     progress: Callable[[dict], None] = lambda event: None) -> CalibratedStart:
    """`model` with each layer in `keep` pruned to that kept fraction of its weights, scored and corrected on
    `batches` (the model's inputs, sample first) as the module says."""
    started = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    geometries = {layer.name: _geometry(model, layer, values[layer.weight.name])
                  for layer in layers if keep.get(layer.name, 1.0) < 1.0}
    exposed = {name for g in geometries.values() if g is not None for name in (g.node.input[0], g.node.output[0])}
    run = _Runner(model, layers, batches, exposed)
    current: dict[str, np.ndarray] = {}
    corrected = 0
    for index, layer in enumerate(layers):
        if layer.name not in geometries:
            continue
        progress({"event": "calibrating-layer", "layer": layer.name, "index": index, "layers": len(layers)})
        weight = values[layer.weight.name]
        geometry = geometries[layer.name]
        if geometry is None:
            current[layer.weight.name] = _keep_largest(weight, np.abs(weight), keep[layer.name])
            continue
        reads, target = run([geometry.node.input[0], geometry.node.output[0]], {})
        pruned = _keep_largest(weight, _importance(weight, reads, geometry), keep[layer.name])
        pruned, bias = _corrected(run, layer, geometry, pruned, target, current, values)
        corrected += 1
        if bias is not None:
            current[layer.bias.name] = bias.astype(values[layer.bias.name].dtype)
        current[layer.weight.name] = pruned.astype(weight.dtype)
    by_name = {t.name: t for t in out.graph.initializer}
    for name, array in current.items():
        by_name[name].CopyFrom(numpy_helper.from_array(array, name))
    return CalibratedStart(out, corrected, len(layers), time.perf_counter() - started)


class _Runner:
    """One session of the model with every layer's tensors as overridable inputs and the `exposed` tensors as
    outputs: `run(names, weights)` are those tensors over all calibration batches with `weights` fed."""

    def __init__(self, model: onnx.ModelProto, layers: list[Layer], batches: list[dict[str, np.ndarray]],
                 exposed: set[str]):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        initializers = {t.name: t for t in probe.graph.initializer}
        declared = {i.name for i in probe.graph.input}
        for layer in layers:
            for tensor in layer.tensors:
                if tensor.name not in declared and tensor.name in initializers:
                    t = initializers[tensor.name]
                    probe.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        outputs = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(exposed)
                                  if name not in outputs and name not in initializers and name not in declared)
        try:
            self.session = runtime().InferenceSession(probe.SerializeToString(), session_options(arena=False),
                                                      providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise _failed(error) from None
        names = {i.name for i in self.session.get_inputs()}
        axes = {s.name: s.batch_axis for s in model_inputs(model)}
        self.feeds = [model_feed({k: v for k, v in b.items() if k in names}, axes) for b in batches]

    def __call__(self, names: list[str], weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        fetched = [n for n in names if n not in self.feeds[0]]
        try:
            runs = [dict(zip(fetched, self.session.run(fetched, {**feed, **weights}))) if fetched else {}
                    for feed in self.feeds]
        except Exception as error:  # noqa: BLE001
            raise _failed(error) from None
        return [np.concatenate([feed[n] if n in feed else got[n] for feed, got in zip(self.feeds, runs)])
                for n in names]


def _failed(error: Exception) -> OptionError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return OptionError(f"--start calibrated could not run the model with its layers' tensors exposed ({first}); "
                       "leave --start at dense")


def _geometry(model: onnx.ModelProto, layer: Layer, weight: np.ndarray) -> _Geometry | None:
    """How the node that reads the layer's weight as its second input lays out channels, if it is one this
    module scores and corrects."""
    node = next((n for n in model.graph.node if len(n.input) > 1 and n.input[1] == layer.weight.name), None)
    if node is None:
        return None
    bias = layer.bias is not None and len(node.input) > 2 and node.input[2] == layer.bias.name
    if node.op_type == "Conv" and weight.ndim >= 3:
        return _Geometry(node, 0, 1, bias)
    if node.op_type == "MatMul" and weight.ndim == 2:
        return _Geometry(node, 1, -1, False)
    if node.op_type == "Gemm" and weight.ndim == 2 and not attribute(node, "transA", 0):
        return _Geometry(node, 0 if attribute(node, "transB", 0) else 1, -1, bias)
    return None


def _importance(weight: np.ndarray, inputs: np.ndarray, g: _Geometry) -> np.ndarray:
    """|w| times the RMS of the input channel each weight reads."""
    x = inputs.astype(np.float64)
    if g.node.op_type == "Conv":
        rms = np.sqrt(np.mean(x ** 2, axis=tuple(a for a in range(x.ndim) if a != 1)))
        groups = attribute(g.node, "group", 1)
        per_group, width = weight.shape[0] // groups, weight.shape[1]
        reads = np.stack([rms[(o // per_group) * width:(o // per_group + 1) * width] for o in range(weight.shape[0])])
        return np.abs(weight) * reads.reshape(weight.shape[:2] + (1,) * (weight.ndim - 2))
    rms = np.sqrt(np.mean(x.reshape(-1, x.shape[-1]) ** 2, axis=0))
    return np.abs(weight) * (rms[:, None] if g.out_weight_axis == 1 else rms[None, :])


def _keep_largest(weight: np.ndarray, score: np.ndarray, keep: float) -> np.ndarray:
    """`weight` with all but round(keep * size) of its entries of largest `score` set to zero."""
    k = int(round(keep * weight.size))
    if k <= 0:
        return np.zeros_like(weight)
    order = np.argsort(score, axis=None)
    flat = weight.reshape(-1).copy()
    flat[order[:weight.size - k]] = 0
    return flat.reshape(weight.shape)


def _corrected(run: _Runner, layer: Layer, g: _Geometry, pruned: np.ndarray, original: np.ndarray,
               current: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """`pruned` with each output channel scaled (and, with a bias of the node's own, shifted) so that the
    layer's output over the calibration inputs, the layers before it pruned, fits the original's."""
    target = original.astype(np.float64)
    feed = {**current, layer.weight.name: pruned.astype(values[layer.weight.name].dtype)}
    if g.has_bias:
        feed[layer.bias.name] = np.zeros_like(values[layer.bias.name])
    (z,) = run([g.node.output[0]], feed)
    z = z.astype(np.float64)
    axis = g.out_axis % z.ndim
    y, z = np.moveaxis(target, axis, -1).reshape(-1, z.shape[axis]), np.moveaxis(z, axis, -1).reshape(-1, z.shape[axis])
    if g.has_bias:
        dz, dy = z - z.mean(0), y - y.mean(0)
        var = (dz ** 2).mean(0)
        r = np.where(var > 0, (dz * dy).mean(0) / np.where(var > 0, var, 1), 1.0)
        shift = y.mean(0) - r * z.mean(0)
    else:
        zz = (z ** 2).sum(0)
        r = np.where(zz > 0, (z * y).sum(0) / np.where(zz > 0, zz, 1), 1.0)
        shift = None
    shape = [1] * pruned.ndim
    shape[g.out_weight_axis] = -1
    return pruned * r.reshape(shape), shift
