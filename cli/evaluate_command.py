"""`onnx-dns evaluate`: a model's accuracy on data, and a CI gate on it."""

from __future__ import annotations

import click

from onnx_dns.api import evaluate as evaluate_model
from onnx_dns.errors import AccuracyBoundError
from onnx_dns.report import human_bytes

from .common import emit_json, handle_errors
from .compress_command import FIDELITY_OPTION


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", required=True, help="Evaluation data: .npz, folder of .npy or idx files.")
@click.option("--split", type=click.Choice(["t10k", "train"]), default="t10k", show_default=True,
              help="Which split of an MNIST-style idx folder.")
@click.option("--reference", type=click.Path(path_type=str), help="The original model, to measure the drop "
              "against (and to score agreement when the data has no labels).")
@click.option("--output-name", help="The output to score.  [default: the first float output]")
@click.option("--task", type=click.Choice(["classify", "regress"]))
@FIDELITY_OPTION
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--min-accuracy", type=float, metavar="PERCENT", help="Fail (exit 6) below this top-1 accuracy.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), metavar="POINTS",
              help="Fail (exit 6) when accuracy is more than POINTS below --reference.")
@click.option("--min-compression", type=click.FloatRange(min=1), metavar="X",
              help="Fail (exit 6) when parameters / nonzeros of the prunable layers is below X.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but failures.")
@handle_errors
def evaluate(model: str, data: str, split: str, reference: str | None, output_name: str | None, task: str | None,
             fidelity: str | None, batch_size: int, min_accuracy: float | None, max_accuracy_drop: float | None,
             min_compression: float | None, as_json: bool, quiet: bool) -> None:
    """Measure MODEL's accuracy on data, and fail when it misses a bound (a CI gate).

    \b
    Examples:
      onnx-dns evaluate lenet5.dns.onnx --data models/data/mnist --min-accuracy 99
      onnx-dns evaluate model.dns.onnx --data val.npz --reference model.onnx --max-accuracy-drop 0.5
    """
    result = evaluate_model(model, data, reference=reference, split=split, output=output_name, task=task,
                            fidelity=fidelity or "auto", batch_size=batch_size, min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
                            min_compression=min_compression)
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        line = f"{model}: {result.metrics.describe()} on {result.metrics.samples} samples"
        if result.reference is not None:
            line += f" (reference {result.reference.describe()})"
        line += f", compression {result.model.compression:.1f}x, file {human_bytes(result.model.file_size)}"
        click.echo(line)
    if result.failures:
        raise AccuracyBoundError("; ".join(result.failures))
