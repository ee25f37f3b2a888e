"""Small CNN graphs built with onnx.helper for the channel-surgery tests: residual, concat, depthwise,
flatten-into-Gemm, channels-last Transposes, Split, and graphs whose channels must be refused."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import make_model
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A graph under construction: each method adds a node (and its seeded weights) and returns its output."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape, scale: float = 0.5) -> str:
        return self.const(name, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        name = self.name(op_type)
        outs = [f"{name}_out{i}" if outputs > 1 else name for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if outputs > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1) -> str:
        name = f"conv{self.count + 1}"
        w = self.weight(f"{name}.w", (cout, cin // group, k, k), scale=1.0 / np.sqrt(cin // group * k * k))
        b = self.weight(f"{name}.b", (cout,), scale=0.1)
        return self.op("Conv", [x, w, b], pads=[k // 2] * 4, strides=[stride, stride], group=group)

    def bn(self, x: str, c: int) -> str:
        name = f"bn{self.count + 1}"
        params = [self.weight(f"{name}.scale", (c,)), self.weight(f"{name}.bias", (c,)),
                  self.weight(f"{name}.mean", (c,), 0.1),
                  self.const(f"{name}.var", self.rng.uniform(0.5, 2.0, c).astype(np.float32))]
        return self.op("BatchNormalization", [x, *params])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1) -> str:
        name = f"gemm{self.count + 1}"
        w = self.weight(f"{name}.w", (n, k) if trans_b else (k, n), scale=1.0 / np.sqrt(k))
        return self.op("Gemm", [x, w, self.weight(f"{name}.b", (n,), 0.1)], transB=trans_b)

    def model(self, inputs: dict[str, list], outputs: list[str]) -> onnx.ModelProto:
        model = make_model(self.nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                        for n, s in inputs.items()],
                           [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], self.inits,
                           check=False)
        graph = onnx.shape_inference.infer_shapes(model).graph
        inferred = {v.name: v for v in [*graph.value_info, *graph.output]}
        for output in model.graph.output:
            output.CopyFrom(inferred[output.name])
        onnx.checker.check_model(model, full_check=True)
        return model


def head(net: Net, x: str, c: int, classes: int = 4) -> str:
    return net.gemm(net.op("Flatten", [net.op("GlobalAveragePool", [x])]), c, classes)


def residual(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """Conv-BN-Relu stem, a residual block (Add), a depthwise conv, a strided conv, pooling and a Gemm."""
    n = Net(seed)
    a = n.op("Relu", [n.bn(n.conv("x", 3, width), width)])
    b = n.bn(n.conv(n.op("Relu", [n.bn(n.conv(a, width, width), width)]), width, width), width)
    r = n.op("Relu", [n.op("Add", [a, b])])
    d = n.op("Relu", [n.bn(n.conv(r, width, width, group=width), width)])
    s = n.op("Relu", [n.bn(n.conv(d, width, 2 * width, stride=2), 2 * width)])
    return n.model({"x": ["N", 3, 8, 8]}, [head(n, s, 2 * width)])


def concat(seed: int = 0) -> onnx.ModelProto:
    """Two branches concatenated (with the graph input too), read by a conv; Split at group boundaries."""
    n = Net(seed)
    a, b = n.op("Relu", [n.conv("x", 3, 6)]), n.op("Relu", [n.conv("x", 3, 4)])
    c = n.op("Concat", [a, "x", b], axis=1)
    left, right = n.op("Split", [n.op("Concat", [a, b], axis=1), n.const("sizes", np.array([6, 4]))], 2, axis=0 + 1)
    d = n.op("Relu", [n.conv(c, 13, 5)])
    e = n.op("Add", [n.conv(left, 6, 5), n.conv(right, 4, 5)])
    return n.model({"x": ["N", 3, 6, 6]}, [head(n, n.op("Add", [d, e]), 5)])


def flatten_gemm(seed: int = 0, reshape: bool = False) -> onnx.ModelProto:
    """Conv -> MaxPool -> Flatten (or Reshape [N, -1]) -> Gemm -> Relu -> Gemm: each channel is a 16-wide block."""
    n = Net(seed)
    p = n.op("MaxPool", [n.op("Relu", [n.conv("x", 3, 6)])], kernel_shape=[2, 2], strides=[2, 2])
    f = n.op("Reshape", [p, n.const("shape", np.array([-1, 96]))]) if reshape else n.op("Flatten", [p])
    h = n.op("Relu", [n.gemm(f, 96, 10, trans_b=0)])
    return n.model({"x": ["N", 3, 8, 8]}, [n.gemm(h, 10, 3)])


def channels_last(seed: int = 0) -> onnx.ModelProto:
    """NHWC input, Transposes around a conv, a per-channel Mul on the last axis, Flatten, MatMul + Add."""
    n = Net(seed)
    c = n.op("Relu", [n.conv(n.op("Transpose", ["x"], perm=[0, 3, 1, 2]), 3, 6)])
    t = n.op("Mul", [n.op("Transpose", [c], perm=[0, 2, 3, 1]), n.weight("scale", (6,))])
    m = n.op("MatMul", [n.op("Flatten", [t]), n.weight("fc.w", (4 * 4 * 6, 5), 0.2)])
    return n.model({"x": ["N", 4, 4, 3]}, [n.op("Add", [m, n.weight("fc.b", (5,))])])


def refused(kind: str, seed: int = 0) -> onnx.ModelProto:
    """conv1 -> (something channel surgery must not cross) -> conv2 -> pooled head."""
    n = Net(seed)
    x = n.conv("x", 3, 6)
    if kind == "sigmoid":
        x = n.op("Sigmoid", [x])
    elif kind == "grouped":
        x = n.conv(x, 6, 6, group=2)
    elif kind == "softmax":
        x = n.op("Softmax", [x], axis=1)
    elif kind == "split":  # channel i of one half added to channel i of the other: no slicing keeps that exact
        x = n.op("Concat", [x, n.op("Add", n.op("Split", [x, n.const("sizes", np.array([3, 3]))], 2, axis=1))],
                 axis=1)
    elif kind == "add_constant":
        x = n.op("Add", [x, n.const("one", np.array(1.0, dtype=np.float32))])
    y = n.op("Relu", [n.conv(x, 9 if kind == "split" else 6, 6)])
    return n.model({"x": ["N", 3, 6, 6]}, [head(n, y, 6)])


def silu(net: Net, x: str) -> str:
    return net.op("Mul", [x, net.op("Sigmoid", [x])])


def c2f(seed: int = 0, shortcut: bool = True, sizes_input: bool = True) -> onnx.ModelProto:
    """YOLOv8's C2f block with SiLU: cv1 -> Split in halves -> two bottlenecks on the second half (residual when
    `shortcut`, as in the backbone; plain in the neck) -> Concat of all four -> cv2. Without `sizes_input` the
    Split parts in equal halves by its output count."""
    n = Net(seed)
    stem = silu(n, n.bn(n.conv("x", 3, 8), 8))
    halves = [n.const("halves", np.array([4, 4]))] if sizes_input else []
    first, second = n.op("Split", [silu(n, n.bn(n.conv(stem, 8, 8, k=1), 8)), *halves], 2, axis=1)
    parts = [first, second]
    for _ in range(2):
        inner = silu(n, n.bn(n.conv(parts[-1], 4, 4), 4))
        out = silu(n, n.bn(n.conv(inner, 4, 4), 4))
        parts.append(n.op("Add", [parts[-1], out]) if shortcut else out)
    out = silu(n, n.bn(n.conv(n.op("Concat", parts, axis=1), 16, 8, k=1), 8))
    return n.model({"x": ["N", 3, 6, 6]}, [head(n, out, 8)])


def swapped_halves(seed: int = 0) -> onnx.ModelProto:
    """A conv's channels split unevenly and concatenated in the other order before the next conv."""
    n = Net(seed)
    x = silu(n, n.conv("x", 3, 6))
    swapped = n.op("Concat", n.op("Split", [x, n.const("sizes", np.array([2, 4]))], 2, axis=1)[::-1], axis=1)
    return n.model({"x": ["N", 3, 6, 6]}, [head(n, n.op("Relu", [n.conv(swapped, 6, 6)]), 6)])


