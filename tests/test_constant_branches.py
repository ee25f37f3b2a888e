"""Shape arithmetic on integer constants folded for training (rewrites/constant_folding.py), and an If whose
condition the data fixes replaced by its taken branch (constant_branches.py): Silero's op18 VAD, in small."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime
import pytest
from graphs import make_model, value
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.constant_branches import inline_constant_ifs
from onnx_dns.errors import DataError
from onnx_dns.graph import inferred_values
from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file
from onnx_dns.prunable import find_layers
from onnx_dns.rewrites.constant_folding import fold_integer_constants

H = helper.make_node
RNG = np.random.default_rng(0)
W16, W8 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal((4, 3)).astype(np.float32)


def _branch(weight: str, tag: str) -> onnx.GraphProto:
    """y = x @ weight + state[0]; the new state is the old one."""
    nodes = [H("MatMul", ["x", weight], [f"m_{tag}"], name=f"mm_{tag}"),
             H("Gather", ["state", "zero"], [f"s_{tag}"], name=f"first_{tag}", axis=0),
             H("Add", [f"m_{tag}", f"s_{tag}"], [f"y_{tag}"], name=f"add_{tag}"),
             H("Identity", ["state"], [f"state_{tag}"], name=f"keep_{tag}")]
    return helper.make_graph(nodes, tag, [], [value(f"y_{tag}", ["batch", 3]),
                                              value(f"state_{tag}", [2, "batch", 3])])


def vad_like() -> onnx.ModelProto:
    """Inputs x [batch, 4], sr int64 [], state [2, batch, 3]; If(Reshape(sr, [1])[0] == 16000) picks w16 or w8."""
    inits = [numpy_helper.from_array(W16, "w16"), numpy_helper.from_array(W8, "w8"),
             numpy_helper.from_array(np.array([1], np.int64), "one_dim"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(16000, np.int64), "rate16k")]
    nodes = [H("Reshape", ["sr", "one_dim"], ["sr1"], name="reshape_sr"),
             H("Gather", ["sr1", "zero"], ["sr0"], name="gather_sr"),
             H("Equal", ["sr0", "rate16k"], ["is16k"], name="is16k"),
             H("If", ["is16k"], ["y", "stateN"], name="by_rate", then_branch=_branch("w16", "then"),
               else_branch=_branch("w8", "else"))]
    inputs = [value("x", ["batch", 4]), value("sr", [], TensorProto.INT64), value("state", [2, "batch", 3])]
    return make_model(nodes, inputs, [value("y", ["batch", 3]), value("stateN", [2, "batch", 3])], inits)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_the_taken_branch_replaces_the_if_and_computes_what_the_if_computed(rate):
    model = vad_like()
    before = model.SerializeToString()
    result = inline_constant_ifs(model, {"sr": np.array(rate)})
    assert model.SerializeToString() == before and result.modified
    inlined = result.model
    assert "If" not in {n.op_type for n in inlined.graph.node}
    assert {"Reshape", "Equal"}.isdisjoint(n.op_type for n in inlined.graph.node)  # the condition's nodes
    kept, dropped = ("w16", "w8") if rate == 16000 else ("w8", "w16")
    names = {t.name for t in inlined.graph.initializer}
    assert kept in names and dropped not in names
    assert [i.name for i in inlined.graph.input] == ["x", "sr", "state"]  # still fed as before
    assert [layer.name for layer in find_layers(inlined)] == [f"mm_{'then' if rate == 16000 else 'else'}"]
    feed = {"x": RNG.standard_normal((5, 4)).astype(np.float32), "sr": np.array(rate, np.int64),
            "state": RNG.standard_normal((2, 5, 3)).astype(np.float32)}
    for got, expected in zip(_run(inlined, feed), _run(model, feed)):
        np.testing.assert_array_equal(got, expected)


def test_a_condition_the_data_does_not_fix_is_left_and_said_why(caplog):
    with caplog.at_level(logging.WARNING):
        result = inline_constant_ifs(vad_like(), {})
    assert not result.modified
    assert "node by_rate (If)" in caplog.text and "depends on sr" in caplog.text


def test_shape_arithmetic_on_integer_constants_is_folded_and_the_sizes_after_it_become_known():
    ints = {"zeros_len": np.array([2], np.int64), "front": np.array([0, 1, 0, 1], np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in ints.items()]
    inits += [numpy_helper.from_array(W16, "w"), numpy_helper.from_array(np.ones_like(W16), "w_mask")]
    nodes = [H("ConstantOfShape", ["zeros_len"], ["zeros"], name="zeros",
               value=numpy_helper.from_array(np.array([0], np.int64))),
             H("Concat", ["zeros", "front"], ["pads6"], name="concat", axis=0),
             H("Slice", ["pads6", "two", "six"], ["pads"], name="slice"),
             H("Pad", ["x", "pads"], ["padded"], name="pad"),
             H("Mul", ["w", "w_mask"], ["w_masked"], name="mask"),
             H("MatMul", ["padded", "w_masked"], ["y"], name="mm")]
    inits += [numpy_helper.from_array(np.array([2], np.int64), "two"),
              numpy_helper.from_array(np.array([6], np.int64), "six")]
    model = make_model(nodes, [value("x", ["n", 2])], [value("y", ["n", 3])], inits)
    assert inferred_values(model)["padded"].type.tensor_type.shape.dim[1].dim_value == 0  # unknown
    folded = fold_integer_constants(model).model
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Mul", "MatMul"]  # the mask's Mul is never folded
    assert inferred_values(folded)["padded"].type.tensor_type.shape.dim[1].dim_value == 4
    x = RNG.standard_normal((3, 2)).astype(np.float32)
    np.testing.assert_array_equal(_run(folded, {"x": x})[0], _run(model, {"x": x})[0])


def _compress(tmp_path, rates) -> object:
    path = tmp_path / "vad.onnx"
    onnx.save(vad_like(), str(path))
    n = len(rates)
    x = RNG.standard_normal((n, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, sr=np.asarray(rates, np.int64), state=np.zeros((n, 2, 3), np.float32))
    options = CompressOptions(data=str(tmp_path / "d.npz"), target=2.0, format="dense",
                              train=TrainConfig(iterations=6, batch_size=8, lr=0.01, eval_every=6,
                                                max_accuracy_drop=None))
    return compress_file(path, tmp_path / "out.onnx", options)


def test_compress_prunes_the_weights_of_the_branch_the_data_takes(tmp_path):
    result = _compress(tmp_path, [16000] * 40)
    assert [s.name for s in result.layers_before] == ["mm_then"]
    assert result.compression == pytest.approx(2.0, rel=0.1)
    out = onnx.load(str(tmp_path / "out.onnx"))
    w = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name == "w16")
    assert (w == 0).sum() == 6
    feed = {"x": RNG.standard_normal((3, 4)).astype(np.float32), "sr": np.array(16000, np.int64),
            "state": np.zeros((2, 3, 3), np.float32)}
    np.testing.assert_allclose(_run(out, feed)[0], feed["x"] @ w, rtol=1e-5, atol=1e-6)


def test_data_that_mixes_rates_is_refused_naming_the_input(tmp_path):
    with pytest.raises(DataError, match="'sr' has no batch axis"):
        _compress(tmp_path, [16000] * 20 + [8000] * 20)
