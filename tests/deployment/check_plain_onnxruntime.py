"""Deployment check, run by .ci/run in a separate environment with the newest plain `onnxruntime` (it cannot share
an environment with onnxruntime-training): the bundled compressed models load there and give the outputs and
test error the benchmark recorded; the record models (the `record` run of benchmarks/paper_table.py) give the
test error it recorded, within the paper's; the packed models (4-bit shared weights) give the test error
models/README.md records, and onnxruntime folds their rebuild subgraph into constants (its optimized graph holds
only the model's own operators).

    python tests/deployment/check_plain_onnxruntime.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from onnx_dns.idx import load_mnist_split  # noqa: E402  (numpy only; no onnxruntime-training needed)

SHAPES = {"lenet5": (1, 28, 28), "lenet300": (784,)}
PACKED_ERROR = {"lenet5": 0.89, "lenet300": 1.96}  # models/README.md, measured by `onnx-dns evaluate`
PAPER_ERROR = {"lenet5": 0.91, "lenet300": 1.99}  # DNS.md: the paper's DNS test errors
RECORD_COMPRESSION = {"lenet5": 200.0, "lenet300": 70.0}  # issue 15: the least compression a record may have
REBUILD_OPS = {"Range", "CumSum", "ScatterND", "ConstantOfShape", "Where", "Split", "Equal", "Not", "Mod", "Div"}


def check_packed(name: str, feed: dict, labels: np.ndarray) -> bool:
    """The packed model's test error, and whether onnxruntime's optimized graph kept any rebuild operator."""
    path = ROOT / "models" / name / "model.dns.packed.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        left = sorted(REBUILD_OPS & set(_op_types(Path(tmp) / "optimized.onnx")))
    error = 100 * float(np.mean(session.run(None, feed)[0].argmax(1) != labels))
    print(f"{name} packed: {path.stat().st_size:,} bytes, test error {error:.2f}% (recorded {PACKED_ERROR[name]:.2f}%), "
          f"rebuild {'NOT folded: ' + ', '.join(left) if left else 'folded into constants'}")
    return not left and abs(error - PACKED_ERROR[name]) <= 0.005


def check_record(name: str, feed: dict, labels: np.ndarray, recorded: dict) -> bool:
    """The record model's test error equals the benchmark's and is within the paper's error, and the benchmark
    recorded at least the record's compression."""
    path = ROOT / "models" / name / "model.dns.record.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    error = 100 * float(np.mean(session.run(None, feed)[0].argmax(1) != labels))
    expected = recorded["error_after"]
    print(f"{name} record: {recorded['compression']:.3f}x, {path.stat().st_size:,} bytes, test error {error:.2f}% "
          f"(recorded {expected:.2f}%, paper {PAPER_ERROR[name]:.2f}%)")
    return (abs(error - expected) <= 0.005 and error <= PAPER_ERROR[name] + 0.005
            and recorded["compression"] >= RECORD_COMPRESSION[name])


def _op_types(path: Path) -> list[str]:
    """The rebuild operators a model file holds, read without the onnx package (absent here): a NodeProto's
    op_type is field 4, serialized as the byte 0x22, the name's length, and the name."""
    data = path.read_bytes()
    return [op for op in REBUILD_OPS if b"\x22" + bytes([len(op)]) + op.encode() in data]


def main() -> int:
    results = json.loads((ROOT / "benchmarks" / "results" / "paper_table.json").read_text())["results"]
    recorded = {r["model"]: r for r in results if r["recipe"] == "onnx-dns"}
    records = {r["model"]: r for r in results if r["recipe"] == "record"}
    images, labels = load_mnist_split(ROOT / "models" / "data" / "mnist", "t10k")
    x = images.astype(np.float32) * np.float32(1 / 256)
    failures = []
    for name, shape in SHAPES.items():
        feed = {"input": x.reshape((len(x), *shape))}
        outputs = {}
        for variant in ("model.dns.onnx", "model.dns.dense.onnx"):
            session = onnxruntime.InferenceSession(str(ROOT / "models" / name / variant),
                                                   providers=["CPUExecutionProvider"])
            outputs[variant] = session.run(None, feed)[0]
        error = 100 * float(np.mean(outputs["model.dns.onnx"].argmax(1) != labels))
        same = np.array_equal(outputs["model.dns.onnx"], outputs["model.dns.dense.onnx"])
        expected = recorded[name]["error_after"]
        print(f"{name}: onnxruntime {onnxruntime.__version__}, test error {error:.2f}% (recorded {expected:.2f}%), "
              f"sparse and dense outputs {'identical' if same else 'DIFFER'}")
        if not same or abs(error - expected) > 0.005:
            failures.append(name)
        if not check_packed(name, feed, labels):
            failures.append(f"{name} packed")
        if name in records and not check_record(name, feed, labels, records[name]):
            failures.append(f"{name} record")
    if failures:
        print(f"deployment check failed for {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