def yolo_head(seed: int = 0, reg: int = 4, classes: int = 3) -> onnx.ModelProto:
    """YOLOv8's detection head on one level: box and class branches (two convs each, then a 1x1 conv to
    4 * reg and to classes), Concat, Reshape to [N, 4 * reg + classes, anchors], Split, DFL (Reshape, Transpose,
    Softmax over the bins, a 1x1 conv with fixed weights 0 .. reg - 1), the anchor maths, Sigmoid of the classes
    and the output Concat [N, 4 + classes, anchors]."""
    n = Net(seed)
    x = silu(n, n.conv("x", 3, 8))
    box = n.conv(silu(n, n.conv(silu(n, n.conv(x, 8, 8)), 8, 8)), 8, 4 * reg, k=1)
    cls = n.conv(silu(n, n.conv(silu(n, n.conv(x, 8, 8)), 8, 8)), 8, classes, k=1)
    flat = n.op("Reshape", [n.op("Concat", [box, cls], axis=1), n.const("flat", np.array([0, 4 * reg + classes, -1]))])
    dist, scores = n.op("Split", [flat, n.const("parts", np.array([4 * reg, classes]))], 2, axis=1)
    bins = n.op("Transpose", [n.op("Reshape", [dist, n.const("bins", np.array([0, 4, reg, -1]))])], perm=[0, 2, 1, 3])
    dfl = n.const("dfl.w", np.arange(reg, dtype=np.float32).reshape(1, reg, 1, 1))
    ltrb = n.op("Reshape", [n.op("Conv", [n.op("Softmax", [bins], axis=1), dfl]), n.const("ltrb", np.array([0, 4, -1]))])
    lt, rb = n.op("Split", [ltrb, n.const("pairs", np.array([2, 2]))], 2, axis=1)
    anchors = n.const("anchors", (np.random.default_rng(seed).random((1, 2, 36)) * 6).astype(np.float32))
    x1y1, x2y2 = n.op("Sub", [anchors, lt]), n.op("Add", [anchors, rb])
    centre = n.op("Div", [n.op("Add", [x1y1, x2y2]), n.const("two", np.array(2.0, np.float32))])
    boxes = n.op("Mul", [n.op("Concat", [centre, n.op("Sub", [x2y2, x1y1])], axis=1),
                         n.const("stride", np.array(8.0, np.float32))])
    out = n.op("Concat", [boxes, n.op("Sigmoid", [scores])], axis=1)
    return n.model({"x": ["N", 3, 6, 6]}, [out])
