"""`onnx-dns convert`: store an already compressed model's weights in another format, optionally shared."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_dns.api import convert as convert_model
from onnx_dns.api import evaluate as evaluate_model
from onnx_dns.model_io import check_output_path, save_model
from onnx_dns.report import human_bytes

from .common import handle_errors


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=str),
              help="Where to write the converted model.")
@click.option("--format", "storage", type=click.Choice(["auto", "sparse", "dense", "packed"]), default="auto",
              show_default=True, help="sparse, dense, packed, or auto: the smaller of sparse and packed.")
@click.option("--bits", type=click.IntRange(2, 8), help="Share each layer's kept weights among 2^BITS values "
              "(k-means).  [default: exact float values, outputs unchanged]")
@click.option("--data", help="Also measure accuracy before and after on this data (as `evaluate`).")
@click.option("--split", type=click.Choice(["t10k", "train"]), default="t10k", show_default=True,
              help="Which split of an MNIST-style idx folder.")
@handle_errors
def convert(model: str, output_path: str, storage: str, bits: int | None, data: str | None, split: str) -> None:
    """Store an already compressed MODEL's weights in another format, optionally with weight sharing.

    \b
    Examples:
      onnx-dns convert models/lenet5/model.dns.onnx -o lenet5.packed.onnx --format packed --bits 4 \\
        --data models/data/mnist
    """
    check_output_path(output_path, forbid=model)
    save_model(convert_model(model, format=storage, bits=bits), output_path, forbid=model)
    line = (f"{model} ({human_bytes(Path(model).stat().st_size)}) -> {output_path} "
            f"({Path(output_path).stat().st_size:,} bytes), format {storage}"
            + (f", {bits}-bit shared weights" if bits else ", values unchanged"))
    if data:
        result = evaluate_model(output_path, data, reference=model, split=split)
        line += f"; {result.metrics.describe()} (before {result.reference.describe()})"
    click.echo(line)
