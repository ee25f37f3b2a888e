"""Build the reference models of the paper as ONNX graphs with Caffe's initialisation (untrained).

LeNet-5, Caffe variant: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, fc 500, relu, fc 10 (431,080 parameters).
LeNet-300-100: fc 300, relu, fc 100, relu, fc 10 (266,610 parameters).
Weights use Caffe's "xavier" filler (uniform in +-sqrt(3 / fan_in)); biases start at 0.

    python models/build.py OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def xavier(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    scale = np.sqrt(3.0 / fan_in)
    return rng.uniform(-scale, scale, size=shape).astype(np.float32)


def _model(name: str, nodes, inputs, outputs, inits, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-dns/models")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def lenet5(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(xavier(rng, (20, 1, 5, 5), 25), "conv1.weight"),
        numpy_helper.from_array(np.zeros(20, np.float32), "conv1.bias"),
        numpy_helper.from_array(xavier(rng, (50, 20, 5, 5), 500), "conv2.weight"),
        numpy_helper.from_array(np.zeros(50, np.float32), "conv2.bias"),
        numpy_helper.from_array(xavier(rng, (500, 800), 800), "fc1.weight"),
        numpy_helper.from_array(np.zeros(500, np.float32), "fc1.bias"),
        numpy_helper.from_array(xavier(rng, (10, 500), 500), "fc2.weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["c1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["c2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    return _model("lenet5", nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
                  "LeNet-5 (Caffe variant, 20-50-500-10) for MNIST; input pixels scaled by 1/256")


def lenet300(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    sizes = [(784, 300), (300, 100), (100, 10)]
    inits, nodes, x = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(sizes, start=1):
        inits.append(numpy_helper.from_array(xavier(rng, (fan_out, fan_in), fan_in), f"fc{i}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(fan_out, np.float32), f"fc{i}.bias"))
        y = "logits" if i == len(sizes) else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}", transB=1))
        if i < len(sizes):
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    return _model("lenet300", nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 784])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
                  "LeNet-300-100 for MNIST; input pixels scaled by 1/256")


BUILDERS = {"lenet5": lenet5, "lenet300": lenet300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        path = args.out_dir / f"{name}.init.onnx"
        onnx.save(build(args.seed), str(path))
        print(path)


if __name__ == "__main__":
    main()
