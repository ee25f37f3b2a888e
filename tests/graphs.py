"""Small ONNX models built with onnx.helper for the tests, plus helpers to run them in onnxruntime.

Every builder returns a checked `onnx.ModelProto` (IR 8, opset 17 unless asked otherwise) with seeded random
weights. Names follow `<layer>.w` / `<layer>.b` so tests can say exactly which initializers are prunable.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17


def tensor(name: str, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def weight(rng: np.random.Generator, name: str, shape, zero_fraction: float = 0.0) -> TensorProto:
    """A float32 initializer; `zero_fraction` of its entries (chosen at random) are exactly 0."""
    values = rng.standard_normal(shape).astype(np.float32)
    values[np.abs(values) < 1e-3] = 0.5  # no accidental zeros: the tests count zeros exactly
    if zero_fraction:
        flat = values.reshape(-1)
        flat[rng.permutation(flat.size)[: int(round(zero_fraction * flat.size))]] = 0.0
    return tensor(name, values)


def value(name: str, shape, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def make_model(nodes, inputs, outputs, initializers, *, name: str = "g", opset: int = OPSET,
               ir_version: int = IR_VERSION, check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                              producer_name="onnx-dns-tests")
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv(+bias) -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm(+bias)."""
    rng = np.random.default_rng(seed)
    inits = [
        weight(rng, "conv1.w", (4, 1, 3, 3)), weight(rng, "conv1.b", (4,)),
        weight(rng, "bn.scale", (4,)), weight(rng, "bn.bias", (4,)), weight(rng, "bn.mean", (4,)),
        tensor("bn.var", rng.uniform(0.5, 2.0, 4).astype(np.float32)),
        weight(rng, "fc.w", (64, 10)), weight(rng, "fc.b", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"],
                         name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
        helper.make_node("Gemm", ["f1", "fc.w", "fc.b"], ["y"], name="fc"),
    ]
    return make_model(nodes, [value("x", ["N", 1, 8, 8])], [value("y", ["N", 10])], inits, name="cnn")


def mlp(seed: int = 0, zero_fraction: float = 0.0) -> onnx.ModelProto:
    """Reshape (int64 shape constant) -> MatMul+Add -> Relu -> MatMul+Add (bias as the Add's first input)."""
    rng = np.random.default_rng(seed)
    inits = [
        tensor("shape", np.array([-1, 16], dtype=np.int64)),
        weight(rng, "fc1.w", (16, 12), zero_fraction), weight(rng, "fc1.b", (12,), zero_fraction),
        weight(rng, "fc2.w", (12, 5), zero_fraction), weight(rng, "fc2.b", (5,)),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc1.w"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "fc1.b"], ["a1"], name="fc1_add"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "fc2.w"], ["h2"], name="fc2"),
        helper.make_node("Add", ["fc2.b", "h2"], ["y"], name="fc2_add"),
    ]
    return make_model(nodes, [value("x", ["N", 1, 4, 4])], [value("y", ["N", 5])], inits, name="mlp")


def gemm_transb(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "g.w", (5, 6)), weight(rng, "g.b", (5,))]
    nodes = [helper.make_node("Gemm", ["x", "g.w", "g.b"], ["y"], name="gemm", transB=1)]
    return make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 5])], inits, name="gemm_transb")


def grouped_conv(seed: int = 0) -> onnx.ModelProto:
    """A grouped Conv (group=2, with bias) followed by a depthwise Conv (group=6, no bias)."""
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "gc.w", (6, 2, 3, 3)), weight(rng, "gc.b", (6,)), weight(rng, "dw.w", (6, 1, 3, 3))]
    nodes = [
        helper.make_node("Conv", ["x", "gc.w", "gc.b"], ["c1"], name="grouped", group=2),
        helper.make_node("Conv", ["c1", "dw.w"], ["y"], name="depthwise", group=6, pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [value("x", ["N", 4, 6, 6])], [value("y", ["N", 6, 4, 4])], inits, name="grouped")


def conv_1d_3d(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "c1d.w", (3, 2, 3)), weight(rng, "c3d.w", (3, 2, 2, 2, 2)), weight(rng, "c3d.b", (3,))]
    nodes = [
        helper.make_node("Conv", ["x1", "c1d.w"], ["y1"], name="conv1d"),
        helper.make_node("Conv", ["x3", "c3d.w", "c3d.b"], ["y3"], name="conv3d"),
    ]
    return make_model(nodes, [value("x1", ["N", 2, 10]), value("x3", ["N", 2, 4, 4, 4])],
                      [value("y1", ["N", 3, 8]), value("y3", ["N", 3, 3, 3, 3])], inits, name="conv13")


