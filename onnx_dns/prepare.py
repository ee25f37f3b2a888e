"""Stage 1 of `compress`: the model made ready for training, its prunable layers found and planned.

load -> normalize (`normalized`: rebuild packed weights, lift constants, densify sparse initializers, unlist
weights from the inputs) -> check the weights are finite -> choose the output to train on -> find prunable layers -> leave alone the ones before
--freeze-before or not feeding that output -> one surgery plan per layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.batch_axes import fixed_batch
from onnx_dns.channel_layout import ChannelGroups
from onnx_dns.channel_plans import plan_channels
from onnx_dns.constant_branches import inline_constant_ifs
from onnx_dns.data import InputSpec, as_data, model_inputs
from onnx_dns.errors import ModelError, OptionError
from onnx_dns.freeze import initializers_feeding, upstream_initializers
from onnx_dns.graph import FLOAT_TYPES, initializers, producers
from onnx_dns.losses import loss_output
from onnx_dns.normalize import densify_sparse, lift_constants, unlist_initializer_inputs
from onnx_dns.options import CompressOptions
from onnx_dns.passes import sequence
from onnx_dns.plans import plans_for
from onnx_dns.prunable import RECURRENT_OPS, WEIGHT_OPS, Layer, find_layers
from onnx_dns.repack import unpack_model
from onnx_dns.surgery import LayerPlan

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The model ready for training and what will be pruned in it."""

    source: str
    original: onnx.ModelProto
    model: onnx.ModelProto
    output: str
    layers: list[Layer]
    plans: dict[str, LayerPlan]
    frozen: set[str]
    feeding: set[str]
    specs: list[InputSpec]
    channels: ChannelGroups | None = None
    start: onnx.ModelProto | None = None  # what training starts from when not `model` (`calibrated_start`)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with, if its inputs fix one."""
        return fixed_batch([s.shape for s in self.specs], [s.batch_axis for s in self.specs])

    @property
    def pruned(self) -> list[str]:
        if self.channels is not None:
            return [t for group in self.channels.groups.values() for t, _ in group.masked]
        return [t.name for layer in self.layers for t in layer.tensors]

    @property
    def mask_shapes(self) -> dict[str, tuple[int, ...]]:
        """The broadcast shape of each channel mask (none with weight-level surgery)."""
        inits = initializers(self.model.graph)
        return {t: group.mask_shape(t, len(inits[t].dims)) for group in (self.channels.groups.values()
                if self.channels is not None else ()) for t, _ in group.masked}


def prepare(original: onnx.ModelProto, source: str, options: CompressOptions) -> Prepared:
    """Normalize `original` (never modified) and plan the surgery of its layers; `source` names it in errors."""
    model = _data_branches(normalized(original), options)
    output = loss_output(model, options.output_name, source)
    layers = find_layers(model, include=options.include, exclude=options.exclude, biases=options.biases)
    check_finite(model, source, {t.name for layer in layers for t in layer.tensors})
    frozen = upstream_initializers(model, options.freeze_before) if options.freeze_before else set()
    feeding = initializers_feeding(model, output)
    quantized = _quantized_on_path(model, output)
    behind = upstream_initializers(model, [n.output[0] for n in quantized]) - frozen if quantized else set()
    left_alone = _left_alone(layers, options, frozen, feeding, output, behind, quantized[0] if quantized else None)
    frozen |= behind
    _check_layer_names(layers, options, left_alone)
    layers = [layer for layer in layers if layer.name not in left_alone] if options.prune else []
    if options.prune and not layers:
        raise ModelError(_no_layers(model, source, options, left_alone))
    _warn_quantized(model, source)
    channels, plans = (plan_channels(model, layers, options, source, frozen)
                       if options.structure == "channel" and layers else (None, plans_for(layers, options)))
    return Prepared(source, original, model, output, layers, plans, frozen, feeding, model_inputs(model), channels)


QUANTIZED_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM",
                 "DequantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _quantized_on_path(model: onnx.ModelProto, output: str) -> list[onnx.NodeProto]:
    """The quantized nodes (QUANTIZED_OPS) that `output` depends on."""
    made_by = producers(model.graph)
    found, seen, stack = [], set(), [output]
    while stack:
        node = made_by.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in QUANTIZED_OPS:
            found.append(node)
        stack.extend(node.input)
    return found


def _warn_quantized(model: onnx.ModelProto, source: str) -> None:
    """Say so when part of the model is quantized: its integer weights are neither trained nor pruned."""
    quantized = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    if quantized:
        ops = sorted({n.op_type for n in quantized})
        log.warning("%s is partly quantized: %d nodes (%s, first %s) keep their weights as they are; to prune "
                    "them too, compress the float model it was made from, then quantize the result", source,
                    len(quantized), ", ".join(ops), quantized[0].name or quantized[0].output[0])


