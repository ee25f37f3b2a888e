"""What every subcommand shares: one-line errors with documented exit codes, JSON output, atomic report files."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import click

from onnx_dns.errors import DnsError
from onnx_dns.model_io import check_output_path, write_failed
from onnx_dns.options import CompressOptions, TrainConfig, defaults

EXIT_INTERRUPTED = 130
DEFAULTS = defaults(CompressOptions) | defaults(TrainConfig)


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


def with_default(key: str, text: str) -> str:
    """Help text ending with the option's default, read from the options' one source of defaults."""
    value = DEFAULTS[key]
    return f"{text}  [default: {value:g}]" if isinstance(value, float) else f"{text}  [default: {value}]"


def write_json(path: str, data: dict) -> None:
    """Write a JSON report atomically; a failed write leaves no temporary file."""
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
