"""Deployment check, run by .ci/run in a separate environment with the newest plain `onnxruntime` (it cannot share
an environment with onnxruntime-training): the bundled compressed models load there and give the outputs and
test error the benchmark recorded.

    python tests/deployment/check_plain_onnxruntime.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from onnx_dns.idx import load_mnist_split  # noqa: E402  (numpy only; no onnxruntime-training needed)

SHAPES = {"lenet5": (1, 28, 28), "lenet300": (784,)}


def main() -> int:
    results = json.loads((ROOT / "benchmarks" / "results" / "paper_table.json").read_text())["results"]
    recorded = {r["model"]: r for r in results if r["recipe"] == "onnx-dns"}
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
    if failures:
        print(f"deployment check failed for {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
