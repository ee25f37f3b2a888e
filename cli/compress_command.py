"""`onnx-dns compress`: parse the options, call the library, print the table and the summary."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_dns.channel_report import format_channels
from onnx_dns.errors import AccuracyBoundError, OutputError
from onnx_dns.fidelity import CHOICES as FIDELITY_CHOICES
from onnx_dns.fold import read_metadata
from onnx_dns.html_report import compress_report, write_html
from onnx_dns.model_io import check_output_path
from onnx_dns.options import merge
from onnx_dns.pipeline import below_bound_path, compress_file
from onnx_dns.report import format_table, human_bytes
from onnx_dns.result import CompressResult
from onnx_dns.settings import announce_settings, load_settings
from onnx_dns.trace import LossTrace

from .common import emit_json, handle_errors, with_default, write_json
from .progress import Progress


class Bound(click.ParamType):
    """A number of points, or none (its range is checked with the other options, in `onnx_dns.options`)."""

    name = "bound"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "none":
            return "none"
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of points nor none", param, ctx)


BOUND = Bound()
FIDELITY_HELP = ("How a regression output without labels is scored against the original: relative-error, "
                 "decisions (Dice overlap of the values above 0.5), cosine (mean cosine similarity along the last "
                 "axis), boxes (a YOLO head's detections, or a probability map's regions, reproduced). auto: boxes "
                 "for a YOLOv8-style head, decisions for a Sigmoid output, cosine for a feature vector, else "
                 "relative-error.")


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


FIDELITY_OPTION = click.option("--fidelity", type=click.Choice(FIDELITY_CHOICES), help=with_default(
    "fidelity", FIDELITY_HELP))
DATA_OPTIONS = [
    click.option("--data", help="Training data: a .npz (arrays named after the model inputs, plus 'labels'), "
                 "a folder of .npy or MNIST-style idx files, or module:function returning batches."),
    click.option("--val", help="Validation data (same forms). Default: the idx folder's test split, else 10% of "
                 "--data."),
    click.option("--distill/--no-distill", default=None,
                 help="Learn from the input model's outputs (knowledge distillation). Automatic without labels."),
    click.option("--distill-weight", type=click.FloatRange(0, 1),
                 help=with_default("distill_weight", "Share of distillation in the loss when there are labels too.")),
    click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
                 help="Distillation temperature.  [default: the largest of 4, 2 and 1 at which the input model's "
                 "top class keeps half of its softened probability on average]"),
    click.option("--task", type=click.Choice(["classify", "regress"]), help="What the output is. Default: classify "
                 "with integer labels or a Softmax output, else regress."),
    click.option("--output-name", help="The model output to train on; layers that do not feed it are left as "
                 "they are.  [default: the first float output]"),
]
SURGERY_OPTIONS = [
    click.option("--target", help="Total compression to reach, e.g. 100x (beyond the paper: per-layer "
                 "thresholds follow a cubic schedule to it)."),
    click.option("--structure", type=click.Choice(["weight", "channel"]), help=with_default(
        "structure", "What a mask entry removes: single weights, or whole channels (filters with their bias, "
        "BatchNorm entries and the next layers' inputs), which makes a smaller dense model that runs faster in "
        "any runtime.")),
    click.option("--start", type=click.Choice(["dense", "calibrated"]), help=with_default(
        "start", "What training starts from: the dense model, pruned gradually (the paper's way); or calibrated: "
        "each layer pruned at once to its target, weights chosen by |w| times their input's RMS on 64 training "
        "samples and each channel refit to the original's output, for models that magnitude pruning ruins "
        "(see the README).")),
    click.option("--c", "c_values", multiple=True, metavar="NAME=VALUE",
                 help="Paper mode: threshold knob c of one layer (t = mean + c*std of |w|). Repeatable."),
    click.option("--default-c", type=float, help=with_default("default_c", "c of layers not named by --c.")),
    click.option("--sparsity", "sparsities", multiple=True, metavar="NAME=FRACTION",
                 help="Target mode: the final sparsity of one layer, e.g. conv1=0.8. Repeatable."),
    click.option("--stop", "stops", multiple=True, metavar="NAME=ITER",
                 help="Iteration after which one layer's mask stops changing. Repeatable."),
    click.option("--surgery-stop", type=click.IntRange(min=1), help="Stop iteration of layers not named by "
                 "--stop.  [default: 75% of the iterations]"),
    click.option("--include", multiple=True, metavar="GLOB", help="Prune only layers whose name or weight "
                 "matches."),
    click.option("--exclude", multiple=True, metavar="GLOB", help="Never prune layers whose name or weight "
                 "matches."),
    click.option("--freeze-before", multiple=True, metavar="NODE",
                 help="Train and prune only the part of the graph after NODE (a node name or output name): every "
                 "weight NODE or a node before it reads stays as it is. For a node onnxruntime cannot train "
                 "through. Repeatable."),
    click.option("--update-bn-stats/--freeze-bn-stats", default=None,
                 help="BatchNormalization: train on batch statistics and measure new running statistics after "
                 "training, or keep the model's statistics (the layers train as they infer).  [default: freeze]"),
    click.option("--biases/--no-biases", default=None, help="Prune biases with their layer (the paper does).  "
                 "[default: biases]"),
]
TRAINING_OPTIONS = [
    click.option("--iterations", type=click.IntRange(min=1), help="Training iterations.  [default: 10,000, or "
                 "as many as --time-budget holds at the time a step takes]"),
    click.option("--time-budget", metavar="DURATION", help="Training time (30m, 2h, 900s) that sizes the "
                 "iterations when --iterations is not given; evaluations come on top.  [default: 1h]"),
    click.option("--batch-size", type=click.IntRange(min=1), help="Training batch size. A model exported with a "
                 "fixed batch size trains at that size.  [default: 64, or the largest batch whose training step "
                 "fits --max-memory; the log says which]"),
    click.option("--max-memory", metavar="SIZE|none", help="Memory (2GB, 1500MB) that bounds the default batch "
                 "size, measured on one step at batch 4; none: no bound.  [default: 2GB]"),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Base learning rate.  [default: chosen by "
                 "a short probe on the first batches, with the gradient norm bounded; see the README]"),
    click.option("--clip-grad-norm", type=float, metavar="X", help="Bound the gradient norm at X.  [default: chosen "
                 "with the learning rate when --lr is not given, else none]"),
    click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="sgd: momentum 0.9, weight decay 5e-4 "
                 "(the paper's); adamw.  [default: sgd when the loss has labels, adamw when it only distils the "
                 "original's outputs]"),
    click.option("--weight-decay", type=click.FloatRange(min=0), help="[default: 5e-4 sgd, 1e-4 adamw]"),
    click.option("--schedule", type=click.Choice(["inv", "step", "cosine", "constant"]), help=with_default(
        "schedule", "Learning-rate schedule; inv is Caffe's (gamma 1e-4, power 0.75).")),
    click.option("--warmup", type=click.IntRange(min=0), help=with_default("warmup", "Linear warm-up iterations.")),
    click.option("--seed", type=int, help=with_default("seed", "Seed of shuffling and surgery draws; same seed, "
                                                       "same result.")),
    click.option("--eval-every", type=click.IntRange(min=1), help="Validate every N iterations.  [default: a "
                 "tenth of the iterations, at most 1,000]"),
    click.option("--checkpoint-every", type=click.IntRange(min=1), help="Write a checkpoint every N iterations.  "
                 "[default: a tenth of the iterations, at most 1,000]"),
    click.option("--eval-batch-size", type=click.IntRange(min=1), help=with_default("eval_batch_size", "")),
    click.option("--threads", type=click.IntRange(min=0), help=with_default("threads", "onnxruntime threads; 0 lets "
                                                                            "it choose.")),
    click.option("--max-accuracy-drop", type=BOUND, metavar="POINTS|none", help=with_default(
        "max_accuracy_drop", "Fail (exit 6) when validation accuracy, agreement or --fidelity drops more than this "
        "many points (for --fidelity relative-error: the relative error grows by more than this many percent); the "
        "best state within the bound is kept, and a model that misses it is written as NAME.below-bound.onnx. "
        "none: no bound.")),
    FIDELITY_OPTION,
]
STORAGE_OPTIONS = [
    click.option("--format", type=click.Choice(["auto", "sparse", "dense", "packed"]), help=with_default(
        "format", "How pruned weights are stored: sparse initializers, dense (exact zeros, for tools that cannot "
        "read sparse initializers), packed (relative indices rebuilt by standard operators, opset 11+), auto: the "
        "smaller of sparse and packed.")),
    click.option("--bits", type=click.IntRange(2, 8), help="Share each layer's kept weights among 2^BITS values "
                 "(k-means); packed stores them as BITS-bit codes.  [default: exact float values]"),
    click.option("--dense", is_flag=True, help="Same as --format dense."),
]
OUTPUT_OPTIONS = STORAGE_OPTIONS + [
    click.option("--resume", "resume_dir", type=click.Path(path_type=str), metavar="DIR",
                 help="Continue an interrupted run from the checkpoint in its work folder DIR."),
    click.option("--work-dir", type=click.Path(path_type=str), help="Checkpoints and training graphs.  "
                 "[default: OUTPUT.dns-work, removed after success]"),
    click.option("--keep-work", is_flag=True, help="Keep the work folder after success."),
    click.option("--report", "report_path", type=click.Path(path_type=str), help="Write the results as JSON here."),
    click.option("--report-html", "html_path", type=click.Path(path_type=str),
                 help="Write a self-contained HTML report here: loss, accuracy and compression against iteration, "
                 "kept fraction per layer."),
    click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout."),
    click.option("-q", "--quiet", is_flag=True, help="No progress; only the summary line and errors."),
    click.option("-v", "--verbose", is_flag=True, help="Log every evaluation on its own line."),
]


def _options(func):
    for decorator in reversed(DATA_OPTIONS + SURGERY_OPTIONS + TRAINING_OPTIONS + OUTPUT_OPTIONS):
        func = decorator(func)
    return func


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=str),
              help="Where to write the compressed model.")
@_options
@handle_errors
def compress(model: str, output_path: str, report_path: str | None, html_path: str | None, as_json: bool,
             quiet: bool, verbose: bool, dense: bool, resume_dir: str | None, work_dir: str | None, keep_work: bool,
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
    given = layer_options(given)
    settings = load_settings(model, given)
    options = merge(given, settings, dense=dense, work_dir=resume_dir or work_dir, keep_work=keep_work)
    announce_settings(model, settings)
    for path, option in ((report_path, "--report"), (html_path, "--report-html")):
        if path:
            _check_report_path(path, model, output_path, option)
    progress = LossTrace(Progress(0 if quiet else (2 if verbose else 1)))
    result = compress_file(model, output_path, options, progress=progress, resume=resume_dir is not None)
    data = result.to_dict()
    if report_path:
        write_json(report_path, data)
    if html_path:
        write_html(html_path, compress_report(result, progress), forbid=model)
    if as_json:
        emit_json(data)
    elif not quiet:
        click.echo(format_table(result.layers_after))
        record = read_metadata(result.model) or {}
        if record.get("structure") == "channel":
            click.echo(format_channels(record))
    click.echo(summary_line(result), err=as_json)
    if not result.met_bound:
        hint = result.accuracy_after.bound_hint
        raise AccuracyBoundError(
            f"{result.accuracy_after.fall_from(result.accuracy_before)}, more than --max-accuracy-drop "
            f"{options.train.max_accuracy_drop}{f' ({hint})' if hint else ''}; the model is in {result.output}")


def layer_options(given: dict) -> dict:
    """The NAME=VALUE and repeated options of the command line as the options' dicts and tuples (None: absent)."""
    given = dict(given)
    given["c"] = _pairs(given.pop("c_values"), "--c", float) or None
    given["sparsity"] = _pairs(given.pop("sparsities"), "--sparsity", float) or None
    given["stop"] = _pairs(given.pop("stops"), "--stop", int) or None
    for key in ("include", "exclude", "freeze_before"):
        given[key] = given[key] or None
    return given


