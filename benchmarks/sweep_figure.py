"""Accuracy-against-compression curves for the README: the bundled MNIST models, and two real pretrained models.

    onnx-dns sweep models/lenet5/model.onnx --targets 10x,30x,60x,110x --iterations 2000 --eval-every 1000 \\
        --max-accuracy-drop 1 --sensitivity -o /tmp/lenet5 --report-html benchmarks/results/sweep-lenet5.html
    (the same for models/lenet300 with --iterations 3000), copy each NAME.sweep.json/.md to
    benchmarks/results/sweep-<model>.json/.md, then:  python benchmarks/sweep_figure.py
Reads benchmarks/results/sweep-lenet5.json and sweep-lenet300.json, writes docs/sweep-curves.svg.

The real models' curves (label-free, fidelity to the original model against compression) come from
    python benchmarks/real_models.py --models ppocr-mobile-v2-cls,minilm-l3-paraphrase --targets 2x,4x,8x \
        --iterations 100 --out-dir docs/real-model-curves
and go to docs/real-model-curves.svg.
"""

from __future__ import annotations

import json
from pathlib import Path

from onnx_dns.svg import COLORS, Series, line_chart, standalone

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet5": "LeNet-5", "lenet300": "LeNet-300-100"}
REAL = {"ppocr-mobile-v2-cls": "PP-OCR cls (agreement)", "minilm-l3-paraphrase": "MiniLM-L3 (cosine)"}


def main() -> None:
    series = []
    for index, (key, label) in enumerate(MODELS.items()):
        table = json.loads((ROOT / "benchmarks/results" / f"sweep-{key}.json").read_text())
        color = COLORS[index]
        points = [(1.0, table["baseline"]["score"])]
        points += [(p["compression"], p["metrics"]["score"]) for p in table["points"]]
        series.append(Series(label, points, color, markers=True))
    svg = line_chart("MNIST top-1 against compression (short sweeps)", series, "compression x (log)",
                     "top-1 %", log_x=True)
    out = ROOT / "docs" / "sweep-curves.svg"
    out.parent.mkdir(exist_ok=True)
    out.write_text(standalone(svg) + "\n")
    real_models()


def real_models() -> None:
    """Fidelity to the original against compression for the REAL models, the original itself at 1x and 1.0."""
    runs = json.loads((ROOT / "docs" / "real-model-curves" / "real_models.json").read_text())["runs"]
    series = []
    for index, (name, label) in enumerate(REAL.items()):
        points = [(1.0, 1.0)] + sorted((r["compression"], r["fidelity"]) for r in runs
                                       if r["model"] == name and r.get("fidelity") is not None)
        series.append(Series(label, points, COLORS[index], markers=True))
    svg = line_chart("Real models, label-free, 100 iterations", series, "compression x (log)",
                     "fidelity to the original", log_x=True)
    (ROOT / "docs" / "real-model-curves.svg").write_text(standalone(svg) + "\n")


if __name__ == "__main__":
    main()
