"""Hostile model files for the fuzzer and the targeted tests: mutations of real models (the exporter fixtures and
the reference models), seeded and deterministic, and hand-made files for each attack on the loader."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
SEED_FILES = sorted((ROOT / "tests" / "fixtures").glob("*.onnx")) + sorted((ROOT / "models").glob("*/model.onnx"))
DATA_NAME = "m.onnx.data"
LOCATIONS = (DATA_NAME, "missing.bin", "../outside.bin", "/etc/hostname", "zero", "outside_link", "subdir", "fifo",
             ".", "")
HUGE = 10**6


def seed_models() -> list[tuple[str, onnx.ModelProto]]:
    """The seeds, with external data read in (so a mutant is self-contained)."""
    return [(p.name, onnx.load(str(p))) for p in SEED_FILES]


def prepare_folder(folder: Path, outside: Path) -> None:
    """What the external-data mutants point at: a data file, a link to /dev/zero, a link out of the folder,
    a directory and a FIFO."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DATA_NAME).write_bytes(bytes(range(256)) * 64)
    outside.write_bytes(b"\0" * 4096)
    for name, target in (("zero", "/dev/zero"), ("outside_link", str(outside))):
        if not (folder / name).is_symlink():
            os.symlink(target, folder / name)
    (folder / "subdir").mkdir(exist_ok=True)
    if not (folder / "fifo").exists():
        os.mkfifo(folder / "fifo")


