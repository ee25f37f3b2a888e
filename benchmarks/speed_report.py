"""The markdown report and the goals of benchmarks/speed.py, from its JSON.

    python benchmarks/speed_report.py     # rewrites results/speed.md from results/speed.json
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(x: float | None) -> str:
    """A rate with about three significant digits below 100 (the recognizer runs at a few images a second)."""
    if x is None:
        return "-"
    return f"{x:,.{2 if x < 10 else 1 if x < 100 else 0}f}"


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """Markdown table lines; `align` has one letter per column, l (left) or r (right)."""
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows]


def _introduction(report: dict) -> list[str]:
    load = report.get("load_average", {})
    loaded = (f" The machine was loaded: other engineers' trainings ran throughout (load average "
              f"{load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end, on 2 cores), so absolute "
              "figures are several times below an idle machine's; interleaving keeps the ratios fair."
              if load else "")
    tried = ", ".join(report.get("torch_variants_tried", ["eager"]))
    return [f"Run {report['started']} to {report['finished']} on {report['machine']}. "
            f"Command: `{report['command']}`.{loaded}", "",
            "Same DNS step on both sides: forward with W*T, backward straight-through, momentum SGD with weight "
            "decay, mask update at every step (a=0.9t, b=1.1t). Batch 64 (the recognizer: 16), synthetic data, "
            f"{report['threads']} thread(s) on every side. Median of {report['repeats']} interleaved repeats "
            "(onnx-dns, PyTorch, minimal PyTorch; each in its own process, warm-up excluded). PyTorch: fused "
            "SGD, allocation-free in-place mask update, set_to_none gradients, no_grad surgery; of the variants "
            f"{tried}, the fastest per model in short interleaved bursts is measured (its name is in the table). "
            "Minimal PyTorch: an independent plain loop (nn modules, default SGD, boolean-index mask update) that "
            "checks the reference: same losses step by step, and not faster. `Trainer.run`: the library's real "
            "loop (its surgery schedule, progress events and bookkeeping included).", ""]


def _main_table(models: list[dict]) -> list[str]:
    return table(
        ["model", "params", "onnx-dns img/s", "PyTorch img/s", "PyTorch variant", "minimal PyTorch img/s",
         "onnx-dns/PyTorch", "host overhead", "Trainer.run img/s"], "lrrrlrrrr",
        [[m["title"], f"{m['params']:,}", fmt(m["images_per_second"]["onnx-dns"]),
          fmt(m["images_per_second"]["torch"]), m.get("torch_variant", "eager"),
          fmt(m["images_per_second"].get("torch-minimal")), f"{m['ratio']:.2f}x",
          f"{100 * m['host_overhead']:.1f}%", fmt(m["images_per_second"]["trainer"])] for m in models])


def _checks(models: list[dict]) -> list[str]:
    rows = []
    for m in models:
        first = m["first_loss"]
        twin = m.get("torch_variants", {}).get("twin_max_abs_error")
        variants = ", ".join(f"{k} {v:,.1f}" for k, v in m.get("torch_variants", {}).get("median_step_ms", {})
                             .items())
        losses = m.get("first_losses", {})
        same = "-" if "torch-minimal" not in losses else \
            f"{max(abs(a - b) for a, b in zip(losses['torch'], losses['torch-minimal'])):.1e}"
        rows.append([m["title"], " / ".join(f"{first[k]:.5f}" for k in ("onnx-dns", "torch", "torch-minimal")
                                            if k in first), same, variants, "-" if twin is None else f"{twin:.1e}"])
    return table(["model", "first loss onnx-dns / PyTorch / minimal", "loss PyTorch - minimal, 5 steps (max)",
                  "PyTorch variants tried (ms/step)", "twin vs real model (max abs)"], "lrlrr", rows)


def _fold(report: dict) -> list[str]:
    when = f" (measured {report['fold_measured']}, not re-run)" if report.get("fold_measured") else ""
    lines = ["", f"Fold and write (`fold_masks` + `save_model`), 4-layer MLPs, 90% of the masks at 0{when} "
             "(save-only rows: `save_model` alone of a dense model without masks):", ""]
    rows = []
    for f in report["fold"]:
        what = "save only (dense)" if f.get("save_only") else f"fold+save ({f['storage']})"
        size = f"{f['input_model_gb']:.2f} GB" if "input_model_gb" in f else "-"
        if "error" in f:
            rows.append([f"{f['params']:,}", what, size, f"failed: {f['error'].splitlines()[-1][:200]}",
                         *[""] * 6])
            continue
        rows.append([f"{f['params']:,}", what, size, f"{f['fold_seconds']:.2f} s", f"{f['save_seconds']:.2f} s",
                     f"{f['total_seconds']:.2f} s", f"{f['seconds_per_million']:.3f}", f"{f['file_mb']:,.1f} MB",
                     "yes" if f["external_data"] else "no", f"{f['peak_rss_mb']:,.0f} MB"])
    return lines + table(["params", "what", "input model", "fold", "save", "total", "s per M params", "file",
                          "external data", "peak RSS"], "rlrrrrrrlr", rows)


def write_markdown(report: dict, path: Path) -> None:
    models = list(report["models"].values())
    lines = ["# onnx-dns training step vs a competent PyTorch (issues 5 and 14)", "", *_introduction(report)]
    lines += _main_table(models)
    lines += ["", "Checks of the reference:", "", *_checks(models)]
    lines += ["", "Time per step in ms (mean within a run, median over repeats):", ""]
    lines += table(
        ["model", "onnx-dns: module", "optimizer", "mask update", "data+targets", "step", "PyTorch: fwd+bwd",
         "optimizer", "mask update", "step"], "lrrrrrrrrr",
        [[m["title"], *(f"{m['ms']['onnx-dns'][k]:.3f}" for k in ("module", "optimizer", "mask_update",
                                                                    "data_other", "step")),
          *(f"{m['ms']['torch'][k]:.3f}" for k in ("forward_backward", "optimizer", "mask_update", "step"))]
         for m in models])
    lines += ["", "Memory and artifact building:", ""]
    lines += table(
        ["model", "peak RSS onnx-dns (train)", "peak RSS PyTorch", "peak RSS building", "build_artifacts",
         "artifact files"], "lrrrrr",
        [[m["title"], *(f"{m['peak_rss_mb'][k]:,.0f} MB" for k in ("onnx-dns", "torch", "build")),
          f"{m['build']['artifact_seconds']:.2f} s", f"{m['build']['artifact_mb']:,.1f} MB"] for m in models])
    lines += _fold(report)
    lines += ["", "Goals of issues 5 and 14:", ""]
    lines += [f"- {g}" for g in report["goals"]]
    path.write_text("\n".join(lines) + "\n")


def goals(report: dict) -> list[str]:
    models = report["models"].values()
    out = []
    ratios = ", ".join(f"{m['title']} {m['ratio']:.2f}x" for m in models)
    met = all(m["ratio"] >= 1.3 for m in models)
    out.append(f"onnx-dns >= 1.3x the PyTorch reference's images/s on every model: {'met' if met else 'NOT met'} "
               f"({ratios})")
    over = ", ".join(f"{m['title']} {100 * m['host_overhead']:.1f}%" for m in models)
    met = all(m["host_overhead"] <= 0.03 for m in models)
    out.append(f"host overhead <= 3% of step time: {'met' if met else 'NOT met'} ({over})")
    build = ", ".join(f"{m['title']} {m['build']['artifact_seconds']:.1f} s" for m in models)
    met = all(m["build"]["artifact_seconds"] < 10 for m in models)
    out.append(f"artifact building under 10 s: {'met' if met else 'NOT met'} ({build})")
    folds = [f for f in report["fold"] if "error" not in f and not f.get("save_only") and f["params"] >= 1e6]
    failed = [f for f in report["fold"] if "error" in f]
    if failed:
        out.append("models above 2 GB: NOT handled (" + "; ".join(
            f"{f['params'] / 1e6:g}M params: {f['error'].splitlines()[-1][:120]}" for f in failed) + ")")
    if len(folds) >= 2:
        per = [f["seconds_per_million"] for f in folds]
        met = max(per) <= 2 * min(per)
        out.append("fold linear in parameters (sparse, s per M params within 2x across sizes): "
                   f"{'met' if met else 'NOT met'} (" + ", ".join(f"{f['params'] / 1e6:g}M {p:.3f}"
                                                                  for f, p in zip(folds, per)) + ")")
    return out


if __name__ == "__main__":
    data = json.loads((RESULTS / "speed.json").read_text())
    data["goals"] = goals(data)
    write_markdown(data, RESULTS / "speed.md")
    print((RESULTS / "speed.md").read_text())
