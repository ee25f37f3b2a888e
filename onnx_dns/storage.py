"""How each tensor of a model is stored (dense, sparse or packed, and at how many bits) and the bytes it takes.

Dense and sparse tensors are read from the initializers; packed ones are those onnx-dns listed in the model's
metadata that a rebuild subgraph computes, and their bytes are their share of the packed streams, recomputed
from the rebuilt values exactly as the writer computed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dns.fold import read_metadata
from onnx_dns.graph import payload_bytes, producers, to_array
from onnx_dns.packed import packed_facts
from onnx_dns.repack import PACKED_KEY


@dataclass(frozen=True)
class Stored:
    format: str
    bytes: int
    bits: int | None = None

    def describe(self) -> str:
        return f"{self.format} {self.bits}-bit" if self.bits else self.format


def tensor_storage(model: onnx.ModelProto, plain: onnx.ModelProto) -> dict[str, Stored]:
    """Storage of every initializer, sparse initializer and packed tensor of `model`; `plain` is the same model
    with packed tensors rebuilt as initializers (`repack.unpack_model`)."""
    table = {t.name: Stored("dense", payload_bytes(t)) for t in model.graph.initializer}
    for sparse in model.graph.sparse_initializer:
        table[sparse.values.name] = Stored("sparse", payload_bytes(sparse.values) + payload_bytes(sparse.indices))
    record = read_metadata(model) or {}
    made = producers(model.graph)
    names = [n for n in record.get(PACKED_KEY, []) if n in made]
    if names:
        bits = record.get("bits")
        values = {t.name: to_array(t) for t in plain.graph.initializer if t.name in names}
        groups: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            groups.setdefault(values[name].dtype.str, {})[name] = values[name]
        for group in groups.values():
            for name, facts in packed_facts(group, bits).items():
                table[name] = Stored("packed", facts["bytes"], bits)
    return table
