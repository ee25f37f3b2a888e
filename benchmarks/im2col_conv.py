"""Dense Conv as im2col + one MatMul (onnx_dns/rewrites/im2col.py) against onnxruntime's ConvGrad: the training
step (forward + backward) of the speed benchmark's conv rows, built with the rewrite on and off (issue 14, part 3).

    python benchmarks/im2col_conv.py --threads 1 2 --rounds 7

For each model, the training artifacts are built twice from the same masked model (`build_artifacts` with
`speed_rewrites` False, then True: the rewrite applies only where its rule allows, see the module) and both
training sessions are opened in this process. Their module calls (forward, loss, backward) on the same batch are
timed in interleaved bursts (A B A B ...), warm-up excluded; the median per burst is reported. The first losses
must agree (the rewrite is exact). Writes benchmarks/results/im2col_conv.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import speed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("vgg_bn", "lenet5")  # the MobileNet-style row's convs are depthwise, pointwise or 3-channel: none rewritten


def open_module(spec: dict, rewrite: bool, work: Path, threads: int):
    """The training session of `spec`'s model, built with the speed rewrites on or off, and its rewritten Convs."""
    import onnx

    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.ort_training import api, onnxruntime
    from onnx_dns.prunable import find_layers

    model = speed.onnx_model(spec, speed.make_weights(spec))
    masked = insert_masks(model, [t.name for layer in find_layers(model) for t in layer.tensors]).model
    pinned = pin_input_shapes(masked, {speed.INPUT: (None, *spec["input"])}).model
    art = build_artifacts(pinned, speed.loss_spec(spec), work, update_bn_stats=True, speed_rewrites=rewrite)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(art.eval_model)).graph.node)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
    module = api.Module(str(art.training_model), state, str(art.eval_model), session_options=options)
    module.train()
    return module, convs


def measure(key: str, threads: int, args) -> dict:
    spec = speed.model_specs(False)[key]
    rng = np.random.default_rng(1)
    x = rng.random((speed.BATCH, *spec["input"]), dtype=np.float32)
    y = rng.integers(0, spec["classes"], speed.BATCH).astype(np.int64)
    feeds = [x] + speed.targets_of(spec).for_batch({speed.INPUT: x}, y)
    with tempfile.TemporaryDirectory() as scratch:
        sides = {name: open_module(spec, name == "im2col", Path(scratch) / name, threads)
                 for name in ("ConvGrad", "im2col")}
        first = {name: float(module(*feeds)[0]) for name, (module, _) in sides.items()}
        bursts: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (module, _) in sides.items():
                for _ in range(args.warmup):
                    module(*feeds)
                    module.lazy_reset_grad()
                started = time.perf_counter()
                for _ in range(args.steps):
                    module(*feeds)
                    module.lazy_reset_grad()
                bursts[name].append(1000 * (time.perf_counter() - started) / args.steps)
        convs = {name: c for name, (_, c) in sides.items()}
    ms = {name: statistics.median(v) for name, v in bursts.items()}
    return {"model": key, "title": spec["title"], "threads": threads, "convs": convs, "first_loss": first, "ms": ms, "bursts": bursts,
            "speed": ms["ConvGrad"] / ms["im2col"]}


def write(rows: list[dict], args, started: str) -> None:
    command = f"python benchmarks/im2col_conv.py --threads {' '.join(map(str, args.threads))} --rounds {args.rounds} " \
              f"--steps {args.steps} --models {' '.join(args.models)}"
    payload = {"started": started, "command": command, "machine": platform.machine(), "rows": rows}
    (RESULTS / "im2col_conv.json").write_text(json.dumps(payload, indent=1))
    lines = [
        "# Dense Conv as im2col + one MatMul for training (issue 14, part 3)", "",
        f"Run {started} on a shared {platform.machine()} machine. Command: `{command}`. "
        "Module call (forward, loss, backward) of the speed benchmark's models at batch 64, artifacts built with "
        "the rewrite off (onnxruntime's ConvGrad) and on; median ms of interleaved bursts.", "",
        "| model | threads | Convs left (off / on) | ConvGrad ms | im2col ms | speed | first loss off / on |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['title']} | {r['threads']} | {r['convs']['ConvGrad']} / {r['convs']['im2col']} | {r['ms']['ConvGrad']:.1f} "
                     f"| {r['ms']['im2col']:.1f} | {r['speed']:.2f}x | {r['first_loss']['ConvGrad']:.5f} / "
                     f"{r['first_loss']['im2col']:.5f} |")
    faster = [r for r in rows if r["convs"]["im2col"] < r["convs"]["ConvGrad"] and r["speed"] >= 1.05]
    same = sorted({r["title"] for r in rows if r["convs"]["im2col"] == r["convs"]["ConvGrad"]})
    if same:
        lines += ["", f"No Conv of {', '.join(same)} meets the rule, so its two sides run the same graph: its speed "
                  "column is this run's noise (the machine is shared)."]
    lines += ["", "Verdict: " + ("faster on " + ", ".join(f"{r['title']} at {r['threads']} thread(s)" for r in faster)
                                 if faster else "not faster on any row where it rewrites a Conv, so not adopted.")]
    (RESULTS / "im2col_conv.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nreproduce: {command}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per burst")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each burst")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [measure(key, threads, args) for key in args.models for threads in args.threads]
    write(rows, args, started)


if __name__ == "__main__":
    main()
