"""Does allocating per-layer sparsities from sensitivity curves beat target mode's keep_k = min(1, beta/sqrt(n_k))?

    python benchmarks/allocation.py       # about 5 minutes on a 2-core machine

LeNet-300-100 at 57x, 3000 iterations (a short run), seeds 0 and 1: target mode's own allocation against the
sparsities `onnx_dns.sensitivity.allocate_sparsities` derives from per-layer sensitivity curves (each layer pruned
alone, no training, 50% to 99.5%), given to the same run as --sparsity for every layer.
Writes benchmarks/results/allocation.json and allocation.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx_dns
from onnx_dns.sensitivity import allocate_sparsities

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = str(ROOT / "models/lenet300/model.onnx"), str(ROOT / "models/data/mnist")
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995]


def main() -> None:
    curves = onnx_dns.sensitivity(MODEL, DATA, sparsities=SPARSITIES)
    allocation = allocate_sparsities(curves, 57)
    rows = {}
    for seed in (0, 1):
        for name, extra in (("sqrt", {"target": "57x"}), ("sensitivity", {"sparsity": allocation})):
            result = onnx_dns.compress(MODEL, DATA, iterations=3000, eval_every=1000, seed=seed, **extra)
            rows[f"{name}-seed{seed}"] = {
                "compression": round(result.compression, 2), "top1": result.accuracy_after.top1,
                "kept%": {s.name: round(100 * s.nonzeros / s.params, 2) for s in result.layers_after}}
            print(name, seed, rows[f"{name}-seed{seed}"], flush=True)
    out = ROOT / "benchmarks/results"
    (out / "allocation.json").write_text(json.dumps({"curves": curves.to_dict(), "runs": rows}, indent=1))
    lines = [curves.markdown(), "| allocation | seed | compression | top-1 | kept % fc1 / fc2 / fc3 |",
             "|---|---|---|---|---|"]
    lines += [f"| {key.split('-')[0]} | {key[-1]} | {r['compression']}x | {r['top1']:.2f} | "
              + " / ".join(f"{v:g}" for v in r["kept%"].values()) + " |" for key, r in rows.items()]
    (out / "allocation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
