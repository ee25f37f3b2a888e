"""One self-contained HTML file about a compression or a sweep: what happened during training (loss, accuracy
and compression against iteration), which layers kept what, the accuracy against compression curve and the
per-layer sensitivity curves. Charts are inline SVG (`onnx_dns.svg`); the file loads nothing from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

from onnx_dns.model_io import check_output_path, write_failed
from onnx_dns.report import LayerStats, human_bytes
from onnx_dns.result import CompressResult
from onnx_dns.sensitivity import SensitivityResult
from onnx_dns.svg import COLORS, Series, bar_chart, line_chart
from onnx_dns.sweep import SweepResult
from onnx_dns.trace import LossTrace

STYLE = """body{font-family:sans-serif;max-width:1180px;margin:16px auto;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:8px}.charts svg{border:1px solid #eee}.chosen{background:#e6f4e6}
p.note{font-size:13px;color:#555}"""


def _page(title: str, body: Sequence[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
                      f"<h1>{escape(title)}</h1>", *body, "</body></html>", ""])


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], marked: int | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    lines = [f"<table><tr>{head}</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="chosen"' if i == marked else ""
        lines.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>")
    return "\n".join(lines + ["</table>"])


def _charts(*svgs: str) -> str:
    return '<div class="charts">' + "\n".join(s for s in svgs if s) + "</div>"


def _kept(stats: Sequence[LayerStats]) -> list[float]:
    return [100.0 * s.nonzeros / s.params if s.params else 0.0 for s in stats]


def training_charts(runs: Sequence[tuple[str, list[dict]]], trace: LossTrace | None,
                    baseline: float | None, metric: str) -> str:
    """Loss, validation score and compression against iteration, one series per run (a sweep has several)."""
    colors = {label: COLORS[i % len(COLORS)] for i, (label, _) in enumerate(runs)}
    if trace is not None and trace.runs:
        loss = [Series(r.label, [(i, v) for i, v, _ in r.points], colors.get(r.label, COLORS[0]))
                for r in trace.runs]
        compression = [Series(r.label, [(i, c) for i, _, c in r.points], colors.get(r.label, COLORS[0]))
                       for r in trace.runs]
    else:
        loss = [Series(label, [(h["iteration"], h["loss"]) for h in history], colors[label])
                for label, history in runs]
        compression = [Series(label, [(h["iteration"], h["compression"]) for h in history], colors[label])
                       for label, history in runs]
    score = [Series(label, [(h["iteration"], h["metrics"].score) for h in history], colors[label], markers=True)
             for label, history in runs]
    last = max((h["iteration"] for _, history in runs for h in history), default=0)
    if baseline is not None and last:
        score.append(Series("original", [(0, baseline), (last, baseline)], "#555", dashed=True))
    return _charts(line_chart("training loss", loss, "iteration", "loss"),
                   line_chart(f"validation {metric}", score, "iteration", metric),
                   line_chart("compression (params / nonzeros)", compression, "iteration", "compression x"))


def sensitivity_section(result: SensitivityResult) -> list[str]:
    """Each layer's score after pruning it alone, against sparsity."""
    series = [Series(c.layer, [(100 * s, v) for s, v in zip(c.sparsities, c.scores)], COLORS[i % len(COLORS)],
                     markers=True) for i, c in enumerate(result.curves)]
    sparsities = result.curves[0].sparsities if result.curves else []
    if sparsities:
        series.append(Series("original", [(100 * sparsities[0], result.baseline.score),
                                          (100 * sparsities[-1], result.baseline.score)], "#555", dashed=True))
    rows = [[c.layer, f"{c.params:,}", *(f"{v:.2f}" for v in c.scores)] for c in result.curves]
    return ["<h2>Which layers hurt: sensitivity</h2>",
            '<p class="note">Each layer pruned alone by magnitude, no retraining: a ranking of layers, not a '
            "prediction of the compressed model's accuracy.</p>",
            _charts(line_chart(f"{result.baseline.label} with one layer pruned", series, "sparsity %",
                               result.baseline.label)),
            _table(["layer", "params", *(f"{100 * s:g}%" for s in sparsities)], rows)]


def compress_report(result: CompressResult, trace: LossTrace | None = None,
                    sensitivity: SensitivityResult | None = None, title: str = "onnx-dns compression") -> str:
    """The report of one compression."""
    before, after = result.accuracy_before, result.accuracy_after
    summary = _table(["", "before", "after"], [
        ["parameters (prunable layers)", f"{result.params:,}", f"{result.nonzeros:,}"],
        ["compression", "1.0x", f"{result.compression:.1f}x"],
        [before.label, f"{before.score:.2f}", f"{after.score:.2f}"],
        ["file", human_bytes(result.file_size_before), human_bytes(result.file_size_after)],
    ])
    names = [s.name for s in result.layers_before]
    layers = _table(["layer", "op", "params", "nonzeros", "kept %"],
                    [[s.name, s.op, f"{s.params:,}", f"{s.nonzeros:,}", f"{k:.2f}"]
                     for s, k in zip(result.layers_after, _kept(result.layers_after))])
    body = [f'<p class="note">{result.iterations} iterations in {result.train_seconds:.0f} s; state kept from '
            f"iteration {result.chosen_iteration}; validation on {before.samples} samples "
            f"({escape(result.val_source)}).</p>", summary,
            "<h2>What happened during training</h2>",
            training_charts([("training", result.history)], trace, before.score, before.label),
            "<h2>Kept fraction per layer</h2>",
            _charts(bar_chart("kept weights per layer (%)", names, [
                ("before", _kept(result.layers_before)), ("after", _kept(result.layers_after))], "kept %")), layers]
    if sensitivity is not None:
        body += sensitivity_section(sensitivity)
    return _page(title, body)


def sweep_report(sweep: SweepResult, trace: LossTrace | None = None, sensitivity: SensitivityResult | None = None,
                 title: str = "onnx-dns sweep") -> str:
    """The report of a sweep: the curve, the table, the kept fractions and the training of every target."""
    base = sweep.baseline
    curve = [Series("compressed", [(p.compression, p.metrics.score) for p in sweep.points], COLORS[0], markers=True)]
    low, high = min(p.compression for p in sweep.points), max(p.compression for p in sweep.points)
    curve.append(Series("original", [(low, base.score), (high, base.score)], "#555", dashed=True))
    if sweep.max_accuracy_drop is not None:
        bound = base.score - sweep.max_accuracy_drop
        curve.append(Series("bound", [(low, bound), (high, bound)], COLORS[1], dashed=True))
    rows = [[f"{p.target:g}x", f"{p.compression:.1f}x", f"{p.metrics.score:.2f}",
             f"{base.score - p.metrics.score:.2f}", human_bytes(p.file_size), f"{p.latency_ms:.3f} ms",
             "chosen" if i == sweep.chosen else ("" if p.within_bound else "out of bound"), p.path or ""]
            for i, p in enumerate(sweep.points)]
    bound_text = ("no accuracy bound" if sweep.max_accuracy_drop is None
                  else f"bound: at most {sweep.max_accuracy_drop:g} points below the original")
    results = [p.result for p in sweep.points]
    names = [s.name for s in results[0].layers_before]
    groups = [("original", _kept(results[0].layers_before))]
    groups += [(f"{p.target:g}x", _kept(r.layers_after)) for p, r in zip(sweep.points, results)]
    body = [f'<p class="note">original: {base.label} {base.score:.2f}, {human_bytes(sweep.baseline_file_size)}, '
            f"{sweep.baseline_latency_ms:.3f} ms per inference (batch 1); {bound_text}; "
            f"{results[0].iterations} iterations per target.</p>",
            "<h2>How far can it go: accuracy against compression</h2>",
            _charts(line_chart(f"{base.label} against compression", curve, "compression x (log)", base.label,
                               log_x=True)),
            _table(["target", "compression", base.label, "drop", "file", "latency", "", "model"], rows, sweep.chosen),
            "<h2>Kept fraction per layer</h2>",
            _charts(bar_chart("kept weights per layer (%)", names, groups, "kept %")),
            "<h2>What happened during training</h2>",
            training_charts([(f"{p.target:g}x", r.history) for p, r in zip(sweep.points, results)], trace,
                            base.score, base.label)]
    if sensitivity is not None:
        body += sensitivity_section(sensitivity)
    return _page(title, body)


def sensitivity_report(result: SensitivityResult, title: str = "onnx-dns sensitivity") -> str:
    """The report of a sensitivity measurement alone."""
    return _page(title, sensitivity_section(result))


def write_html(path: str | os.PathLike, text: str, forbid: str | os.PathLike | None = None) -> None:
    """Write the report, refusing the input model's path."""
    check_output_path(path, forbid=forbid)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise write_failed(Path(path), exc) from exc
