"""The subcommands of `onnx-dns`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from cli.main import emit_json, handle_errors, main
from onnx_dns.errors import AccuracyBoundError, OutputError
from onnx_dns.model_io import check_output_path, load_model, write_failed
from onnx_dns.report import format_report, inspect_model


@main.command()
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
    report = inspect_model(load_model(model), model)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(format_report(report))


def _pairs(values: tuple[str, ...], option: str, cast) -> dict:
    """NAME=VALUE options into a dict, with an error that names the option at fault."""
    result = {}
    for item in values:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=option)
        try:
            result[name] = cast(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {value!r} is not a number", param_hint=option) from None
    return result


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=str),
              help="Where to write the compressed model.")
@click.option("--data", help="Training data: a .npz (arrays named after the model inputs, plus 'labels'), "
              "a folder of .npy or MNIST-style idx files, or module:function returning batches.")
@click.option("--val", help="Validation data (same forms). Default: the idx folder's test split, else 10% of --data.")
@click.option("--distill/--no-distill", default=None,
              help="Learn from the input model's outputs (knowledge distillation). Automatic without labels.")
@click.option("--distill-weight", type=click.FloatRange(0, 1), help="Share of distillation in the loss when "
              "there are labels too.  [default: 0.5]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Distillation temperature.  [default: 4]")
@click.option("--task", type=click.Choice(["classify", "regress"]), help="What the output is. Default: classify "
              "with integer labels or a Softmax output, else regress.")
@click.option("--output-name", help="The model output to train on; layers that do not feed it are left as they "
              "are.  [default: the first float output]")
@click.option("--target", help="Total compression to reach, e.g. 100x (beyond the paper: per-layer thresholds "
              "follow a cubic schedule to it).")
@click.option("--c", "c_values", multiple=True, metavar="NAME=VALUE",
              help="Paper mode: threshold knob c of one layer (t = mean + c*std of |w|). Repeatable.")
@click.option("--default-c", type=float, help="c of layers not named by --c.  [default: 1.0]")
@click.option("--sparsity", "sparsities", multiple=True, metavar="NAME=FRACTION",
              help="Target mode: the final sparsity of one layer, e.g. conv1=0.8. Repeatable.")
@click.option("--stop", "stops", multiple=True, metavar="NAME=ITER",
              help="Iteration after which one layer's mask stops changing. Repeatable.")
@click.option("--surgery-stop", type=click.IntRange(min=1), help="Stop iteration of layers not named by --stop. "
              "[default: 75% of the iterations]")
@click.option("--include", multiple=True, metavar="GLOB", help="Prune only layers whose name or weight matches.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Never prune layers whose name or weight matches.")
@click.option("--freeze-before", multiple=True, metavar="NODE",
              help="Train and prune only the part of the graph after NODE (a node name or output name): every "
              "weight NODE or a node before it reads stays as it is. For a node onnxruntime cannot train through. "
              "Repeatable.")
@click.option("--update-bn-stats/--freeze-bn-stats", default=None,
              help="BatchNormalization: train on batch statistics and measure new running statistics after "
              "training, or keep the model's statistics (the layers train as they infer).  [default: freeze]")
@click.option("--biases/--no-biases", default=None, help="Prune biases with their layer (the paper does).  "
              "[default: biases]")
@click.option("--iterations", type=click.IntRange(min=1), help="Training iterations.  [default: 10000]")
@click.option("--batch-size", type=click.IntRange(min=1), help="[default: 64]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Base learning rate.  [default: 0.01]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]),
              help="sgd: momentum 0.9, weight decay 5e-4 (the paper's); adamw.  [default: sgd]")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="[default: 5e-4 sgd, 1e-4 adamw]")
@click.option("--schedule", type=click.Choice(["inv", "step", "cosine", "constant"]),
              help="Learning-rate schedule; inv is Caffe's (gamma 1e-4, power 0.75).  [default: inv]")
@click.option("--warmup", type=click.IntRange(min=0), help="Linear warm-up iterations.  [default: 0]")
@click.option("--seed", type=int, help="Seed of shuffling and surgery draws; same seed, same result.  [default: 0]")
@click.option("--eval-every", type=click.IntRange(min=1), help="Validate every N iterations.  [default: 1000]")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="[default: 1000]")
@click.option("--eval-batch-size", type=click.IntRange(min=1), help="[default: 1000]")
@click.option("--threads", type=click.IntRange(min=0), help="onnxruntime threads; 0 lets it choose.  [default: 0]")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), metavar="POINTS",
              help="Fail (exit 6) when validation accuracy drops more than this many points; the best state "
              "within the bound is kept, and a model that misses it is written as NAME.below-bound.onnx.")
@click.option("--dense", is_flag=True, help="Write plain initializers with exact zeros instead of sparse ones "
              "(for tools that cannot read sparse initializers).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=str), metavar="DIR",
              help="Continue an interrupted run from the checkpoint in its work folder DIR.")
@click.option("--work-dir", type=click.Path(path_type=str), help="Checkpoints and training graphs.  "
              "[default: OUTPUT.dns-work, removed after success]")
@click.option("--keep-work", is_flag=True, help="Keep the work folder after success.")
@click.option("--report", "report_path", type=click.Path(path_type=str), help="Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only the summary line and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log every evaluation on its own line.")
@click.pass_context
@handle_errors
def compress(ctx: click.Context, model: str, output_path: str, report_path: str | None, as_json: bool, quiet: bool,
             verbose: bool, dense: bool, resume_dir: str | None, work_dir: str | None, keep_work: bool,
             **given) -> None:
    """Compress MODEL with Dynamic Network Surgery and write it to OUTPUT.

    Fine-tunes MODEL in onnxruntime-training while pruning small weights and splicing back the ones that
    grow again, then writes the model with masks folded in (sparse initializers, or --dense). Options not
    given come from a dns.json beside MODEL when there is one (the bundled reference models have one).

    \b
    Examples:
      onnx-dns compress models/lenet5/model.onnx -o lenet5.dns.onnx
      onnx-dns compress model.onnx --data train.npz --target 50x --max-accuracy-drop 0.5 -o model.dns.onnx
      onnx-dns compress model.onnx --data inputs.npz --distill -o model.dns.onnx   # no labels needed
    """
    from cli.progress import Progress
    from onnx_dns.compress import below_bound_path, compress as run_compress
    from onnx_dns.report import format_table
    from onnx_dns.settings import compress_options, load_settings

    given["c"] = _pairs(given.pop("c_values"), "--c", float) or None
    given["sparsity"] = _pairs(given.pop("sparsities"), "--sparsity", float) or None
    given["stop"] = _pairs(given.pop("stops"), "--stop", int) or None
    given["include"] = given["include"] or None
    given["exclude"] = given["exclude"] or None
    given["freeze_before"] = given["freeze_before"] or None
    options = compress_options(given, load_settings(model, given), dense=dense, work_dir=resume_dir or work_dir,
                               keep_work=keep_work)
    if report_path:
        check_output_path(report_path, forbid=model)
        models = {Path(output_path).resolve(), Path(below_bound_path(output_path)).resolve()}
        if Path(report_path).resolve() in models:
            raise OutputError(f"{report_path}: the report path is where the output model goes; give --report "
                              "another path")
    progress = Progress(0 if quiet else (2 if verbose else 1))
    result = run_compress(model, output_path, options, progress=progress, resume=resume_dir is not None)
    data = result.to_dict()
    if report_path:
        _write_json(report_path, data)
    if as_json:
        emit_json(data)
    elif not quiet:
        click.echo(format_table(result.layers_after))
    click.echo(summary_line(result), err=as_json)
    if not result.met_bound:
        raise AccuracyBoundError(
            f"accuracy dropped {result.accuracy_before.score - result.accuracy_after.score:.2f} points, more than "
            f"--max-accuracy-drop {options.train.max_accuracy_drop}; the model is in {result.output}")


def summary_line(result) -> str:
    from onnx_dns.report import human_bytes

    before, after = result.accuracy_before, result.accuracy_after
    return (f"params {result.params:,} -> {result.nonzeros:,} ({result.compression:.1f}x; "
            f"{result.weight_compression:.1f}x weights only), {before.label} {before.score:.2f} -> {after.score:.2f} "
            f"on {before.samples} samples, file {human_bytes(result.file_size_before)} -> "
            f"{human_bytes(result.file_size_after)}, {result.seconds:.0f} s (mask updates {result.surgery_ms_per_step:.2f} "
            f"ms/step) -> {result.output}")


def _write_json(path: str, data: dict) -> None:
    """Write the report atomically; a failed write leaves no temporary file."""
    target = Path(path)
    check_output_path(target)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, target)
    except OSError as exc:
        raise write_failed(target, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", required=True, help="Evaluation data: .npz, folder of .npy or idx files.")
@click.option("--split", type=click.Choice(["t10k", "train"]), default="t10k", show_default=True,
              help="Which split of an MNIST-style idx folder.")
@click.option("--reference", type=click.Path(path_type=str), help="The original model, to measure the drop "
              "against (and to score agreement when the data has no labels).")
@click.option("--output-name", help="The output to score.  [default: the first float output]")
@click.option("--task", type=click.Choice(["classify", "regress"]))
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--min-accuracy", type=float, metavar="PERCENT", help="Fail (exit 6) below this top-1 accuracy.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), metavar="POINTS",
              help="Fail (exit 6) when accuracy is more than POINTS below --reference.")
@click.option("--min-compression", type=click.FloatRange(min=1), metavar="X",
              help="Fail (exit 6) when parameters / nonzeros of the prunable layers is below X.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but failures.")
@handle_errors
def evaluate(model: str, data: str, split: str, reference: str | None, output_name: str | None, task: str | None,
             batch_size: int, min_accuracy: float | None, max_accuracy_drop: float | None,
             min_compression: float | None, as_json: bool, quiet: bool) -> None:
    """Measure MODEL's accuracy on data, and fail when it misses a bound (a CI gate).

    \b
    Examples:
      onnx-dns evaluate lenet5.dns.onnx --data models/data/mnist --min-accuracy 99
      onnx-dns evaluate model.dns.onnx --data val.npz --reference model.onnx --max-accuracy-drop 0.5
    """
    from onnx_dns.gate import evaluate_model
    from onnx_dns.report import human_bytes

    result = evaluate_model(model, data, reference=reference, split=split, output=output_name, task=task,
                            batch_size=batch_size, min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
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
