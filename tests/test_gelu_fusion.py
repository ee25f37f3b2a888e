"""The tanh-GELU fusion: the FastGelu it writes computes the written-out GELU's outputs, trains with its gradient
(against central finite differences of a float64 reference), and nothing that is not exactly that is fused."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from graphs import value
from rewrite_harness import (H, Case, finite_difference, generate, inputs, loss_weights, op_model, op_types,
                             run_on_x, train_step_gradients, with_loss)

from onnx_dns.rewrites.gelu_fusion import fuse_tanh_gelu

K = math.sqrt(2 / math.pi)


def gelu_tanh(c, params=None):
    return 0.5 * c * (1 + np.tanh(K * (c + 0.044715 * c ** 3)))


def jax2tf_nodes(one="one"):
    """The order tf2onnx writes for JAX's gelu (magika-v3.3): 0.044715 x x x, k (x + .), 0.5 (1 + tanh), x * ."""
    return (H("Mul", ["cub", "c"], ["a"]), H("Mul", ["c", "a"], ["b"]), H("Mul", ["c", "b"], ["cube"]),
            H("Add", ["c", "cube"], ["d"]), H("Mul", ["k", "d"], ["e"]), H("Tanh", ["e"], ["t"]),
            H("Add", [one, "t"], ["g"]), H("Mul", ["half", "g"], ["h"]), H("Mul", ["c", "h"], ["y"], name="gelu"))


def torch_nodes():
    """PyTorch's tanh GELU before opset 20: Pow(x, 3), the 0.5 taken with x first, constants as Constant nodes."""
    consts = [H("Constant", [], [n], value=onnx.numpy_helper.from_array(np.array(v, np.float32)))
              for n, v in (("three", 3.0), ("ck", 0.044715), ("kk", K), ("h5", 0.5), ("o1", 1.0))]
    return (*consts, H("Pow", ["c", "three"], ["p"]), H("Mul", ["p", "ck"], ["q"]), H("Add", ["c", "q"], ["d"]),
            H("Mul", ["d", "kk"], ["e"]), H("Tanh", ["e"], ["t"]), H("Add", ["t", "o1"], ["g"]),
            H("Mul", ["c", "h5"], ["xh"]), H("Mul", ["xh", "g"], ["y"]))


SCALARS = {"cub": np.float32(0.044715), "k": np.float32(K), "half": np.float32(0.5), "one": np.float32(1.0)}
CASES = [
    Case("jax2tf", jax2tf_nodes(), gelu_tanh, params=SCALARS),
    Case("jax2tf-rank4-one", jax2tf_nodes(), gelu_tanh, params={**SCALARS, "one": np.ones((1, 1, 1, 1))}),
    Case("torch", torch_nodes(), gelu_tanh),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_fused_node_computes_what_the_written_out_gelu_computes(case):
    model = op_model(case)
    before = model.SerializeToString()
    fused = fuse_tanh_gelu(model)
    assert fused.modified and model.SerializeToString() == before
    assert op_types(fused.model) & {"Tanh", "Pow", "Add"} == set()
    assert [n.op_type for n in fused.model.graph.node if n.op_type != "Constant"] == ["Conv", "FastGelu"]
    x = inputs(case)
    np.testing.assert_allclose(run_on_x(fused.model, x), run_on_x(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES[:1] + CASES[2:], ids=["jax2tf", "torch"])
def test_the_fused_model_trains_with_the_gradient_of_gelu(case, tmp_path):
    fused = fuse_tanh_gelu(op_model(case)).model
    r = loss_weights(case)
    generate(with_loss(fused, r), ["W"], tmp_path)
    assert "FastGeluGrad" in op_types(onnx.load(str(tmp_path / "training_model.onnx")))
    x = inputs(case)
    expected = finite_difference(case, x, r, "W")
    assert np.abs(expected).max() > 1e-4
    got = train_step_gradients(tmp_path, x, ["W"])["W"]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def _not_fused(model: onnx.ModelProto) -> None:
    result = fuse_tanh_gelu(model)
    assert not result.modified and result.model is model


def test_a_different_constant_is_not_gelu_and_is_left():
    _not_fused(op_model(Case("c", jax2tf_nodes(), gelu_tanh, params={**SCALARS, "cub": np.float32(0.0447)})))
    _not_fused(op_model(Case("k", jax2tf_nodes(), gelu_tanh, params={**SCALARS, "k": np.float32(0.8)})))


def test_a_constant_that_would_broadcast_to_a_higher_rank_is_left():
    params = {**SCALARS, "half": np.full((1,) * 5, 0.5)}
    case = Case("r", jax2tf_nodes(), lambda c, p: gelu_tanh(c)[None], params=params)
    _not_fused(op_model(case))


def test_a_gelu_whose_intermediate_is_read_elsewhere_is_left():
    case = Case("read", jax2tf_nodes(), gelu_tanh, params=SCALARS)
    model = op_model(case)
    model.graph.output.append(value("t", ["N", 6, 4, 5]))  # the Tanh output is also a graph output
    _not_fused(model)
    model = op_model(case)
    model.graph.node.append(H("Neg", ["b"], ["nb"]))  # x*x*0.044715 also read by another node
    model.graph.output.append(value("nb", ["N", 6, 4, 5]))
    _not_fused(model)


def test_a_product_with_x_only_twice_is_left():
    nodes = list(jax2tf_nodes())
    nodes[2] = H("Mul", ["half", "b"], ["cube"])  # 0.5 * 0.044715 x^2 instead of 0.044715 x^3
    _not_fused(op_model(Case("square", tuple(nodes), gelu_tanh, params=SCALARS)))