def mutants(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`count` mutated models as (description, file bytes): structural mutations of a parsed seed, then in half
    of the cases byte-level damage on top."""
    rng = random.Random(seed)
    seeds = seed_models()
    small = [s for s in seeds if s[1].ByteSize() < 200_000]
    for index in range(count):
        name, original = rng.choice(seeds if index % 20 == 0 else small)
        model = onnx.ModelProto()
        model.CopyFrom(original)
        steps = [rng.choice(MUTATIONS) for _ in range(rng.randint(1, 3))]
        for step in steps:
            step(model, rng)
        data = model.SerializeToString()
        damage = rng.choice(BYTE_MUTATIONS) if rng.random() < 0.5 else None
        if damage is not None:
            data = damage(bytearray(data), rng)
        yield (f"{index}: {name} {' '.join(s.__name__ for s in steps)}"
               f"{' ' + damage.__name__ if damage else ''}", bytes(data))


def tensors_of(model: onnx.ModelProto) -> list[TensorProto]:
    found = list(model.graph.initializer)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                found.append(attribute.t)
    return found


def huge_dims(model: onnx.ModelProto, rng: random.Random) -> None:
    tensor = _pick(tensors_of(model), rng)
    if tensor is not None:
        del tensor.dims[:]
        tensor.dims.extend(rng.choice([[HUGE, HUGE], [-3, 4], [0], [2**62, 2**62], [7], [1, 1, 1, 1, 1]]))


def damage_data(model: onnx.ModelProto, rng: random.Random) -> None:
    tensor = _pick(tensors_of(model), rng)
    if tensor is None:
        return
    choice = rng.randrange(4)
    if choice == 0:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
    elif choice == 1:
        tensor.ClearField("raw_data")
    elif choice == 2:
        tensor.data_type = rng.randrange(30)
    else:
        tensor.float_data.extend([1.0, 2.0])


def external(model: onnx.ModelProto, rng: random.Random) -> None:
    tensor = _pick(list(model.graph.initializer), rng)
    if tensor is None:
        return
    size = len(tensor.raw_data) or 4 * math.prod(tensor.dims)
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    entries = {"location": rng.choice(LOCATIONS), "offset": rng.choice([0, 100, 16_000, 10**15, -1]),
               "length": rng.choice([size, size + 1, 10**12, 0])}
    for key in rng.sample(sorted(entries), rng.randint(1, 3)):
        tensor.external_data.add(key=key, value=str(entries[key]))
    tensor.data_location = TensorProto.EXTERNAL


def declared_shape(model: onnx.ModelProto, rng: random.Random) -> None:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    value = _pick(values, rng)
    if value is not None and value.type.HasField("tensor_type"):
        dim = value.type.tensor_type.shape.dim.add()
        dim.dim_value = rng.choice([HUGE**2, -1, 2**63 - 1, 0])


def cycle(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = model.graph.node
    if len(nodes) > 1 and nodes[0].input:
        late, early = rng.randrange(1, len(nodes)), rng.randrange(len(nodes))
        early = min(early, late)
        if nodes[late].output and nodes[early].input:
            nodes[early].input[rng.randrange(len(nodes[early].input))] = nodes[late].output[0]


def shuffle_nodes(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(model.graph.node)
    rng.shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def nest(model: onnx.ModelProto, rng: random.Random) -> None:
    """Wrap the first node in If nodes, a few to 24 deep (protobuf cannot build one past about 30)."""
    if not model.graph.node or not model.graph.node[0].output:
        return
    first = model.graph.node[0]
    leaf = helper.make_graph([first], "b0", [], [helper.make_tensor_value_info(first.output[0], 0, None)])
    body = leaf
    try:
        for depth in range(1, rng.choice([2, 3, 5, 24])):
            wrap = helper.make_node("If", ["cond"], [first.output[0]], then_branch=body, else_branch=leaf)
            body = helper.make_graph([wrap], f"b{depth}", [],
                                     [helper.make_tensor_value_info(first.output[0], 0, None)])
        wrapped = helper.make_node("If", ["cond"], list(first.output), then_branch=body, else_branch=leaf)
    except DecodeError:  # nested past protobuf's depth limit (the first node held subgraphs already)
        return
    model.graph.node[0].CopyFrom(wrapped)
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))


def sparse(model: onnx.ModelProto, rng: random.Random) -> None:
    dims = rng.choice([[HUGE, HUGE], [HUGE, HUGE], [4, 4], [3], [-1, 2]])
    indices = rng.choice([[0], [0], [10**9], [-2], [0, 1]])
    values = helper.make_tensor("sp", TensorProto.FLOAT, [1], [1.0])
    index = helper.make_tensor("sp_i", TensorProto.INT64, [len(indices)], indices)
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, index, dims))


def versions(model: onnx.ModelProto, rng: random.Random) -> None:
    model.ir_version = rng.choice([0, 3, 11, 2**40])
    if model.opset_import:
        model.opset_import[0].version = rng.choice([0, 1, 22, 10**9])


def rename(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _pick(list(model.graph.node), rng)
    if node is not None:
        node.op_type = rng.choice(["NoSuchOp", "", "Loop", "If", node.op_type])
        if node.output:
            node.output[0] = rng.choice(["", "dup", node.input[0] if node.input else "x"])


def attributes(model: onnx.ModelProto, rng: random.Random) -> None:
    """Odd attribute values and types: huge or negative sizes, NaN, a type that does not match the value."""
    node = _pick([n for n in model.graph.node if n.attribute], rng)
    if node is None:
        return
    attribute = rng.choice(node.attribute)
    choice = rng.randrange(4)
    if choice == 0:
        del attribute.ints[:]
        attribute.ints.extend(rng.choice([[2**62], [-(2**62)], [0, 0], [HUGE] * 8]))
    elif choice == 1:
        attribute.i = rng.choice([2**62, -1, 0])
    elif choice == 2:
        attribute.f = float("nan")
    else:
        attribute.type = rng.randrange(15)


MUTATIONS: list[Callable[[onnx.ModelProto, random.Random], None]] = [
    huge_dims, damage_data, external, declared_shape, cycle, shuffle_nodes, nest, sparse, versions, rename,
    attributes]


def flip_bytes(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def truncate(data: bytearray, rng: random.Random) -> bytearray:
    return data[: rng.randrange(1, len(data))]


def splice(data: bytearray, rng: random.Random) -> bytearray:
    at = rng.randrange(len(data))
    return data[:at] + bytearray(rng.randbytes(rng.randint(1, 16))) + data[at + rng.randint(0, 16):]


BYTE_MUTATIONS = [flip_bytes, truncate, splice]


def _pick(items: list, rng: random.Random):
    return rng.choice(items) if items else None


def nested_if_bytes(depth: int) -> bytes:
    """A model whose If nodes nest `depth` deep, encoded by hand: protobuf refuses to build one past ~30."""

    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    graph = field(1, field(1, b"x") + field(2, b"y") + field(4, b"Identity")) + field(2, b"g")
    for _ in range(depth):
        attribute = field(1, b"then_branch") + field(6, graph) + _varint(20 << 3) + _varint(5)
        node = field(1, b"cond") + field(2, b"y") + field(4, b"If") + field(5, attribute)
        graph = field(1, node) + field(2, b"g")
    opset = field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + field(7, graph) + field(8, opset)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def with_array(model: onnx.ModelProto, name: str, array: np.ndarray) -> onnx.ModelProto:
    """`model` with one more initializer (unused by any node)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return out
