"""The packed storage format: weights rebuilt from compact initializers by a subgraph of standard operators
(opset 11 and later), which onnxruntime folds into constants when a session is created.

The tensors of one dtype are laid end to end in one flat address space. Their nonzero positions are stored as
relative indices at `index_bits` bits with fillers (`onnx_dns/bitpack.py` has the encoding), and their values
either as they are (lossless) or as `value_bits`-bit codes into per-tensor codebooks laid end to end. The rebuild:

    d = unpack(D)                      Range, Mul, Div, Mod, Cast, Gather, Add (the bit-stream read)
    pos = CumSum(d == 0 ? F : d) - 1  Equal, Where, CumSum, Sub
    v = V                              float values, or
    v = K[unpack(C) + offset]          offset = CumSum(ScatterND(zeros, tensor starts, codebook sizes))
    e = d == 0 ? 0 : v[CumSum(d != 0) - 1]   Not, Cast, CumSum, Sub, Gather, Where: fillers write a zero
    flat = ScatterND(ConstantOfShape(total, 0), pos, e)
    W_1, W_2, ... = Reshape(Split(flat))

Every input of the rebuild is an initializer, so the whole subgraph is constant: onnxruntime's constant folding
turns it into the weights themselves (it does not fold Compress, which is why fillers write zeros instead of
being dropped), and the model computes exactly what it computed with plain initializers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.bitpack import best_index_bits, entry_count, gap_deltas, pack_bits, read_bytes
from onnx_dns.codebook import Codebook
from onnx_dns.graph import unique_name

MIN_OPSET = 11  # CumSum, ScatterND, Range
SPLIT_AS_INPUT_OPSET = 13
WHOLE = {8: np.dtype(np.uint8), 16: np.dtype("<u2")}  # widths stored as plain integer arrays
INT = np.int64  # every integer of the rebuild: the reference evaluator's CumSum widens int32 to int64
GRID_FROM = 1 << 16  # index streams with this many entries or more are decoded as a grid (see _read_grid)
ROW = 1024  # entries in one row of that grid
GRID_BITS = (1, 2, 4, 8, 16)  # the widths such a stream is stored at: whole bytes, or bit fields within one


@dataclass
class _Builder:
    """Nodes and initializers of one rebuild subgraph, with short unique names and shared constants."""

    taken: set[str]
    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _constants: dict = field(default_factory=dict)

    def fresh(self) -> str:
        return unique_name(self.taken, f"{self.prefix}{np.base_repr(len(self.nodes) + len(self.initializers), 36)}")

    def const(self, value) -> str:
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh()
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [self.fresh() for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if len(names) == 1 else names


def _read_stream(b: _Builder, stream: np.ndarray, bits: int, count: int) -> str:
    """Nodes reading `count` values of `bits` bits from a pack_bits stream (int64); whole bytes are just cast."""
    if bits in WHOLE:
        whole = np.frombuffer(stream.tobytes()[: count * bits // 8], WHOLE[bits])
        return b.op("Cast", b.const(whole), to=TensorProto.INT64)
    index = b.op("Range", b.const(INT(0)), b.const(INT(count)), b.const(INT(1)))
    bit = b.op("Mul", index, b.const(INT(bits)))
    byte = b.op("Div", bit, b.const(INT(8)))
    shift = b.op("Mod", bit, b.const(INT(8)))
    data = b.op("Cast", b.const(stream), to=TensorProto.INT64)
    word = b.op("Gather", data, byte)
    for k in range(1, read_bytes(bits)):
        later = b.op("Gather", data, b.op("Add", byte, b.const(INT(k))))
        word = b.op("Add", word, b.op("Mul", later, b.const(INT(256 ** k))))
    scale = b.op("Gather", b.const((2 ** np.arange(8)).astype(INT)), shift)
    return b.op("Mod", b.op("Div", word, scale), b.const(INT(2 ** bits)))


def _read_grid(b: _Builder, stream: np.ndarray, bits: int, count: int) -> str:
    """Nodes reading `count` values of `bits` bits (one of GRID_BITS) from a pack_bits stream into an int32
    [rows, ROW] grid in reading order, zeros past `count`. Bit fields are shifted out of uint8 bytes, so the
    intermediates that onnxruntime's constant folding keeps until it is done are one byte per entry, not eight."""
    rows = -(-count // ROW)
    if bits == 16:
        wide = b.op("Cast", b.const(np.frombuffer(stream.tobytes()[: 2 * count], "<u2")), to=TensorProto.INT32)
        return b.op("Reshape", b.op("Pad", wide, b.const(np.array([0, rows * ROW - count], np.int64))),
                    b.const(np.array([rows, ROW], np.int64)))
    size = rows * ROW * bits // 8
    data = b.const(stream[:size]) if len(stream) >= size else b.op(
        "Pad", b.const(stream), b.const(np.array([0, size - len(stream)], np.int64)))
    if bits < 8:
        fields = b.const((np.arange(8 // bits) * bits).astype(np.uint8))
        shifted = b.op("BitShift", b.op("Reshape", data, b.const(np.array([-1, 1], np.int64))), fields,
                       direction="RIGHT")
        data = b.op("Mod", shifted, b.const(np.uint8(2 ** bits)))
    grid = b.op("Reshape", data, b.const(np.array([rows, ROW], np.int64)))
    return b.op("Cast", grid, to=TensorProto.INT32)


def _grid_prefix_sum(b: _Builder, grid: str) -> str:
    """Nodes of the inclusive prefix sum of a [rows, ROW] grid in reading order: summed along each row, then
    shifted by the total of the rows before it. onnxruntime's CPU CumSum runs one long axis element by element
    (1.2 s for 3M entries); along rows it is several times faster."""
    within = b.op("CumSum", grid, b.const(np.int32(1)))
    totals = b.op("Slice", within, b.const(np.array([ROW - 1], np.int64)), b.const(np.array([ROW], np.int64)),
                  b.const(np.array([1], np.int64)))
    return b.op("Add", within, b.op("CumSum", totals, b.const(np.int32(0)), exclusive=1))


def _positions(b: _Builder, deltas: np.ndarray, bits: int) -> tuple[str, str, str]:
    """Nodes turning the relative-index stream back into ScatterND indices of every entry ([entries, 1] int64),
    which filler entries are (bool), and the index of each entry's value among the real ones."""
    d = _read_stream(b, pack_bits(deltas, bits), bits, len(deltas))
    filler = b.op("Equal", d, b.const(INT(0)))
    step = b.op("Where", filler, b.const(INT(2 ** bits - 1)), d)
    position = b.op("Sub", b.op("CumSum", step, b.const(INT(0))), b.const(INT(1)))
    real = b.op("Cast", b.op("Not", filler), to=TensorProto.INT64)
    ordinal = b.op("Sub", b.op("CumSum", real, b.const(INT(0))), b.const(INT(1)))
    return b.op("Reshape", position, b.const(np.array([-1, 1], np.int64))), filler, ordinal


def _grid_positions(b: _Builder, deltas: np.ndarray, bits: int) -> tuple[str, str]:
    """Nodes turning a long relative-index stream back into ScatterND indices of every entry ([entries, 1]
    int64), and a [rows, ROW] grid of indices into the values with a zero put first: a filler's is 0, the k-th
    real entry's k. Integers are int32 but for the scatter indices; the reference evaluator's CumSum widens int32
    to int64, so a prefix sum is cast before it meets a constant."""
    d = _read_grid(b, pack_bits(deltas, bits), bits, len(deltas))
    filler = b.op("Equal", d, b.const(np.int32(0)))
    step = b.op("Where", filler, b.const(np.int32(2 ** bits - 1)), d)
    position = b.op("Sub", b.op("Cast", _grid_prefix_sum(b, step), to=TensorProto.INT64), b.const(INT(1)))
    real = b.op("Cast", b.op("Not", filler), to=TensorProto.INT32)
    ordinal = b.op("Cast", _grid_prefix_sum(b, real), to=TensorProto.INT32)
    value_index = b.op("Where", filler, b.const(np.int32(0)), ordinal)
    return _first(b, position, len(deltas), [-1, 1]), value_index


def _first(b: _Builder, grid: str, count: int, shape: list[int], entries: int | None = None) -> str:
    """The first `count` entries of a grid (of `entries` rounded up to rows) in reading order, as `shape`; zeros
    after its end. Only integer grids are cut or padded: onnxruntime has no float16 Pad to fold."""
    flat = b.op("Reshape", grid, b.const(np.array(shape, np.int64)))
    beyond = count - -(-(entries or count) // ROW) * ROW
    if beyond > 0:
        return b.op("Pad", flat, b.const(np.array([0] * len(shape) + [beyond] + [0] * (len(shape) - 1), np.int64)))
    return b.op("Slice", flat, b.const(np.array([0], np.int64)), b.const(np.array([count], np.int64)),
                b.const(np.array([0], np.int64)))


def index_bits(positions: np.ndarray) -> int:
    """The width of relative indices a packed group stores `positions` at: the fewest bits, or among
    GRID_BITS when the stream is still long enough at that width to be decoded as a grid."""
    best = best_index_bits(positions)
    if entry_count(positions, best) < GRID_FROM or best in GRID_BITS:
        return best
    readable = best_index_bits(positions, GRID_BITS)
    return readable if entry_count(positions, readable) >= GRID_FROM else best


def _coded_values(b: _Builder, books: list[Codebook], value_bits: int) -> str:
    """Nodes looking each code up in its tensor's codebook (codebooks laid end to end)."""
    codes = np.concatenate([book.codes for book in books])
    lookup = _read_stream(b, pack_bits(codes, value_bits), value_bits, len(codes))
    counts = np.array([len(book.codes) for book in books])
    offsets = np.cumsum([0] + [len(book.centroids) for book in books])[:-1]
    starts = np.cumsum(counts) - counts
    used = counts > 0
    increments = np.diff(np.concatenate([[0], offsets[used]]))
    moved = [(int(s), int(i)) for s, i in zip(starts[used], increments) if i]
    if moved:
        zeros = b.op("ConstantOfShape", b.const(np.array([len(codes)], np.int64)),
                     value=helper.make_tensor("value", TensorProto.INT64, [1], [0]))
        steps = b.op("ScatterND", zeros, b.const(np.array([[s] for s, _ in moved], np.int64)),
                     b.const(np.array([i for _, i in moved], INT)))
        lookup = b.op("Add", lookup, b.op("CumSum", steps, b.const(INT(0))))
    return b.op("Gather", b.const(np.concatenate([book.centroids for book in books])), lookup)


def _weights(b: _Builder, deltas: np.ndarray, bits: int, values: str, total: int, dtype: np.dtype) -> str:
    """Nodes of the `total` weights laid end to end: each real entry's value at its position, zeros elsewhere."""
    scatter, filler, ordinal = _positions(b, deltas, bits)
    entry_values = b.op("Where", filler, b.const(np.zeros((), dtype)), b.op("Gather", values, ordinal))
    return _scattered(b, scatter, entry_values, total, dtype)


def _grid_weights(b: _Builder, deltas: np.ndarray, bits: int, values: str, total: int, dtype: np.dtype) -> str:
    """The same from a long stream, `values` with a zero put first. At one bit every entry advances the position
    by one, so the entries in reading order are the weights themselves and need no scatter (half the weights
    nonzero, as at 2x, is stored so)."""
    if bits == 1:
        d = _read_grid(b, pack_bits(deltas, bits), bits, len(deltas))
        value_index = b.op("Mul", b.op("Cast", _grid_prefix_sum(b, d), to=TensorProto.INT32), d)
        return b.op("Gather", values, _first(b, value_index, total, [-1], len(deltas)))
    scatter, value_index = _grid_positions(b, deltas, bits)
    entry_values = b.op("Gather", values, _first(b, value_index, len(deltas), [-1]))
    return _scattered(b, scatter, entry_values, total, dtype)


def _scattered(b: _Builder, scatter: str, entry_values: str, total: int, dtype: np.dtype) -> str:
    """Nodes writing each entry's value at its index into `total` zeros."""
    zeros = b.op("ConstantOfShape", b.const(np.array([total], np.int64)),
                 value=numpy_helper.from_array(np.zeros(1, dtype), "value"))
    return b.op("ScatterND", zeros, scatter, entry_values)


def build_rebuild(tensors: dict[str, np.ndarray], *, books: dict[str, Codebook] | None, value_bits: int | None,
                  opset: int, taken: set[str], prefix: str) -> tuple[list, list]:
    """Nodes and initializers of a subgraph computing `tensors` (one dtype) under their names.

    With `books`, each tensor's nonzeros are stored as codes into its Codebook (whose values they must equal).
    """
    b = _Builder(taken, prefix)
    names = list(tensors)
    dtype = tensors[names[0]].dtype
    flats = [tensors[n].reshape(-1) for n in names]
    offsets, positions = _layout(tensors)
    bits = index_bits(positions)
    deltas = gap_deltas(positions, bits)
    grid = len(deltas) >= GRID_FROM
    if books is None:
        nonzeros = [np.zeros(int(grid), dtype)] + [f[f != 0] for f in flats]
        values = b.const(np.concatenate(nonzeros).astype(dtype))
    else:
        values = _coded_values(b, [books[n] for n in names], value_bits)
        if grid:
            values = b.op("Concat", b.const(np.zeros(1, dtype)), values, axis=0)
    flat = (_grid_weights if grid else _weights)(b, deltas, bits, values, int(offsets[-1]), dtype)
    pieces = [flat]
    if len(names) > 1:
        sizes = np.diff(offsets).astype(np.int64)
        if opset >= SPLIT_AS_INPUT_OPSET:
            pieces = b.op("Split", flat, b.const(sizes), outputs=len(names), axis=0)
        else:
            pieces = b.op("Split", flat, outputs=len(names), axis=0, split=[int(s) for s in sizes])
    for name, piece in zip(names, pieces):
        b.op("Reshape", piece, b.const(np.array(tensors[name].shape, np.int64)), outputs=[name])
    return b.nodes, b.initializers


def _layout(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the tensors laid end to end (and the total), and their nonzero positions in that space."""
    flats = [t.reshape(-1) for t in tensors.values()]
    offsets = np.concatenate([[0], np.cumsum([f.size for f in flats])]).astype(np.int64)
    positions = np.concatenate([np.flatnonzero(f) + o for f, o in zip(flats, offsets)]).astype(np.int64)
    return offsets, positions


def packed_facts(tensors: dict[str, np.ndarray], value_bits: int | None) -> dict[str, dict]:
    """Each tensor's share of the packed streams of `tensors` (one group, in order): entries, index and value
    bits, bytes (index entries, values or codes, and its codebook). Computed from the values alone, so
    `onnx-dns inspect` finds the same figures in a packed model as the writer did."""
    offsets, positions = _layout(tensors)
    bits = index_bits(positions)
    facts = {}
    for k, (name, array) in enumerate(tensors.items()):
        mine = positions[(positions >= offsets[k]) & (positions < offsets[k + 1])] - offsets[k]
        entries = len(gap_deltas(mine, bits))
        nonzeros = len(mine)
        if value_bits is None:
            value_bytes = nonzeros * array.dtype.itemsize
        else:
            shared = len(np.unique(array[array != 0]))
            value_bytes = nonzeros * value_bits / 8 + shared * array.dtype.itemsize
        facts[name] = {"format": "packed", "nonzeros": nonzeros, "entries": entries, "index_bits": bits,
                       "value_bits": value_bits or array.dtype.itemsize * 8,
                       "bytes": int(round(entries * bits / 8 + value_bytes))}
    return facts