def _check_report_path(report_path: str, model: str, output_path: str, option: str = "--report") -> None:
    check_output_path(report_path, forbid=model)
    models = {Path(output_path).resolve(), Path(below_bound_path(output_path)).resolve()}
    if Path(report_path).resolve() in models:
        raise OutputError(f"{report_path}: the report path is where the output model goes; give {option} "
                          "another path")


def summary_line(result: CompressResult) -> str:
    before, after = result.accuracy_before, result.accuracy_after
    sizes = ", ".join(f"{name} {human_bytes(size)}" for name, size in result.format_sizes.items())
    rollbacks = f", {result.rollbacks} rollbacks of a diverging loss" if result.rollbacks else ""
    probed = " (probed)" if result.lr_probe else ""
    optimizer = f"{result.optimizer} " if result.optimizer else ""
    return (f"params {result.params:,} -> {result.nonzeros:,} ({result.compression:.1f}x; "
            f"{result.weight_compression:.1f}x weights only), {before.describe()} -> {after.describe()} "
            f"on {before.samples} samples, file {human_bytes(result.file_size_before)} -> "
            f"{human_bytes(result.file_size_after)} ({sizes}), {optimizer}lr {result.learning_rate:.3g}{probed}"
            f"{rollbacks}, {result.seconds:.0f} s (mask updates {result.surgery_ms_per_step:.2f} ms/step) -> "
            f"{result.output}")
