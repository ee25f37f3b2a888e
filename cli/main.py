"""`onnx-dns`: compress ONNX models with Dynamic Network Surgery; inspect, evaluate and gate them in CI.

Exit codes: 0 success, 1 unexpected internal error, 2 bad command-line usage (including an option naming a
layer that does not exist), 3 bad model, 4 bad data,
5 training failed, 6 accuracy bound missed (model still written with a suffix), 7 output not writable,
130 interrupted (a checkpoint is left to --resume from).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback

import click

from onnx_dns import __version__
from onnx_dns.errors import DnsError

EXIT_INTERRUPTED = 130


class Context:
    def __init__(self, debug: bool) -> None:
        self.debug = debug


def handle_errors(func):
    """Turn errors into one line on stderr and their documented exit code; --debug adds the traceback above it."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_object(Context).debug
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except DnsError as exc:
            _fail(f"{'stopped' if isinstance(exc, KeyboardInterrupt) else 'error'}: {exc}", exc.exit_code, debug)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED, debug)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback and report "
                  "it)", 1, debug)

    return wrapper


def _fail(message: str, code: int, debug: bool) -> None:
    """Called while an exception is handled: print its traceback (with --debug) and `message`, then exit."""
    if debug:
        traceback.print_exc()
    click.echo(message, err=True)
    sys.exit(code)


def emit_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


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
    """
    ctx.obj = Context(debug)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_dns.settings").setLevel(logging.INFO)  # which dns.json settings a run applies


from cli import commands  # noqa: E402,F401  (registers the subcommands on `main`)
