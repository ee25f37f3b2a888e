"""The ops under test of the rewrites package, each with a numpy reference written here from the ONNX spec."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from rewrite_harness import C, H, Case

def np_lrn(c, size, alpha=1e-4, beta=0.75, bias=1.0):
    lo = (size - 1) // 2
    hi = size - 1 - lo
    padded = np.pad(c * c, [(0, 0), (lo, hi)] + [(0, 0)] * (c.ndim - 2))
    window = sum(padded[:, i:i + c.shape[1]] for i in range(size))
    return c / (bias + alpha / size * window) ** beta


def np_instance_norm(c, scale, bias, eps=1e-5):
    axes = tuple(range(2, c.ndim))
    mean = c.mean(axis=axes, keepdims=True)
    var = ((c - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (-1,) + (1,) * (c.ndim - 2)
    return scale.reshape(shape) * (c - mean) / np.sqrt(var + eps) + bias.reshape(shape)


def np_layer_norm(c, scale, bias, axis=-1, eps=1e-5):
    axes = tuple(range(axis % c.ndim, c.ndim))
    mean = c.mean(axis=axes, keepdims=True)
    var = ((c - mean) ** 2).mean(axis=axes, keepdims=True)
    return (c - mean) / np.sqrt(var + eps) * scale + (0 if bias is None else bias)


def lrn_case(size, opset=17, spatial=(4, 5), **attrs):
    label = "-".join([f"size{size}", f"opset{opset}", f"{len(spatial)}d"] + [f"{k}{v}" for k, v in attrs.items()])
    return Case(f"LRN-{label}", (H("LRN", ["c"], ["y"], name="op", size=size, **attrs),),
                lambda c, p: np_lrn(c, size, **attrs), opset, spatial,
                ort_runs_original=size % 2 == 1 and len(spatial) == 2)


def prelu_case(slope_shape, opset=17):
    slope = np.random.default_rng(5).uniform(-0.5, 0.8, slope_shape)
    return Case(f"PRelu-slope{'x'.join(map(str, slope_shape)) or 'scalar'}-opset{opset}",
                (H("PRelu", ["c", "slope"], ["y"], name="op"),),
                lambda c, p: np.where(c >= 0, c, p["slope"] * c), opset, params={"slope": slope},
                trainable=("slope",))


def instance_norm_case(opset=17, spatial=(4, 5), epsilon=None):
    rng = np.random.default_rng(6)
    attrs = {} if epsilon is None else {"epsilon": epsilon}
    return Case(f"InstanceNormalization-opset{opset}-{len(spatial)}d-eps{epsilon}",
                (H("InstanceNormalization", ["c", "in.scale", "in.bias"], ["y"], name="op", **attrs),),
                lambda c, p: np_instance_norm(c, p["in.scale"], p["in.bias"], **({} if epsilon is None
                                                                                 else {"eps": epsilon})),
                opset, spatial, {"in.scale": rng.uniform(0.5, 1.5, C), "in.bias": rng.standard_normal(C)},
                ("in.scale", "in.bias"))


def layer_norm_case(opset=17, axis=-1, with_bias=True):
    rng = np.random.default_rng(7)
    norm_shape = ((C, 4, 5) if axis == 1 else (5,))
    params = {"ln.scale": rng.uniform(0.5, 1.5, norm_shape)}
    if with_bias:
        params["ln.bias"] = rng.standard_normal(norm_shape)
    inputs = ["c", "ln.scale"] + (["ln.bias"] if with_bias else [])
    return Case(f"LayerNormalization-opset{opset}-axis{axis}-bias{with_bias}",
                (H("LayerNormalization", inputs, ["y"], name="op", axis=axis),),
                lambda c, p: np_layer_norm(c, p["ln.scale"], p.get("ln.bias"), axis), opset, params=params,
                trainable=tuple(params))


def global_max_pool_case(opset=17, spatial=(4, 5)):
    return Case(f"GlobalMaxPool-opset{opset}-{len(spatial)}d", (H("GlobalMaxPool", ["c"], ["y"], name="op"),),
                lambda c, p: c.max(axis=tuple(range(2, c.ndim)), keepdims=True), opset, spatial)


def sum_case(inputs, opset=17, op="Sum"):
    shift = np.random.default_rng(8).standard_normal((1, C, 1, 1))
    terms = {"c": lambda c, p, x: c, "x": lambda c, p, x: x, "shift": lambda c, p, x: p["shift"]}
    count = len(inputs) if op == "Mean" else 1
    return Case(f"{op}-{'+'.join(inputs)}-opset{opset}", (H(op, list(inputs), ["y"], name="op"),),
                lambda c, p, x=None: sum(terms[i](c, p, x) for i in inputs) / count, opset,
                params={"shift": shift} if "shift" in inputs else {})


def dropout_case(opset=17):
    return Case(f"Dropout-ratio-opset{opset}", (H("Dropout", ["c", "ratio"], ["y"], name="op"),),
                lambda c, p: c, opset, params={"ratio": np.array(0.5)})


def constant(name, values):
    return H("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(values, np.int64), name))


def np_selu(c, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return gamma * np.where(c > 0, c, alpha * np.expm1(np.minimum(c, 0)))


def reduce_case(op, opset, axes, keepdims, ref):
    if opset >= 18 and axes is not None:
        nodes = (constant("axes", axes), H(op, ["c", "axes"], ["y"], name="op", keepdims=keepdims))
    else:
        nodes = (H(op, ["c"], ["y"], name="op", keepdims=keepdims, **({} if axes is None else {"axes": axes})),)
    keep = bool(keepdims)
    return Case(f"{op}-opset{opset}-axes{axes}-keepdims{keepdims}", nodes,
                lambda c, p: ref(c, axis=None if axes is None else tuple(axes), keepdims=keep), opset)


def np_depth_to_space(c, b, mode):
    n, ch, h, w = c.shape
    if mode == "DCR":
        return c.reshape(n, b, b, ch // b ** 2, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, -1, h * b, w * b)
    return c.reshape(n, ch // b ** 2, b, b, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, -1, h * b, w * b)


def depth_to_space_case(mode, opset=17):
    nodes = (H("Concat", ["c", "c"], ["cc"], name="cat", axis=1),
             H("DepthToSpace", ["cc"], ["y"], name="op", blocksize=2, mode=mode))
    return Case(f"DepthToSpace-{mode}-opset{opset}", nodes,
                lambda c, p: np_depth_to_space(np.concatenate([c, c], 1), 2, mode), opset, static_only=True)


def np_space_to_depth(c, b):
    n, ch, h, w = c.shape
    return c.reshape(n, ch, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, ch * b * b, h // b, w // b)


def split_case(opset, which, **attrs):
    """A Split whose output `which` is y and whose other outputs are read by nobody (ORT's gradient is wrong)."""
    outputs = [f"part{i}" for i in range(3)]
    if which is not None:
        outputs[which] = "y"
    if opset >= 13 and "split" in attrs:
        nodes = (constant("split", attrs.pop("split")), H("Split", ["c", "split"], outputs, name="op", **attrs))
    else:
        nodes = (H("Split", ["c"], outputs, name="op", **attrs),)
    return nodes


def np_pad(c, pads, mode):
    rank = c.ndim
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(pads[:rank], pads[rank:])]
    out = np.pad(c, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
    crop = tuple(slice(max(-b, 0), out.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(pads[:rank],
                                                                                            pads[rank:])))
    return out[crop]


def pad_case(mode, pads, opset=17, axes=None):
    inputs = ["c", "pads"] + (["", "axes"] if axes is not None else [])
    nodes = [constant("pads", pads)] + ([constant("axes", axes)] if axes is not None else [])
    full = pads if axes is None else [0, 0, *pads[:2], 0, 0, *pads[2:]]
    return Case(f"Pad-{mode}-{'_'.join(map(str, pads))}-opset{opset}",
                (*nodes, H("Pad", inputs, ["y"], name="op", mode=mode)),
                lambda c, p: np_pad(c, full, mode), opset, static_only=True)


def einsum_case(equation, opset=17, weight_shape=None):
    inputs = ["c", "ew" if weight_shape else "c"] if "," in equation else ["c"]
    params = {"ew": np.random.default_rng(9).standard_normal(weight_shape)} if weight_shape else {}
    return Case(f"Einsum-{equation}-opset{opset}", (H("Einsum", inputs, ["y"], name="op", equation=equation),),
                lambda c, p: np.einsum(equation, *[c if i == "c" else p[i] for i in inputs]), opset, params=params,
                trainable=tuple(params), static_only="," in equation)


def np_max_pool_2x2(c):
    n, ch, h, w = c.shape
    return c[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, ch, h // 2, 2, w // 2, 2).max(axis=(3, 5))


CASES = [
    lrn_case(3), lrn_case(3, opset=11), lrn_case(3, opset=13), lrn_case(3, opset=21),
    lrn_case(3, alpha=2.0, beta=0.75, bias=1.5), lrn_case(4, alpha=3.0, beta=0.5, bias=2.0),
    lrn_case(5, alpha=2.0, beta=0.9, bias=1.0, opset=13), lrn_case(5, alpha=1e-4, beta=0.75, bias=1.0),
    lrn_case(3, alpha=2.0, opset=18, spatial=(7,)),
    prelu_case(()), prelu_case((1,), opset=11), prelu_case((C, 1, 1)), prelu_case((C, 1, 1), opset=13),
    prelu_case((C, 4, 5), opset=21), prelu_case((5,), opset=16),
    Case("Elu-default", (H("Elu", ["c"], ["y"], name="op"),), lambda c, p: np.where(c >= 0, c, np.expm1(
        np.minimum(c, 0)))),
    Case("Elu-alpha0.5-opset11", (H("Elu", ["c"], ["y"], name="op", alpha=0.5),),
         lambda c, p: np.where(c >= 0, c, 0.5 * np.expm1(np.minimum(c, 0))), 11),
    Case("HardSigmoid-default", (H("HardSigmoid", ["c"], ["y"], name="op"),),
         lambda c, p: np.clip(0.2 * c + 0.5, 0, 1)),
    Case("HardSigmoid-alpha0.7-beta0.3-opset13", (H("HardSigmoid", ["c"], ["y"], name="op", alpha=0.7, beta=0.3),),
         lambda c, p: np.clip(0.7 * c + 0.3, 0, 1), 13),
    Case("HardSwish-opset14", (H("HardSwish", ["c"], ["y"], name="op"),),
         lambda c, p: c * np.clip(c / 6 + 0.5, 0, 1), 14),
    Case("HardSwish-opset21", (H("HardSwish", ["c"], ["y"], name="op"),),
         lambda c, p: c * np.clip(c / 6 + 0.5, 0, 1), 21),
    global_max_pool_case(), global_max_pool_case(11), global_max_pool_case(21, spatial=(9,)),
    sum_case(("c", "x", "shift")), sum_case(("c", "shift"), opset=11), sum_case(("c",), opset=13),
    instance_norm_case(), instance_norm_case(11), instance_norm_case(18, epsilon=0.1),
    instance_norm_case(21, spatial=(9,)),
    layer_norm_case(), layer_norm_case(18, axis=1), layer_norm_case(17, with_bias=False),
    layer_norm_case(21, axis=1, with_bias=False),
    dropout_case(), dropout_case(12), dropout_case(21),
    Case("Softplus-opset17", (H("Softplus", ["c"], ["y"], name="op"),), lambda c, p: np.logaddexp(0, c)),
    Case("Softplus-opset11", (H("Softplus", ["c"], ["y"], name="op"),), lambda c, p: np.logaddexp(0, c), 11),
    Case("Mish-opset18", (H("Mish", ["c"], ["y"], name="op"),), lambda c, p: c * np.tanh(np.logaddexp(0, c)), 18),
    Case("Selu-default", (H("Selu", ["c"], ["y"], name="op"),), lambda c, p: np_selu(c)),
    Case("Selu-alpha2-gamma0.5-opset13", (H("Selu", ["c"], ["y"], name="op", alpha=2.0, gamma=0.5),),
         lambda c, p: np_selu(c, 2.0, 0.5), 13),
    sum_case(("c", "x", "shift"), op="Mean"), sum_case(("c", "shift"), opset=11, op="Mean"),
    reduce_case("ReduceMax", 17, [2, 3], 1, np.max), reduce_case("ReduceMax", 13, [-1], 0, np.max),
    reduce_case("ReduceMax", 18, [1], 0, np.max), reduce_case("ReduceMax", 18, None, 1, np.max),
    reduce_case("ReduceMin", 11, [1, 3], 1, np.min), reduce_case("ReduceMin", 20, [2], 1, np.min),
    reduce_case("ReduceSumSquare", 17, [1], 1, lambda c, **k: np.sum(c * c, **k)),
    reduce_case("ReduceSumSquare", 18, [2, 3], 0, lambda c, **k: np.sum(c * c, **k)),
    reduce_case("ReduceSumSquare", 11, None, 1, lambda c, **k: np.sum(c * c, **k)),
    depth_to_space_case("DCR"), depth_to_space_case("CRD", opset=13), depth_to_space_case("DCR", opset=11),
    Case("SpaceToDepth-opset17", (H("SpaceToDepth", ["c"], ["y"], name="op", blocksize=2),),
         lambda c, p: np_space_to_depth(c, 2), 17, (4, 6), static_only=True),
    pad_case("reflect", [0, 0, 1, 2, 0, 0, 2, 1], 13), pad_case("edge", [0, 0, 2, 0, 0, 0, 1, 3], 11),
    pad_case("wrap", [0, 0, 1, 1, 0, 0, 3, 2], 19), pad_case("reflect", [1, 2, 3, 1], 18, axes=[2, 3]),
    pad_case("reflect", [0, 0, 2, -1, 0, 0, -1, 2], 17),
    einsum_case("nchw,nchv->ncwv"), einsum_case("bhid,bhjd->bhij", 12), einsum_case("nchw,oc->nohw", 21, (3, C)),
    einsum_case("nchw->nhwc", 13), einsum_case("nchw->nc", 12), einsum_case("nchw,nchw->nc", 17),
    Case("LpNormalization-default", (H("LpNormalization", ["c"], ["y"], name="op"),),
         lambda c, p: c / np.sqrt((c * c).sum(axis=-1, keepdims=True))),
    Case("LpNormalization-p1-axis1-opset11", (H("LpNormalization", ["c"], ["y"], name="op", p=1, axis=1),),
         lambda c, p: c / np.abs(c).sum(axis=1, keepdims=True), 11),
    Case("Split-opset13-input", split_case(13, 0, axis=1, split=[2, 1, 3]), lambda c, p: c[:, :2], 13),
    Case("Split-opset11-attribute", split_case(11, 2, axis=1, split=[2, 1, 3]), lambda c, p: c[:, 3:], 11),
    Case("Split-opset18-num_outputs", split_case(18, 1, axis=3, num_outputs=3), lambda c, p: c[..., 3:6], 18,
         (4, 7), static_only=True),
    Case("Split-opset13-two-of-three", (*split_case(13, None, axis=1), H("Add", ["part0", "part2"], ["y"], name="add")),
         lambda c, p: c[:, 0:2] + c[:, 4:6], 13),
    Case("Split-opset13-equal", split_case(13, 1, axis=1), lambda c, p: c[:, 2:4], 13),
]
IDS = [case.id for case in CASES]
assert len(set(IDS)) == len(IDS)
