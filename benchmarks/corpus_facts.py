"""Facts about one corpus model: its graph (producer, opsets, inputs and outputs, operators) and `onnx-dns inspect`.

These are what the integrator needs to see what blocks each model: the operators used, the ones that
onnxruntime-training cannot differentiate on CPU, and the layers onnx-dns finds prunable.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from cli.main import main; main()"]


def _value(info: onnx.ValueInfoProto) -> str:
    tensor = info.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return f"{info.name}: {onnx.TensorProto.DataType.Name(tensor.elem_type).lower()}{dims}"


def _operators(graph: onnx.GraphProto, counts: collections.Counter) -> collections.Counter:
    for node in graph.node:
        counts[node.op_type] += 1
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _operators(attribute.g, counts)
    return counts


def graph_facts(path: Path) -> dict:
    """Producer, IR and opsets, inputs and outputs with shapes, and operator counts (If/Loop bodies included)."""
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return {
        "producer": f"{model.producer_name} {model.producer_version}".strip() or "(empty)",
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "graph_inputs": [_value(v) for v in model.graph.input if v.name not in initializers],
        "graph_outputs": [_value(v) for v in model.graph.output],
        "operators": dict(sorted(_operators(model.graph, collections.Counter()).items())),
        "file_size": path.stat().st_size,
    }


def inspect_facts(path: Path) -> dict:
    """`onnx-dns inspect --json` in a child process: parameters, prunable layers and untrainable operators."""
    done = subprocess.run([*CLI, "inspect", "--json", str(path)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    report = json.loads(done.stdout)
    return {"params": report["totals"]["params"], "layers": len(report["layers"]),
            "layer_ops": dict(collections.Counter(layer["op"] for layer in report["layers"])),
            "untrainable": report["untrainable"]}
