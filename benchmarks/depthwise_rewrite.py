"""Training step with and without the depthwise-conv rewrite (onnx_dns/rewrites/depthwise.py, issue 14 part 3).

    python benchmarks/depthwise_rewrite.py                 # the MobileNet-style row of speed.py
    python benchmarks/depthwise_rewrite.py --real          # and the PP-OCRv4 recognizer (seconds per step)

For each model the training artifacts are built twice, with onnxruntime's Conv and with every depthwise Conv
rewritten into shifted-slice multiply-adds (`build_artifacts(speed_rewrites=True)`), and one forward + backward
step (the part the rewrite changes) is timed in both sessions, interleaved A B A B, on the same batch; the median
of each is reported with the first loss of each (equal when the rewrite is exact). Writes
benchmarks/results/depthwise_rewrite.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import speed
import speed_recognizer

RESULTS = Path(__file__).resolve().parent / "results"


def build(key: str, work: Path, rewrite: bool):
    """Artifacts and (x, targets) of one model; the synthetic models as speed.py builds them."""
    import pickle

    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.prunable import find_layers

    work.mkdir(parents=True)
    if key == speed_recognizer.KEY:
        speed_recognizer.build(work, speed.loss_spec, speed.peak_rss_mb, speed_rewrites=rewrite)
        with open(work / "art.pkl", "rb") as handle:
            art = pickle.load(handle)
        spec = json.loads((work / "spec.json").read_text())
        with np.load(work / "data.npz") as data:
            x, y = data["x"][0], data["y"][0]
    else:
        spec = speed.model_specs(False)[key]
        model = speed.onnx_model(spec, speed.make_weights(spec))
        masked = insert_masks(model, [t.name for layer in find_layers(model) for t in layer.tensors]).model
        pinned = pin_input_shapes(masked, {speed.INPUT: (speed.BATCH, *spec["input"])}).model
        art = build_artifacts(pinned, speed.loss_spec(spec), work / "artifacts", update_bn_stats=True,
                              speed_rewrites=rewrite)
        rng = np.random.default_rng(1)
        x = rng.random((speed.BATCH, *spec["input"]), dtype=np.float32)
        y = rng.integers(0, spec["classes"], speed.BATCH)
    return art, [x] + speed.targets_of(spec).for_batch({art.inputs[0]: x}, y), spec["title"]


def measure(key: str, scratch: Path, threads: int, rounds: int, steps: int) -> dict:
    from onnx_dns.ort_training import api, onnxruntime

    modules, losses, times = {}, {}, {"conv": [], "rewrite": []}
    for variant in times:
        art, feeds, title = build(key, scratch / f"{key}-{variant}", variant == "rewrite")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
        module = api.Module(str(art.training_model), state, str(art.eval_model), session_options=options)
        module.train()
        losses[variant] = float(module(*feeds)[0])
        modules[variant] = (module, state, feeds)
    for _ in range(rounds):
        for variant, (module, _, feeds) in modules.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                module(*feeds)
                times[variant].append(1000 * (time.perf_counter() - t0))
                module.lazy_reset_grad()
    medians = {v: statistics.median(t) for v, t in times.items()}
    return {"title": title, "median_ms": medians, "speedup": medians["conv"] / medians["rewrite"],
            "first_loss": losses, "steps_each": len(times["conv"])}


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Depthwise conv as shifted-slice multiply-adds: training step before/after (issue 14, part 3)", "",
             f"Run {report['started']} on {report['machine']}, {report['threads']} thread(s), load average "
             f"{report['load_average'][0]:.1f} at the start (a machine shared with other engineers' trainings). "
             f"Command: `{report['command']}`. One forward + backward step of onnxruntime-training, median of "
             "interleaved bursts.", "",
             "| model | onnxruntime Conv (ms/step) | rewritten (ms/step) | rewritten speed | first loss Conv / rewritten |",
             "|---|---:|---:|---:|---:|"]
    for m in report["models"].values():
        lines.append(f"| {m['title']} | {m['median_ms']['conv']:,.1f} | {m['median_ms']['rewrite']:,.1f} | "
                     f"{m['speedup']:.2f}x | {m['first_loss']['conv']:.5f} / {m['first_loss']['rewrite']:.5f} |")
    lines += ["", "Adopted by default only where it wins; "
              + ("it wins on every model measured." if all(m["speedup"] > 1 for m in report["models"].values())
                 else "it is slower here, so it stays off (`build_artifacts(speed_rewrites=True)` turns it on).")]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also the PP-OCRv4 recognizer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started, load = datetime.now(timezone.utc), os.getloadavg()
    keys = ["mobilenet"] + ([speed_recognizer.KEY] if args.real else [])
    with tempfile.TemporaryDirectory(prefix="onnx-dns-dw.") as scratch:
        models = {k: measure(k, Path(scratch), args.threads, args.rounds, 1 if k == speed_recognizer.KEY else 4)
                  for k in keys}
    import onnxruntime

    report = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "load_average": load, "threads": args.threads,
              "machine": f"a shared {os.cpu_count()}-core box, onnxruntime {onnxruntime.__version__}",
              "command": "python benchmarks/depthwise_rewrite.py" + (" --real" if args.real else ""),
              "models": models}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "depthwise_rewrite.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out / "depthwise_rewrite.md")
    print((args.out / "depthwise_rewrite.md").read_text())


if __name__ == "__main__":
    main()
