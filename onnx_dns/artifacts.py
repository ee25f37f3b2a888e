"""Build onnxruntime-training artifacts (training graph, eval graph, checkpoint) from a masked model.

Operators without a CPU gradient are first rewritten into equivalent ones that have one (the rewrites package;
initializer names are kept, so trained values go back into the user's original graph). The loss is attached as
ONNX nodes (losses.py); weights and biases require gradients, masks are frozen parameters the host rewrites
between steps, and the mask gradient is rewired straight-through.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnx_dns.errors import ModelError, TrainingError
from onnx_dns.freeze import initializers_feeding
from onnx_dns.graph import FLOAT_TYPES, initializers, node_label
from onnx_dns.insert_masks import mask_pairs, masked_name
from onnx_dns.losses import LOSS_OUTPUT, LossSpec, attach_loss
from onnx_dns.model_io import write_failed
from onnx_dns.ort_training import captured_stderr, training_artifacts
from onnx_dns.normalize import infer_output_shapes
from onnx_dns.prunable import find_layers
from onnx_dns.straight_through import rewire_straight_through
from onnx_dns.rewrites import rewrite_for_training, untrainable_message, untrainable_nodes
from onnx_dns.rewrites.constant_folding import fold_integer_constants
from onnx_dns.rewrites.gelu_fusion import fuse_tanh_gelu
from onnx_dns.rewrites.shape_hints import declare_propagated_shapes
from onnx_dns.rewrites.shape_values import resolve_computed_shapes
from onnx_dns.set_aside import inside, set_aside
from onnx_dns.training_mode import enable_dropout, freeze_batchnorm

PARAMETERS_FILE = "parameters.bin"  # the trained tensors' bytes while the checkpoint is written from them
CONSTANTS_FILE = "constants.bin"  # the other tensors' bytes, which the training and eval graphs read
NORMALIZATION_PARAMS = {"BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
                        "PRelu": (1,)}


@dataclass(frozen=True)
class TrainingArtifacts:
    directory: Path
    training_model: Path
    eval_model: Path
    checkpoint: Path
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    outputs: tuple[str, ...]
    trainable: tuple[str, ...]
    masks: dict[str, str]
    batch: int | None = None
    batch_axes: dict[str, int | None] = field(default_factory=dict)  # inputs whose batch is not on axis 0


def trainable_parameters(model: onnx.ModelProto) -> list[str]:
    """Weights and biases of every Conv/Gemm/MatMul layer (masked or not), the scale and shift of
    normalization layers and PRelu slopes. BatchNorm running statistics and all other constants stay frozen."""
    names = [t.name for layer in find_layers(model) for t in layer.tensors]
    inits = initializers(model.graph)
    unmasked = {masked_name(w): w for w in mask_pairs(model)}  # a channel mask may sit on a scale or shift
    for node in model.graph.node:
        for index in NORMALIZATION_PARAMS.get(node.op_type, ()):
            name = unmasked.get(node.input[index], node.input[index]) if len(node.input) > index else ""
            if name in inits:
                names.append(name)
    return [n for n in dict.fromkeys(names) if inits[n].data_type in FLOAT_TYPES]


def build_artifacts(masked_model: onnx.ModelProto, loss: LossSpec, directory: str | Path, *,
                    update_bn_stats: bool = False, frozen: Collection[str] = ()) -> TrainingArtifacts:
    """Write the training artifacts of `masked_model` with `loss` into `directory` and describe them.

    BatchNormalization trains with frozen statistics unless `update_bn_stats`, Dropout in training mode
    (training_mode.py); initializers named in `frozen`, and those the loss's output does not depend on, are not
    trained."""
    directory = Path(directory).absolute()  # the build runs inside it (set_aside.inside)
    directory.mkdir(parents=True, exist_ok=True)
    masks = mask_pairs(masked_model)
    graph_inputs = [i.name for i in masked_model.graph.input]
    init_names = set(initializers(masked_model.graph))
    user_inputs = tuple(n for n in graph_inputs if n not in init_names)
    feeding = initializers_feeding(masked_model, loss.output)  # onnxruntime refuses unreachable parameters
    trainable = [n for n in trainable_parameters(masked_model)
                 if n in feeding and n not in masks.values() and n not in frozen]
    _generate(_trainable_copy(masked_model, trainable, update_bn_stats), loss, trainable, masks,
              directory)
    training_path = directory / "training_model.onnx"
    training = onnx.load(str(training_path), load_external_data=False)  # its constants stay in their file
    try:
        rewired = rewire_straight_through(training, masks).model
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    onnx.save(rewired, str(training_path))
    return TrainingArtifacts(
        directory=directory,
        training_model=training_path,
        eval_model=directory / "eval_model.onnx",
        checkpoint=directory / "checkpoint",
        inputs=user_inputs,
        targets=loss.targets,
        outputs=_outputs(masked_model, loss.output),
        trainable=tuple(trainable),
        masks=masks,
        batch=_fixed_batch(masked_model, user_inputs),
    )


def _trainable_copy(masked_model: onnx.ModelProto, trainable: list[str], update_bn_stats: bool) -> onnx.ModelProto:
    """The model as onnxruntime-training must see it: Dropout active, BatchNorm frozen (unless its statistics
    are re-measured), operators without a CPU gradient rewritten; refused when a node still blocks training."""
    # each pass's copy replaces the last, so at most the caller's model and one copy are alive here
    rewritten = enable_dropout(masked_model).model
    if not update_bn_stats:
        rewritten = freeze_batchnorm(rewritten).model
    # sizes the rewrites need (an LSTM's sequence length), hidden behind shape arithmetic
    rewritten = fold_integer_constants(resolve_computed_shapes(rewritten).model).model
    rewritten = _tensor_outputs(infer_output_shapes(rewrite_for_training(rewritten).model).model)
    rewritten = declare_propagated_shapes(rewritten).model  # broadcast gradients need shapes computed ones hide
    rewritten = fuse_tanh_gelu(rewritten).model  # last: shape inference does not know FastGelu
    blocked = untrainable_nodes(rewritten, trainable)
    if blocked:
        label = blocked[0][0]
        node = next((n for i, n in enumerate(rewritten.graph.node) if node_label(n, i) == label), None)
        where = node.name or node.output[0] if node is not None else label
        first = untrainable_message(rewritten, blocked[:1])
        more = f" (and {len(blocked) - 1} more such nodes)" if len(blocked) > 1 else ""
        raise ModelError(f"{first}{more}; replace the operator before exporting, or train only the layers after "
                         f"it with --freeze-before {where}")
    return rewritten


def _generate(rewritten: onnx.ModelProto, loss: LossSpec, trainable: list[str], masks: dict[str, str],
              directory: Path) -> None:
    """onnxruntime-training's generate_artifacts on the model with its loss, its parameters and masks set aside
    (set_aside.py); its C++ logs are kept for errors."""
    base = attach_loss(rewritten, loss)
    del rewritten
    parameters = directory / PARAMETERS_FILE
    trained = {*trainable, *masks.values()}
    try:
        constants = set(initializers(base.graph)) - trained
        for names, path in ((trained, parameters), (constants, directory / CONSTANTS_FILE)):
            try:
                set_aside(base, names, path)
            except OSError as exc:
                raise write_failed(path, exc) from exc
        with captured_stderr() as log, inside(directory):
            try:
                training_artifacts().generate_artifacts(
                    base, requires_grad=trainable, frozen_params=list(masks.values()), loss=None,
                    artifact_directory=str(directory),
                )
            except Exception as exc:
                failure = exc
            else:
                failure = None
    finally:  # also on Ctrl-C: the file is as large as the model
        parameters.unlink(missing_ok=True)
    del base
    if failure is not None:
        raise TrainingError(_explain(failure, log[0] if log else "")) from failure


def _tensor_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its outputs that are not tensors (ZipMap's sequence of maps): the training API returns
    every output as an array."""
    kept = [o for o in model.graph.output if o.type.HasField("tensor_type")]
    if len(kept) == len(model.graph.output):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(kept)
    return out


def _outputs(model: onnx.ModelProto, trained: str) -> tuple[str, ...]:
    """The training graphs' outputs: the loss, the model's tensor outputs, and the trained tensor if not one."""
    names = [o.name for o in model.graph.output if o.type.HasField("tensor_type")]
    return (LOSS_OUTPUT, *names, *([] if trained in names else [trained]))


def _fixed_batch(model: onnx.ModelProto, inputs: tuple[str, ...]) -> int | None:
    """The batch size the graphs were built for, when the first dimension of an input is fixed."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in inputs and dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value  # some exporters write -1 for a dynamic batch
    return None


def _explain(exc: Exception, log: str) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    for op in ("No gradient", "not supported", "Failed to find gradient"):
        for line in log.splitlines() + text:
            if op.lower() in line.lower():
                return f"onnxruntime-training cannot build the gradient graph: {line.strip()[:300]}"
    return f"onnxruntime-training cannot build the training graph: {first[:300]}"
