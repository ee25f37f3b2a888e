"""Speed of one DNS training step in onnx-dns against a competent PyTorch implementation of DNS (issues 5, 14).

    python benchmarks/speed.py            # the full run (3 repeats, with the fold and write measurements)
    python benchmarks/speed.py --threads 1 --no-fold --warmup 2 --min-steps 4 --min-seconds 2
                                          # what results/speed.md was made with (18 minutes on a loaded machine)
    python benchmarks/speed.py --quick    # tiny sizes, a smoke run

The step, identical on both sides: forward with W * T, cross-entropy, backward with the straight-through
gradient (every entry of W gets it), momentum SGD with weight decay on every entry (momentum 0.9, decay 5e-4,
lr 0.01), then the surgery rule on every masked tensor at every iteration with fixed thresholds a = 0.9 t,
b = 1.1 t (t = mean + 1 * std of |w| of the layer's initial weights and biases). Same model, same random
weights, same synthetic batches (batch 64; the recognizer 16), the same number of threads on each side.

- onnx-dns side: the library's own pieces, as compress.py and trainer.py put them together: the model built
  with onnx.helper, `find_layers`, `insert_masks`, `build_artifacts` with a classification LossSpec, then
  api.CheckpointState / api.Module with zero-copy param, grad and mask views, `optimizers.SGD` and
  `surgery.update_mask`; each step is timed in parts (module call, optimizer, mask update, data and targets).
- PyTorch side: benchmarks/speed_torch.py, run in its own virtual environment benchmarks/.torch-venv
  (created on first use with `pip install torch==2.13.0 numpy`); torch is never a dependency of onnx-dns.
  Its variants (--torch-variants) are timed per model first and the fastest is measured; an independent
  minimal loop (benchmarks/speed_torch_minimal.py) is measured beside it as a check.
- Rows: LeNet-300-100, LeNet-5, a VGG-style CNN with BatchNorm, a 50M-parameter MLP, a MobileNet-style CNN
  (depthwise + pointwise blocks) and PP-OCRv4's real recognizer (benchmarks/speed_recognizer.py; its PyTorch
  side is the hand-written twin of benchmarks/speed_torch_twin.py).
- Each measurement runs in its own subprocess (so peak resident memory is that side's alone), interleaved
  per model as A B C A B C A B C; warm-up steps are excluded; the median images/s of the repeats is reported.
- One more onnx-dns row: `Trainer.run`, the library's real training loop (with its surgery schedule, progress
  events and bookkeeping).
- The run before the host-side fixes (whole-array optimizer, masked-copy mask update) is kept in
  benchmarks/results/speed-before.{json,md} for comparison.
- Fold and write: `fold_masks` + `save_model` of MLPs of 1M, 10M and 100M parameters at 90% sparsity, and a
  dense one above 2 GB that exercises external data when the machine has the memory for it.

Writes benchmarks/results/speed.json and speed.md (speed_report.py); with --no-fold the fold table of the
previous results is kept and dated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import speed_recognizer
from speed_report import goals, write_markdown

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the onnx_dns of this checkout, not whichever one is installed
RESULTS = ROOT / "benchmarks" / "results"
TORCH_VENV = ROOT / "benchmarks" / ".torch-venv"
TORCH_VERSION = "2.13.0"
BATCH = 64
LR = 0.01
C = 1.0  # the paper mode's default c: t = mean + 1 * std of |w|
INPUT = "input"
OUTPUT = "logits"


# ----------------------------------------------------------------------------------------------- the models

def fc(name: str, n_in: int, n_out: int) -> dict:
    return {"op": "fc", "name": name, "in": n_in, "out": n_out}


def conv(name: str, c_in: int, c_out: int, k: int, pad: int = 0, stride: int = 1, group: int = 1) -> dict:
    return {"op": "conv", "name": name, "in": c_in, "out": c_out, "k": k, "pad": pad, "stride": stride,
            "group": group}


RELU, FLATTEN, GAP = {"op": "relu"}, {"op": "flatten"}, {"op": "gap"}


def maxpool(k: int = 2) -> dict:
    return {"op": "maxpool", "k": k}


def bn(name: str, channels: int) -> dict:
    return {"op": "bn", "name": name, "c": channels}


def model_specs(quick: bool) -> dict[str, dict]:
    wide = 512 if quick else 4096
    widths = (8, 16, 32) if quick else (32, 64, 128)
    vgg, c_in = [], 3
    for i, w in enumerate(widths, start=1):
        vgg += [conv(f"conv{i}a", c_in, w, 3, 1), bn(f"bn{i}a", w), RELU,
                conv(f"conv{i}b", w, w, 3, 1), bn(f"bn{i}b", w), RELU, maxpool()]
        c_in = w
    vgg += [FLATTEN, fc("fc1", widths[-1] * 16, 256), RELU, fc("fc2", 256, 10)]
    stages = ((16, 1), (32, 2), (64, 2), (64, 1), (128, 2)) if quick else \
        ((32, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2))
    mobile, c_in = [conv("stem", 3, stages[0][0], 3, 1, 2), bn("stem_bn", stages[0][0]), RELU], stages[0][0]
    for i, (w, stride) in enumerate(stages[1:], start=1):
        mobile += [conv(f"dw{i}", c_in, c_in, 3, 1, stride, c_in), bn(f"dw{i}_bn", c_in), RELU,
                   conv(f"pw{i}", c_in, w, 1), bn(f"pw{i}_bn", w), RELU]
        c_in = w
    mobile += [GAP, FLATTEN, fc("fc", c_in, 10)]
    return {
        "lenet300": {"title": "LeNet-300-100", "input": [784], "classes": 10,
                     "layers": [fc("fc1", 784, 300), RELU, fc("fc2", 300, 100), RELU, fc("fc3", 100, 10)]},
        "lenet5": {"title": "LeNet-5 (Caffe)", "input": [1, 28, 28], "classes": 10,
                   "layers": [conv("conv1", 1, 20, 5), maxpool(), conv("conv2", 20, 50, 5), maxpool(), FLATTEN,
                              fc("fc1", 800, 500), RELU, fc("fc2", 500, 10)]},
        "vgg_bn": {"title": f"VGG-BN CIFAR ({'-'.join(map(str, widths))})", "input": [3, 32, 32], "classes": 10,
                   "layers": vgg},
        "wide_mlp": {"title": f"wide MLP ({wide}x4)", "input": [wide], "classes": 10,
                     "layers": [fc("fc1", wide, wide), RELU, fc("fc2", wide, wide), RELU, fc("fc3", wide, wide),
                                RELU, fc("fc4", wide, 10)]},
        "mobilenet": {"title": f"MobileNet-style CIFAR ({len(stages) - 1} dw+pw blocks, {stages[-1][0]} ch)",
                      "input": [3, 32, 32], "classes": 10, "layers": mobile},
        speed_recognizer.KEY: {"title": "PP-OCRv4 recognizer", "real": True},
    }


def make_weights(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Xavier-uniform weights (Caffe's filler), small nonzero biases, BatchNorm near identity."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in spec["layers"]:
        if layer["op"] in ("fc", "conv"):
            shape = (layer["out"], layer["in"]) if layer["op"] == "fc" else \
                (layer["out"], layer["in"] // layer["group"], layer["k"], layer["k"])
            fan_in = int(np.prod(shape[1:]))
            scale = math.sqrt(3.0 / fan_in)
            out[layer["name"] + ".weight"] = rng.uniform(-scale, scale, shape).astype(np.float32)
            out[layer["name"] + ".bias"] = rng.uniform(-0.05, 0.05, layer["out"]).astype(np.float32)
        elif layer["op"] == "bn":
            c = layer["c"]
            out[layer["name"] + ".scale"] = rng.uniform(0.9, 1.1, c).astype(np.float32)
            out[layer["name"] + ".shift"] = rng.uniform(-0.05, 0.05, c).astype(np.float32)
            out[layer["name"] + ".mean"] = np.zeros(c, np.float32)
            out[layer["name"] + ".var"] = np.ones(c, np.float32)
    return out


def onnx_model(spec: dict, weights: dict[str, np.ndarray]):
    """The model as an ONNX graph (opset 17, IR 8), built with onnx.helper; weights in PyTorch layout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, x = [], INPUT
    for i, layer in enumerate(spec["layers"]):
        op, y = layer["op"], f"t{i}"
        if i == len(spec["layers"]) - 1:
            y = OUTPUT
        if op == "fc":
            n = layer["name"]
            nodes.append(helper.make_node("Gemm", [x, n + ".weight", n + ".bias"], [y], name=n, transB=1))
        elif op == "conv":
            n, p, k = layer["name"], layer["pad"], layer["k"]
            nodes.append(helper.make_node("Conv", [x, n + ".weight", n + ".bias"], [y], name=n, kernel_shape=[k, k],
                                          pads=[p, p, p, p], strides=[layer["stride"]] * 2, group=layer["group"]))
        elif op == "bn":
            n = layer["name"]
            nodes.append(helper.make_node("BatchNormalization", [x] + [f"{n}.{s}" for s in ("scale", "shift", "mean",
                                                                                             "var")],
                                          [y], name=n, epsilon=1e-5))
        elif op == "relu" and os.environ.get("SPEED_RELU") == "mul":
            # experiment (with --profile): Relu as x * float(x > 0), same gradient; onnxruntime 1.19's ReluGrad
            # kernel costs more than Greater + Cast + Mul together
            nodes += [helper.make_node("Greater", [x, "speed_zero"], [y + "_gt"], name=f"relu{i}_gt"),
                      helper.make_node("Cast", [y + "_gt"], [y + "_keep"], name=f"relu{i}_cast", to=TensorProto.FLOAT),
                      helper.make_node("Mul", [x, y + "_keep"], [y], name=f"relu{i}_mul")]
        elif op == "relu":
            nodes.append(helper.make_node("Relu", [x], [y], name=f"relu{i}"))
        elif op == "maxpool":
            nodes.append(helper.make_node("MaxPool", [x], [y], name=f"pool{i}", kernel_shape=[layer["k"]] * 2,
                                          strides=[layer["k"]] * 2))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], name=f"flatten{i}", axis=1))
        elif op == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=f"gap{i}"))
        x = y
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    if os.environ.get("SPEED_RELU") == "mul":
        inits.append(numpy_helper.from_array(np.zeros((), np.float32), "speed_zero"))
    graph = helper.make_graph(nodes, spec["title"], [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                   ["N", *spec["input"]])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", spec["classes"]])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="speed.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def loss_spec(spec: dict):
    """Cross-entropy on labels for the model's output: per sample, or per position for a sequence output."""
    from onnx_dns.losses import LossSpec

    return LossSpec("classify", spec.get("output", OUTPUT), 1.0, 0.0, num_classes=spec["classes"],
                    rank=3 if spec.get("positions") else 2)


def targets_of(spec: dict):
    from onnx_dns.targets import Targets

    return Targets(loss_spec(spec), None, (*([spec["positions"]] if spec.get("positions") else []), spec["classes"]))


# ----------------------------------------------------------------------------------------------- workers

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_build(work: Path, spec: dict) -> dict:
    """Weights, thresholds, batches and the training artifacts of one model, written into `work`."""
    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.prunable import find_layers
    from onnx_dns.criteria.paper import HIGH, LOW, magnitude_stats, paper_threshold

    if spec.get("real"):
        return speed_recognizer.build(work, loss_spec, peak_rss_mb)
    weights = make_weights(spec)
    rng = np.random.default_rng(1)
    n_batches = 8
    x = rng.random((n_batches, BATCH, *spec["input"]), dtype=np.float32)
    y = rng.integers(0, spec["classes"], (n_batches, BATCH)).astype(np.int64)
    np.savez(work / "data.npz", x=x, y=y)
    np.savez(work / "weights.npz", **weights)
    (work / "spec.json").write_text(json.dumps(spec))

    t0 = time.perf_counter()
    model = onnx_model(spec, weights)
    layers = find_layers(model)
    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    pinned = pin_input_shapes(masked, {INPUT: (None, *spec["input"])}).model
    t1 = time.perf_counter()
    art = build_artifacts(pinned, loss_spec(spec), work / "artifacts", update_bn_stats=True)  # batch statistics, as torch
    t2 = time.perf_counter()
    thresholds = {}
    for layer in layers:
        t = paper_threshold(magnitude_stats([weights[p.name] for p in layer.tensors]), C)
        for p in layer.tensors:
            thresholds[p.name] = [LOW * t, HIGH * t]
    (work / "thresholds.json").write_text(json.dumps(thresholds))
    with open(work / "art.pkl", "wb") as handle:
        pickle.dump(art, handle)
    files = sum(f.stat().st_size for f in (work / "artifacts").iterdir())
    return {"prepare_seconds": t1 - t0, "artifact_seconds": t2 - t1, "peak_rss_mb": peak_rss_mb(),
            "params": sum(int(v.size) for k, v in weights.items() if not k.endswith((".mean", ".var"))),
            "layers": [layer.name for layer in layers], "masked_tensors": len(thresholds),
            "trainable": len(art.trainable), "artifact_mb": files / 2**20}


def _open_module(work: Path, threads: int, profile: Path | None = None):
    from onnx_dns.ort_training import api, onnxruntime

    with open(work / "art.pkl", "rb") as handle:
        art = pickle.load(handle)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
    module = api.Module(str(art.training_model), state, str(art.eval_model), session_options=options)
    return art, state, module


def worker_onnx(work: Path, args) -> dict:
    """The DNS step from the library's pieces, timed in parts."""
    from onnx_dns.chunked import ChunkedRunner
    from onnx_dns.optimizers import SGD
    from onnx_dns.surgery import update_mask

    spec = json.loads((work / "spec.json").read_text())
    thresholds = json.loads((work / "thresholds.json").read_text())
    profile = work / "ortprofile" if args.worker == "profile" else None
    art, state, module = _open_module(work, args.threads, profile=profile)
    parameters = state.parameters
    params = {n: parameters[n].data for n in art.trainable}
    grads = {n: parameters[n].grad for n in art.trainable}
    masks = {w: parameters[m].data for w, m in art.masks.items()}
    assert set(thresholds) == set(masks), (sorted(thresholds), sorted(masks))
    runner = ChunkedRunner(args.threads)
    optimizer = SGD(params, momentum=0.9, weight_decay=5e-4, runner=runner)
    targets = targets_of(spec)
    with np.load(work / "data.npz") as data:
        xs, ys = list(data["x"]), list(data["y"])
    name = art.inputs[0]
    mask_tasks = [(lambda scratch, w, m, low=low, high=high: update_mask(w, m, low, high, scratch),
                   (params[w], masks[w])) for w, (low, high) in thresholds.items()]

    rows, losses = [], []
    started = None
    i = 0
    while True:
        t0 = time.perf_counter()
        x, y = xs[i % len(xs)], ys[i % len(ys)]
        feeds = [x] + targets.for_batch({name: x}, y)
        module.train()
        t1 = time.perf_counter()
        loss = float(module(*feeds)[0])
        t2 = time.perf_counter()
        optimizer.step(params, grads, LR)
        module.lazy_reset_grad()
        t3 = time.perf_counter()
        runner.run(mask_tasks)
        t4 = time.perf_counter()
        losses.append(loss)
        if i >= args.warmup:
            if started is None:
                started = t0
            rows.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        i += 1
        if started is not None and len(rows) >= args.min_steps and (
                t4 - started >= args.min_seconds or len(rows) >= args.max_steps):
            break
    loop_seconds = time.perf_counter() - started
    a = np.array(rows)
    if profile is not None:
        del module, state, params, grads, masks
        return {"ops": summarize_profile(work, len(rows) + args.warmup)}
    kept = sum(int(np.count_nonzero(m)) for m in masks.values())
    total = sum(m.size for m in masks.values())
    step = a[:, 0].sum()
    return {
        "side": "onnx-dns", "variant": "library", "threads": args.threads, "steps": len(rows), "batch": len(xs[0]),
        "images_per_second": len(xs[0]) * len(rows) / loop_seconds, "median_step_ms": 1000 * float(np.median(a[:, 0])),
        "ms": {"step": 1000 * float(a[:, 0].mean()), "data_other": 1000 * float(a[:, 1].mean()),
               "module": 1000 * float(a[:, 2].mean()), "optimizer": 1000 * float(a[:, 3].mean()),
               "mask_update": 1000 * float(a[:, 4].mean())},
        "host_overhead": float((step - a[:, 2].sum()) / step),
        "first_loss": losses[0], "last_loss": losses[-1], "kept_fraction": kept / total,
        "peak_rss_mb": peak_rss_mb(),
    }


def summarize_profile(work: Path, steps: int) -> list:
    """Kernel time per op type per step (ms) from onnxruntime's profile of the training session."""
    import gc

    gc.collect()
    files = sorted(work.glob("ortprofile*.json"), key=lambda f: f.stat().st_mtime)
    if not files:
        return []
    events = json.loads(files[-1].read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000 / steps
    return sorted(([k, round(v, 3)] for k, v in per_op.items()), key=lambda kv: -kv[1])


def worker_trainer(work: Path, args) -> dict:
    """The library's own loop, TrainingLoop.run, timed from its per-step progress events (evaluations excluded)."""
    from onnx_dns.dataset import Dataset
    from onnx_dns.prunable import find_layers
    from onnx_dns.criteria.paper import Paper
    from onnx_dns.options import TrainConfig
    from onnx_dns.surgery import LayerPlan, Surgeon
    from onnx_dns.trainer import Trainer
    from onnx_dns.training import TrainingLoop

    spec = json.loads((work / "spec.json").read_text())
    with open(work / "art.pkl", "rb") as handle:
        art = pickle.load(handle)
    with np.load(work / "data.npz") as data:
        x = data["x"].reshape(-1, *spec["input"])
        y = data["y"].reshape(-1)
    train = Dataset({art.inputs[0]: x}, y, "synthetic")
    val = Dataset({art.inputs[0]: x[:BATCH]}, y[:BATCH], "synthetic")
    weights = {}
    with np.load(work / "weights.npz") as data:
        weights = {k: data[k] for k in data.files}
    layers = find_layers(onnx_model(spec, weights))
    plans = {layer.name: LayerPlan([t.name for t in layer.tensors], 10**9, Paper(C)) for layer in layers}
    steps = args.warmup + args.trainer_steps
    config = TrainConfig(iterations=steps, batch_size=BATCH, lr=LR, schedule="constant", eval_every=10**9,
                         checkpoint_every=10**9, eval_batch_size=BATCH, threads=args.threads)
    targets = targets_of(spec)
    stamps = []

    def progress(event: dict) -> None:
        if event["event"] == "step":
            stamps.append((time.perf_counter(), event["evaluated"]))

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        trainer = Trainer(art, Surgeon(plans), config, targets)
        result = TrainingLoop(trainer, train, val, tmp, progress).run()
    intervals = [b[0] - a[0] for a, b in zip(stamps, stamps[1:]) if not b[1]][args.warmup:]
    return {"side": "onnx-dns", "variant": "trainer", "steps": len(intervals),
            "images_per_second": BATCH * len(intervals) / sum(intervals),
            "median_step_ms": 1000 * statistics.median(intervals),
            "host_overhead_reported": result.host_seconds / result.seconds, "peak_rss_mb": peak_rss_mb()}


def worker_fold(args) -> dict:
    """fold_masks + save_model of a 4-layer MLP with `args.params` parameters, masks at `args.sparsity` zeros;
    the weights and masks are handed to fold_masks as arrays, as compress does with the trained ones.

    With --save-only: no masks and no fold, save_model alone of the dense model (its external-data path).
    The model is assembled field by field: onnx.helper.make_model copies the graph, which protobuf refuses
    above 2 GB."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx_dns.fold import fold_masks
    from onnx_dns.insert_masks import mask_name, masked_name
    from onnx_dns.model_io import save_model

    d = max(int(round(math.sqrt(args.params / 4))), 2)
    rng = np.random.default_rng(0)
    trained: dict[str, np.ndarray] = {}
    model = onnx.ModelProto()
    model.ir_version = 8
    model.opset_import.add(domain="", version=17)
    graph = model.graph
    graph.name = "fold"
    x = INPUT
    for i in range(1, 5):
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        for name, shape in ((w, (d, d)), (b, (d,))):
            value = rng.standard_normal(shape, dtype=np.float32)
            graph.initializer.append(numpy_helper.from_array(value, name))
            if not args.save_only:
                keep = (rng.random(shape, dtype=np.float32) >= args.sparsity).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(keep, mask_name(name)))
                trained |= {name: value, mask_name(name): keep}  # as compress hands them over from training
                graph.node.append(helper.make_node("Mul", [name, mask_name(name)], [masked_name(name)],
                                                   name=masked_name(name)))
            del value
        y = OUTPUT if i == 4 else f"h{i}"
        inputs = [w, b] if args.save_only else [masked_name(w), masked_name(b)]
        graph.node.append(helper.make_node("Gemm", [x, *inputs], [y], name=f"fc{i}", transB=1))
        x = y
    graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", d]))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", d]))
    params = 4 * (d * d + d)
    input_gb = sum(len(t.raw_data) for t in graph.initializer) / 1e9
    result = {"params": params, "width": d, "sparsity": None if args.save_only else args.sparsity,
              "storage": "dense" if args.dense or args.save_only else "sparse", "save_only": args.save_only,
              "input_model_gb": input_gb}
    t0 = time.perf_counter()
    try:
        folded = model if args.save_only else fold_masks(model, sparse=not args.dense, values=trained).model
    except Exception as exc:
        return {**result, "error": f"fold_masks: {type(exc).__name__}: {exc}", "peak_rss_mb": peak_rss_mb()}
    t1 = time.perf_counter()
    del model, graph
    out_dir = Path(tempfile.mkdtemp(prefix="fold.", dir=args.scratch))
    try:
        path = out_dir / "model.onnx"
        t2 = time.perf_counter()
        try:
            save_model(folded, path)
        except Exception as exc:
            return {**result, "fold_seconds": t1 - t0, "error": f"save_model: {type(exc).__name__}: {exc}",
                    "peak_rss_mb": peak_rss_mb()}
        t3 = time.perf_counter()
        data = out_dir / "model.onnx.data"
        size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
        external = data.exists()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {**result, "fold_seconds": t1 - t0, "save_seconds": t3 - t2, "total_seconds": t3 - t0,
            "seconds_per_million": (t3 - t0) / (params / 1e6), "file_mb": size / 2**20, "external_data": external,
            "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------------------------- driver

def ensure_torch_venv() -> Path:
    python = TORCH_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                               text=True)
        if check.returncode == 0 and check.stdout.strip().startswith(TORCH_VERSION):
            return python
    print(f"creating {TORCH_VENV} with torch=={TORCH_VERSION} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}", "numpy"], check=True)
    return python


def run_json(command: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def self_command(*extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *extra]


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def commands_for(key: str, spec: dict, args, torch_python: Path, work: Path) -> tuple[dict, dict]:
    """The fastest PyTorch variant's timings, and the command of each side to measure (onnx-dns, PyTorch, and the
    minimal PyTorch loop where it knows the model)."""
    timing = ["--threads", str(args.threads), "--warmup", str(args.warmup), "--min-steps", str(args.min_steps),
              "--min-seconds", str(args.min_seconds)]
    bursts = ["--select-steps", "2"] if args.quick else []
    if spec.get("real"):  # seconds per step: fewer steps, so that the whole run stays near ten minutes
        timing = ["--threads", str(args.threads), "--warmup", "1", "--min-steps", "2", "--min-seconds", "0"]
        bursts = ["--select-steps", "1", "--select-rounds", "2"]
    env = thread_env(args.threads)
    selection = run_json([str(torch_python), str(ROOT / "benchmarks" / "speed_torch.py"), str(work), "--select",
                          *args.torch_variants, "--threads", str(args.threads), *bursts], env)
    print(f"[{key}] PyTorch variants (median ms/step): {json.dumps(selection['median_step_ms'])}; "
          f"fastest {selection['fastest']}", file=sys.stderr, flush=True)
    commands = {
        "library": self_command("--worker", "onnx", "--work", str(work), *timing),
        "torch": [str(torch_python), str(ROOT / "benchmarks" / "speed_torch.py"), str(work), "--variant",
                  selection["fastest"], *timing],
        "minimal": [str(torch_python), str(ROOT / "benchmarks" / "speed_torch_minimal.py"), str(work), *timing],
    }
    if spec.get("real"):
        del commands["minimal"]  # the minimal loop knows the layer-list models only
    return selection, commands


def measure_model(key: str, spec: dict, args, torch_python: Path, scratch: Path) -> dict:
    work = scratch / key
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{key}] building artifacts", file=sys.stderr, flush=True)
    build = run_json(self_command("--worker", "build", "--work", str(work), "--model", key, *quick_flag(args)))
    selection, commands = commands_for(key, spec, args, torch_python, work)
    env = thread_env(args.threads)
    runs = {variant: [] for variant in commands}
    for r in range(args.repeats):
        for variant, cmd in commands.items():
            result = run_json(cmd, env)
            runs[variant].append(result)
            print(f"[{key}] repeat {r + 1} {variant:8s} {result['images_per_second']:9.1f} img/s  "
                  f"{json.dumps({k: round(v, 3) for k, v in result.get('ms', {}).items()})}", file=sys.stderr,
                  flush=True)
    trainer = None
    if args.trainer_steps:
        trainer = run_json(self_command("--worker", "trainer", "--work", str(work), "--threads", str(args.threads),
                                        "--warmup", str(args.warmup), "--trainer-steps", str(args.trainer_steps)), env)
        print(f"[{key}] Trainer.run {trainer['images_per_second']:9.1f} img/s", file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def med(variant: str, field: str) -> float:
        return statistics.median(x[field] for x in runs[variant])

    def med_ms(variant: str) -> dict:
        return {k: statistics.median(x["ms"][k] for x in runs[variant]) for k in runs[variant][0]["ms"]}

    lib, torch, minimal = (med(v, "images_per_second") if runs.get(v) else None for v in ("library", "torch",
                                                                                          "minimal"))
    return {
        "title": spec["title"], "params": build["params"], "build": build, "runs": runs, "trainer": trainer,
        "torch_variants": selection, "torch_variant": selection["fastest"],
        "images_per_second": {"onnx-dns": lib, "torch": torch, "torch-minimal": minimal,
                              "trainer": trainer["images_per_second"] if trainer else None},
        "ratio": lib / torch, "host_overhead": med("library", "host_overhead"),
        "ms": {"onnx-dns": med_ms("library"), "torch": med_ms("torch")},
        "peak_rss_mb": {"onnx-dns": max(x["peak_rss_mb"] for x in runs["library"]),
                        "torch": max(x["peak_rss_mb"] for x in runs["torch"]), "build": build["peak_rss_mb"]},
        "first_loss": {side: runs[variant][0]["first_loss"] for side, variant in
                       (("onnx-dns", "library"), ("torch", "torch"), ("torch-minimal", "minimal")) if runs.get(variant)},
        "first_losses": {side: runs[variant][0]["losses"] for side, variant in
                         (("torch", "torch"), ("torch-minimal", "minimal")) if runs.get(variant)},
        "kept_fraction": {"onnx-dns": runs["library"][0]["kept_fraction"], "torch": runs["torch"][0]["kept_fraction"]},
    }


def quick_flag(args) -> list[str]:
    return ["--quick"] if args.quick else []


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def measure_fold(args, scratch: Path) -> list[dict]:
    # (params, flags): sparse folds of growing size; then, memory permitting, a model whose masked form is above
    # 2 GB (300M parameters: 1.2 GB of weights plus 1.2 GB of masks), and save_model alone of dense models just
    # under and just above 2 GB (its external-data path starts at 1.8 GB).
    sizes = [(10_000, []), (100_000, []), (1_000_000, [])] if args.quick else \
        [(1_000_000, []), (10_000_000, []), (100_000_000, [])]
    if not args.quick and args.big_fold:
        if mem_available_gb() >= 16:
            sizes += [(300_000_000, []), (470_000_000, ["--save-only"]), (560_000_000, ["--save-only"])]
        else:
            print(f"skipping the >2 GB cases: {mem_available_gb():.1f} GB available", file=sys.stderr)
    out = []
    for params, flags in sizes:
        cmd = self_command("--worker", "fold", "--params", str(params), "--sparsity", "0.9", "--scratch",
                           str(scratch), *flags)
        try:
            result = run_json(cmd, timeout=1200)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result = {"params": params, "storage": "dense" if flags else "sparse", "save_only": bool(flags),
                      "error": str(exc)[-1500:]}
        out.append(result)
        print(f"[fold] {json.dumps(result)[:400]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--models", nargs="*", default=None, help="subset of: lenet300 lenet5 vgg_bn wide_mlp")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--min-steps", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--min-seconds", type=float, default=None)
    parser.add_argument("--torch-variants", nargs="+", default=["eager", "channels_last"],
                        choices=("eager", "channels_last", "compile"),
                        help="PyTorch variants to time per model; the fastest is measured (compile: minutes per model)")
    parser.add_argument("--trainer-steps", type=int, default=None, help="steps of the Trainer.run row (0: skip)")
    parser.add_argument("--no-fold", dest="fold", action="store_false")
    parser.add_argument("--no-train", dest="train", action="store_false", help="fold and write only")
    parser.add_argument("--no-big-fold", dest="big_fold", action="store_false", help="skip the >2 GB fold")
    parser.add_argument("--out", type=Path, default=RESULTS)
    # internal: one measurement in this process
    parser.add_argument("--worker", choices=("build", "onnx", "trainer", "fold", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="MODEL",
                        help="instead of the benchmark: onnxruntime's kernel time per op type for MODEL's step")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sparsity", type=float, default=0.9, help=argparse.SUPPRESS)
    parser.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = dict(repeats=1, warmup=2, min_steps=3, min_seconds=0.2, trainer_steps=5) if args.quick else \
        dict(repeats=3, warmup=5, min_steps=10, min_seconds=4.0, trainer_steps=None)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    if args.worker:
        if args.worker == "build":
            result = worker_build(args.work, model_specs(args.quick)[args.model])
        elif args.worker in ("onnx", "profile"):
            result = worker_onnx(args.work, args)
        elif args.worker == "trainer":
            result = worker_trainer(args.work, args)
        else:
            result = worker_fold(args)
        print(json.dumps(result))
        return

    if args.profile:
        scratch = Path(tempfile.mkdtemp(prefix="onnx-dns-speed."))
        try:
            work = scratch / args.profile
            work.mkdir()
            run_json(self_command("--worker", "build", "--work", str(work), "--model", args.profile, *quick_flag(args)))
            result = run_json(self_command("--worker", "profile", "--work", str(work), "--threads", str(args.threads),
                                           "--warmup", str(args.warmup), "--min-steps", str(args.min_steps),
                                           "--min-seconds", str(args.min_seconds)), thread_env(args.threads))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for op, ms in result["ops"]:
            print(f"{op:32s} {ms:9.3f} ms/step")
        return

    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    command = "python benchmarks/speed.py" + (" --quick" if args.quick else "") + \
        ("" if args.models is None else " --models " + " ".join(args.models)) + \
        ("" if args.repeats == (1 if args.quick else 3) else f" --repeats {args.repeats}") + \
        ("" if args.threads == 2 else f" --threads {args.threads}") + ("" if args.fold else " --no-fold") + \
        "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items()
                if k != "repeats" and getattr(args, k) != v)
    torch_python = ensure_torch_venv()
    specs = model_specs(args.quick)
    keys = (args.models or list(specs)) if args.train else []
    scratch = Path(tempfile.mkdtemp(prefix="onnx-dns-speed."))
    try:
        models = {}
        for key in keys:
            a = argparse.Namespace(**vars(args))
            if a.trainer_steps is None:  # about as long as a measurement: more steps on the small models
                a.trainer_steps = {"lenet300": 500, "lenet5": 100, "vgg_bn": 10, "wide_mlp": 5, "mobilenet": 20,
                                   speed_recognizer.KEY: 0}[key]
            models[key] = measure_model(key, specs[key], a, torch_python, scratch)
        fold = measure_fold(args, scratch) if args.fold else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import onnxruntime
    report = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"a shared {os.cpu_count()}-core {platform.machine()} box ({platform.processor() or 'cpu'}), "
                   f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, torch {TORCH_VERSION}",
        "command": command, "threads": args.threads, "repeats": args.repeats, "batch": BATCH, "quick": args.quick,
        "load_average": {"start": load_start, "end": os.getloadavg()}, "torch_variants_tried": args.torch_variants,
        "models": models, "fold": fold,
    }
    previous = args.out / "speed.json"
    if not args.fold and previous.exists():  # the fold table is kept from the run that measured it
        old = json.loads(previous.read_text())
        report["fold"], report["fold_measured"] = old.get("fold", []), old.get("fold_measured", old["started"])
    report["goals"] = goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out / "speed.md")
    print((args.out / "speed.md").read_text())
    print(f"reproduce with: {command}")


if __name__ == "__main__":
    main()