def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "ct.w", (2, 3, 3, 3)), weight(rng, "ct.b", (3,))]
    nodes = [helper.make_node("ConvTranspose", ["x", "ct.w", "ct.b"], ["y"], name="deconv", strides=[2, 2])]
    return make_model(nodes, [value("x", ["N", 2, 4, 4])], [value("y", ["N", 3, 9, 9])], inits, name="deconv")


def batched_matmul(seed: int = 0) -> onnx.ModelProto:
    """MatMul with a 3-D weight (a batch of 2 matrices) and an Add bias."""
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "bm.w", (2, 4, 5)), weight(rng, "bm.b", (5,))]
    nodes = [
        helper.make_node("MatMul", ["x", "bm.w"], ["h"], name="bmm"),
        helper.make_node("Add", ["h", "bm.b"], ["y"], name="bmm_add"),
    ]
    return make_model(nodes, [value("x", [2, 3, 4])], [value("y", [2, 3, 5])], inits, name="bmm")


def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """One weight read by two MatMuls (the first with an Add bias)."""
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "sw.w", (6, 4)), weight(rng, "sw.b", (4,))]
    nodes = [
        helper.make_node("MatMul", ["x1", "sw.w"], ["h1"], name="first"),
        helper.make_node("Add", ["h1", "sw.b"], ["y1"], name="first_add"),
        helper.make_node("MatMul", ["x2", "sw.w"], ["y2"], name="second"),
    ]
    return make_model(nodes, [value("x1", ["N", 6]), value("x2", ["N", 6])],
                      [value("y1", ["N", 4]), value("y2", ["N", 4])], inits, name="shared")


def constant_weight(seed: int = 0) -> onnx.ModelProto:
    """The weight lives in a Constant node, as some exporters write it; the bias is an initializer."""
    rng = np.random.default_rng(seed)
    w = weight(rng, "cw.w", (6, 3))
    nodes = [
        helper.make_node("Constant", [], ["cw.w"], name="const", value=w),
        helper.make_node("MatMul", ["x", "cw.w"], ["h"], name="cmm"),
        helper.make_node("Add", ["h", "cw.b"], ["y"], name="cmm_add"),
    ]
    return make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 3])], [weight(rng, "cw.b", (3,))],
                      name="constant")


