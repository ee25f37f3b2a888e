"""Fuzzing the model loader: a thousand mutants of real models (tests/hostile_models.py, seeded) go through what
`onnx-dns inspect` and the first steps of `compress` run, and each either loads or raises ModelError."""

from __future__ import annotations

import collections
import contextlib
import resource
import time

from hostile_models import mutants, prepare_folder
from onnx import numpy_helper

from onnx_dns.data import model_inputs
from onnx_dns.errors import ModelError
from onnx_dns.freeze import initializers_feeding
from onnx_dns.losses import loss_output
from onnx_dns.model_io import load_model
from onnx_dns.normalize import densify_sparse, lift_constants, unlist_initializer_inputs
from onnx_dns.prunable import find_layers
from onnx_dns.report import inspect_model

COUNT = 1000
SEED = 0
HEADROOM = 2 << 30  # bytes of address space the mutants may take beyond what the test process holds


@contextlib.contextmanager
def address_space_limit(extra: int):
    """Cap this process's address space at its current size plus `extra`: an allocation sized by a declared
    shape then fails with MemoryError (which the test counts as a failure) instead of taking the machine."""
    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def read_like_the_cli(source, path=None) -> None:
    """`onnx-dns inspect`, then what `compress` does to a model before it reads any data."""
    model = load_model(source)
    inspect_model(model, path)
    prepared = unlist_initializer_inputs(densify_sparse(lift_constants(model).model).model).model
    for tensor in prepared.graph.initializer:
        numpy_helper.to_array(tensor)
    output = loss_output(prepared, None, "fuzz")
    find_layers(prepared)
    initializers_feeding(prepared, output)
    model_inputs(prepared)


def test_a_thousand_mutated_models_load_or_raise_model_error(tmp_path):
    folder = tmp_path / "model"
    prepare_folder(folder, tmp_path / "outside.bin")
    path = folder / "m.onnx"
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    started = time.perf_counter()
    with address_space_limit(HEADROOM):
        for description, data in mutants(COUNT, SEED):
            _read_one(description, data, path, outcomes, failures)
    seconds = time.perf_counter() - started
    assert not failures, "\n".join(failures[:20])
    assert sum(outcomes.values()) == COUNT
    # the mutants reach past the protobuf parser: most are refused by the checks, and some still load
    assert outcomes["refused"] > COUNT // 3 and outcomes["loaded"] > 0, outcomes
    print(f"{COUNT} mutants in {seconds:.1f} s: {dict(outcomes)}")


def _read_one(description: str, data: bytes, path, outcomes: collections.Counter, failures: list[str]) -> None:
    try:
        if "external" in description:  # external data needs the model's folder; others load from bytes
            path.write_bytes(data)
            read_like_the_cli(path, path)
        else:
            read_like_the_cli(data)
        outcomes["loaded"] += 1
    except ModelError as exc:
        message = str(exc)
        assert "\n" not in message, description
        outcomes["not readable" if "not a readable ONNX model" in message else "refused"] += 1
    except Exception as exc:  # noqa: BLE001 - any other exception (MemoryError included) is what this looks for
        failures.append(f"{description}: {type(exc).__name__}: {exc}")
