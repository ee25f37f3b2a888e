"""Import the user's own code named on the command line: `pkg.mod:function` or `path/to/file.py:function`.

Only the command line and the Python API name code; a model's `dns.json` never does (see settings). Nothing here
puts the working directory on sys.path: an installed module is imported as the user's Python imports it, and a
file runs only when its path is given, so a file that happens to lie in the working directory with the name of
an installed module is never picked up instead of it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from onnx_dns.errors import DataError


def code_source(spec: str) -> tuple[str, str] | None:
    """(module or .py file, function name) when `spec` names Python code, else None.

    `pkg.mod:function` imports an installed module; `path/to/file.py:function` (absolute or relative) loads
    that file. Anything else is a data path."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not attr.isidentifier() or not target:
        return None
    if target.endswith(".py") or all(part.isidentifier() for part in target.split(".")):
        return target, attr
    return None


def load_function(spec: str) -> Callable:
    """The function a `module:function` or `file.py:function` spec names, imported or loaded.

    The working directory is never put on sys.path: a module is imported as the user's Python would import it,
    so a file in the working directory named like an installed module cannot stand in for it; a file is loaded
    only when its path is given."""
    target, attr = code_source(spec)
    module = _load_file(spec, Path(target)) if target.endswith(".py") else _import_module(spec, target)
    function = getattr(module, attr, None)
    if function is None:
        raise DataError(f"{spec}: {target} has no {attr!r}; name a function that returns batches")
    if not callable(function):
        raise DataError(f"{spec}: {attr!r} is not callable; name a function that returns batches")
    return function


def _import_module(spec: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name != exc.name and not name.startswith(exc.name + "."):
            raise DataError(f"{spec}: importing {name!r} failed ({exc})") from exc
        hint = f"./{name.replace('.', '/')}.py:{spec.rpartition(':')[2]}"
        raise DataError(f"{spec}: no installed module {name!r} (the working directory is not searched); "
                        f"install it, or give the path of its file, e.g. {hint}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise DataError(f"{spec}: importing {name!r} failed ({type(exc).__name__}: {exc})") from exc


def _load_file(spec: str, file: Path) -> ModuleType:
    """Run a Python file given by its path as a module of its own (not importable by other names)."""
    if not file.is_file():
        raise DataError(f"{spec}: no such Python file {file}; give the path of the file that defines the "
                        "function")
    resolved = file.resolve()
    name = "onnx_dns_user_data_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise DataError(f"{spec}: {file} cannot be loaded as Python; give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything while it runs
        del sys.modules[name]
        raise DataError(f"{spec}: running {file} failed ({type(exc).__name__}: {exc})") from exc
    return module
