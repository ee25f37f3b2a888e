"""`onnx-dns sweep`: compress at several targets, print the curve's table, write the models, the tables and the
HTML report, and mark the most compressed model within the accuracy bound."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from onnx_dns import api
from onnx_dns.errors import AccuracyBoundError
from onnx_dns.html_report import sweep_report, write_html
from onnx_dns.settings import load_settings
from onnx_dns.sweep_output import sweep_markdown
from onnx_dns.trace import LossTrace

from .common import emit_json, handle_errors
from .compress_command import DATA_OPTIONS, STORAGE_OPTIONS, SURGERY_OPTIONS, TRAINING_OPTIONS, layer_options
from .progress import Progress

SENSITIVITY_KEYS = ("include", "exclude", "biases", "output_name", "task", "fidelity", "distill", "eval_batch_size",
                    "seed", "val_fraction")


def _options(func):
    for decorator in reversed(DATA_OPTIONS + SURGERY_OPTIONS + TRAINING_OPTIONS + STORAGE_OPTIONS):
        func = decorator(func)
    return func


class SweepProgress:
    """The compress progress display, with a line at the start of each target."""

    def __init__(self, display: Progress) -> None:
        self.display = display

    def __call__(self, event: dict) -> None:
        if event["event"] == "target" and self.display.verbosity:
            targets = event["targets"]
            click.echo(f"target {event['target']:g}x ({targets.index(event['target']) + 1}/{len(targets)})",
                       err=True)
        self.display(event)


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--targets", required=True, metavar="LIST", help="Compression targets, e.g. 2x,4x,8x,16x; run in "
              "ascending order.")
@click.option("-o", "--out-dir", required=True, type=click.Path(path_type=str), help="Where NAME.<target>x.onnx, "
              "NAME.best.onnx and the tables NAME.sweep.md / .json go.")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Start each target from the previous target's pruned weights (else from the original model).")
@click.option("--sensitivity", "with_sensitivity", is_flag=True,
              help="Also measure per-layer sensitivity (no training) and put its curves in the HTML report.")
@_options
@click.option("--work-dir", type=click.Path(path_type=str), help="Training graphs and checkpoints.  "
              "[default: OUT_DIR/NAME.sweep-work, removed after success]")
@click.option("--keep-work", is_flag=True, help="Keep the work folder after success.")
@click.option("--report-html", "html_path", type=click.Path(path_type=str),
              help="Write a self-contained HTML report here: the curve, kept fractions, training of each target.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only the table and errors.")
@handle_errors
def sweep(model: str, targets: str, out_dir: str, warm_start: bool, with_sensitivity: bool, work_dir: str | None,
          keep_work: bool, html_path: str | None, as_json: bool, quiet: bool, **given) -> None:
    """Compress MODEL at several compression TARGETS and tabulate accuracy, file size and latency.

    The training graphs are built once; each target starts from the previous one's pruned weights. The most
    compressed model within --max-accuracy-drop is copied to OUT_DIR/NAME.best.onnx (exit 6 when none is).

    \b
    Examples:
      onnx-dns sweep models/lenet300/model.onnx --targets 10x,30x,60x --iterations 3000 -o sweep/
      onnx-dns sweep model.onnx --data train.npz --targets 2x,4x,8x --max-accuracy-drop 1 -o out/ \\
          --report-html out/sweep.html
    """
    given = layer_options(given)
    if given.get("target") is not None or given.get("c"):
        raise click.UsageError("sweep takes --targets (target mode); --target and --c belong to compress")
    settings = load_settings(model, {**given, "target": "per --targets"})  # a dns.json target is not taken
    options = {**settings, **{k: v for k, v in given.items() if v is not None}}
    data, val = options.pop("data", None), options.pop("val", None)
    name = Path(model).stem
    work = Path(work_dir) if work_dir else Path(out_dir) / f"{name}.sweep-work"
    trace = LossTrace(SweepProgress(Progress(0 if quiet else 1)))
    result = api.sweep(model, data, val=val, targets=targets, out_dir=out_dir, warm_start=warm_start,
                       progress=trace, work_dir=work, **options)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    sensitivity = None
    if with_sensitivity:
        sensitivity = api.sensitivity(model, data, val=val, **{k: options[k] for k in SENSITIVITY_KEYS
                                                                if k in options})
    if html_path:
        write_html(html_path, sweep_report(result, trace, sensitivity, title=f"onnx-dns sweep of {model}"),
                   forbid=model)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(sweep_markdown(result))
    if result.best is None:
        raise AccuracyBoundError(f"no target stays within --max-accuracy-drop {result.max_accuracy_drop:g}; "
                                 f"the models are in {out_dir}")
