"""Building the training artifacts of large models: parameters set aside in a file (what `build_artifacts` does)
against the model handed to onnxruntime with its tensor bytes (what it did before, the reference).

    python benchmarks/artifact_build.py [--repeats 2] [--models alexnet wide_mlp]

Each measurement is a fresh subprocess (so that its peak memory is its own) that builds the masked model (every
layer masked, input pinned as compress pins it) and times `build_artifacts` alone; the two ways alternate, so a
machine shared with other work loads both alike. The reference is the library's own code with `set_aside`
replaced by a no-op, which is exactly the earlier path for models under 2 GB. Writes
benchmarks/results/artifact_build.{json,md} and prints the command that reproduces them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("set aside", "in memory")


def masked_model(name: str):
    """The model with every layer masked and its input pinned; its output, class count and parameter count."""
    sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.prunable import find_layers

    if name == "alexnet":
        import alexnet

        model, shape, output, classes = alexnet.alexnet(), (3, 227, 227), alexnet.OUTPUT, alexnet.CLASSES
    else:
        import speed

        spec = speed.model_specs(False)[name]
        model, shape, output, classes = speed.onnx_model(spec, speed.make_weights(spec)), tuple(spec["input"]), \
            speed.OUTPUT, spec["classes"]
    layers = find_layers(model)
    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    dims = {t.name: t.dims for t in model.graph.initializer}
    params = sum(math.prod(dims[t.name]) for layer in layers for t in layer.tensors)
    return pin_input_shapes(masked, {model.graph.input[0].name: (None, *shape)}).model, output, classes, params


def worker(name: str, way: str) -> dict:
    """One timed `build_artifacts` of `name`, the tensors set aside or (the reference) handed over in memory."""
    from onnx_dns import artifacts
    from onnx_dns.losses import LossSpec

    model, output, classes, params = masked_model(name)
    if way == "in memory":
        artifacts.set_aside = lambda model, names, path: 0
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        artifacts.build_artifacts(model, LossSpec("classify", output, 1.0, 0.0, num_classes=classes),
                                  Path(scratch) / "artifacts")
        seconds = time.perf_counter() - start
    return {"model": name, "way": way, "params": params, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(name: str, way: str) -> dict:
    """`worker` in a fresh process, so that its peak memory is its own."""
    done = subprocess.run([sys.executable, __file__, "--worker", name, way], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    """The results table: median seconds of each way, their ratio and each way's peak memory."""
    lines = ["# Building the training artifacts: parameters set aside vs in memory", "",
             f"Run {report['started']} to {report['ended']} on {report['machine']}, onnxruntime "
             f"{report['onnxruntime']}, load average {report['load'][0]:.1f} at the start and "
             f"{report['load'][1]:.1f} at the end (2 cores). Command: `{report['command']}`.", "",
             "`build_artifacts` alone, each measurement a fresh process, the two ways alternated; median over "
             "repeats (all values in the JSON). In memory: the same code with `set_aside` a no-op (the path before "
             "it).", "",
             "| model | params | set aside (s) | in memory (s) | faster | peak RSS set aside | peak RSS in memory |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in report["models"].items():
        s, m = ([r for r in rows if r["way"] == way] for way in WAYS)
        fast, slow = (statistics.median(r["seconds"] for r in x) for x in (s, m))
        lines.append(f"| {name} | {s[0]['params']:,} | {fast:.1f} | {slow:.1f} | {slow / fast:.2f}x | "
                     f"{max(r['peak_rss_mb'] for r in s):,.0f} MB | {max(r['peak_rss_mb'] for r in m):,.0f} MB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Alternate the two ways `--repeats` times per model and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["alexnet", "wide_mlp"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    import onnxruntime

    command = "python benchmarks/artifact_build.py " + " ".join(
        shlex.quote(a) for a in ["--repeats", str(args.repeats), "--models", *args.models])
    started, load = datetime.now(timezone.utc), [os.getloadavg()[0]]
    models = {}
    for name in args.models:
        models[name] = []
        for _ in range(args.repeats):
            for way in WAYS:
                models[name].append(measure(name, way))
                print(f"{name} {way}: {models[name][-1]['seconds']:.1f} s", flush=True)
    load.append(os.getloadavg()[0])
    report = {"command": command, "started": started.strftime("%Y-%m-%d %H:%M UTC"),
              "ended": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load": load,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "onnxruntime": onnxruntime.__version__, "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "artifact_build.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "artifact_build.md").write_text(markdown(report))
    print(markdown(report))
    print(f"reproduce with: {command}")


if __name__ == "__main__":
    main()
