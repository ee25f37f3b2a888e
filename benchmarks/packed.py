"""Packed models against their dense and sparse forms: file size, test error, whether onnxruntime folded the
rebuild, session creation time, and inference latency as interleaved medians (each round times every form in
turn, each going first in turn, so load on the shared machine hits them alike). Runs in onnxruntime-training's
environment or in one with the newest plain onnxruntime, numpy and onnx.

    python benchmarks/packed.py [--rounds 21]

Writes benchmarks/results/packed.{json,md} and the packed section of benchmarks/results/paper_table.md. Runs in
about a minute on 2 cores, in whichever onnxruntime is installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dns.idx import load_mnist_split  # noqa: E402

try:
    from onnx_dns.ort_training import onnxruntime
except ImportError:  # a plain onnxruntime environment (numpy, onnx, onnxruntime)
    import onnxruntime

RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"lenet5": ("LeNet-5", (1, 28, 28), "44 KB"), "lenet300": ("LeNet-300-100", (784,), "27 KB")}
FORMS = {"dense": "model.dns.dense.onnx", "sparse": "model.dns.onnx", "packed 4-bit": "model.dns.packed.onnx"}
REBUILD_OPS = {"Range", "CumSum", "ScatterND", "ConstantOfShape", "Where", "Split"}
MARKER = "## File sizes against Deep Compression"


def session(path: Path, optimized: Path | None = None):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(name: str, rounds: int, x: np.ndarray, labels: np.ndarray) -> dict:
    import onnx

    title, shape, _ = MODELS[name]
    images = x.reshape((len(x), *shape))
    forms = {}
    for form, file in FORMS.items():
        path = ROOT / "models" / name / file
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sess = session(path, Path(tmp) / "opt.onnx")
            created = time.perf_counter() - start
            left = sorted(REBUILD_OPS & {n.op_type for n in onnx.load(str(Path(tmp) / "opt.onnx")).graph.node})
        out = sess.run(None, {"input": images})[0]
        forms[form] = {"file": f"models/{name}/{file}", "bytes": path.stat().st_size, "session_ms": 1000 * created,
                       "error": 100 * float(np.mean(out.argmax(1) != labels)), "rebuild_left": left,
                       "session": session(path), "times": {1: [], 64: []}}
    order = list(forms.values())
    for k in range(rounds):
        for batch, runs in ((1, 200), (64, 20)):
            feed = {"input": images[:batch]}
            for form in order[k % len(order):] + order[:k % len(order)]:  # each form goes first in turn
                start = time.perf_counter()
                for _ in range(runs):
                    form["session"].run(None, feed)
                form["times"][batch].append(1e6 * (time.perf_counter() - start) / runs)
    for form in forms.values():
        del form["session"]
        form["median_us"] = {str(b): statistics.median(t) for b, t in form.pop("times").items()}
    return {"model": title, "forms": forms}


def markdown(results: list[dict], command: str) -> str:
    lines = ["| model | form | file bytes | test error | rebuild folded | session creation | latency batch 1 "
             "| latency batch 64 |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in results:
        dense = r["forms"]["dense"]["median_us"]
        for form, f in r["forms"].items():
            ratio = {b: f["median_us"][b] / dense[b] for b in dense}
            lines.append(f"| {r['model']} | {form} | {f['bytes']:,} | {f['error']:.2f}% | "
                         f"{'-' if form != 'packed 4-bit' else ('yes' if not f['rebuild_left'] else 'NO')} | "
                         f"{f['session_ms']:.1f} ms | {f['median_us']['1']:.1f} us ({ratio['1']:.2f}x) | "
                         f"{f['median_us']['64']:.1f} us ({ratio['64']:.2f}x) |")
    return "\n".join(lines) + f"\n\nMedians of interleaved rounds, 1 thread, onnxruntime {onnxruntime.__version__}. " \
        f"Made by `{command}`.\n"


def paper_section(results: list[dict]) -> str:
    lines = [MARKER, "", "| model | test error | sparse (`model.dns.onnx`) | packed 4-bit (`model.dns.packed.onnx`) "
             "| Deep Compression |", "|---|---:|---:|---:|---:|"]
    for name, r in zip(MODELS, results):
        sparse, packed = r["forms"]["sparse"], r["forms"]["packed 4-bit"]
        lines.append(f"| {r['model']} | {sparse['error']:.2f}% / {packed['error']:.2f}% | {sparse['bytes']:,} B | "
                     f"**{packed['bytes']:,} B** | {MODELS[name][2]} |")
    return "\n".join(lines) + "\n\nWritten by `python benchmarks/packed.py` (see `benchmarks/results/packed.md`).\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    command = f"python benchmarks/packed.py --rounds {args.rounds}"
    print(command)
    images, labels = load_mnist_split(ROOT / "models" / "data" / "mnist", "t10k")
    x = images.astype(np.float32) * np.float32(1 / 256)
    results = [measure(name, args.rounds, x, labels) for name in MODELS]
    (RESULTS / "packed.json").write_text(json.dumps({"command": command, "onnxruntime": onnxruntime.__version__,
                                                     "results": results}, indent=2) + "\n")
    table = markdown(results, command)
    (RESULTS / "packed.md").write_text(table)
    paper = RESULTS / "paper_table.md"
    text = paper.read_text()
    text = text[: text.index(MARKER)].rstrip() + "\n" if MARKER in text else text.rstrip() + "\n"
    paper.write_text(text + "\n" + paper_section(results))
    print(table)


if __name__ == "__main__":
    main()
