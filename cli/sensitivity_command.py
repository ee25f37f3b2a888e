"""`onnx-dns sensitivity`: the accuracy after pruning each layer alone at several sparsities, no training."""

from __future__ import annotations

import click

from onnx_dns import api
from onnx_dns.html_report import sensitivity_report, write_html
from onnx_dns.settings import load_settings

from .common import emit_json, handle_errors, write_json
from .compress_command import FIDELITY_OPTION

KEYS = ("data", "val", "output_name", "task", "fidelity", "include", "exclude", "biases", "eval_batch_size")


def _fractions(text: str) -> list[float]:
    try:
        return [float(item.rstrip("%")) / (100 if item.endswith("%") else 1) for item in text.split(",") if item]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give fractions such as 0.5,0.9 or percents such as 50%,90%",
                                 param_hint="--sparsities") from None


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", help="Data (as for compress); without --val, the idx folder's test split or 10% of it "
              "is scored.")
@click.option("--val", help="Validation data to score on.")
@click.option("--sparsities", default="0.5,0.7,0.8,0.9,0.95,0.98", show_default=True, metavar="LIST",
              help="Sparsities to prune each layer to, as fractions or percents.")
@click.option("--output-name", help="The output to score.  [default: the first float output]")
@click.option("--task", type=click.Choice(["classify", "regress"]))
@FIDELITY_OPTION
@click.option("--include", multiple=True, metavar="GLOB", help="Only layers whose name or weight matches.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Not the layers whose name or weight matches.")
@click.option("--report", "report_path", type=click.Path(path_type=str), help="Write the curves as JSON here.")
@click.option("--report-html", "html_path", type=click.Path(path_type=str),
              help="Write a self-contained HTML report of the curves here.")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON on stdout.")
@handle_errors
def sensitivity(model: str, sparsities: str, report_path: str | None, html_path: str | None, as_json: bool,
                **given) -> None:
    """Score MODEL with each prunable layer pruned alone by magnitude: which layers hurt (no training).

    \b
    Examples:
      onnx-dns sensitivity models/lenet5/model.onnx
      onnx-dns sensitivity model.onnx --data val.npz --sparsities 50%,90%,99% --report-html sensitivity.html
    """
    given = {k: (v or None) if k in ("include", "exclude") else v for k, v in given.items()}
    given = {k: v for k, v in given.items() if v is not None}
    options = {k: v for k, v in {**load_settings(model, given), **given}.items() if k in KEYS}
    data = options.pop("data", None)
    result = api.sensitivity(model, data, sparsities=_fractions(sparsities), **options)
    if report_path:
        write_json(report_path, result.to_dict())
    if html_path:
        write_html(html_path, sensitivity_report(result, title=f"onnx-dns sensitivity of {model}"), forbid=model)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(result.markdown())
