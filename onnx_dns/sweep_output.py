"""What `onnx-dns sweep` leaves in its output folder: one model per target (NAME.<target>x.onnx), the chosen one
under a stable name (NAME.best.onnx, a copy), and the table as markdown and JSON (NAME.sweep.md, .json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from onnx_dns.model_io import check_output_path, write_failed
from onnx_dns.report import human_bytes
from onnx_dns.sweep import SweepResult

BEST = "best"


def model_path(out_dir: Path, name: str, target: float) -> Path:
    return out_dir / f"{name}.{target:g}x.onnx"


def check_sweep_outputs(out_dir: Path, name: str, targets: list[float], forbid: Path | None) -> None:
    """Make `out_dir` and refuse, before training, output paths that cannot be written or are the input model."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failed(out_dir, exc) from exc
    for target in targets:
        check_output_path(model_path(out_dir, name, target), forbid=forbid)
    for suffix in (f"{BEST}.onnx", "sweep.md", "sweep.json"):
        check_output_path(out_dir / f"{name}.{suffix}", forbid=forbid)


def write_sweep(result: SweepResult, out_dir: str | Path, name: str, forbid: Path | None = None) -> SweepResult:
    """Write every point's model, the chosen one's copy and the tables into `out_dir`; sizes become the files'."""
    out_dir = Path(out_dir)
    for point in result.points:
        path = model_path(out_dir, name, point.target)
        check_output_path(path, forbid=forbid)
        written = point.result.save(path)
        point.path, point.file_size = str(written), written.stat().st_size
    best = out_dir / f"{name}.{BEST}.onnx"
    best.unlink(missing_ok=True)
    if result.best is not None:
        try:
            shutil.copyfile(result.best.path, best)
        except OSError as exc:
            raise write_failed(best, exc) from exc
        result.chosen_path = str(best)
    _write_text(out_dir / f"{name}.sweep.md", sweep_markdown(result))
    _write_text(out_dir / f"{name}.sweep.json", json.dumps(result.to_dict(), indent=2))
    return result


def _write_text(path: Path, text: str) -> None:
    check_output_path(path)
    try:
        path.write_text(text)
    except OSError as exc:
        raise write_failed(path, exc) from exc


def sweep_markdown(result: SweepResult) -> str:
    """The sweep as a markdown table, the original model first and the chosen point marked."""
    label = result.baseline.label
    bound = ("no accuracy bound (every point qualifies)" if result.max_accuracy_drop is None
             else f"at most {result.max_accuracy_drop:g} points below the original")
    rows = [f"| target | compression | {label} | drop | file | latency (batch 1) | chosen |",
            "|---|---|---|---|---|---|---|",
            f"| original | 1.0x | {result.baseline.score:.2f} | 0.00 | {human_bytes(result.baseline_file_size)} | "
            f"{result.baseline_latency_ms:.3f} ms | |"]
    for index, p in enumerate(result.points):
        mark = "**chosen**" if index == result.chosen else ("" if p.within_bound else "out of bound")
        rows.append(f"| {p.target:g}x | {p.compression:.1f}x | {p.metrics.score:.2f} | "
                    f"{result.baseline.score - p.metrics.score:.2f} | {human_bytes(p.file_size)} | "
                    f"{p.latency_ms:.3f} ms | {mark} |")
    chosen = (f"The most compressed model within the bound: {result.best.target:g}x "
              f"({result.chosen_path or result.best.path})." if result.best is not None
              else "No point is within the bound.")
    return "\n".join([f"Accuracy bound: {bound}.", "", *rows, "", chosen, ""])
