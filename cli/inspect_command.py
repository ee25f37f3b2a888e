"""`onnx-dns inspect`: the per-layer table of a model."""

from __future__ import annotations

import click

from onnx_dns.api import inspect as inspect_model
from onnx_dns.report import format_report

from .common import emit_json, handle_errors


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@handle_errors
def inspect(model: str, as_json: bool) -> None:
    """Show per-layer parameters, nonzeros and sparsity of MODEL.

    Also prints totals and compression (with and without biases), file and gzip size, IR and opset versions,
    and the operators that onnxruntime-training cannot differentiate on CPU.

    \b
    Example:
      onnx-dns inspect models/lenet5/model.onnx --json
    """
    report = inspect_model(model)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(format_report(report))
