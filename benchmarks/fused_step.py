"""The DNS step as one onnxruntime graph (fused_graph.py) against `Trainer.step` (issue 14, part 2).

    nice python benchmarks/fused_step.py --threads 1 2 --repeats 7 --steps 40

LeNet-300-100 (models/lenet300/model.onnx), batch 64 of synthetic images, the paper's criterion (c = 1, surgery
gate as the Surgeon draws it), momentum SGD 0.9, decay 5e-4, lr 0.01. First the equivalence check: 20 steps from
the same start on the same batches, params and velocities compared within float tolerance, masks exactly. Then
the kernel time of the appended nodes in onnxruntime's profile against the trainer's host time for the same
work, single nodes against numpy ufuncs over fc1.weight's size, and the paths timed in interleaved bursts
(A B C A B C ...), median ms per step, with the part of the step spent outside onnxruntime's run (the host
share). Both mask rules of fused_graph.py are timed. Writes benchmarks/results/fused_step.json; the findings are
in benchmarks/results/fused_step.md.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 64
LR = 0.01
C = 1.0
SEED = 0
MASK_RULES = ("arith", "where")


def build(work: Path):
    """The training artifacts of LeNet-300-100 with masks, pinned to batch 64."""
    import onnx

    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.losses import LossSpec
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.prunable import find_layers
    from onnx_dns.targets import Targets

    model = onnx.load(str(ROOT / "models/lenet300/model.onnx"))
    layers = find_layers(model)
    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    name = model.graph.input[0].name
    pinned = pin_input_shapes(masked, {name: (BATCH, 784)}).model
    spec = LossSpec("classify", model.graph.output[0].name, 1.0, 0.0, num_classes=10, rank=2)
    art = build_artifacts(pinned, spec, work / "artifacts")
    return art, {layer.name: [t.name for t in layer.tensors] for layer in layers}, Targets(spec, None, (10,))


def trainer(art, layers, targets, threads: int):
    from onnx_dns.criteria.paper import Paper
    from onnx_dns.options import TrainConfig
    from onnx_dns.surgery import LayerPlan, Surgeon
    from onnx_dns.trainer import Trainer

    plans = {layer: LayerPlan(tensors, 10**9, Paper(C)) for layer, tensors in layers.items()}
    config = TrainConfig(iterations=10**6, batch_size=BATCH, lr=LR, schedule="constant", threads=threads, seed=SEED)
    t = Trainer(art, Surgeon(plans), config, targets)
    t.surgeon.initialize(t.params)
    return t


def fused(art, layers, t, threads: int, feeds: dict, mask_rule: str = "arith", momentum: float = 0.9,
          profile: Path | None = None):
    """A FusedStep starting from copies of the trainer's weights, velocities and masks."""
    import onnx

    import fused_graph
    from onnx_dns.losses import LOSS_OUTPUT

    model = fused_graph.fused_graph(onnx.load(str(art.training_model)), art.masks, layers, LOSS_OUTPUT, momentum,
                                    5e-4, mask_rule)
    copy = lambda d: {k: v.copy() for k, v in d.items()}
    return fused_graph.FusedStep(model, feeds, copy(t.params), copy(t.optimizer.velocity), art.masks,
                                 copy(t.masks), layers, threads, profile)


def batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.random((BATCH, 784), dtype=np.float32), rng.integers(0, 10, BATCH).astype(np.int64))
            for _ in range(n)]


def first_feeds(art, targets, data) -> dict:
    x, y = data[0]
    return {art.inputs[0]: x, **dict(zip(art.targets, targets.for_batch({art.inputs[0]: x}, y)))}


def fused_step(f, t, art, targets, i: int, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, seconds inside onnxruntime) of one fused step with the thresholds the trainer's surgeon would use."""
    from fused_graph import gate_thresholds

    thresholds = gate_thresholds(t.surgeon, i, np.random.default_rng([SEED, i, 1]), f.params)
    feeds = [x] + targets.for_batch({art.inputs[0]: x}, y)
    t0 = time.perf_counter()
    loss = f.step(feeds, LR, thresholds)
    return loss, time.perf_counter() - t0


def compare(art, layers, targets, steps: int, **variant) -> dict:
    """Trainer.step and a fused step side by side for `steps` steps from the same start on the same batches."""
    t = trainer(art, layers, targets, 1)
    data = batches(8)
    f = fused(art, layers, t, 1, first_feeds(art, targets, data), **variant)
    gaps = []
    for i in range(steps):
        x, y = data[i % len(data)]
        gaps.append(abs(t.step(i, {art.inputs[0]: x}, y, LR) - fused_step(f, t, art, targets, i, x, y)[0]))
    result = {"max_abs_param_diff": max(float(np.max(np.abs(t.params[k] - f.params[k]))) for k in t.params),
              "max_abs_velocity_diff": max(float(np.max(np.abs(t.optimizer.velocity[k] - f.velocity[k])))
                                           for k in t.params),
              "bit_identical_params": all(np.array_equal(t.params[k], f.params[k]) for k in t.params),
              "masks_equal": all(np.array_equal(t.masks[k], f.masks[k]) for k in t.masks),
              "max_loss_diff": float(max(gaps)),
              "kept_fraction": sum(int(m.sum()) for m in f.masks.values()) / sum(m.size for m in f.masks.values())}
    t.close()
    return result


