"""How long a packed model takes to open, and how much memory that takes, against its dense form.

onnxruntime folds a packed model's rebuild subgraph into the weights when a session is created, and keeps every
intermediate tensor until it is done, so the decoding's node count and integer width set the cost of opening
the file. Each form is opened in a fresh process (interleaved rounds, medians; each process reports its own
wall time to a ready session and its peak resident memory):

- dense: the same weights as plain initializers (the reference a deployment would otherwise ship);
- packed: as `onnx-dns compress` writes it today;
- packed, plain decoding: the same with every stream decoded as a vector in int64 (the decoding before
  long streams became a grid; it is still what streams under `GRID_FROM` entries use).

    python benchmarks/packed_open.py [--params 5000000] [--rounds 5]

Writes benchmarks/results/packed_open.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dns import packed  # noqa: E402
from onnx_dns.repack import repack  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OPEN = """
import resource, sys, time
from onnx_dns.ort_training import onnxruntime
options = onnxruntime.SessionOptions(); options.intra_op_num_threads = 1; options.log_severity_level = 3
start = time.perf_counter()
onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def mlp(params: int, keep: float, seed: int = 0) -> onnx.ModelProto:
    """Four square MatMul layers holding about `params` weights, a random `keep` share of them nonzero."""
    width = int((params / 4) ** 0.5)
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i in range(4):
        w = rng.normal(size=(width, width)).astype(np.float32) * (rng.random((width, width)) < keep)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def forms(model: onnx.ModelProto, folder: Path) -> dict[str, Path]:
    """The model written dense, packed, and packed with the plain decoding."""
    paths = {"dense": repack(model, "dense").model, "packed": repack(model, "packed").model}
    grid_from = packed.GRID_FROM
    packed.GRID_FROM = 1 << 62
    try:
        paths["packed, plain decoding"] = repack(model, "packed").model
    finally:
        packed.GRID_FROM = grid_from
    written = {}
    for name, form in paths.items():
        written[name] = folder / (name.replace(", ", "-").replace(" ", "-") + ".onnx")
        onnx.save(form, str(written[name]))
    return written


def open_once(path: Path) -> tuple[float, float]:
    """Seconds to a ready session and peak resident MB, from a fresh process."""
    out = subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    return float(out[0]), float(out[1])


def measure(paths: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Medians over interleaved rounds, the order rotating so that no form always goes first."""
    names = list(paths)
    seen: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seen[name].append(open_once(paths[name]))
    return {n: {"open_s": statistics.median(s for s, _ in v), "peak_mb": statistics.median(m for _, m in v),
                "file_mb": paths[n].stat().st_size / 1e6} for n, v in seen.items()}


def markdown(results: dict, command: str) -> str:
    lines = ["# Opening a packed model: onnxruntime session start against the dense form", "",
             f"Command: `{command}` on {results['machine']}, Python {results['python']}, onnxruntime "
             f"{results['onnxruntime']}. Medians of {results['rounds']} interleaved rounds, each open in a fresh "
             "process, 1 thread. Four square MatMul layers, weights kept at random. `vs dense`: open time over the "
             "dense form's in the same run.", "",
             "| params | kept | form | file MB | open s | vs dense | peak MB |", "|---:|---:|---|---:|---:|---:|---:|"]
    for row in results["rows"]:
        for name, m in row["forms"].items():
            ratio = m["open_s"] / row["forms"]["dense"]["open_s"]
            lines.append(f"| {row['params']:,} | {row['keep']:.1%} | {name} | {m['file_mb']:.1f} | "
                         f"{m['open_s']:.2f} | {ratio:.1f}x | {m['peak_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=5_000_000, help="weights of the model")
    parser.add_argument("--keep", default="0.5,0.125", help="comma-separated shares of weights kept")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = "python benchmarks/packed_open.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    from onnx_dns.ort_training import onnxruntime
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
               "rounds": args.rounds, "command": command.strip(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for keep in (float(k) for k in args.keep.split(",")):
            folder = Path(tmp) / f"keep{keep}"
            folder.mkdir()
            row = {"params": args.params, "keep": keep,
                   "forms": measure(forms(mlp(args.params, keep), folder), args.rounds)}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "packed_open.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out_dir / "packed_open.md").write_text(markdown(results, results["command"]))
    print(f"wrote {args.out_dir / 'packed_open.md'}; reproduce with:\n  {results['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
