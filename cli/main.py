"""`onnx-dns`: compress ONNX models with Dynamic Network Surgery; inspect, evaluate and gate them in CI.

Exit codes: 0 success, 1 unexpected internal error, 2 bad command-line usage (including an option naming a
layer that does not exist), 3 bad model, 4 bad data,
5 training failed, 6 accuracy bound missed (model still written with a suffix), 7 output not writable,
130 interrupted (a checkpoint is left to --resume from).
"""

from __future__ import annotations

import logging

import click

from onnx_dns import __version__

from .common import EXIT_INTERRUPTED, Context
from .compress_command import compress
from .convert_command import convert
from .evaluate_command import evaluate
from .inspect_command import inspect
from .sensitivity_command import sensitivity
from .sweep_command import sweep

__all__ = ["main", "EXIT_INTERRUPTED"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnx-dns")
@click.option("--debug", is_flag=True, help="Show full tracebacks and library logs on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compress an ONNX model with Dynamic Network Surgery (prune and splice while fine-tuning).

    \b
    Examples:
      onnx-dns inspect model.onnx
      onnx-dns compress models/lenet5/model.onnx -o lenet5.dns.onnx
      onnx-dns evaluate lenet5.dns.onnx --data models/data/mnist --min-accuracy 99
      onnx-dns sweep models/lenet300/model.onnx --targets 10x,30x,60x --iterations 3000 -o sweep/
      onnx-dns sensitivity models/lenet5/model.onnx
    """
    ctx.obj = Context(debug)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_dns.settings").setLevel(logging.INFO)  # which dns.json settings a run applies


for command in (inspect, compress, evaluate, convert, sweep, sensitivity):
    main.add_command(command)