def equivalence(art, layers, targets, steps: int = 20) -> dict:
    """Both mask rules against Trainer.step, and a negative control (momentum 0.8 in the graph) that must differ."""
    return {"steps": steps, **{rule: compare(art, layers, targets, steps, mask_rule=rule) for rule in MASK_RULES},
            "control_momentum_0.8": compare(art, layers, targets, steps, momentum=0.8)}


def timing(art, layers, targets, threads: int, repeats: int, steps: int) -> dict:
    """Median ms per step of Trainer.step and the fused graph (each mask rule), in interleaved bursts."""
    t = trainer(art, layers, targets, threads)
    data = batches(8)
    paths = {rule: fused(art, layers, t, threads, first_feeds(art, targets, data), rule) for rule in MASK_RULES}
    times = {"trainer": [], **{rule: [] for rule in paths}}
    host = {"trainer": [], **{rule: [] for rule in paths}}
    i = 0
    for rep in range(repeats + 1):
        for name in times:
            for _ in range(steps):
                x, y = data[i % len(data)]
                h0, t0 = t.host_seconds, time.perf_counter()
                if name == "trainer":
                    t.step(i, {art.inputs[0]: x}, y, LR)
                    dt = time.perf_counter() - t0
                    share = (t.host_seconds - h0) / dt
                else:
                    inside = fused_step(paths[name], t, art, targets, i, x, y)[1]
                    dt = time.perf_counter() - t0
                    share = 1 - inside / dt
                if rep:
                    times[name].append(dt)
                    host[name].append(share)
                i += 1
    t.close()
    return {"threads": threads, "steps_each": len(times["trainer"]),
            **{f"{name}_step_ms": 1000 * statistics.median(v) for name, v in times.items()},
            **{f"{name}_host_share": statistics.median(v) for name, v in host.items()},
            **{f"speedup_{rule}": statistics.median(times["trainer"]) / statistics.median(times[rule])
               for rule in paths}}


def profile(art, layers, targets, work: Path, steps: int = 60) -> dict:
    """onnxruntime's kernel time per step of the appended nodes (optimizer and surgery) against the whole graph's,
    and the trainer's host seconds per step for the same work in numpy."""
    t = trainer(art, layers, targets, 1)
    data = batches(8)
    f = fused(art, layers, t, 1, first_feeds(art, targets, data), profile=work / "profile")
    for i in range(steps):
        x, y = data[i % len(data)]
        fused_step(f, t, art, targets, i, x, y)
        t.step(i, {art.inputs[0]: x}, y, LR)
    events = json.loads(Path(f.session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    appended = sum(e["dur"] for e in kernels if e["name"].startswith("dns_fused/")) / 1000 / steps
    per_op: dict[str, float] = {}
    for e in kernels:
        if e["name"].startswith("dns_fused/"):
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000 / steps
    result = {"fused_kernel_ms": sum(e["dur"] for e in kernels) / 1000 / steps, "appended_kernel_ms": appended,
              "appended_by_op_ms": {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
              "trainer_host_ms": 1000 * t.host_seconds / steps}
    t.close()
    return result


def _median_ms(call, reps: int = 300) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def elementwise(n: int = 784 * 300) -> dict:
    """One onnxruntime node over fc1.weight's size (IO binding on preallocated arrays, 1 thread) against the same
    numpy ufunc writing into a preallocated array: the per-pass cost that the fused graph pays instead of numpy's."""
    from onnx import TensorProto, helper

    from onnx_dns.ort_training import runtime, session_options

    ort = runtime()
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    c, flag, out = np.array(0.5, np.float32), x > 0, np.empty(n, np.float32)
    cases = {"Abs": (["x"], np.abs), "Add": (["x", "z"], np.add), "Mul by a scalar": (["x", "c"], np.multiply),
             "Cast bool to float": (["flag"], None), "Where": (["flag", "x", "z"], None)}
    arrays = {"x": x, "z": z, "c": c, "flag": flag}
    result = {}
    for label, (names, ufunc) in cases.items():
        op = label.split()[0]
        node = helper.make_node(op, names, ["y"], **({"to": TensorProto.FLOAT} if op == "Cast" else {}))
        inputs = [helper.make_tensor_value_info(k, TensorProto.BOOL if k == "flag" else TensorProto.FLOAT,
                                                list(arrays[k].shape)) for k in names]
        graph = helper.make_graph([node], "op", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        for k in names:
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(arrays[k]))
        binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(out))
        numpy_call = (lambda: np.copyto(out, flag)) if op == "Cast" else (
            lambda: (np.copyto(out, z), np.copyto(out, x, where=flag))) if op == "Where" else (lambda: ufunc(*(arrays[k] for k in names), out=out))
        result[label] = {"onnxruntime_ms": _median_ms(lambda: session.run_with_iobinding(binding)),
                         "numpy_ms": _median_ms(numpy_call)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved bursts per path (one more is warm-up)")
    parser.add_argument("--steps", type=int, default=40, help="steps per burst")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fused_step.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        art, layers, targets = build(Path(tmp))
        result = {"command": "python benchmarks/fused_step.py " + " ".join(sys.argv[1:]),
                  "model": "LeNet-300-100", "batch": BATCH, "equivalence": equivalence(art, layers, targets),
                  "profile_1_thread": profile(art, layers, targets, Path(tmp)), "elementwise": elementwise(),
                  "timing": [timing(art, layers, targets, n, args.repeats, args.steps) for n in args.threads]}
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