def _no_layers(model: onnx.ModelProto, source: str, options: CompressOptions, left_alone: dict[str, str]) -> str:
    """Why no layer can be pruned, and what to do."""
    ops = {n.op_type for n in model.graph.node}
    quantized = sorted(ops & set(QUANTIZED_OPS))
    return (f"{source}: no prunable weights (float initializers of {', '.join(WEIGHT_OPS + RECURRENT_OPS)}) "
            "were found" + (" matching --include/--exclude" if options.include or options.exclude else "")
            + (f"; {len(left_alone)} layers were left alone by --freeze-before or --output-name" if left_alone else "")
            + (f"; the model is quantized ({', '.join(quantized)}): compress the float model it was made from, "
               "then quantize the result" if quantized else "")
            + ("; weights inside an If's branches are found only when the data fixes its condition "
               "(give the inputs it depends on one value for all the data)" if "If" in ops else ""))


def replan(prepared: Prepared, options: CompressOptions) -> Prepared:
    """`prepared` with its plans made again for `options` (the iterations sized once the trainer ran a step)."""
    if prepared.channels is not None:
        _, plans = plan_channels(prepared.model, prepared.layers, options, prepared.source, prepared.frozen)
    else:
        plans = plans_for(prepared.layers, options)
    return replace(prepared, plans=plans)


def normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as every stage reads it: packed weights rebuilt, Constant nodes lifted to initializers, sparse
    initializers densified, weights unlisted from the graph inputs (`model` itself is never modified)."""
    return sequence(model, [unpack_model, lift_constants, densify_sparse, unlist_initializer_inputs]).model


def _data_branches(model: onnx.ModelProto, options: CompressOptions) -> onnx.ModelProto:
    """The model with each top-level If whose condition the data fixes replaced by its taken branch (the inputs
    without a batch axis hold one value for all the data), so the weights inside it are found and pruned."""
    if not any(n.op_type == "If" for n in model.graph.node):
        return model
    specs = [s for s in model_inputs(model) if s.batch_axis is None]
    values = {}
    if specs and options.data is not None:
        inputs, _ = as_data(options.data, model_inputs(model)).batch(0, 1, 0)
        values = {s.name: np.asarray(inputs[s.name][0]) for s in specs}
    return inline_constant_ifs(model, values).model


def check_finite(model: onnx.ModelProto, source: str, weights: set[str]) -> None:
    """Refuse layer weights holding NaN or infinity: training would only spread them. Other constants may hold
    them on purpose (-inf in an attention mask, a ReduceMax's start value)."""
    for tensor in model.graph.initializer:
        if tensor.name in weights and tensor.data_type in FLOAT_TYPES:
            values = numpy_helper.to_array(tensor)
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                raise ModelError(f"{source}: initializer {tensor.name!r} holds {bad} NaN or infinite values; "
                                 "fix the model (re-export it from a healthy checkpoint)")


def _left_alone(layers: list[Layer], options: CompressOptions, frozen: set[str], feeding: set[str],
                output: str, behind: set[str], quantized: onnx.NodeProto | None) -> dict[str, str]:
    """Layers neither trained nor pruned, with why: before --freeze-before, before a quantized node on the way to
    the trained output (reading initializers `behind` one; `quantized` is one of them), or not feeding it."""
    left = {layer.name: f"is before --freeze-before {', '.join(options.freeze_before)}"
            for layer in layers if any(t.name in frozen for t in layer.tensors)}
    left |= {layer.name: f"is before a quantized node ({quantized.name or quantized.output[0]}, {quantized.op_type}, "
             "or another), through which no gradient passes" for layer in layers
             if layer.name not in left and any(t.name in behind for t in layer.tensors)}
    left |= {layer.name: f"does not feed output {output!r}" for layer in layers
             if layer.name not in left and not all(t.name in feeding for t in layer.tensors)}
    for name, why in left.items():
        log.warning("layer %s is neither trained nor pruned: it %s", name, why)
    return left


def _check_layer_names(layers: list[Layer], options: CompressOptions, left_alone: dict[str, str]) -> None:
    names = {layer.name for layer in layers}
    for option, given in (("--c", options.c), ("--sparsity", options.sparsity), ("--stop", options.stop)):
        for name in given:
            if name in left_alone:
                raise OptionError(f"{option} {name}=...: layer {name!r} is not pruned, since it {left_alone[name]}")
            if name not in names:
                raise OptionError(f"{option} {name}=...: no prunable layer named {name!r}; layers: "
                                  + ", ".join(sorted(names)) + " (see onnx-dns inspect)")


def training_batch_size(prepared: Prepared, wanted: int) -> int:
    """A model exported with a fixed batch size trains at that size."""
    fixed = prepared.fixed_batch
    if fixed is None or fixed == wanted:
        return wanted
    log.warning("%s has a fixed batch size of %d: training at batch size %d instead of %d", prepared.source,
                fixed, fixed, wanted)
    return fixed
