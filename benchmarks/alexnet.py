"""The paper's third model, AlexNet (61M parameters), through `onnx-dns compress` at the scale this machine allows.

    python benchmarks/alexnet.py [--iterations 20] [--batch-size 8] [--threads 2] [--scratch DIR]

1. Builds Caffe's AlexNet (bvlc_alexnet, as in the DNS paper) with onnx.helper: conv1 96x11x11 stride 4, ReLU,
   LRN, max pool; conv2 256x5x5 group 2, ReLU, LRN, max pool; conv3 384x3x3; conv4 384x3x3 group 2; conv5
   256x3x3 group 2, max pool; fc6 4096, dropout; fc7 4096, dropout; fc8 1000. 60,965,224 parameters with
   biases, He-normal weights with a fixed seed, input 3x227x227, opset 17. Written to the scratch folder
   (about 244 MB), with synthetic data: random images and labels (.npz).
2. Runs the library's `compress()` on it in a subprocess, paper mode (c = 1 for every layer, surgery at every
   iteration's draw until 75% of the iterations), momentum SGD, labels, no distillation. The subprocess stamps
   every progress event and times `fold_masks` and `save_model` (wrapped, unchanged), so the report splits the
   run into: artifact building, step time (median of the steps after the first), images/s, fold, write, and
   the peak resident memory at each phase and of the whole subprocess (getrusage of the child).
3. Checks the written model: it loads in onnxruntime.InferenceSession and its logits equal those of the
   trained masked model (Mul(W, T) nodes, before folding) on the validation images.
4. With --profile (a separate subprocess, not part of the timings above): onnxruntime's own profile of the
   training session, kernel time per operator type split into forward and backward, against the host-side
   optimizer and mask update of the same steps.

Writes benchmarks/results/alexnet.json and alexnet.md and prints the command that reproduces them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pickle
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INPUT, OUTPUT = "data", "fc8"
CLASSES = 1000
SEED = 0
# (name, out channels, kernel, stride, pad, group) of Caffe's bvlc_alexnet convolutions
CONVS = [("conv1", 96, 11, 4, 0, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
         ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2)]
FCS = [("fc6", 256 * 6 * 6, 4096), ("fc7", 4096, 4096), ("fc8", 4096, CLASSES)]
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}  # Caffe's norm1/norm2 (local_size 5)


# ----------------------------------------------------------------------------------------------- model and data

def alexnet(seed: int = SEED):
    """Caffe's AlexNet as an ONNX model (opset 17, IR 8) with He-normal weights and zero biases."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weights(name: str, shape: tuple[int, ...]) -> None:
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        inits.append(numpy_helper.from_array(w, name + ".weight"))
        inits.append(numpy_helper.from_array(np.zeros(shape[0], np.float32), name + ".bias"))

    x, channels = INPUT, 3
    for name, out, k, stride, pad, group in CONVS:
        weights(name, (out, channels // group, k, k))
        nodes.append(helper.make_node("Conv", [x, name + ".weight", name + ".bias"], [name], name=name,
                                      kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, group=group))
        nodes.append(helper.make_node("Relu", [name], ["relu" + name[4:]], name="relu" + name[4:]))
        x, channels = "relu" + name[4:], out
        if name in ("conv1", "conv2"):
            norm = "norm" + name[4:]
            nodes.append(helper.make_node("LRN", [x], [norm], name=norm, **LRN))
            x = norm
        if name in ("conv1", "conv2", "conv5"):
            pool = "pool" + name[4:]
            nodes.append(helper.make_node("MaxPool", [x], [pool], name=pool, kernel_shape=[3, 3], strides=[2, 2]))
            x = pool
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = "flat"
    for name, n_in, n_out in FCS:
        weights(name, (n_out, n_in))
        nodes.append(helper.make_node("Gemm", [x, name + ".weight", name + ".bias"], [name], name=name, transB=1))
        x = name
        if name != OUTPUT:
            relu, drop = "relu" + name[2:], "drop" + name[2:]
            nodes.append(helper.make_node("Relu", [x], [relu], name=relu))
            ratio = numpy_helper.from_array(np.array(0.5, np.float32), drop + ".ratio")
            inits.append(ratio)
            nodes.append(helper.make_node("Dropout", [relu, ratio.name], [drop], name=drop))
            x = drop
    graph = helper.make_graph(nodes, "alexnet", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                               ["N", 3, 227, 227])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="alexnet.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_data(path: Path, images: int, seed: int = SEED) -> None:
    """Random images (standard normal, as normalized pixels) and labels."""
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((images, 3, 227, 227), dtype=np.float32)
    y = rng.integers(0, CLASSES, images).astype(np.int64)
    np.savez(path, **{INPUT: x, "labels": y})


# ----------------------------------------------------------------------------------------------- workers

def vm_peak_mb() -> float:
    """Peak resident memory of this process so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_compress(args) -> dict:
    """compress() on the scratch model, with every phase stamped; then the output checked against the masked
    model it was folded from."""
    from onnx_dns.options import CompressOptions
    from onnx_dns.pipeline import compress_file

    scratch = args.scratch
    events: list[tuple[str, float, float]] = []  # (event, time, peak RSS so far)
    folded_from = {}

    def progress(event: dict) -> None:
        events.append((event["event"], time.perf_counter(), vm_peak_mb()))
        if event["event"] == "built":  # for the profile worker, which reruns steps on the same training graph
            (scratch / "artifacts.pkl").write_bytes(pickle.dumps(event["artifacts"]))
        if event["event"] == "folding":  # the masked model and the trained values the output is folded from
            folded_from["model"], folded_from["values"] = event["model"], event["values"]

    config = train_config(args)
    iterations = config.iterations
    options = CompressOptions(data=str(scratch / "train.npz"), val=str(scratch / "val.npz"), distill=False,
                              target=args.target, train=config, work_dir=str(scratch / "work"), keep_work=True)
    output = scratch / "alexnet.dns.onnx"
    started = time.perf_counter()
    result = compress_file(scratch / "alexnet.onnx", output, options, progress=progress)
    ended = time.perf_counter()
    seconds = ended - started
    peak_compress = vm_peak_mb()

    stamps = {name: t for name, t, _ in reversed(events)}  # first occurrence of each event
    phases = {"fold": {"start": stamps["folding"], "seconds": stamps["measuring"] - stamps["folding"]},
              "write": {"seconds": stamps["written"] - stamps["writing"], "end": stamps["written"]}}
    steps = [t for name, t, _ in events if name == "step"]
    intervals = [b - a for a, b in zip(steps, steps[1:])]  # step k's time: from step k-1's event to its own
    measured = intervals[:-1] or intervals  # the last step's interval includes the final evaluation
    peak_at = {name: rss for name, _, rss in events}  # peak RSS so far at the last event of each kind
    checked = check_output(output, folded_from.pop("model"), folded_from.pop("values"), scratch / "val.npz")
    after = {s.name: s for s in result.layers_after}
    return {
        "seconds": seconds,
        "timeline_seconds": {
            "load, check, masks": stamps["building"] - started,
            "build training artifacts": result.artifact_seconds,
            "trainer setup (sessions, baseline evaluation, first checkpoint)":
                stamps["start"] - stamps["building"] - result.artifact_seconds,
            "training steps (final evaluation included)": steps[-1] - stamps["start"],
            "trained values collected, layers counted": phases["fold"]["start"] - steps[-1],
            "fold": phases["fold"]["seconds"],
            "write": phases["write"]["seconds"],
            "measure original and written model": stamps["writing"] - stamps["measuring"],
        },
        "artifact_seconds": result.artifact_seconds,
        "first_step_seconds": steps[0] - stamps["start"],
        "step_ms_median": 1000 * statistics.median(measured),
        "step_ms_all": [round(1000 * s, 1) for s in [steps[0] - stamps["start"], *intervals]],
        "images_per_second": args.batch_size / statistics.median(measured),
        "train_seconds": result.train_seconds,
        "host_overhead": result.host_overhead,
        "surgery_ms_per_step": result.surgery_ms_per_step,
        "optimizer_ms_per_step": 1000 * result.host_overhead * result.train_seconds / iterations
        - result.surgery_ms_per_step,
        "fold_seconds": phases["fold"]["seconds"],
        "write_seconds": phases["write"]["seconds"],
        "fold_write_seconds": phases["fold"]["seconds"] + phases["write"]["seconds"],
        "peak_rss_mb": {"before_training": peak_at["start"], "training": peak_at["step"],
                        "fold": peak_at["measuring"], "write": peak_at["written"],
                        "compress": peak_compress, "with_check": vm_peak_mb()},
        "file_size_before": result.file_size_before,
        "file_size_after": result.file_size_after,
        "params": result.params,
        "nonzeros": result.nonzeros,
        "compression": result.compression,
        "kept": {s.name: {"params": s.params, "nonzeros": after[s.name].nonzeros,
                          "kept_percent": 100 * after[s.name].nonzeros / s.params} for s in result.layers_before},
        "accuracy_before": result.accuracy_before.top1,
        "accuracy_after": result.accuracy_after.top1,
        "check": checked,
    }


def train_config(args):
    from onnx_dns.options import TrainConfig

    return TrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=0.001,
                       eval_batch_size=args.batch_size, threads=args.threads)


def check_output(output: Path, masked, values: dict, val: Path) -> dict:
    """The written model loads in a plain InferenceSession and gives the logits of the masked model holding the
    trained weights and masks (its Mul(W, T) nodes, before folding)."""
    import onnx
    from onnx_dns.evaluate import session_runner
    from onnx_dns.graph import tensor_like

    for tensor in masked.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(tensor_like(values[tensor.name], tensor))

    with np.load(val) as data:
        feed = {INPUT: data[INPUT]}
    t0 = time.perf_counter()
    written = session_runner(onnx.load(str(output)), OUTPUT)
    load_seconds = time.perf_counter() - t0
    got = written(feed)
    del written
    expected = session_runner(masked, OUTPUT)(feed)
    return {"loads": True, "load_seconds": load_seconds, "samples": len(feed[INPUT]),
            "equal": bool(np.array_equal(got, expected)),
            "max_abs_diff": float(np.max(np.abs(got - expected))),
            "logit_scale": float(np.max(np.abs(expected)))}


def worker_profile(args) -> dict:
    """The training step of the compress run, on its training graph, in parts: the onnxruntime call (with
    onnxruntime's profiler: kernel time per node, forward or backward), the optimizer, the mask update."""
    from onnx_dns.losses import LossSpec
    from onnx_dns.optimizers import make_optimizer
    from onnx_dns.ort_training import api, onnxruntime
    from onnx_dns.prunable import find_layers
    from onnx_dns.model_io import load_model
    from onnx_dns.criteria.paper import Paper
    from onnx_dns.surgery import LayerPlan, Surgeon
    from onnx_dns.targets import Targets

    scratch = args.scratch
    for old in scratch.glob("ortprofile*.json"):
        old.unlink()
    art = pickle.loads((scratch / "artifacts.pkl").read_bytes())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "ortprofile")
    state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
    module = api.Module(str(art.training_model), state, str(art.eval_model), session_options=options)
    params = {n: state.parameters[n].data for n in art.trainable}
    grads = {n: state.parameters[n].grad for n in art.trainable}
    masks = {w: state.parameters[m].data for w, m in art.masks.items()}
    config = train_config(args)
    optimizer = make_optimizer(config.optimizer, params)
    layers = find_layers(load_model(scratch / "alexnet.onnx", check=False))
    # paper mode, c = 1, every layer operated on at every step (the probability is ~1 early in a run)
    surgeon = Surgeon({layer.name: LayerPlan([t.name for t in layer.tensors], 10**9, Paper(1.0))
                       for layer in layers})
    surgeon.initialize(params)
    targets = Targets(LossSpec("classify", OUTPUT, 1.0, 0.0, num_classes=CLASSES), None, (CLASSES,))
    with np.load(scratch / "train.npz") as data:
        x, y = data[INPUT][:args.batch_size], data["labels"][:args.batch_size]
    feeds = [x] + targets.for_batch({INPUT: x}, y)
    rows = []
    for step in range(args.profile_steps + 1):  # the first step (graph warm-up) is left out
        t0 = time.perf_counter()
        module.train()
        module(*feeds)
        t1 = time.perf_counter()
        optimizer.step(params, grads, config.lr)
        module.lazy_reset_grad()
        t2 = time.perf_counter()
        surgeon.step(step, np.random.default_rng([config.seed, step, 1]), params, masks)
        t3 = time.perf_counter()
        if step:
            rows.append((t1 - t0, t2 - t1, t3 - t2))
    del module, state, params, grads, masks  # onnxruntime writes its profiles when the sessions close
    gc.collect()
    ms = 1000 * np.median(np.array(rows), axis=0)
    # the training session's profile is the larger one (the eval session ran nothing)
    kernels = kernel_split(max(scratch.glob("ortprofile*.json"), key=lambda f: f.stat().st_size))
    return {"steps": args.profile_steps, "module_ms": float(ms[0]), "optimizer_ms": float(ms[1]),
            "mask_update_ms": float(ms[2]), "step_ms": float(ms.sum()), **kernels}


def kernel_split(path: Path) -> dict:
    """Kernel time per step from an onnxruntime profile, the first run (warm-up) left out: forward and backward
    nodes, the masks' W * T products (forward), and the largest op types. Nodes of the gradient graph are named
    `<node>_Grad/...` or are `...Grad` ops; gradient accumulation counts as backward, the loss as forward."""
    events = json.loads(path.read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    steps = len(runs) - 1
    forward = backward = masking = 0.0
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < runs[1]:
            continue
        op, ms = e.get("args", {}).get("op_name", "?"), e["dur"] / 1000 / steps
        if e["name"].endswith("__dns_masked_kernel_time"):
            masking += ms
        if "_Grad/" in e["name"] or op.endswith("Grad") or op == "InPlaceAccumulatorV2":
            backward += ms
            op += " (backward)"
        else:
            forward += ms
        per_op[op] = per_op.get(op, 0.0) + ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
    return {"kernel_forward_ms": forward, "kernel_backward_ms": backward, "kernel_mask_multiply_ms": masking,
            "top_ops_ms": [[k, round(v, 1)] for k, v in top]}


# ----------------------------------------------------------------------------------------------- driver

def run_worker(args, name: str) -> tuple[dict, float]:
    """One worker in a subprocess: its JSON result and its peak resident memory in MB."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--scratch", str(args.scratch),
               "--iterations", str(args.iterations), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--profile-steps", str(args.profile_steps)] + (
        ["--target", str(args.target)] if args.target else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return json.loads(done.stdout.strip().splitlines()[-1]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=None,
                        help="target mode with this total compression (default: paper mode, c = 1)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the model, data and output go (default: a temporary folder, removed after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps of the profiled rerun after compress (0: no profile)")
    parser.add_argument("--worker", choices=("compress", "profile"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker_compress(args) if args.worker == "compress" else worker_profile(args)
        print(json.dumps(result))
        return

    keep = args.scratch is not None
    args.scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="onnx-dns-alexnet."))).resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/alexnet.py" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("iterations", "batch_size", "threads")) + (
        f" --target {args.target:g}" if args.target else "")
    started = datetime.now(timezone.utc)
    try:
        import onnx
        from onnx_dns.model_io import save_model

        t0 = time.perf_counter()
        model = alexnet()
        build_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        save_model(model, args.scratch / "alexnet.onnx")
        model_write_seconds = time.perf_counter() - t0
        del model
        write_data(args.scratch / "train.npz", args.batch_size * 4)
        write_data(args.scratch / "val.npz", args.batch_size, seed=SEED + 1)
        data_mb = sum((args.scratch / f).stat().st_size for f in ("train.npz", "val.npz")) / 2**20
        print(f"model and data written to {args.scratch}; compressing ({args.iterations} iterations, batch "
              f"{args.batch_size}, {args.threads} threads)", file=sys.stderr, flush=True)
        result, child_peak = run_worker(args, "compress")
        profile = run_worker(args, "profile")[0] if args.profile_steps else None
    finally:
        if not keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    import onnxruntime

    report = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"a shared {os.cpu_count()}-core {platform.machine()} box, Python {platform.python_version()}, "
                   f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}",
        "command": command, "iterations": args.iterations, "batch_size": args.batch_size, "threads": args.threads,
        "mode": f"target {args.target:g}x" if args.target else "paper (c = 1 for every layer)",
        "model_build_seconds": build_seconds, "model_write_seconds": model_write_seconds, "data_mb": data_mb,
        "compress": result, "subprocess_peak_rss_mb": child_peak, "profile": profile,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alexnet.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "alexnet.md").write_text(markdown(report))
    print((args.out / "alexnet.md").read_text())
    print(f"reproduce with: {command}")


def markdown(report: dict) -> str:
    c = report["compress"]
    rss = c["peak_rss_mb"]
    lines = [
        "# AlexNet (Caffe, 61M parameters) through onnx-dns compress", "",
        f"Run {report['started']} to {report['finished']} on {report['machine']}. Command: `{report['command']}`.",
        "",
        f"Random He-normal weights (seed {SEED}), synthetic 3x227x227 images and labels, {report['mode']}, "
        f"momentum SGD, {report['iterations']} iterations of batch {report['batch_size']}, "
        f"{report['threads']} onnxruntime threads.", "",
        "| figure | value |", "|---|---:|",
        f"| parameters (with biases) | {c['params']:,} |",
        f"| input model file | {c['file_size_before'] / 1e6:,.1f} MB |",
        f"| build training artifacts | {c['artifact_seconds']:.1f} s |",
        f"| first step (graph warm-up) | {c['first_step_seconds']:.2f} s |",
        f"| step time, median of steps 2.. | {c['step_ms_median']:,.0f} ms |",
        f"| images/s | {c['images_per_second']:.1f} |",
        f"| of a step, host side (compress's own timers): optimizer / mask update | "
        f"{c['optimizer_ms_per_step']:.0f} / {c['surgery_ms_per_step']:.0f} ms |",
        f"| fold | {c['fold_seconds']:.1f} s |",
        f"| write | {c['write_seconds']:.1f} s |",
        f"| fold + write | {c['fold_write_seconds']:.1f} s |",
        f"| output file (sparse) | {c['file_size_after'] / 1e6:,.1f} MB |",
        f"| nonzeros, compression | {c['nonzeros']:,}, {c['compression']:.2f}x |",
        f"| compress() wall time | {c['seconds']:.0f} s |",
        f"| peak RSS: before training / training / fold / write | {rss['before_training']:,.0f} / "
        f"{rss['training']:,.0f} / {rss['fold']:,.0f} / {rss['write']:,.0f} MB |",
        f"| peak RSS of the subprocess (getrusage) | {report['subprocess_peak_rss_mb']:,.0f} MB |",
        f"| output loads in InferenceSession | {'yes' if c['check']['loads'] else 'no'} "
        f"({c['check']['load_seconds']:.1f} s) |",
        f"| output logits equal the masked model's ({c['check']['samples']} images) | "
        f"{'yes, bit for bit' if c['check']['equal'] else 'no'} (max abs diff {c['check']['max_abs_diff']:.3g}) |",
        "", "Kept per layer after the run:", "", "| layer | params | nonzeros | kept |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['params']:,} | {v['nonzeros']:,} | {v['kept_percent']:.1f}% |" for k, v in c["kept"].items()]
    lines += ["", f"Step times (ms, first included): {', '.join(f'{s:g}' for s in c['step_ms_all'])}.", "",
              "Where compress()'s wall time goes:", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in c["timeline_seconds"].items()]
    p = report["profile"]
    if p:
        kernels = p["kernel_forward_ms"] + p["kernel_backward_ms"]
        lines += ["", f"Profile of the step ({p['steps']} steps after a warm-up on the same training graph, batch "
                  f"{report['batch_size']}, onnxruntime's profiler on, paper mode with every layer operated on; "
                  "median ms per step):", "", "| part | ms | share |", "|---|---:|---:|"]
        parts = [("onnxruntime forward + backward (module call)", p["module_ms"]),
                 ("- forward kernels", p["kernel_forward_ms"]),
                 ("  - of which the masks' W * T", p["kernel_mask_multiply_ms"]),
                 ("- backward kernels (gradient accumulation included)", p["kernel_backward_ms"]),
                 ("- outside kernels (feeds, fetches, executor)", p["module_ms"] - kernels),
                 ("host: momentum SGD on all 61M weights", p["optimizer_ms"]),
                 ("host: mask update (surgery)", p["mask_update_ms"]), ("step", p["step_ms"])]
        lines += [f"| {k} | {v:,.0f} | {100 * v / p['step_ms']:.0f}% |" for k, v in parts]
        lines += ["", "Largest kernels (ms per step): " + ", ".join(f"{k} {v:g}" for k, v in p["top_ops_ms"]) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