def identity_weight(seed: int = 0) -> onnx.ModelProto:
    """The MatMul reads its weight through an Identity node."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Identity", ["iw.w"], ["iw.alias"], name="alias"),
        helper.make_node("MatMul", ["x", "iw.alias"], ["y"], name="imm"),
    ]
    return make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 3])], [weight(rng, "iw.w", (6, 3))],
                      name="identity")


def embedding(seed: int = 0) -> onnx.ModelProto:
    """Gather from a float embedding table, then MatMul+Add: only the MatMul weight and bias are prunable."""
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "emb.table", (10, 6)), weight(rng, "proj.w", (6, 4)), weight(rng, "proj.b", (4,))]
    nodes = [
        helper.make_node("Gather", ["emb.table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "proj.w"], ["h"], name="proj"),
        helper.make_node("Add", ["h", "proj.b"], ["y"], name="proj_add"),
    ]
    return make_model(nodes, [value("ids", ["N", 3], TensorProto.INT64)], [value("y", ["N", 3, 4])], inits,
                      name="embedding")


def untrainable_ops(seed: int = 0) -> onnx.ModelProto:
    """Conv -> LRN -> PRelu: two operators without a CPU gradient in onnxruntime-training."""
    rng = np.random.default_rng(seed)
    inits = [weight(rng, "uc.w", (3, 3, 3, 3)), weight(rng, "uc.b", (3,)), weight(rng, "slope", (3, 1, 1))]
    nodes = [
        helper.make_node("Conv", ["x", "uc.w", "uc.b"], ["c"], name="uconv", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["c"], ["l"], name="lrn", size=3),
        helper.make_node("PRelu", ["l", "slope"], ["y"], name="prelu"),
    ]
    return make_model(nodes, [value("x", ["N", 3, 5, 5])], [value("y", ["N", 3, 5, 5])], inits, name="untrainable")


# name -> (builder, {layer name: (weight initializer, bias initializer or None)}) -- what find_layers must find
EXPECTED_LAYERS = {
    "cnn": (cnn, {"conv1": ("conv1.w", "conv1.b"), "fc": ("fc.w", "fc.b")}),
    "mlp": (mlp, {"fc1": ("fc1.w", "fc1.b"), "fc2": ("fc2.w", "fc2.b")}),
    "gemm_transb": (gemm_transb, {"gemm": ("g.w", "g.b")}),
    "grouped_conv": (grouped_conv, {"grouped": ("gc.w", "gc.b"), "depthwise": ("dw.w", None)}),
    "conv_1d_3d": (conv_1d_3d, {"conv1d": ("c1d.w", None), "conv3d": ("c3d.w", "c3d.b")}),
    "conv_transpose": (conv_transpose, {"deconv": ("ct.w", "ct.b")}),
    "batched_matmul": (batched_matmul, {"bmm": ("bm.w", "bm.b")}),
    "shared_weight": (shared_weight, {"first": ("sw.w", "sw.b")}),
    "identity_weight": (identity_weight, {"imm": ("iw.w", None)}),
    "embedding": (embedding, {"proj": ("proj.w", "proj.b")}),
    "untrainable_ops": (untrainable_ops, {"uconv": ("uc.w", "uc.b")}),
}

# the models onnxruntime runs (all of the above; the Constant one too)
RUNNABLE = {name: builder for name, (builder, _) in EXPECTED_LAYERS.items()} | {"constant_weight": constant_weight}


# ---------------------------------------------------------------- running and comparing models


def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_feeds(model: onnx.ModelProto, seed: int = 1, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs for every graph input that is not an initializer (symbolic dims become `batch`)."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        if tt.elem_type == TensorProto.INT64:
            feeds[inp.name] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def init_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def with_zeros(model: onnx.ModelProto, keep: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Reference model: a copy of `model` whose named initializers are set to 0 where `keep` is False.

    Written here, independently of the library, so that fold results can be checked against it.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in keep:
            values = numpy_helper.to_array(t).copy()
            values[~keep[t.name]] = 0
            t.CopyFrom(numpy_helper.from_array(values, t.name))
    return out


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Overwrite one initializer of `model` in place (tests use it to set masks)."""
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.asarray(array, dtype=numpy_helper.to_array(t).dtype), name))
            return
    raise KeyError(name)


def dense_from_sparse(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """Densify a COO sparse initializer (test-side, independent of onnx_dns.graph)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices)
    shape = tuple(sparse.dims)
    out = np.zeros(shape, dtype=values.dtype)
    if indices.ndim == 1:
        out.reshape(-1)[indices] = values
    else:
        out[tuple(indices.T)] = values
    return out


# ---------------------------------------------------------------- bad model files

# kind -> words the error message must contain (lower case): the problem named in the user's terms
BAD_MODEL_FILES = {
    "missing": "no such file",
    "directory": "directory",
    "empty": "empty",
    "garbage": "not a readable onnx model",
    "truncated": "truncated",
    "ir11": "ir version 11",
    "opset22": "opset 22",
    "checker": "checker",
}


def write_bad_model(kind: str, folder) -> str:
    """Create the bad model file `kind` (see BAD_MODEL_FILES) under `folder` and return its path."""
    from pathlib import Path

    path = Path(folder) / f"{kind}.onnx"
    if kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)))
    elif kind == "truncated":
        data = cnn().SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "ir11":
        model = mlp()
        model.ir_version = 11
        onnx.save_model(model, str(path))
    elif kind == "opset22":
        model = mlp()
        model.ir_version = 10
        model.opset_import[0].version = 22
        onnx.save_model(model, str(path))
    elif kind == "checker":
        model = mlp()
        model.graph.node[3].input[0] = "undefined_value"  # Relu reads a value nothing produces
        onnx.save_model(model, str(path))
    else:
        raise ValueError(kind)
    return str(path)
