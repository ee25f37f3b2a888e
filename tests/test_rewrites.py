"""Rewriting operators without a CPU gradient in onnxruntime-training into equivalent trainable subgraphs.

Each case is `x -> Conv 1x1 (trainable weight W) -> c -> <op> -> y`. Checked for every case:
- the rewritten model computes what the original computes (onnxruntime InferenceSession, random inputs), and the
  numpy reference of the op written here agrees with onnxruntime's kernel of the original op;
- the rewritten model builds training artifacts and one real training step gives dL/dW (and the gradients of the
  op's own parameters: PRelu slope, normalization scale and bias) equal to central finite differences of the
  numpy reference in float64, with L = mean(y * R) for a fixed random R;
- the original model's artifacts cannot be built (so the rewrite is needed).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import cnn, conv_transpose, make_model, mlp, run, untrainable_ops, value
from onnx import TensorProto, numpy_helper
from rewrite_cases import (CASES, IDS, dropout_case, instance_norm_case, layer_norm_case, lrn_case, np_lrn,
                           np_max_pool_2x2, prelu_case)
from rewrite_harness import (C, N, H, Case, finite_difference, generate, inputs, loss_weights, op_model, op_types,
                             reference, train_step_gradients, weight_array, with_loss)

from onnx_dns.rewrites import (
    CUDA_ONLY_GRADIENT,
    NO_GRADIENT,
    rewrite_for_training,
    untrainable_message,
    untrainable_nodes,
)

# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rewrite_computes_what_the_original_computes(case):
    original = op_model(case)
    result = rewrite_for_training(original)
    assert result.modified
    rewritten = result.model
    onnx.checker.check_model(rewritten, full_check=True)
    assert case.op not in op_types(rewritten) or case.op in ("LayerNormalization", "Dropout")
    assert not op_types(rewritten) & NO_GRADIENT
    assert untrainable_nodes(rewritten) == []
    # what the caller relies on to write trained values back: names of initializers, inputs, outputs
    assert [t.SerializeToString() for t in rewritten.graph.initializer] == \
           [t.SerializeToString() for t in original.graph.initializer]
    assert rewritten.graph.input == original.graph.input and rewritten.graph.output == original.graph.output
    assert rewritten.graph.node[0] == original.graph.node[0]  # the Conv
    for seed in (2, 4):
        x = inputs(case, seed)
        got = run(rewritten, {"x": x})[0]
        params = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in case.params.items()}
        ref = reference(case, x.astype(np.float64), weight_array(case.spatial).astype(np.float32), params)
        if case.ort_runs_original:
            expected = run(original, {"x": x})[0]
            np.testing.assert_allclose(expected, ref, rtol=1e-4, atol=1e-4)  # the reference is the op
        else:
            expected = ref
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("symbolic_spatial", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rewritten_model_trains_with_the_gradients_of_the_original_op(case, symbolic_spatial, tmp_path):
    if symbolic_spatial and case.static_only:  # refused, with the reason
        model = op_model(case, symbolic_spatial)
        assert not rewrite_for_training(model).modified
        assert "symbolic size" in untrainable_message(model, untrainable_nodes(model)) or case.op == "Split"
        return
    rewritten = rewrite_for_training(op_model(case, symbolic_spatial)).model
    r = loss_weights(case)
    names = ("W", *case.trainable)
    generate(with_loss(rewritten, r), names, tmp_path)
    x = inputs(case)
    grads = train_step_gradients(tmp_path, x, names)
    for name in names:
        expected = finite_difference(case, x, r, name)
        assert np.abs(expected).max() > 1e-4, name  # a gradient that says something
        np.testing.assert_allclose(grads[name], expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max(),
                                   err_msg=name)


@pytest.mark.parametrize("op", ["LRN", "PRelu", "Elu", "HardSigmoid", "HardSwish", "GlobalMaxPool", "Sum",
                                "InstanceNormalization", "LayerNormalization", "Dropout", "Softplus", "Mish", "Selu",
                                "Mean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "DepthToSpace",
                                "SpaceToDepth", "Pad", "Einsum", "LpNormalization"])
def test_the_original_op_cannot_be_trained(op, tmp_path):
    case = next(c for c in CASES if c.op == op)
    model = with_loss(op_model(case), loss_weights(case))
    with pytest.raises(Exception) as info:
        generate(model, ("W", *case.trainable), tmp_path)
    text = str(info.value)
    if op in ("LayerNormalization", "Dropout"):
        assert "OutputDefs().size()" in text
    elif op == "Pad":
        assert "GetPadGradient" in text
    else:
        assert f"The gradient builder has not been registered: {op}" in text
    assert untrainable_nodes(op_model(case)) == [("op", op)]


def test_a_split_with_an_unread_output_trains_with_a_wrong_gradient_unless_rewritten(tmp_path):
    case = next(c for c in CASES if c.id == "Split-opset13-input")
    r = loss_weights(case)
    x = inputs(case)
    expected = finite_difference(case, x, r, "W")
    generate(with_loss(op_model(case), r), ["W"], tmp_path)
    original = train_step_gradients(tmp_path, x, ["W"])["W"]
    assert np.abs(original - expected).max() > 0.1 * np.abs(expected).max()  # ORT 1.19's SplitGrad
    assert untrainable_nodes(op_model(case)) == [("op", "Split")]
    equal = op_model(next(c for c in CASES if c.id == "Split-opset18-num_outputs"), symbolic_spatial=True)
    assert not rewrite_for_training(equal).modified  # its part sizes are unknown: the node is reported
    assert "read by nobody; it could not be rewritten because" in untrainable_message(equal, untrainable_nodes(equal))


def test_lp_normalization_of_a_zero_row_is_zero_as_in_onnxruntime():
    for case in (c for c in CASES if c.op == "LpNormalization"):
        x = inputs(case)
        x[0] = 0  # every row of the first image has norm 0
        original = op_model(case)
        expected = run(original, {"x": x})[0]
        assert np.isfinite(expected).all() and (expected[0] == 0).all()
        np.testing.assert_allclose(run(rewrite_for_training(original).model, {"x": x})[0], expected, rtol=1e-5,
                                   atol=1e-6)


def test_layer_norm_keeps_its_node_and_gets_the_two_statistics_outputs():
    case = layer_norm_case(18, axis=1)
    rewritten = rewrite_for_training(op_model(case)).model
    node = rewritten.graph.node[1]
    assert node.op_type == "LayerNormalization" and node.name == "op" and list(node.input) == list(
        case.nodes[0].input)
    assert node.output[0] == "y" and len(node.output) == 3 and all(node.output)
    assert node.attribute == case.nodes[0].attribute
    three = op_model(case)
    three.graph.node[1].output.extend(["m", "s"])
    assert not rewrite_for_training(three).modified and untrainable_nodes(three) == []
    no_bias = op_model(layer_norm_case(with_bias=False))
    no_bias.graph.node[1].output.extend(["m", "s"])
    assert untrainable_nodes(no_bias) == [("op", "LayerNormalization")]  # ORT's gradient reads B
    node = rewrite_for_training(no_bias).model.graph.node[-1]
    assert list(node.output) == ["y", "m", "s"] and len(node.input) == 3


def test_dropout_in_inference_mode_becomes_identity_since_ort_scales_its_gradient(tmp_path):
    case = dropout_case()
    with_mask = op_model(case)
    with_mask.graph.node[1].output.append("mask")
    with_mask.graph.output.append(value("mask", ["N", C, *case.spatial], TensorProto.BOOL))
    assert untrainable_nodes(with_mask) == [("op", "Dropout")]
    # as it stands it builds, but ORT 1.19's DropoutGrad divides by 1 - ratio although Y = X
    r = loss_weights(case)
    x = inputs(case)
    expected = finite_difference(case, x, r, "W")
    generate(with_loss(with_mask, r), ["W"], tmp_path / "original")
    np.testing.assert_allclose(train_step_gradients(tmp_path / "original", x, ["W"])["W"], 2 * expected,
                               rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    rewritten = rewrite_for_training(with_mask).model
    assert [n.op_type for n in rewritten.graph.node[1:]] == ["Identity", "Shape", "ConstantOfShape"]
    assert untrainable_nodes(rewritten) == []
    y, mask = run(rewritten, {"x": x})
    np.testing.assert_array_equal(y, run(with_mask, {"x": x})[0])
    assert mask.dtype == np.bool_ and mask.shape == y.shape and mask.all()
    data_only = op_model(case)
    del data_only.graph.node[1].input[1:]  # ORT removes such a Dropout before building the gradient
    assert not rewrite_for_training(data_only).modified and untrainable_nodes(data_only) == []


def test_dropout_in_training_mode_gets_the_mask_output_its_gradient_reads(tmp_path):
    model = op_model(dropout_case())
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "training"))
    model.graph.node[1].input.append("training")
    assert untrainable_nodes(model) == [("op", "Dropout")]
    rewritten = rewrite_for_training(model).model
    node = rewritten.graph.node[1]
    assert node.op_type == "Dropout" and node.name == "op" and list(node.input) == ["c", "ratio", "training"]
    assert node.output[0] == "y" and len(node.output) == 2 and node.output[1].startswith("op__dns_")
    assert untrainable_nodes(rewritten) == []
    generate(with_loss(rewritten, np.ones((N, C, 4, 5))), ["W"], tmp_path)
    assert np.abs(train_step_gradients(tmp_path, inputs(dropout_case()), ["W"])["W"]).max() > 0


def test_lrn_keeps_the_shape_so_that_a_max_pool_after_it_trains_with_a_symbolic_batch(tmp_path):
    # AlexNet's norm1 -> pool1: when the LRN rewrite's output sizes were unknown (it reshaped back to Shape(X)),
    # the training step crashed with SIGSEGV as soon as the batch size was symbolic
    case = Case("LRN-MaxPool", (H("LRN", ["c"], ["l"], name="op", size=3, alpha=2.0),
                                H("MaxPool", ["l"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])),
                lambda c, p: np_max_pool_2x2(np_lrn(c, 3, alpha=2.0)))
    rewritten = rewrite_for_training(op_model(case)).model
    inferred = onnx.shape_inference.infer_shapes(rewritten, strict_mode=True).graph.value_info
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred}
    assert shapes["l"] == ["N", C, *case.spatial]
    r = loss_weights(case)
    generate(with_loss(rewritten, r), ["W"], tmp_path)
    x = inputs(case)
    expected = finite_difference(case, x, r, "W")
    np.testing.assert_allclose(train_step_gradients(tmp_path, x, ["W"])["W"], expected, rtol=2e-3,
                               atol=2e-3 * np.abs(expected).max())


# ---------------------------------------------------------------- the pass itself


def test_parameters_of_rewritten_ops_keep_their_names():
    for case in [prelu_case((C, 1, 1)), instance_norm_case()]:
        rewritten = rewrite_for_training(op_model(case)).model
        readers = {n: [node.op_type for node in rewritten.graph.node if n in node.input] for n in case.params}
        if case.op == "PRelu":
            assert readers == {"slope": ["Mul"]}
        else:
            assert readers == {"in.scale": ["Reshape"], "in.bias": ["Reshape"]}


def test_new_names_are_fresh_and_derived_from_the_node():
    case = lrn_case(3)
    original = op_model(case)
    rewritten = rewrite_for_training(original).model
    old = {name for node in original.graph.node for name in list(node.input) + list(node.output)}
    new_nodes = rewritten.graph.node[1:]
    produced = [o for node in new_nodes for o in node.output]
    assert produced[-1] == "y" and len(set(produced)) == len(produced)
    assert all(o.startswith("op__dns_") for o in produced[:-1]) and not set(produced[:-1]) & old
    assert len({n.name for n in rewritten.graph.node}) == len(rewritten.graph.node)
    # an unnamed node is labelled by op type and position
    original.graph.node[1].name = ""
    assert rewrite_for_training(original).model.graph.node[-1].name.startswith("LRN_1__dns_")


def test_models_without_such_ops_are_untouched_and_inputs_never_mutated():
    for model in (cnn(), mlp(), op_model(layer_norm_case()), untrainable_ops()):
        before = model.SerializeToString()
        result = rewrite_for_training(model)
        assert model.SerializeToString() == before
        if model.graph.name in ("cnn", "mlp"):
            assert result.modified is False and result.model is model
        else:
            assert result.modified is True and result.model.SerializeToString() != before


def test_the_alexnet_like_graph_of_the_test_suite_becomes_trainable(tmp_path):
    model = untrainable_ops()
    assert untrainable_nodes(model) == [("lrn", "LRN"), ("prelu", "PRelu")]
    rewritten = rewrite_for_training(model).model
    assert untrainable_nodes(rewritten) == []
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(run(rewritten, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)
    y_shape = run(model, feeds)[0].shape
    generate(with_loss(rewritten, np.ones(y_shape)), ["uc.w", "uc.b", "slope"], tmp_path)


def test_unknown_rank_or_non_float_input_is_left_and_reported():
    unknown = make_model([H("GlobalMaxPool", ["x"], ["y"], name="gmp")], [value("x", None)], [value("y", None)], [],
                         check=False)
    assert not rewrite_for_training(unknown).modified
    assert untrainable_nodes(unknown) == [("gmp", "GlobalMaxPool")]
    ints = make_model([H("PRelu", ["a", "b"], ["y"], name="p")], [value("a", [2], TensorProto.INT32),
                                                                 value("b", [2], TensorProto.INT32)],
                      [value("y", [2], TensorProto.INT32)], [])
    assert not rewrite_for_training(ints).modified
    old_opset = op_model(lrn_case(3, opset=10))
    assert not rewrite_for_training(old_opset).modified
    assert untrainable_nodes(old_opset) == [("op", "LRN")]
    message = untrainable_message(unknown, untrainable_nodes(unknown))
    assert message.startswith("node gmp (GlobalMaxPool) has no gradient in onnxruntime-training;")


def test_untrainable_nodes_lists_cpu_gaps_and_only_nodes_behind_trainable_tensors(tmp_path):
    model = conv_transpose()
    assert untrainable_nodes(model) == [("deconv", "ConvTranspose")]
    assert "CUDA" in untrainable_message(model, untrainable_nodes(model))
    assert CUDA_ONLY_GRADIENT == {"ConvTranspose", "Resize"}
    # a ConvTranspose gradient graph builds, but the CPU training session has no ConvTransposeGrad kernel
    generate(with_loss(model, np.ones((2, 3, 9, 9))), ["ct.w", "ct.b"], tmp_path)
    with pytest.raises(Exception, match="Could not find an implementation for ConvTransposeGrad"):
        train_step_gradients(tmp_path, np.ones((2, 2, 4, 4), np.float32), ["ct.w"])
    # Einsum before the first trainable tensor needs no gradient; after it, it does
    rng = np.random.default_rng(0)
    chain = make_model(
        [H("Einsum", ["x"], ["e"], name="early", equation="ij->ij"), H("MatMul", ["e", "w"], ["m"], name="mm"),
         H("Einsum", ["m"], ["y"], name="late", equation="ij->ji"),
         H("Pad", ["y", "pads"], ["p"], name="pad", mode="reflect")],
        [value("x", [2, 3])], [value("p", [5, 4])],
        [numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads")])
    assert untrainable_nodes(chain) == [("early", "Einsum"), ("late", "Einsum"), ("pad", "Pad")]
    assert untrainable_nodes(chain, trainable=["w"]) == [("late", "Einsum"), ("pad", "Pad")]
    assert untrainable_nodes(chain, trainable=[]) == []
