"""What channel surgery bought: channels kept per group, multiply-accumulates and measured latency.

MACs per layer at batch 1: Conv = output elements x (input channels / group) x kernel size; Gemm and MatMul =
output elements x the contracted size. Latency is measured in onnxruntime on random inputs, the two models
interleaved run by run (so both see the same load on a shared machine) and each summarized by its median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import numpy as np
import onnx

from onnx_dns.channel_layout import ChannelGroups
from onnx_dns.graph import inferred_values, initializers, node_label
from onnx_dns.normalize import pin_input_shapes

LATENCY_BATCHES = (1, 32)


Sample = Mapping[str, np.ndarray]


def batch_shapes(model: onnx.ModelProto, batch: int, sample: Sample | None = None) -> dict[str, tuple[int, ...]]:
    """Each graph input's shape with a symbolic first axis set to `batch`, other symbolic axes to the size the
    same input has in `sample` (a batch of real inputs: a detector's image size), else 1."""
    inits = initializers(model.graph)

    def size(name: str, axis: int) -> int:
        if axis == 0:
            return batch
        known = np.shape(sample[name]) if sample is not None and name in sample else ()
        return int(known[axis]) if axis < len(known) else 1

    return {v.name: tuple(d.dim_value or size(v.name, i) for i, d in enumerate(v.type.tensor_type.shape.dim))
            for v in model.graph.input if v.name not in inits}


def model_macs(model: onnx.ModelProto, sample: Sample | None = None) -> dict[str, int]:
    """Multiply-accumulates of each Conv, Gemm and MatMul at batch 1."""
    pinned = pin_input_shapes(model, batch_shapes(model, 1, sample)).model
    values = inferred_values(pinned)
    inits = initializers(model.graph)

    def dims(name: str) -> list[int]:
        if name in inits:
            return list(inits[name].dims)
        return [d.dim_value for d in values[name].type.tensor_type.shape.dim] if name in values else []

    macs = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out, weight, data = dims(node.output[0]), dims(node.input[1]), dims(node.input[0])
        if not out or not weight or not data or 0 in out:
            continue
        if node.op_type == "Conv":
            per_output = int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            per_output = data[0] if trans_a else data[-1]
        else:
            per_output = data[-1]
        macs[node_label(node, index)] = int(np.prod(out)) * per_output
    return macs


def interleaved_latency(models: list[onnx.ModelProto], batch: int, repeats: int, threads: int = 0,
                        sample: Sample | None = None) -> list[float]:
    """Median milliseconds of one run of each model at `batch`, runs interleaved model by model."""
    return [statistics.median(t) for t in interleaved_times(models, batch, repeats, threads, sample)]


def interleaved_times(models: list[onnx.ModelProto], batch: int, repeats: int, threads: int = 0,
                      sample: Sample | None = None) -> list[list[float]]:
    """Milliseconds of each run of each model at `batch`, after one warm-up run each, interleaved (random
    inputs shaped as `batch_shapes` says)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [onnxruntime.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in models]
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in batch_shapes(models[0], batch, sample).items()}
    times: list[list[float]] = [[] for _ in models]
    for session in sessions:
        session.run(None, feeds)
    for _ in range(repeats):
        for session, record in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feeds)
            record.append(1000 * (time.perf_counter() - start))
    return times


def channel_record(groups: ChannelGroups, keeps: dict[int, np.ndarray], before: onnx.ModelProto,
                   after: onnx.ModelProto, repeats: int = 20, sample: Sample | None = None) -> dict:
    """Channels kept per group, MACs and latency before and after, as the written model records them; symbolic
    sizes other than the batch are those of `sample`, a batch of the training inputs."""
    macs_before, macs_after = sum(model_macs(before, sample).values()), sum(model_macs(after, sample).values())
    latency = {}
    for batch in LATENCY_BATCHES:
        actual = next(iter(batch_shapes(before, batch, sample).values()))[0]
        latency[str(actual)] = interleaved_latency([before, after], batch, max(3, repeats // (1 + batch // 8)),
                                                   sample=sample)
    return {
        "structure": "channel",
        "channels": {g.name: [int(keeps[gid].sum()), g.size] for gid, g in groups.groups.items()},
        "left_alone": groups.refused, "macs": [macs_before, macs_after],
        "latency_ms": {b: [round(x, 4) for x in v] for b, v in latency.items()},
    }


def format_channels(record: dict) -> str:
    """The lines the summary and `inspect` print for a model written by channel surgery."""
    channels = ", ".join(f"{name} {kept}/{total}" for name, (kept, total) in record["channels"].items())
    before, after = record["macs"]
    layers = record.get("layers", {}).values()
    params, kept = sum(v["params"] for v in layers), sum(v["nonzeros"] for v in layers)
    lines = [f"channels kept: {channels}",
             (f"parameters of the pruned layers before channel surgery: {params:,} -> {kept:,} "
              f"({params / max(kept, 1):.2f}x)"),
             f"MACs at batch 1: {before:,} -> {after:,} ({before / max(after, 1):.2f}x fewer)"]
    for batch, (t0, t1) in record.get("latency_ms", {}).items():
        lines.append(f"onnxruntime latency at batch {batch}: {t0:.3f} ms -> {t1:.3f} ms ({t0 / max(t1, 1e-9):.2f}x "
                     "faster, interleaved medians)")
    return "\n".join(lines)
