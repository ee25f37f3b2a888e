"""Rerun DNS on the reference models with their bundled settings and compare with the paper's table.

    python benchmarks/paper_table.py [--models lenet5 lenet300] [--extra "ARGS"] [--name NAME]

Runs `onnx-dns compress models/<name>/model.onnx` exactly as a user would (its dns.json supplies the paper's
settings; --extra appends options, e.g. "--target 200x --distill"), then writes
benchmarks/results/<NAME>.json and .md (NAME defaults to paper_table) and copies the compressed models
(sparse, and the same weights densified) beside each reference model when --install is given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from onnx_dns.model_io import save_model
from onnx_dns.normalize import densify_sparse

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

PAPER = {
    "lenet5": {"title": "LeNet-5", "params": 431_080, "nonzeros": 4_000, "compression": 108, "error_before": 0.91,
               "error_after": 0.91, "kept": {"conv1": 14.2, "conv2": 3.1, "fc1": 0.7, "fc2": 4.3}},
    "lenet300": {"title": "LeNet-300-100", "params": 266_610, "nonzeros": 4_800, "compression": 56,
                 "error_before": 2.28, "error_after": 1.99, "kept": {"fc1": 1.8, "fc2": 1.8, "fc3": 5.5}},
}


def run(name: str, extra: str, install: bool) -> dict:
    model = ROOT / "models" / name / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.dns.onnx"
        report = Path(tmp) / "report.json"
        command = ["onnx-dns", "compress", str(model.relative_to(ROOT)), "-o", str(out), "--report", str(report),
                   "--quiet", *shlex.split(extra)]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
        wall = time.perf_counter() - started
        if done.returncode not in (0, 6):
            sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        data = json.loads(report.read_text())
        produced = Path(data["output"])
        dense_path = Path(tmp) / "model.dns.dense.onnx"
        save_model(densify_sparse(onnx.load(str(produced))).model, dense_path)
        dense_size = dense_path.stat().st_size
        if install:
            save_model(onnx.load(str(produced)), model.parent / "model.dns.onnx")
            save_model(onnx.load(str(dense_path)), model.parent / "model.dns.dense.onnx")
    after = {layer["name"]: layer for layer in data["layers_after"]}
    return {
        "model": name,
        "command": f"onnx-dns compress models/{name}/model.onnx -o OUT {extra}".strip(),
        "params": data["summary"]["params"],
        "nonzeros": data["summary"]["nonzeros"],
        "compression": data["summary"]["compression"],
        "weight_compression": data["summary"]["weight_compression"],
        "error_before": round(100 - data["accuracy_before"]["top1"], 2),
        "error_after": round(100 - data["accuracy_after"]["top1"], 2),
        "kept_percent": {k: round(100 * v["nonzeros"] / v["params"], 2) for k, v in after.items()},
        "iterations": data["iterations"],
        "wall_seconds": round(wall, 1),
        "train_seconds": round(data["train_seconds"], 1),
        "images_per_second": round(data["images_per_second"]),
        "host_overhead_percent": round(100 * data["host_overhead"], 1),
        "file_size_before": data["file_size_before"],
        "file_size_sparse": data["file_size_after"],
        "file_size_dense": dense_size,
        "met_bound": data["met_bound"],
        "paper": PAPER[name],
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "| model | params | nonzeros | compression (with biases) | weights only | test error before -> after | "
        "kept per layer (paper) | iterations | wall time | images/s | file: dense -> sparse / dense-with-zeros |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["paper"]
        kept = ", ".join(f"{k} {v:g}% ({p['kept'].get(k, '-')}%)" for k, v in r["kept_percent"].items())
        lines.append(
            f"| {p['title']} | {r['params']:,} | {r['nonzeros']:,} | **{r['compression']:.1f}x** (paper "
            f"{p['compression']}x) | {r['weight_compression']:.1f}x | {r['error_before']:.2f}% -> "
            f"**{r['error_after']:.2f}%** (paper {p['error_before']}% -> {p['error_after']}%) | {kept} | "
            f"{r['iterations']:,} | {r['wall_seconds']:.0f} s | {r['images_per_second']:,} | "
            f"{r['file_size_before'] / 1024:.0f} KB -> {r['file_size_sparse'] / 1024:.1f} KB / "
            f"{r['file_size_dense'] / 1024:.0f} KB |")
    lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "lenet300"], choices=sorted(PAPER))
    parser.add_argument("--extra", default="", help="options appended to onnx-dns compress")
    parser.add_argument("--name", default="paper_table", help="results file name")
    parser.add_argument("--install", action="store_true", help="copy the compressed models into models/<name>/")
    args = parser.parse_args()
    command = "python benchmarks/paper_table.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "python benchmarks/paper_table.py"
    rows = [run(name, args.extra, args.install) for name in args.models]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": command, "results": rows}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, command))
    print(markdown(rows, command))
    print(f"wrote {RESULTS / args.name}.json and .md; reproduce with: {command}")


if __name__ == "__main__":
    main()
