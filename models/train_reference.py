"""Train the reference models dense on the bundled MNIST with onnx-dns's own trainer (no masks).

The paper's base solver: SGD lr 0.01, Caffe "inv" schedule (gamma 1e-4, power 0.75), momentum 0.9,
weight decay 5e-4, batch 64, pixels scaled by 1/256. Rerun with:

    python models/train_reference.py lenet5 --iterations 10000 --seed 0
    python models/train_reference.py lenet300 --iterations 10000 --seed 0

Writes models/<name>/model.onnx and prints the test error on the 10,000 MNIST test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.options import TrainConfig

HERE = Path(__file__).resolve().parent
MNIST = HERE / "data" / "mnist"
sys.path.insert(0, str(HERE))

from build import BUILDERS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    out_dir = HERE / args.name
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init.onnx"
        onnx.save(BUILDERS[args.name](args.seed), str(init))
        options = CompressOptions(
            data=str(MNIST), prune=False,
            train=TrainConfig(iterations=args.iterations, batch_size=64, lr=args.lr, schedule="inv",
                              optimizer="sgd", seed=args.seed, eval_every=1000, checkpoint_every=1000),
        )
        result = compress_file(init, out_dir / "model.onnx", options,
                          progress=lambda e: print(f"iteration {e['iteration']}: {e['metrics'].describe()}",
                                                   flush=True) if e.get("evaluated") else None)
    error = 100 - result.accuracy_after.top1
    summary = {"model": args.name, "iterations": args.iterations, "seed": args.seed, "lr": args.lr,
               "test_error_percent": round(error, 2), "train_seconds": round(result.train_seconds, 1),
               "images_per_second": round(result.images_per_second)}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
